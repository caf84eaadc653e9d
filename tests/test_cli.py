"""`jacverify check`, run as the real command on files written as any project would write them.

Every test here starts the CLI in a subprocess: all are in the slow set (``python -m pytest -m slow``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jacverify import registered_methods

pytestmark = pytest.mark.slow

N_ALL = len(registered_methods())
N_REVERSE = sum(m.mode == "reverse" for m in registered_methods())  # a wrong backward fails these

EXAMPLES = Path(__file__).resolve().parents[1] / "jacverify" / "examples"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jacverify", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def write(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.mark.parametrize(("example", "code", "expect"), [
    ("mlp.py", 0, "mlp.py::MLP (module class)"),
    ("broken_function.py", 1, f"FAILED: {N_REVERSE} method(s) disagree"),
    ("coupled.py", 0, "batch coupling: changing sample 0 changed the outputs"),
])
def test_bundled_examples_exit_status_and_report(example, code, expect):
    result = run("check", str(EXAMPLES / example))
    assert result.returncode == code, result.stdout + result.stderr
    assert expect in result.stdout


def test_module_name_and_quiet_one_line_per_target():
    result = run("check", "--quiet", "jacverify.examples.mlp")
    assert result.returncode == 0
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    assert lines[0].startswith(f"jacverify.examples.mlp::MLP: PASSED ({N_ALL}/{N_ALL} agree, fastest ")
    assert lines[1].startswith("jacverify.examples.mlp::ConvHead: PASSED")
    assert lines[2] == "2 passed, 0 failed, 0 unverified, 0 skipped target(s)"


def test_discovery_instances_marked_functions_and_skips(tmp_path):
    path = write(tmp_path, "model.py", """
        import torch
        import jacverify
        from torch import nn

        class NeedsArgs(nn.Module):
            def __init__(self, width):
                super().__init__()

        class NoLayers(nn.Module):
            def forward(self, x):
                return x.sin()

        class WithExample(nn.Module):
            example_input = torch.randn(3, 2, 4)
            def forward(self, x):
                return x.tanh().sum(-1)

        net = nn.Sequential(nn.Linear(3, 2), nn.Softplus())

        @jacverify.target(example_input=lambda: (torch.randn(5, 2), torch.randn(5, 2)))
        def pair(x, y):
            return x * y.exp()

        def unmarked(x):
            return x
    """)
    result = run("check", "--quiet", path)
    out = result.stdout
    assert "model.py::NeedsArgs: skipped, its constructor needs arguments" in out
    assert ("model.py::NoLayers: SKIPPED: cannot infer an input for " in out
            and "add an example_input attribute" in out)
    assert "model.py::WithExample: PASSED" in out
    assert "model.py::net: PASSED" in out
    assert "model.py::pair: PASSED" in out
    assert "unmarked" not in out
    assert "3 passed, 0 failed, 0 unverified, 2 skipped target(s)" in out  # NeedsArgs counted
    assert result.returncode == 0


def test_eval_flag_makes_dropout_checkable(tmp_path):
    path = write(tmp_path, "drop.py", """
        from torch import nn
        model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Tanh())
    """)
    train = run("check", "--quiet", path)
    assert train.returncode == 1
    assert "randomness or hidden state" in train.stdout and "model.eval()" in train.stdout
    assert run("check", "--quiet", "--eval", path).returncode == 0


USAGE = [
    ("missing.py", None, "missing.py: no such file"),
    ("notes.txt", "hello", "notes.txt: not a Python file"),
    ("broken.py", "def f(:\n", "broken.py: not valid Python (invalid syntax, line 1)"),
    ("raises.py", "raise RuntimeError('no GPU here')\n", "raises.py: raised RuntimeError on import: no GPU here"),
    ("empty.py", "x = 1\n", "empty.py: nothing to check"),
]


@pytest.mark.parametrize(("name", "body", "message"), USAGE, ids=[u[0] for u in USAGE])
def test_usage_errors_exit_2_with_one_line(tmp_path, name, body, message):
    if body is not None:
        (tmp_path / name).write_text(body)
    result = run("check", str(tmp_path / name))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_file_does_not_stop_the_others(tmp_path):
    bad = write(tmp_path, "raises.py", "raise ImportError('missing dependency')\n")
    result = run("check", "--quiet", bad, str(EXAMPLES / "mlp.py"))
    assert result.returncode == 2
    assert "mlp.py::MLP: PASSED" in result.stdout


# Long enough for a correct target on a heavily loaded machine (Fine's whole check takes well under
# a second here); the slow target never ends on its own, so the outcome does not depend on speed.
TIMEOUT = 30


def test_forward_failing_and_slow_targets_get_a_line_and_the_rest_run(tmp_path):
    path = write(tmp_path, "mixed.py", """
        import time
        from torch import nn

        class WrongShapes(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = nn.Linear(4, 3)
                self.b = nn.Linear(5, 2)
            def forward(self, x):
                return self.b(self.a(x))

        class Slow(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = nn.Linear(2, 2)
            def forward(self, x):
                while True:  # blocks until --timeout abandons it, however long that is
                    time.sleep(1)

        class Fine(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = nn.Linear(2, 2)
            def forward(self, x):
                return self.a(x).tanh()
    """)
    result = run("check", "--quiet", "--timeout", str(TIMEOUT), path)
    out = result.stdout
    assert "mixed.py::WrongShapes: FAILED: the function raised RuntimeError" in out
    assert "inputs of shape (4, 4)" in out
    assert "mixed.py::Slow: UNVERIFIED: mixed.py::Slow: abandoned" not in out
    assert f"mixed.py::Slow: UNVERIFIED: abandoned after --timeout={TIMEOUT} s" in out
    assert "mixed.py::Fine: PASSED" in out
    assert "1 passed, 1 failed, 1 unverified, 0 skipped target(s)" in out
    assert result.returncode == 1


def test_a_target_that_exits_fails_alone_and_the_others_run(tmp_path):
    path = write(tmp_path, "exits.py", """
        import sys
        from torch import nn

        class Exits(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = nn.Linear(2, 2)
            def forward(self, x):
                sys.exit(0)

        class Fine(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = nn.Linear(2, 2)
            def forward(self, x):
                return self.a(x).tanh()
    """)
    report = tmp_path / "out.json"
    result = run("check", "--quiet", "--json", str(report), path)
    assert "exits.py::Exits: FAILED: building or running it called sys.exit(0)" in result.stdout
    assert "exits.py::Fine: PASSED" in result.stdout
    assert result.returncode == 1
    assert [t["status"] for t in json.loads(report.read_text())["targets"]] == ["failed", "passed"]


def test_a_target_with_nothing_verified_exits_3(tmp_path):
    path = write(tmp_path, "relu.py", """
        from torch import nn

        class ReluNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = nn.Linear(3, 2)
                self.act = nn.ReLU()
            def forward(self, x):
                return self.act(self.a(x))
    """)
    result = run("check", "--quiet", "--quantity", "hessian", path)
    assert "relu.py::ReluNet: UNVERIFIED" in result.stdout
    assert "agree): ReLU is not twice differentiable" in result.stdout  # why, on its one line
    assert "0 passed, 0 failed, 1 unverified, 0 skipped target(s)" in result.stdout
    assert result.returncode == 3


def test_seed_makes_a_check_reproducible(tmp_path):
    docs = []
    for i in range(2):
        out = tmp_path / f"run{i}.json"
        assert run("check", "jacverify.examples.mlp", "--seed", "3", "--quiet",
                   "--json", str(out)).returncode == 0
        docs.append([[(r["method"], r["status"], r["max_abs_error"]) for r in t["results"]]
                     for t in json.loads(out.read_text())["targets"]])
    assert docs[0] == docs[1]


@pytest.mark.parametrize("args", [
    ["--json", "/nonexistent-dir/out.json"],
    ["--html", "/"],
    ["--device", "meta"],
    ["--timeout", "-1"],
    ["--max-memory", "0"],
], ids=["json_dir", "html_is_dir", "meta", "timeout", "max_memory"])
def test_output_paths_and_options_are_checked_before_any_work(args):
    result = run("check", "jacverify.examples.mlp", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error: " in result.stderr  # jacverify's own, or argparse's naming the option
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_bad_options_are_usage_errors():
    for args, message in [
        (["--methods", "vmap_jacrevv"], "did you mean 'vmap_jacrev'"),
        (["--dtype", "float8"], "dtype 'float8' is not one of"),
        (["--seed", "x"], "seed 'x' is not an integer"),
        (["--batch-size", "0"], "--batch-size=0 must be at least 1"),
    ]:
        result = run("check", str(EXAMPLES / "mlp.py"), *args)
        assert result.returncode == 2, args
        assert message in result.stderr, (args, result.stderr)


def test_json_schema(tmp_path):
    out = tmp_path / "report.json"
    run("check", "--quiet", "--json", str(out), "--methods", "loop,vmap_jacrev,sum_trick",
        "--dtype", "float64", "--seed", "3", str(EXAMPLES / "broken_function.py"),
        str(EXAMPLES / "coupled.py"))
    doc = json.loads(out.read_text())
    assert {"jacverify_version", "torch_version", "device", "dtype", "seed", "targets"} <= set(doc)
    assert (doc["schema_version"], doc["kind"]) == (2, "check")
    assert (doc["dtype"], doc["seed"], doc["device"]) == ("float64", 3, "cpu")
    broken, coupled = doc["targets"]
    assert broken["name"].endswith("broken_function.py::CubeNet")
    assert broken["kind"] == "module class" and broken["input_shapes"] == [[4, 4]]
    assert broken["coupled"] is False and coupled["coupled"] is True
    assert broken["status"] == "failed" and broken["findings"] and coupled["status"] == "passed"
    keys = {"method", "quantity", "mode", "vectorized", "status", "max_abs_error", "max_rel_error",
            "worst_index", "reason", "time_s"}
    assert all(keys <= set(r) for t in doc["targets"] for r in t["results"])
    status = {r["method"]: r["status"] for r in broken["results"]}
    assert status == {"loop": "mismatch", "vmap_jacrev": "mismatch", "sum_trick": "mismatch"}
    coupled_status = {r["method"]: r["status"] for r in coupled["results"]}
    assert coupled_status == {"loop": "agree", "vmap_jacrev": "not_applicable",
                              "sum_trick": "not_applicable"}
    assert len(broken["results"][0]["worst_index"]) == 3


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="chromium is not installed (.ci/run installs it; under CI this fails)")
def test_html_report_renders_tables_and_images_in_a_real_browser(tmp_path):
    page = tmp_path / "report.html"
    result = run("check", "--quiet", "--html", str(page), str(EXAMPLES / "broken_function.py"),
                 str(EXAMPLES / "mlp.py"))
    assert result.returncode == 1
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
         "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'data-images-rendered="6"' in dom and 'data-images-total="6"' in dom
    assert dom.count("<table class=\"results\">") == 3
    assert "<h2>Summary</h2>" in dom and "<table class=\"summary\">" in dom  # verdicts first
    assert dom.index("<h2>Summary</h2>") < dom.index("<table class=\"results\">")
    assert dom.count("<td class=\"mismatch\">mismatch</td>") == N_REVERSE
    assert "sample " in dom and "tolerance: |value - ref|" in dom


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="chromium is not installed (.ci/run installs it; under CI this fails)")
def test_bench_html_renders_its_summary_and_sweep_plot_in_a_real_browser(tmp_path):
    page = tmp_path / "bench.html"
    result = run("bench", "--suite", "quick", "--min-seconds", "0.01", "--no-memory", "--html",
                 str(page))
    assert result.returncode == 0, result.stdout + result.stderr
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
         "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'data-images-rendered="1"' in dom and 'data-images-total="1"' in dom
    assert dom.index("<h2>Summary</h2>") < dom.index("<h2>sweep: batch</h2>")
    assert dom.count("<table class=\"results\">") == 2  # one per case


def test_quantity_option_dispatches_to_the_right_check():
    hessian = run("check", "--quiet", "--quantity", "hessian", str(EXAMPLES / "mlp.py"))
    assert hessian.returncode == 0 and "MLP: PASSED (9/9 agree" in hessian.stdout
    broken = run("check", "--quiet", "--quantity", "per_sample_jvp", str(EXAMPLES / "broken_function.py"))
    assert broken.returncode == 1 and "1 mismatch: double_backward" in broken.stdout
    coupled = run("check", "--quiet", "--quantity", "vjp_set", str(EXAMPLES / "coupled.py"))
    assert coupled.returncode == 1
    assert "coupled.py::model: FAILED: the function raised ValueError" in coupled.stdout


@pytest.mark.parametrize("args", [
    ["fuzz", "--examples", "-3"],
    ["fuzz", "--examples", "0"],
    ["fuzz", "--seconds", "0"],
    ["fuzz-rules", "--op", "aten::sin", "--examples", "0"],
], ids=["negative_examples", "zero_examples", "zero_seconds", "rules_zero_examples"])
def test_fuzz_budgets_must_be_positive(args):
    result = run(*args)
    assert result.returncode == 2 and "must be" in result.stderr and "Traceback" not in result.stderr


def test_fuzz_rules_on_an_op_with_keyword_only_arguments_runs():
    result = run("fuzz-rules", "--op", "aten::linalg_cross", "--examples", "5", "--seed", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "aten::linalg_cross: PASSED" in result.stdout


def test_a_target_too_large_for_the_budget_is_unverified_and_says_which_option():
    result = run("check", "--quiet", "--max-memory", "1000", "--verification", "full",
                 "jacverify.examples.mlp")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "UNVERIFIED" in result.stdout and "raise max_memory" in result.stdout
    # the default (auto) projects instead of refusing: the full references do not fit
    # (NOTE [verification choice]); only methods whose own memory fits run
    result = run("check", "--max-memory", "1000", "jacverify.examples.mlp")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "over max_memory" in result.stdout and "not_applicable" in result.stdout
