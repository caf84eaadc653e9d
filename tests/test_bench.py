"""batch_jacobian(method="auto"), the projection check, and the benchmark machinery."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import jacverify
from jacverify.auto import CLOSE_SHAPES, FORWARD_FAMILY, MEMORY_FLOOR, REVERSE_FAMILY, runner
from jacverify.bench import MethodBench, with_ratios, bench
from jacverify.case import flatten, make_case
from jacverify.examples.networks import BatchCoupled
from jacverify.examples.twins import CubeWrongBackward, CubeWrongJvp, cube_net, tanh_off
from jacverify.measure import Timing, peak_memory, saved_activation_bytes, time_call
from jacverify.methods.loops import loop


def _mlp(n: int, h: int, m: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(n, h), torch.nn.Tanh(),
                               torch.nn.Linear(h, m)).double()


def _truth(fn, x):
    return loop(flatten(make_case(fn, x)))


@pytest.mark.parametrize(("n", "m"), [(6, 3), (3, 6), (4, 4), (8, 2), (2, 8)])
def test_auto_matches_the_loop_and_picks_the_mode_by_shape(n, m):
    net, x = _mlp(n, 16, m), torch.randn(5, n, dtype=torch.float64)
    jac = jacverify.batch_jacobian(net, x, verify=True)
    torch.testing.assert_close(jac, _truth(net, x), rtol=0, atol=1e-12)  # same float64 formulas
    plan = jacverify.plan(net, x)
    if max(m, n) <= CLOSE_SHAPES * min(m, n):  # close shapes: both modes are timed
        assert plan.method in REVERSE_FAMILY + FORWARD_FAMILY and "both modes raced" in plan.reason
    else:
        assert plan.method in (REVERSE_FAMILY if m <= n else FORWARD_FAMILY)


def test_auto_keeps_user_shapes():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 4), torch.nn.Unflatten(1, (2, 2)))
    x = torch.randn(3, 2, 3)
    assert jacverify.batch_jacobian(net, x).shape == (3, 2, 2, 2, 3)


def test_auto_on_interacting_samples_gives_the_per_sample_blocks():
    net, x = BatchCoupled().double().train(), torch.randn(6, 5, dtype=torch.float64)
    p = jacverify.plan(net, x)
    assert p.method == "batched_grad_per_sample" and "samples interact" in p.reason
    torch.testing.assert_close(jacverify.batch_jacobian(net, x, verify=True), _truth(net, x),
                               rtol=0, atol=1e-12)


def test_plan_is_cached_and_follows_train_eval():
    net, x = BatchCoupled().double().train(), torch.randn(6, 5, dtype=torch.float64)
    assert jacverify.plan(net, x) is jacverify.plan(net, x)
    assert jacverify.plan(net.forward, x) is jacverify.plan(net.forward, x)  # a new bound method
    assert jacverify.plan(torch.tanh, x) is jacverify.plan(torch.tanh, x)  # not weakly referenceable
    assert jacverify.plan(net.eval(), x).method != "batched_grad_per_sample"


def test_memory_budget_chunks_and_stays_exact():
    net, x = _mlp(4, 64, 3), torch.randn(32, 4, dtype=torch.float64)
    tight = saved_activation_bytes(lambda z: net(z), x)  # far below one full vectorized pass
    p = jacverify.plan(net, x, max_memory=tight)
    assert p.chunks > 1 and "passes of" in p.reason and p.memory_budget == tight
    jac = jacverify.batch_jacobian(net, x, max_memory=tight)
    torch.testing.assert_close(jac, _truth(net, x), rtol=0, atol=1e-12)
    assert jacverify.plan(net, x).memory_budget >= MEMORY_FLOOR  # the default budget


@pytest.mark.parametrize("name", sorted({*REVERSE_FAMILY, *FORWARD_FAMILY, "batched_grad_per_sample"}))
@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_every_chunked_method_equals_its_one_pass(name, chunk):
    flat = flatten(make_case(_mlp(3, 8, 5), torch.randn(4, 3, dtype=torch.float64)))
    torch.testing.assert_close(runner(name, chunk)(flat), runner(name, None)(flat),
                               rtol=0, atol=1e-13)


@pytest.mark.parametrize("twin", [CubeWrongBackward, CubeWrongJvp])
def test_verify_catches_a_wrong_method(twin):
    """A wrong backward fails every reverse method; a wrong jvp the forward ones. Forced onto such
    a method, batch_jacobian(verify=True) must raise; plain verify of a right method passes."""
    net, x = cube_net(twin).double(), torch.randn(6, 5, dtype=torch.float64)
    wrong = "batched_grad" if twin is CubeWrongBackward else "forward_broadcast"
    with pytest.raises(jacverify.MismatchError, match=f"via {wrong} failed its verification"):
        jacverify.batch_jacobian(net, x, method=wrong, verify=True)
    right = "forward_broadcast" if twin is CubeWrongBackward else "batched_grad"
    jacverify.batch_jacobian(net, x, method=right, verify=True)


def test_verify_that_pins_down_nothing_is_not_a_pass():
    """A function closing over float32 layers (references in float32) at saturated inputs:
    finite differences pinned down none of the projections, and verify=True returned a Jacobian
    10% off (a fresh user). It raises NotVerified now; where the projections are pinned down, the
    same wrong backward is a MismatchError."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    f = lambda z: net[2](tanh_off(1.10).apply(net[0](z)))  # noqa: E731
    smooth = torch.randn(6, 4)
    with pytest.raises(jacverify.NotVerified, match="pin down no entry"):
        jacverify.batch_jacobian(f, 50 * torch.randn(6, 4), method="batched_grad", verify=True)
    with pytest.raises(jacverify.MismatchError, match="failed its verification"):
        jacverify.batch_jacobian(f, smooth, method="batched_grad", verify=True)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"method": "fastest"}, "not a registered batch_jacobian method"),
    ({"probes": 0, "verify": True}, r"probes=0 \(type=int\) must be an int >= 1"),
    ({"probes": -5}, r"probes=-5 \(type=int\) must be an int >= 1"),
    ({"max_memory": -1}, r"max_memory=-1 \(type=int\) must be a positive number; a number of bytes"),
])
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(jacverify.InvalidArgument, match=message):
        jacverify.batch_jacobian(_mlp(2, 4, 2), torch.randn(3, 2, dtype=torch.float64), **kwargs)


def test_bad_inputs_name_what_is_wrong():
    with pytest.raises(jacverify.InvalidArgument, match="must be a tensor with the batch first"):
        jacverify.batch_jacobian(torch.tanh, [1.0, 2.0])
    with pytest.raises(jacverify.InvalidArgument, match="returned a tuple"):
        jacverify.batch_jacobian(lambda z: (z, z), torch.randn(3, 2))


def test_projection_check_passes_right_methods_and_flags_wrong_ones():
    wide = torch.nn.Sequential(torch.nn.Linear(40, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    report = jacverify.check(wide, torch.randn(8, 40), verification="projection", probes=3)
    assert report.passed and report.verification == "projection (3 probes)"
    assert report.trusted == ("projection_fd",) and report.reference.shape == (3, 8)  # (K, B)
    assert any("random projections" in n for n in report.notes)
    broken = jacverify.check(cube_net(CubeWrongBackward), torch.randn(6, 5),
                             verification="projection")
    reverse = {m.name for m in jacverify.registered_methods() if m.mode == "reverse"}
    assert {r.method for r in broken.mismatches if r.quantity != "route"} == reverse
    assert {r.method for r in broken.mismatches if r.quantity == "route"} == {
        "route:vjp", "route:is_grads_batched", "route:vmap_vjp", "route:double_backward",
        "route:per_sample_vjp"}  # NOTE [route probes]: the reverse routes, and only they
    assert "probe" in broken.failure_message()


def test_projection_check_respects_interacting_samples():
    net = BatchCoupled().double().train()
    report = jacverify.check(net, torch.randn(6, 5, dtype=torch.float64), verification="projection")
    assert report.passed and report.coupling.coupled
    assert report["batched_grad_per_sample"].status == "agree"


def test_projection_verification_argument_is_validated():
    with pytest.raises(jacverify.InvalidArgument, match="verification='cheap'"):
        jacverify.check(torch.nn.Linear(2, 2), torch.randn(3, 2), verification="cheap")


def test_time_call_statistics_are_ordered():
    t = time_call(lambda: torch.randn(64, 64) @ torch.randn(64, 64), min_seconds=0.01)
    assert t.rounds >= 5 and t.min <= t.q1 <= t.median <= t.q3 <= t.max
    assert t.to_dict()["iqr"] == pytest.approx(t.q3 - t.q1)


def test_peak_memory_sees_a_known_allocation_on_cpu():
    size = 2**22  # 4 MiB of float32 created and freed inside the call
    peak = peak_memory(lambda: torch.ones(size // 4).sum())
    assert size <= peak < 2 * size


def _timing(seconds: float) -> Timing:
    return Timing(5, seconds, seconds, seconds, seconds, seconds, seconds, 0.0)


def test_pathology_flags_methods_over_ten_times_the_best_with_their_cost_model():
    rows = [MethodBench("batched_grad", "agree", timing=_timing(0.001)),
            MethodBench("full_diagonal", "agree", timing=_timing(0.0101)),
            MethodBench("loop", "agree", timing=_timing(0.0099)),
            MethodBench("sum_trick", "mismatch", timing=_timing(0.0005)),  # wrong: never "best"
            MethodBench("vmap_jacfwd", "unsupported", reason="no rule")]
    out = {r.method: r for r in with_ratios(rows, _timing(0.0001))}
    assert out["full_diagonal"].pathology.startswith("10x slower than batched_grad: the full")
    assert "quadratic in the batch" in out["full_diagonal"].pathology
    assert out["loop"].pathology is None and out["batched_grad"].pathology is None
    assert out["batched_grad"].speedup_vs_loop == pytest.approx(9.9)
    assert out["batched_grad"].forward_ratio == pytest.approx(10.0)
    assert out["vmap_jacfwd"].timing is None


def test_bench_checks_times_and_marks_a_wrong_method():
    result = bench(cube_net(CubeWrongBackward), torch.randn(6, 5),
                   methods=["loop", "forward_broadcast", "batched_grad"], min_seconds=0.01)
    status = {r.method: r.status for r in result.results}
    assert status == {"loop": "mismatch", "forward_broadcast": "agree",
                      "batched_grad": "mismatch", "auto": status["auto"]}
    assert result.fastest.method == "forward_broadcast"
    assert all(r.timing.rounds >= 1 and r.peak_bytes is not None for r in result.results)


def test_bench_times_the_methods_of_a_check_verified_by_routes(monkeypatch):
    """A check verified by route probes lists the routes among its results; bench times the
    methods only (it raised InvalidArgument on 'route:vjp', a `jacverify bench` run here)."""
    import functools

    import jacverify.bench as bench_module

    monkeypatch.setattr(bench_module, "check",
                        functools.partial(bench_module.check, verification="routes"))
    result = bench(_mlp(3, 8, 2), torch.randn(4, 3), methods=["loop", "batched_grad"],
                   memory=False, min_seconds=0.01)
    assert [r.method for r in result.results] == ["loop", "batched_grad", "auto"]
    assert all(r.status == "agree" and r.timing is not None for r in result.results)


@pytest.mark.slow  # the CLI in a subprocess
def test_cli_bench_quick_suite_writes_table_json_and_plot(tmp_path):
    out_json, out_html = tmp_path / "bench.json", tmp_path / "bench.html"
    proc = subprocess.run(
        [sys.executable, "-m", "jacverify", "bench", "--suite", "quick", "--min-seconds", "0.01",
         "--json", str(out_json), "--html", str(out_html)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "auto / fastest" in proc.stdout and "mlp4-16-2/B8/float64" in proc.stdout
    doc = json.loads(out_json.read_text())
    assert {"machine_info", "commit_info", "benchmarks", "datetime", "version"} <= set(doc)
    entry = next(b for b in doc["benchmarks"] if b["name"] == "auto[mlp4-16-2/B8/float64]")
    assert entry["stats"]["rounds"] >= 5 and entry["stats"]["median"] > 0
    assert entry["extra_info"]["status"] == "agree"
    assert any(b["group"].startswith("sweep:batch") for b in doc["benchmarks"])
    page = out_html.read_text()
    assert page.count("<img alt='time against batch'") == 1 and "data:image/png;base64," in page
    assert page.index("<h2>Summary</h2>") < page.index("<h2>sweep:")  # the verdicts first
    assert "<table class='summary'>" in page and "auto / fastest" in page
    # pytest-benchmark itself reads the saved run
    pytest.importorskip("pytest_benchmark")
    compared = subprocess.run(
        [sys.executable, "-c", "from pytest_benchmark.cli import main; main()", "compare",
         str(out_json), "--columns=median,rounds"], capture_output=True, text=True, timeout=120)
    assert compared.returncode == 0, compared.stderr
    assert "auto[mlp4-16-2/B8/float64]" in compared.stdout


@pytest.mark.slow  # the CLI in a subprocess
def test_cli_bench_rejects_an_unknown_method():
    proc = subprocess.run([sys.executable, "-m", "jacverify", "bench", "--suite", "quick",
                           "--methods", "lop"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "did you mean 'loop'" in proc.stderr


def test_jvp_set_auto_matches_the_jacobian_and_verify_catches_a_wrong_jvp():
    from jacverify.auto_sets import JVP_FAMILY

    f = lambda x: torch.stack([x.sin().sum(), (x * x).prod(), x[0] * x[1]])  # noqa: E731
    x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    vectors = torch.randn(4, 3, dtype=torch.float64)
    got = jacverify.jvp_set(f, x, vectors, verify=True)
    torch.testing.assert_close(got, vectors @ torch.func.jacrev(f)(x).T, rtol=0, atol=1e-12)
    net = cube_net(CubeWrongJvp).double()
    one = lambda z: net(z[None])[0]  # noqa: E731
    x5, v5 = torch.randn(5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    with pytest.raises(jacverify.MismatchError, match="jvp_set via vmap_jvp failed"):
        jacverify.jvp_set(one, x5, v5, method="vmap_jvp", verify=True)
    assert "double_backward" in JVP_FAMILY  # a reverse-built candidate is right here
    jacverify.jvp_set(one, x5, v5, method="double_backward", verify=True)


def test_batch_hessian_auto_and_its_verification():
    from jacverify.examples.twins import HiddenSecondOrderDetach, second_order_net

    net = second_order_net(torch.nn.Identity()).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    got = jacverify.batch_hessian(net, x, verify=True)
    want = torch.stack([torch.func.hessian(lambda z: net(z[None])[0])(x[b]) for b in range(4)])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    hidden = second_order_net(HiddenSecondOrderDetach()).double()
    with pytest.raises(jacverify.MismatchError, match="hessian via .* failed its verification"):
        jacverify.batch_hessian(hidden, x, verify=True)
    coupled = BatchCoupled().double().train()
    with pytest.raises(jacverify.InvalidArgument, match="samples interact"):
        jacverify.batch_hessian(coupled, torch.randn(6, 5, dtype=torch.float64))
    # the refusal's validation and probes (5 forwards) left the model's statistics as they were
    assert int(coupled[1].num_batches_tracked) == 0 and not coupled[1].running_mean.any()


@pytest.mark.slow  # the CLI in a subprocess
def test_cli_bench_file_times_its_targets_and_marks_a_wrong_method():
    examples = __import__("pathlib").Path(jacverify.__file__).parent / "examples"
    proc = subprocess.run(
        [sys.executable, "-m", "jacverify", "bench", str(examples / "broken_function.py"),
         "--methods", "loop,forward_broadcast", "--batch-size", "4", "--min-seconds", "0.01",
         "--no-memory"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "fastest correct: forward_broadcast" in proc.stdout
    assert "mismatch: " in proc.stdout and ": loop disagrees with the references" in proc.stdout


@pytest.mark.slow  # the CLI in two subprocesses
def test_cli_bench_compares_against_a_saved_run(tmp_path):
    saved = tmp_path / "saved.json"
    base = [sys.executable, "-m", "jacverify", "bench", "jacverify.examples.mlp", "--batch-size",
            "4", "--no-memory", "--min-seconds", "0.01", "--methods", "loop,vmap_jacrev"]
    first = subprocess.run(base + ["--json", str(saved)], capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(base + ["--compare", str(saved)], capture_output=True, text=True,
                           timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert again.returncode == 0, again.stderr
    assert "now / saved" in again.stdout and "MLP::vmap_jacrev" in again.stdout
    bad = subprocess.run(base + ["--compare", str(tmp_path / "missing.json")], capture_output=True,
                         text=True, timeout=600)
    assert bad.returncode == 2 and "is not a run saved by jacverify bench" in bad.stderr


def test_a_sweep_plot_has_a_legend_few_colours_and_plain_ticks_at_the_sizes():
    from types import SimpleNamespace

    from jacverify.html_report import SWEEP_LINES, sweep_figure

    methods = [f"m{i}" for i in range(12)] + ["auto"]
    cases = [SimpleNamespace(params={"batch": b}, results=[
        SimpleNamespace(method=m, status="agree", time_s=(i + 1) * b * 1e-4)
        for i, m in enumerate(methods)]) for b in (1, 4, 16)]
    fig = sweep_figure("batch", cases, "batch")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:SWEEP_LINES] == [f"m{i}" for i in range(SWEEP_LINES)]  # fastest first
    assert "4 slower methods" in labels and labels[-1] == "auto"
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "4", "16"]


@pytest.mark.parametrize("name", ["batched_grad", "batched_double_backward",
                                  "batched_grad_per_sample", "repeat_trick", "loop_rows"])
def test_a_function_of_the_parameters_alone_gets_zeros_from_every_method(name):
    """Its output does not reach x: zeros (B, M, N), as vmap(jacrev) answers. The batched
    methods raised instead (their zeros were one (B, N) for all cotangents; a fresh user)."""
    p = torch.nn.Parameter(torch.randn(3))
    jac = jacverify.batch_jacobian(lambda z: p.expand(z.shape[0], 3) * 2, torch.randn(2, 4),
                                   method=name)
    assert jac.shape == (2, 3, 4) and not jac.any()


def test_a_method_named_twice_runs_once():
    report = jacverify.check(torch.nn.Linear(3, 2), torch.randn(4, 3), methods=["loop", "loop"])
    assert [r.method for r in report.results] == ["loop"]


def test_bench_cli_refuses_bad_paths_and_suite_options_before_any_timing(capsys, tmp_path):
    from jacverify.cli import main

    for argv, said in ((["--json", str(tmp_path / "no" / "x.json")], "does not exist"),
                       (["--html", str(tmp_path)], "is a directory"),
                       (["--dtype", "float16"], "apply to FILEs"),
                       (["--seed", "3"], "apply to FILEs")):
        assert main(["bench", "--suite", "quick", *argv]) == 2
        assert said in capsys.readouterr().err


def test_bench_summary_names_auto_s_plan_and_a_file_run_lists_what_it_skipped(capsys, tmp_path):
    from rich.console import Console

    from jacverify.bench import bench_run
    from jacverify.bench_render import summary_table
    from jacverify.cli import main

    net, x = _mlp(3, 8, 2), torch.randn(4, 3, dtype=torch.float64)
    case = bench(net, x, methods=["loop", "batched_grad"], memory=False, min_seconds=0.01)
    assert case.planned == jacverify.plan(net, x).method
    console = Console(width=300, record=True)
    console.print(summary_table(bench_run("quick", (case,), "cpu")))
    (row,) = [line for line in console.export_text().splitlines() if line.startswith("│")]
    assert row.rstrip(" │").endswith(case.planned)  # the plan, not the reason's last clause
    user = tmp_path / "models.py"
    user.write_text("import torch\n\nclass NeedsArgs(torch.nn.Module):\n"
                    "    def __init__(self, n):\n        super().__init__()\n\n"
                    "class Small(torch.nn.Module):\n    def __init__(self):\n"
                    "        super().__init__()\n        self.lin = torch.nn.Linear(3, 2)\n\n"
                    "    def forward(self, x):\n        return self.lin(x)\n")
    assert main(["bench", str(user), "--methods", "loop", "--no-memory", "--min-seconds",
                 "0.01", "--batch-size", "2"]) == 0
    assert "NeedsArgs: skipped" in capsys.readouterr().err
