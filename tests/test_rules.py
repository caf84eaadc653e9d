"""The batching-rule fuzzer: broken twins found and shrunk, correct rules passed, the CLI, ops."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import jacverify
from jacverify.examples import rules as R
from jacverify.rules import RuleExample, as_target, discover_rules, fuzz_batching_rule, run_checks
from jacverify.rules.checks import build_args

EXAMPLES = Path(jacverify.__file__).parent / "examples"
BROKEN = [*R.BROKEN_FUNCTIONS, R.row_scaled_mixing]
CORRECT = [*R.CORRECT_FUNCTIONS, R.row_scaled, R.scaled_by]


@pytest.mark.slow  # a fuzz campaign and a subprocess per rule
@pytest.mark.parametrize("rule", BROKEN, ids=lambda r: getattr(r, "__name__", str(r)))
def test_broken_rule_is_found_and_shrunk(rule):
    # shrinking ends on its own (in seconds here); the budget is only a cap, far above that, so
    # how small the failure gets does not depend on the machine's speed
    report = fuzz_batching_rule(rule, max_examples=60, seed=1, shrink_seconds=600)
    assert not report.passed
    ex = report.failure.example
    assert ex.batch_size in (0, 1, 2) and all(s is None or len(s) == 1 for s in ex.shapes), ex
    assert report.failure.mismatches
    # the snippet replays the failure in a fresh interpreter
    proc = subprocess.run([sys.executable, "-c", report.failure.snippet],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "status='mismatch'" in proc.stdout, proc.stderr


@pytest.mark.slow  # a 60-example fuzz campaign per rule
@pytest.mark.parametrize("rule", CORRECT, ids=lambda r: getattr(r, "__name__", str(r)))
def test_correct_rule_passes(rule):
    report = fuzz_batching_rule(rule, max_examples=60, seed=2)
    assert report.passed, report.describe()
    assert report.counts["vmap"]["agree"] == report.examples
    assert "mismatch" not in report.counts["vmap_nested"]  # (a batch of 0 runs vmap alone)
    assert report.counts["vmap_nested"]["agree"] >= report.examples // 2


# Each twin, on the example that exposes it: what the fuzzer must see there, in which check.
EXPOSING = [
    (R.IgnoresInDim, RuleExample(3, ((3, 3),), (None,), (-1,), 0, "contiguous", 0), "vmap"),
    (R.WrongOutDim, RuleExample(3, ((3,),), (None,), (1,), 0, "contiguous", 0), "vmap"),
    (R.MixesSamples, RuleExample(2, ((2,),), (None,), (0,), 0, "contiguous", 0), "vmap"),
    (R.ContiguousOnly, RuleExample(2, ((2, 3),), (None,), (0,), 0, "non_contiguous", 0), "vmap"),
]


@pytest.mark.parametrize(("rule", "example", "check"), EXPOSING, ids=lambda x: getattr(x, "__name__", ""))
def test_twin_is_exposed_even_when_shapes_match(rule, example, check):
    """Square shapes: the wrong batch axis has the right shape, so only the values tell."""
    (outcome,) = run_checks(as_target(rule), example, checks=[check])
    assert outcome.status == "mismatch" and "values differ" in outcome.detail
    (fine,) = run_checks(as_target(R.RowScaled), example, checks=[check])
    assert fine.status == "agree"


def test_examples_have_distinct_samples_and_the_layout_asked_for():
    target = as_target(R.RowScaled)
    (x,) = build_args(target, RuleExample(3, ((2, 4),), (None,), (1,), 0, "non_contiguous", 0))
    assert x.shape == (2, 3, 4) and not x.is_contiguous()
    assert not torch.equal(x.select(1, 0), x.select(1, 1))
    (e,) = build_args(target, RuleExample(3, ((2, 4),), (None,), (0,), 0, "expanded", 0))
    assert e.stride()[-1] == 0


def test_targets_from_schema_hints_and_discovery():
    op = as_target("jacverify_examples::scaled_by")
    assert [(a.name, a.kind) for a in op.args] == [("x", "tensor"), ("y", "tensor"),
                                                   ("alpha", "float")]
    assert as_target("aten::sin").args[0].kind == "tensor"
    names = {t.name for t in discover_rules(R)}
    assert names == {"RowScaled", "RowScaledOutLast", "RowScaledGenerated", "IgnoresInDim",
                     "WrongOutDim", "MixesSamples", "ContiguousOnly",
                     "jacverify_examples::row_scaled", "jacverify_examples::scaled_by",
                     "jacverify_examples::row_scaled_mixing"}


def test_python_function_with_example_input():
    def per_row_softmax(x):
        return torch.softmax(x, -1)

    per_row_softmax.example_input = lambda: (torch.randn(3, 3),)
    report = fuzz_batching_rule(per_row_softmax, max_examples=10, seed=0)
    assert report.passed and report.counts["vmap"]["agree"] == report.examples


@pytest.mark.parametrize(("rule", "message"), [
    ("nope::missing", "is not a registered operator"),
    (42, "is not an op, an autograd.Function or a function"),
])
def test_bad_rules_are_named(rule, message):
    with pytest.raises(jacverify.InvalidArgument, match=message):
        fuzz_batching_rule(rule, max_examples=1)


@pytest.mark.slow  # the CLI in a subprocess
def test_cli_fuzz_rules_file_finds_every_twin(tmp_path):
    out = tmp_path / "rules.json"
    proc = subprocess.run(
        [sys.executable, "-m", "jacverify", "fuzz-rules", str(EXAMPLES / "rules.py"),
         "--examples", "40", "--seed", "1", "--shrink-seconds", "600", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["schema_version"] == 2 and doc["kind"] == "fuzz-rules"
    verdicts = {r["rule"]: r["passed"] for r in doc["rules"]}
    assert verdicts == {"RowScaled": True, "RowScaledOutLast": True, "RowScaledGenerated": True,
                        "IgnoresInDim": False, "WrongOutDim": False, "MixesSamples": False,
                        "ContiguousOnly": False, "jacverify_examples::row_scaled": True,
                        "jacverify_examples::scaled_by": True,
                        "jacverify_examples::row_scaled_mixing": False}
    assert "5 passed, 5 failed, 0 unverified rule(s)" in proc.stdout and "replay with:" in proc.stdout


@pytest.mark.slow  # the CLI in a subprocess
def test_cli_fuzz_rules_op_and_usage_errors():
    ok = subprocess.run([sys.executable, "-m", "jacverify", "fuzz-rules", "--op", "aten::sin",
                         "--examples", "10", "--seed", "0"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "1 passed, 0 failed" in ok.stdout, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "jacverify", "fuzz-rules", "--op", "aten::nope"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "is not a registered operator" in bad.stderr


@pytest.mark.slow  # torch's OpInfo database
def test_ops_sweep_finds_the_layer_norm_forward_over_forward_bug():
    """Known torch 2.13 finding (tests/test_fuzz.py KNOWN_TORCH): LayerNorm's jvp formula has a
    wrong derivative, so both compositions over forward mode disagree with FD; the others agree."""
    pytest.importorskip("expecttest")
    from jacverify.rules.ops import check_op, select_ops

    result = check_op(select_ops(["nn.functional.layer_norm"])[0], samples=1)
    wrong = {c.check for c in result.mismatches}
    assert wrong == {"fwd_over_fwd", "rev_over_fwd"}
    right = {c.check for c in result.checks if c.status == "agree"}
    assert {"vmap", "forward_ad", "reverse_ad", "fwd_over_rev", "rev_over_rev"} <= right


@pytest.mark.slow  # the CLI in a subprocess, torch's OpInfo database
def test_cli_ops_named_writes_json(tmp_path):
    pytest.importorskip("expecttest")
    out = tmp_path / "ops.json"
    proc = subprocess.run([sys.executable, "-m", "jacverify", "ops", "--op", "sin", "--op",
                           "matmul", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert {o["name"]: o["status"] for o in doc["operators"]} == {"sin": "agree", "matmul": "agree"}
    assert doc["device"] == "cpu"
    assert "operators: 2 agree, 0 with wrong values" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "jacverify", "ops", "--op", "sinn"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "did you mean 'sin" in bad.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available: --device cuda is valid "
                    "here (tests/test_cuda.py runs it)")
def test_cli_ops_on_cuda_without_cuda_is_a_usage_error(capsys):
    from jacverify.cli import main

    assert main(["ops", "--op", "sin", "--device", "cuda"]) == 2  # before any operator runs
    err = capsys.readouterr().err
    assert "device='cuda' was asked for but CUDA is not available here" in err
    assert "Traceback" not in err


def test_ops_routes_on_a_device_index_give_the_cpu_results():
    """The device path (a copy of each sample, routes on it, references on the original) taken on
    ``cpu:0``, a device other than the samples' ``cpu``: the same checks as a CPU run."""
    pytest.importorskip("expecttest")
    from jacverify.rules.ops import check_op, select_ops

    op = select_ops(["index_select"])[0]  # an integer index argument moves with the sample
    here, there = (check_op(op, samples=1, device=d) for d in (None, "cpu:0"))
    assert [(c.check, c.sample, c.status) for c in there.checks] == \
        [(c.check, c.sample, c.status) for c in here.checks]
    assert str(there.status) == "agree"
