"""NOTE [earned verdict]: no entry point passes what it did not verify.

Each kind of "PASSED with nothing checked" from the first round is a case here, and one test runs
every entry point on a function none of whose derivative routes can run.
"""

from __future__ import annotations

import pytest
import torch

import jacverify
from jacverify.examples.twins import tanh_off
from jacverify.judge import Status, Verdict


class BackwardRaises(torch.autograd.Function):
    """sin(x) whose backward raises, with no jvp and no vmap rule: no derivative route can run."""

    @staticmethod
    def forward(x):
        return x.sin()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("this backward is broken on purpose")


def no_route(x):
    return BackwardRaises.apply(x)


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


ENTRY_POINTS = {
    "check": lambda: jacverify.check(no_route, _x(3, 2)),
    "check_projection": lambda: jacverify.check(no_route, _x(3, 2), verification="projection"),
    "check_jvps": lambda: jacverify.check_jvps(no_route, _x(2), _x(2, 2, seed=1)),
    "check_vjps": lambda: jacverify.check_vjps(no_route, _x(2), _x(2, 2, seed=1)),
    "check_per_sample_jvps": lambda: jacverify.check_per_sample_jvps(no_route, _x(3, 2),
                                                                     _x(3, 2, seed=1)),
    "check_hessians": lambda: jacverify.check_hessians(no_route, _x(3, 2)),
    "check_hessian_diagonals": lambda: jacverify.check_hessian_diagonals(no_route, _x(3, 2)),
    "check_method": lambda: jacverify.check_method(
        lambda f, x: torch.func.vmap(torch.func.jacrev(f))(x), no_route, _x(3, 2)),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_no_entry_point_passes_with_zero_verified_candidates(entry):
    report = ENTRY_POINTS[entry]()
    assert not report.verified
    assert report.verdict == Verdict.UNVERIFIED and not report.passed
    assert report.headline().startswith("UNVERIFIED")


def test_assert_jacobians_agree_raises_not_verified_when_nothing_ran():
    with pytest.raises(jacverify.NotVerified, match="UNVERIFIED: no method was verified"):
        jacverify.assert_jacobians_agree(no_route, _x(3, 2))


@pytest.mark.parametrize("call", [
    lambda: jacverify.check(torch.sin, _x(3, 2), methods=[]),
    lambda: jacverify.check_jvps(torch.sin, _x(2), _x(1, 2), methods=[]),
    lambda: jacverify.check_hessians(torch.sin, _x(3, 2), methods=[]),
    lambda: jacverify.assert_jacobians_agree(torch.sin, _x(3, 2), methods=[]),
], ids=["check", "check_jvps", "check_hessians", "assert_jacobians_agree"])
def test_an_empty_method_list_is_refused(call):
    with pytest.raises(jacverify.InvalidArgument, match=r"methods=\[\] .* must be a non-empty"):
        call()


def test_check_method_whose_implementation_raises_is_unverified_not_passed():
    def mine(f, x):
        raise RuntimeError("my implementation is broken")

    report = jacverify.check_method(mine, torch.nn.Linear(3, 2).double(), _x(4, 3))
    assert report["mine"].status == Status.UNSUPPORTED
    assert report.verdict == Verdict.UNVERIFIED
    assert "mine could not be verified" in report.headline()


def test_check_method_whose_implementation_returns_none_fails():
    def mine(f, x):
        return None

    report = jacverify.check_method(mine, torch.nn.Linear(3, 2).double(), _x(4, 3))
    assert report["mine"].status == Status.MISMATCH
    assert "returned NoneType" in report["mine"].reason
    assert report.verdict == Verdict.FAILED


def test_check_method_with_a_torch_route_that_raises_is_unverified():
    # vmap over torch.autograd.functional.jacobian per sample raises in torch 2.13
    def per_sample_functional(f, x):
        return torch.func.vmap(lambda xi: torch.autograd.functional.jacobian(f, xi))(x)

    report = jacverify.check_method(per_sample_functional, torch.tanh, _x(4, 3))
    assert report["per_sample_functional"].status == Status.UNSUPPORTED
    assert not report.passed and report.verdict == Verdict.UNVERIFIED


def test_projection_with_its_only_method_not_running_is_unverified():
    report = jacverify.check(no_route, _x(3, 2), methods=["vmap_jacrev"],
                             verification="projection")
    assert report["vmap_jacrev"].status == Status.UNSUPPORTED
    assert report.verdict == Verdict.UNVERIFIED


def test_a_correct_case_still_passes_with_every_method_verified():
    report = jacverify.check(torch.nn.Linear(3, 2).double(), _x(4, 3), methods=["loop", "sum_trick"])
    assert report.verdict == Verdict.PASSED and len(report.verified) == 2


def test_a_wrong_backward_found_in_float64_fails_a_float32_check():
    from jacverify.examples import twins

    report = jacverify.check(twins.cube_net(twins.CubeWrongBackward), _x(6, 5).float())
    assert report.findings and "backward formula of the function is wrong" in report.findings[0]
    assert report.verdict == Verdict.FAILED


@pytest.mark.parametrize(("make", "message"), [
    (lambda: jacverify.check(torch.sin, _x(3, 2).to("meta")), "meta tensor"),
    (lambda: jacverify.check(torch.sin, _x(3, 2), device="meta"), "device='meta'"),
    (lambda: jacverify.check(torch.sin, torch.tensor([[1.0, float("nan")]])), "NaN or Inf"),
    (lambda: jacverify.check(torch.sin, _x(3, 2), max_memory=True), r"max_memory=True \(type=bool\)"),
    (lambda: jacverify.check(torch.sin, _x(3, 2), probes=0), r"probes=0 \(type=int\) must be"),
], ids=["meta_input", "meta_device", "nan_input", "bool_memory", "zero_probes"])
def test_bad_input_gets_a_specific_error(make, message):
    with pytest.raises(jacverify.InvalidArgument, match=message):
        make()


def test_max_memory_as_a_float_is_accepted():
    assert jacverify.check(torch.sin, _x(3, 2), methods=["loop"], max_memory=1e9).passed


# --- NOTE [tolerances]: a wrong entry is not hidden beside a larger one ---

def test_logsigmoid_second_derivative_at_40_is_flagged_beside_a_sample_at_minus_40():
    # pytorch/pytorch#195530: torch 2.13 returns exactly 0 for d²/dx² logsigmoid at 40; the true
    # value is -sigmoid(40) sigmoid(-40) = -4.248e-18, which float64 finite differences resolve.
    x = torch.tensor([[40.0], [-40.0], [1.0]], dtype=torch.float64)
    report = jacverify.check_hessians(torch.nn.functional.logsigmoid, x)
    assert report.reference[0, 0, 0, 0].item() == pytest.approx(-4.2483542552923654e-18, rel=1e-6)
    assert report["loop"].status == Status.MISMATCH
    assert report["loop"].worst_index[0] == 0  # the sample at 40
    assert report.verdict == Verdict.FAILED


def test_logsigmoid_second_derivative_where_it_is_right_passes():
    x = torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    assert jacverify.check_hessians(torch.nn.functional.logsigmoid, x).passed


def _sin_with_backward(name: str, scale) -> type[torch.autograd.Function]:
    """sin as an autograd.Function whose backward is cos times ``scale(x)`` (1: right), with no
    jvp and no vmap rule: the broken twins below differ only in that scale."""

    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x.cos() * scale(x)

    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(lambda x: x.sin()),
        "setup_context": staticmethod(lambda ctx, inputs, output: ctx.save_for_backward(inputs[0])),
        "backward": staticmethod(backward),
    })


_ThreeTimesBackward = _sin_with_backward("_ThreeTimesBackward", lambda x: 3.0)


class _BigBesideSmall(torch.nn.Module):
    """An output block at 1e9 beside an O(1) block whose backward is 3x wrong."""

    def __init__(self, wrong: bool) -> None:
        super().__init__()
        self.wrong = wrong

    def forward(self, x):
        small = _ThreeTimesBackward.apply(x) if self.wrong else x.sin()
        return torch.cat([1e9 * x.sum(1, keepdim=True), small], 1)


@pytest.mark.parametrize("seed", range(3))
def test_a_wrong_small_block_beside_a_1e9_block_is_flagged(seed):
    report = jacverify.check(_BigBesideSmall(True), _x(3, 2, seed=seed),
                             methods=["vmap_vjp", "repeat_trick"])
    assert report.findings  # the float64 loop disagrees with finite differences
    assert {r.method for r in report.mismatches} == {"vmap_vjp", "repeat_trick"}
    assert report.verdict == Verdict.FAILED


def test_the_same_blocks_with_a_right_backward_pass():
    report = jacverify.check(_BigBesideSmall(False), _x(3, 2), methods=["vmap_vjp", "repeat_trick"])
    assert report.passed


# --- NOTE [coupling threshold]: a noise floor from what the check resolves ---

def _faintly_coupled(x):
    # like a batched adaptive solver: other samples move, but by far less than any tolerance
    return x.sin() + 1e-12 * x.sum(0, keepdim=True)


def test_coupling_below_resolution_is_independent_and_says_so():
    report = jacverify.check(_faintly_coupled, _x(4, 3))
    assert not report.coupling.coupled
    assert any("below what the check resolves" in n for n in report.notes)
    assert not [r for r in report.results if r.status == Status.NOT_APPLICABLE]
    assert report.passed


def test_batch_statistics_are_still_coupling():
    net = torch.nn.BatchNorm1d(3).double().train()
    report = jacverify.check(net, _x(4, 3), methods=["loop", "sum_trick"])
    assert report.coupling.coupled
    assert report["sum_trick"].status == Status.NOT_APPLICABLE


def _coupled_small_block(z):
    return torch.cat([1e3 * z, 1e-3 * (z + z.mean(0, keepdim=True))], -1)


def test_coupling_in_a_small_output_block_beside_a_large_one_is_coupling():
    """NOTE [coupling threshold], per output: the 1e3 block set the floor of the coupled 1e-3
    block in float32; check blamed a backward formula and batch_jacobian returned entries 78%
    off (a fresh user). The twin without the mean stays independent."""
    x = _x(8, 3).float()
    report = jacverify.check(_coupled_small_block, x)
    assert report.coupling.coupled and report.passed and not report.findings
    full = torch.autograd.functional.jacobian(_coupled_small_block, x)
    want = torch.stack([full[b, :, b] for b in range(8)])
    torch.testing.assert_close(jacverify.batch_jacobian(_coupled_small_block, x), want,
                               rtol=0, atol=1e-9)
    assert not jacverify.check(lambda z: torch.cat([1e3 * z, 1e-3 * z], -1), x).coupling.coupled


# --- NOTE [hints]: a culprit is named only where the evidence separates it ---

def test_det_hessian_nan_without_vmap_is_not_blamed_on_a_batching_rule():
    # torch.func.grad(torch.func.grad(torch.det))(torch.eye(2)) is NaN: no vmap involved
    def det(x):
        return torch.linalg.det(x.reshape(-1, 2, 2))[:, None]

    x = torch.eye(2, dtype=torch.float64).flatten().repeat(2, 1)
    x[1] *= 2
    report = jacverify.check_hessians(det, x)
    assert report["loop"].status == Status.AGREE and report.verdict == Verdict.FAILED
    assert "not a batching rule" in report.hint and "batching rule is wrong" not in report.hint


def test_a_wrong_user_method_is_blamed_on_the_user_not_on_a_backward_formula():
    def mine(f, x):
        return torch.func.vmap(torch.func.jacrev(lambda xi: f(xi[None])[0]))(x) * 1.01

    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh()).double()
    report = jacverify.check_method(mine, net, _x(4, 3))
    assert report.verdict == Verdict.FAILED
    assert "mine (your own code)" in report.hint and "backward formula" not in report.hint


def test_a_wrong_registered_method_is_blamed_on_its_author():
    """A method added with register_method is the user's code too: 2% off, it was told "reverse-mode
    methods are wrong in what they add" (a fresh user)."""
    loop = jacverify.get_methods(["loop"])[0]
    mine = jacverify.Method("mine_registered", lambda flat: loop.compute(flat) * 1.02, "reverse",
                            vectorized=False, assumes_independent=False)
    jacverify.register_method(mine)
    try:
        report = jacverify.check(torch.nn.Tanh(), _x(4, 3), methods=["loop", "mine_registered"])
    finally:
        jacverify.unregister_method("mine_registered")
    assert report.verdict == Verdict.FAILED
    assert "mine_registered (your own code)" in report.hint


# --- the fuzzers: an example that verifies nothing is not a pass ---

def _needs_five(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] != 5:
        raise ValueError(f"needs a last axis of size 5, got {tuple(x.shape)}")
    return 2 * x


def test_a_rule_whose_function_refuses_every_drawn_example_is_unverified_with_why():
    report = jacverify.fuzz_batching_rule(_needs_five, max_examples=5, seed=0)
    assert report.verdict == Verdict.UNVERIFIED and not report.passed
    assert "refused every drawn example" in report.reason
    assert "needs a last axis of size 5" in report.reason


def test_keyword_only_schema_arguments_keep_their_defaults():
    # aten::linalg_cross(Tensor self, Tensor other, *, int dim=-1): dim is not passed by position
    report = jacverify.fuzz_batching_rule("aten::linalg_cross", max_examples=3, seed=0)
    assert report.verified > 0 and report.passed


# --- guards: estimated before anything is computed ---

def test_a_hessian_check_that_cannot_fit_is_refused_before_it_starts():
    with pytest.raises(jacverify.JacobianTooLarge, match=r"per-sample Hessians .* MiB"):
        jacverify.check_hessians(torch.sin, torch.randn(2, 600))


def test_a_check_estimated_over_its_time_budget_is_refused_with_the_estimate():
    # 6 N = 6e6 forward passes of a (2, 10**6) Linear: far over a millisecond on any machine
    with pytest.raises(jacverify.JacobianTooLarge, match=r"estimated at .* over time_budget=0.001"):
        jacverify.check(torch.nn.Linear(10**6, 2), torch.randn(2, 10**6), time_budget=1e-3,
                        verification="full")


def test_projection_respects_max_memory_for_each_methods_result():
    report = jacverify.check(torch.sin, torch.randn(2, 600), verification="projection",
                             max_memory=2**20, methods=["vmap_jacrev"])
    assert report["vmap_jacrev"].status == Status.NOT_APPLICABLE
    assert "max_memory" in report["vmap_jacrev"].reason
    assert report.verdict == Verdict.UNVERIFIED


def test_a_float_rtol_applies_to_every_dtype():
    report = jacverify.check(torch.sin, _x(3, 2), methods=["loop"], rtol=1e-3)
    assert "rtol=0.001 (override" in report["loop"].worst.tolerance


def test_a_function_that_modifies_its_input_is_named_and_the_callers_tensor_is_untouched():
    def inplace(x):
        return x.mul_(2)

    x = _x(3, 2)
    before = x.clone()
    with pytest.raises(jacverify.InvalidArgument, match="modified its input in place"):
        jacverify.check(inplace, x)
    assert torch.equal(x, before)


def test_a_forward_that_differentiates_itself_is_checked():
    class Score(torch.nn.Module):  # returns dE/dx, as energy and score models do
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(),
                                           torch.nn.Linear(4, 1))

        def forward(self, x):
            x = x if x.requires_grad else x.requires_grad_()
            (g,) = torch.autograd.grad(self.net(x).sum(), x, create_graph=True)
            return g

    torch.manual_seed(0)
    report = jacverify.check(Score().double(), _x(3, 2), methods=["loop", "vmap_vjp"])
    assert report.passed


# --- NOTE [unstable finite differences]: a point where the derivative is not pinned down ---

def test_relu_exactly_at_its_kink_says_so():
    report = jacverify.check(torch.relu, torch.tensor([[0.0, 1.0], [2.0, -1.0]], dtype=torch.float64))
    note = next(n for n in report.notes if "finite differences are unstable at 1 entry" in n)
    assert "(0, 0, 0)" in note and "kink" in note


def test_an_evaluation_that_is_not_smooth_is_reported_unstable():
    def quantized(x):  # like a solver whose stopping point moves in steps of its tolerance
        return x + torch.remainder(x, 1e-3)

    report = jacverify.check(quantized, _x(2, 2), methods=["loop"])
    assert any("finite differences are unstable" in n for n in report.notes)


def test_a_smooth_function_has_no_such_note():
    report = jacverify.check(torch.tanh, _x(3, 2), methods=["loop"])
    assert not any("unstable" in n for n in report.notes)


# sin with a right backward but no vmap rule: every vmap-based method raises on it (a class at
# module level, so a network spec names it as "tests.test_verdicts:NoVmapRule")
NoVmapRule = _sin_with_backward("NoVmapRule", lambda x: 1.0)


def test_a_fuzz_campaign_that_verifies_nothing_does_not_pass():
    from jacverify.strategies import cases, networks

    strategy = cases(networks=networks(max_depth=1, max_width=2, families=["mlp"],
                                       functions=["tests.test_verdicts:NoVmapRule"]))
    result = jacverify.fuzz(cases=strategy, methods=["vmap_jacrev"], max_examples=3, seed=0)
    assert result.failure is None and result.verified == 0
    assert not result.passed


def test_a_transposed_jacobian_gets_a_hint():
    def transposed(f, x):
        return torch.func.vmap(torch.func.jacrev(lambda xi: f(xi[None])[0]))(x).transpose(1, 2)

    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh()).double()
    report = jacverify.check_method(transposed, net, _x(4, 3), layout="batch_first")
    assert report.verdict == Verdict.FAILED
    assert "looks transposed" in report["transposed"].reason


class _VAEHead(torch.nn.Module):
    def __init__(self, wrong: bool = False) -> None:
        super().__init__()
        self.a, self.wrong = torch.nn.Linear(3, 4), wrong

    def forward(self, x):
        h = self.a(x)
        logvar = _ThreeTimesBackward.apply(h[:, 2:]) if self.wrong else h[:, 2:].sin()
        return {"mu": h[:, :2].tanh(), "logvar": logvar}


def test_dict_outputs_are_flattened_by_key_and_named_by_key():
    torch.manual_seed(0)
    assert jacverify.check(_VAEHead().double(), _x(4, 3)).passed
    assert jacverify.check_hessians(_VAEHead().double(), _x(4, 3)).passed
    report = jacverify.check(_VAEHead(wrong=True).double(), _x(4, 3), methods=["vmap_vjp"])
    assert report.verdict == Verdict.FAILED
    assert "output['logvar']" in report.describe(report["vmap_vjp"])


# --- NOTE [culprit bisection]: the innermost part that fails alone is named ---

def test_the_innermost_failing_submodule_and_the_custom_function_are_named():
    from jacverify.examples import twins

    torch.manual_seed(0)
    inner = torch.nn.Sequential(torch.nn.Tanh(), twins.Apply(twins.CubeWrongBackward))
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), inner, torch.nn.Linear(5, 3)).double()
    report = jacverify.check(net, _x(4, 4), methods=["vmap_vjp"])
    assert report.verdict == Verdict.FAILED
    assert "submodule 1.1 (Apply) fails the same way" in report.culprit
    assert "submodule 1 (" not in report.culprit  # its parent fails only because it does
    assert "CubeWrongBackward (" in report.culprit and "twins.py" in report.culprit
    assert f"culprit: {report.culprit}" in report.failure_message()


def test_a_passing_check_names_no_culprit():
    report = jacverify.check(torch.nn.Linear(3, 2).double(), _x(4, 3), methods=["loop"])
    assert report.culprit is None


# --- NOTE [plausible rounding]: a formula wrong only in float32 is not "rounding" ---

_float32_factor = {"value": 0.0}  # the backward's scale in float32 (float64 is right)
_SinWrongInFloat32 = _sin_with_backward(
    "_SinWrongInFloat32", lambda x: 1.0 if x.dtype == torch.float64 else _float32_factor["value"])


@pytest.mark.parametrize("factor", [0.0, 1.01, 1.001])
def test_a_backward_wrong_only_in_float32_fails(factor, monkeypatch):
    monkeypatch.setitem(_float32_factor, "value", factor)
    class Net(torch.nn.Module):  # a module, so the references run in a float64 copy of it
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 3)

        def forward(self, x):
            return _SinWrongInFloat32.apply(self.a(x))

    torch.manual_seed(0)
    report = jacverify.check(Net(), torch.randn(5, 4), methods=["vmap_vjp", "loop_rows"])
    assert report.verdict == Verdict.FAILED
    assert any("more than rounding in that dtype explains" in n for n in report.notes)


def test_float32_cancellation_is_still_allowed_as_rounding():
    bn = torch.nn.BatchNorm1d(3).train()
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    x[1] = x[0] + 1e-3  # two close samples: float32 loses digits in x - mean
    assert jacverify.check(bn, x, methods=["loop", "batched_grad_per_sample"]).passed


def test_gradcheck_style_atol_and_eps_are_accepted_and_shown():
    report = jacverify.check(torch.sin, _x(3, 2), methods=["loop"], atol=1e-3, eps=1e-4)
    assert report.passed and "+ atol 0.001" in report["loop"].worst.tolerance
    with pytest.raises(jacverify.InvalidArgument, match=r"atol=-1 \(type=int\) must be"):
        jacverify.check(torch.sin, _x(3, 2), atol=-1)
    with pytest.raises(jacverify.InvalidArgument, match=r"eps=0 \(type=int\) must be"):
        jacverify.check(torch.sin, _x(3, 2), eps=0)
    # a wrong entry larger than atol is still flagged
    wrong = jacverify.check_method(lambda f, x: torch.diag_embed(x.cos()) + 1e-2, torch.sin,
                                   _x(3, 2), atol=1e-3)
    assert wrong.verdict == Verdict.FAILED


def test_a_saved_replay_reruns_the_same_failing_check(tmp_path):
    import subprocess
    import sys

    from jacverify.examples import twins

    torch.manual_seed(0)
    report = jacverify.check(twins.cube_net(twins.CubeWrongBackward), torch.randn(4, 5),
                             methods=["vmap_vjp"])
    code = report.save_replay(str(tmp_path / "case.pt"))
    assert "methods=['vmap_vjp']" in code
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("jacverify: batch_jacobian: FAILED: 1 method(s) disagree")
    assert jacverify.check(lambda x: x.sin(), _x(2, 2)).save_replay(str(tmp_path / "l.pt")) is None


def test_the_check_page_plots_carry_legends():
    from jacverify.examples import twins
    from jacverify.html_report import plot_figures

    report = jacverify.check(twins.cube_net(twins.CubeWrongBackward), torch.randn(4, 5),
                             methods=["vmap_vjp", "vmap_jacfwd"])
    figures = dict(plot_figures(report, "cube"))
    legends = {alt.split(" for ")[0]: [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
               for alt, fig in figures.items()}
    assert legends == {"time per method": ["agrees", "wrong (mismatch)"],
                       "error against tolerance": ["max abs error", "tolerance at the worst entry"]}


class _SinBackward5PercentOff(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        grad = g * torch.cos(x)
        grad[..., 0] *= 1.05
        return grad


class _SinNet(torch.nn.Module):
    def __init__(self, sin=torch.sin):
        super().__init__()
        self.lin = torch.nn.Linear(5, 5)
        self.sin = sin

    def forward(self, z):
        return self.sin(self.lin(z))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("verification", ["projection", "routes"])
def test_a_half_precision_projection_check_fails_a_wrong_backward_in_float64(dtype, verification):
    """engine._reference_routes: a backward 5% off on one entry of 25 moved uᵀJv by less than
    float16's and bfloat16's tolerance, and the projection check PASSED (a fresh user; the full
    check failed it on its float64 loop). The routes run once more in float64 and fail it; the
    correct twin still passes."""
    torch.manual_seed(0)
    x = torch.randn(8, 5)
    bad = jacverify.check(_SinNet(_SinBackward5PercentOff.apply).to(dtype), x.to(dtype),
                          verification=verification)
    assert not bad.passed
    assert any(f.startswith("the float64 route:vjp disagrees with finite differences")
               for f in bad.findings)
    torch.manual_seed(0)
    good = jacverify.check(_SinNet().to(dtype), x.to(dtype), verification=verification)
    assert good.passed and not good.findings


# --- NOTE [effective precision]: a function that computes in a coarser dtype inside ---

def _cast(inside, sin=torch.sin):
    """The caller's float64 (or float32) input through a model that computes in ``inside``: the
    float64 check of a float32 model behind a cast (FAILED, 8 methods "wrong", before NOTE
    [effective precision]) and float16 inside (FAILED: "a backward formula of the function is
    wrong")."""
    torch.manual_seed(0)
    net = _SinNet(sin).to(inside)
    return lambda z: net(z.to(inside)).to(z.dtype)


@pytest.mark.parametrize("verification", ["full", "projection"])
def test_a_function_computing_in_float32_inside_passes_in_float64_and_says_so(verification):
    report = jacverify.check(_cast(torch.float32), _x(6, 5), verification=verification)
    assert report.passed and not report.findings, report.failure_message()
    assert any(n.startswith("the function computes in float32 inside") for n in report.notes)


@pytest.mark.parametrize("verification", ["full", "projection"])
def test_a_wrong_backward_behind_a_float32_cast_still_fails_in_float64(verification):
    report = jacverify.check(_cast(torch.float32, _SinBackward5PercentOff.apply), _x(6, 5),
                             verification=verification)
    assert report.verdict == Verdict.FAILED


@pytest.mark.parametrize("inside, dtype", [(torch.float16, torch.float64),
                                           (torch.float16, torch.float32),
                                           (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("verification", ["full", "projection"])
def test_a_function_computing_in_half_inside_is_unverified_not_blamed(inside, dtype,
                                                                      verification):
    report = jacverify.check(_cast(inside), _x(6, 5).to(dtype), verification=verification)
    assert report.verdict == Verdict.UNVERIFIED and not report.findings
    assert report.headline().startswith("UNVERIFIED: finite differences pin down no entry")
    name = str(inside).removeprefix("torch.")
    assert any(n.startswith(f"the function computes in {name} inside") for n in report.notes)
    assert report.fastest is None  # agreeing within that uncertainty makes no method "fastest"


def test_a_function_computing_in_its_own_dtype_is_not_called_coarser():
    report = jacverify.check(_SinNet().double(), _x(6, 5))
    assert report.passed and not any("inside" in n for n in report.notes)


@pytest.mark.parametrize("fn, x", [
    (torch.sin, 1000 * _x(4, 3)),
    (lambda z: torch.cat([torch.sin(2 ** k * torch.pi * z) for k in range(10)], -1),
     torch.rand(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)),
    (torch.log, 1e-6 * _x(4, 3).abs() + 1e-7),
], ids=["sin_1000", "positional_encoding", "log_1e-6"])
def test_float64_functions_of_high_curvature_are_not_called_float32_inside(fn, x):
    """NOTE [effective precision]'s third test once cancelled f's terms up to d^2 only: these
    read as float32 inside, loosening their float64 checks 20,000 times (a second fresh user)."""
    from jacverify.case import flatten, make_case
    from jacverify.oracles.prechecks import effective_precision

    assert effective_precision(flatten(make_case(fn, x)), 0) is None


@pytest.mark.parametrize("fn", [torch.relu, torch.abs], ids=["relu", "abs"])
def test_every_entry_on_a_kink_is_unverified_and_off_the_kinks_passes(fn):
    """ReLU at exactly 0 everywhere said PASSED 18/18: only the Jacobian's zeros were pinned."""
    at_kinks = jacverify.check(fn, torch.zeros(3, 4, dtype=torch.float64))
    assert at_kinks.verdict == Verdict.UNVERIFIED
    assert "pin down no entry that is not exactly 0" in at_kinks.headline()
    assert jacverify.check(fn, _x(3, 4)).passed


class _Energy(torch.nn.Module):
    """A potential with its constant reference energy: outputs near -40000, a Jacobian of O(1)."""

    def __init__(self, offset):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, 1))
        self.register_buffer("e0", torch.tensor(offset))

    def forward(self, z):
        return self.net(z) + self.e0


@pytest.mark.parametrize("dtype, offset", [(torch.float32, -4e4), (torch.float64, -1e8)])
def test_a_constant_output_offset_does_not_widen_the_tolerance(dtype, offset):
    """NOTE [tolerances]' d: rtol x |f| / |x| on every entry allowed 14 on O(1) entries beside a
    -40000 offset in float32, and a check_method 50% off PASSED (a fresh user). d is the distance
    from the batch's mean where smaller: 1% off now fails; the right method still passes."""
    x = _x(8, 3).to(dtype)

    def scaled(k):
        return lambda f, z: torch.func.vmap(torch.func.jacrev(f))(z) * k

    assert jacverify.check_method(scaled(1.01), _Energy(offset), x).verdict == Verdict.FAILED
    assert jacverify.check_method(scaled(1.0), _Energy(offset), x).passed


def _no_graph(z):
    with torch.no_grad():
        return torch.tanh(z) * 2


def test_a_function_hiding_its_computation_from_autograd_is_named_not_a_backward_formula():
    """NOTE [graph cut]: torch.no_grad() inside the function; check failed with the hint "a
    backward formula is wrong" (a fresh user). A step function, whose derivative is 0 where it has
    one, is not such a cut."""
    report = jacverify.check(_no_graph, _x(4, 3))
    assert report.verdict == Verdict.FAILED
    assert report.findings[0].startswith("the function's output carries no autograd graph")
    assert report.hint.startswith("autograd cannot see the function's computation")
    step = jacverify.check(lambda z: (z > 0).to(z.dtype), _x(4, 3))
    assert not any(f.startswith("the function's output carries") for f in step.findings)


class _UpcastAttention(torch.nn.Module):
    """Self-attention whose softmax runs in float32 whatever the input's dtype, as Hugging Face
    attention upcasts it; ``sin`` wraps the attention's output."""

    def __init__(self, sin=torch.sin, d=8):
        super().__init__()
        torch.manual_seed(0)
        self.qkv, self.o, self.ln = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d), \
            torch.nn.LayerNorm(d)
        self.sin = sin

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        a = torch.softmax(((q @ k.transpose(-1, -2)) / 8 ** 0.5).float(), dim=-1).to(q.dtype)
        return self.ln(x + self.sin(self.o(a @ v)))


def test_float32_in_the_middle_of_a_float64_copy_is_found_and_a_wrong_backward_still_fails():
    """NOTE [effective precision]'s third test: the float32 softmax of a Hugging Face style
    attention, inside the references' float64 copy, FAILED a correct layer with "a backward
    formula is wrong" (a fresh user). The same layer with a backward 5% off on one entry still
    fails."""
    x = _x(3, 4, 8).float()
    good = jacverify.check(_UpcastAttention(), x)
    assert good.passed and not good.findings, good.failure_message()
    assert any(n.startswith("the function computes in float32 inside") for n in good.notes)
    bad = jacverify.check(_UpcastAttention(_SinBackward5PercentOff.apply), x)
    assert bad.verdict == Verdict.FAILED


@torch.library.custom_op("jacverify_tests::sin_backward_only", mutates_args=())
def _sin_backward_only(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x)


_sin_backward_only.register_fake(lambda x: torch.empty_like(x))
_sin_backward_only.register_autograd(
    lambda ctx, g: g * torch.cos(ctx.saved_tensors[0]),
    setup_context=lambda ctx, inputs, output: ctx.save_for_backward(inputs[0]))


def test_an_op_without_a_forward_formula_is_named_not_a_wrong_jvp():
    """A torch.library op with register_autograd only: torch's forward mode answers zeros for it
    (no error), and the check blamed "a jvp formula is wrong" (a fresh user). The forward methods
    still disagree (what they answer is wrong); the hint and a note say why. torch.sin itself,
    the twin, gets no such note."""
    report = jacverify.check(lambda z: _sin_backward_only(z) * 2, _x(5, 3))
    assert report.verdict == Verdict.FAILED
    assert "forward mode drops the tangent" in report.hint
    assert not any("drops the tangent" in n for n in jacverify.check(torch.sin, _x(5, 3)).notes)


_TANH_10_PERCENT_OFF = tanh_off(0.9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_finite_differences_cannot_pin_down_do_not_pass_on_the_others(dtype):
    """NOTE [unstable finite differences], per output: a float16 block with a backward 10% off
    beside a correct float64 block PASSED 12/18 on the float64 block (a fresh user). The same
    function in full precision throughout is pinned down, and its wrong backward fails."""
    def mixed(z):
        return torch.cat([_TANH_10_PERCENT_OFF.apply(z.half()).to(z.dtype), torch.sin(z)], -1)

    report = jacverify.check(mixed, _x(4, 3).to(dtype))
    assert report.verdict == Verdict.UNVERIFIED
    assert "of 3 output(s) (output[0], output[1], output[2]" in report.unresolved

    def full(z):
        return torch.cat([_TANH_10_PERCENT_OFF.apply(z), torch.sin(z)], -1)
    assert jacverify.check(full, _x(4, 3).to(dtype)).verdict == Verdict.FAILED


class _ConstantWithABackward(torch.autograd.Function):
    """A constant whose backward says 1: a wrong formula finite differences read as 0 at every
    step size."""

    @staticmethod
    def forward(z):
        return torch.ones_like(z)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g


def test_an_output_rounded_through_bfloat16_is_not_blamed_on_a_backward_formula():
    """NOTE [kinks the steps cross]: the bfloat16 staircase read 0 with a bound of 1e-8 at both
    step sizes, and the loop's 0.84 was "a backward formula of the function is wrong" (a second
    fresh user). Flat there but moving at steps 256x larger, the entry is not pinned down; a
    constant with a backward that says 1 is flat at every step and still a finding."""
    f = lambda z: torch.cat([torch.sin(z), torch.sin(z).bfloat16().to(z.dtype)], -1)  # noqa: E731
    report = jacverify.check(f, _x(4, 3))
    assert not report.findings and report.verdict != Verdict.PASSED
    assert "pin down no entry that is not exactly 0 of 3 output(s)" in report.unresolved
    wrong = jacverify.check(lambda z: torch.sin(z) + _ConstantWithABackward.apply(z), _x(4, 3))
    assert wrong.findings and wrong.verdict == Verdict.FAILED


def _off(k, fn, derivative):
    """``fn`` with a backward ``k`` times its true ``derivative``."""
    class Off(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z):
            ctx.save_for_backward(z)
            return fn(z)

        @staticmethod
        def backward(ctx, g):
            (z,) = ctx.saved_tensors
            return g * k * derivative(z)

    return Off.apply


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_function_near_the_edge_of_its_domain_is_not_a_wrong_formula(dtype):
    """NOTE [steps off the domain]: log at 1e-6 FAILED with "a backward formula of the function
    is wrong" (finite differences stepped to x - 7.6e-4 < 0: NaN), and the coupling probe's
    NaN read as samples that interact (a fresh user). Those entries are pinned down nowhere now:
    UNVERIFIED with why, right or 1% off, never PASSED; away from the edge 1% off fails."""
    from jacverify.oracles import check_coupling
    from jacverify.case import flatten, make_case

    x = (1e-6 * (1 + torch.rand(4, 3, generator=torch.Generator().manual_seed(0),
                                dtype=torch.float64))).to(dtype)
    right = jacverify.check(torch.log, x)
    assert right.verdict == Verdict.UNVERIFIED and not right.findings, right.failure_message()
    assert "pin down no entry" in right.unresolved
    assert not check_coupling(flatten(make_case(torch.log, x.double())), seed=0).coupled
    wrong = _off(1.01, torch.log, torch.reciprocal)
    assert jacverify.check(wrong, x).verdict == Verdict.UNVERIFIED
    assert jacverify.check(wrong, x + 1).verdict == Verdict.FAILED


@pytest.mark.parametrize("fn, derivative, at", [
    (torch.log, torch.reciprocal, 1e-7), (torch.log, torch.reciprocal, 5e-6),
    (lambda z: torch.log(1 - z), lambda z: -1 / (1 - z), 1 - 3.2e-5),
    (torch.atanh, lambda z: 1 / (1 - z * z), -1 + 1.5e-6),
    (torch.log1p, lambda z: 1 / (1 + z), -1 + 1e-4)],
    ids=["log-1e-7", "log-5e-6", "log(1-z)", "atanh", "log1p"])
def test_a_backward_one_percent_off_near_an_edge_never_passes(fn, derivative, at):
    """A second fresh user, against steps retaken 64x smaller off the domain: the kink re-check
    then differenced log at 1e-7 at steps the edge forced back (1e7 +- 8.7e4) and PASSED a
    backward 1% off; log(1 - z), atanh and log1p near -1 or 1 read as float32 inside and PASSED
    it too. Unpinned entries are UNVERIFIED, never PASSED."""
    x = torch.tensor([[at]], dtype=torch.float64)
    assert jacverify.check(_off(1.01, fn, derivative), x).verdict != Verdict.PASSED


def test_a_sample_whose_output_turns_nan_when_another_moves_is_coupled_and_named():
    """NOTE [steps off the domain]: another sample's output that turns NaN when the probed ones
    move has moved: coupling, naming the samples (the report said "changed the outputs of
    sample(s)  (max change nan)", none named)."""
    from jacverify.oracles import check_coupling
    from jacverify.case import flatten, make_case

    x = torch.tensor([[1.0], [0.5], [0.25], [0.125]], dtype=torch.float64)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    coupled = lambda z: z + torch.where(z.amax(0) > 1.0, nan, 0.0)  # noqa: E731
    found = check_coupling(flatten(make_case(coupled, x)), seed=0)
    assert found.coupled and "sample(s) 1, 2, 3" in found.reason, found.reason


def _positive_log(z):
    assert (z > 0).all(), "log of a non-positive number"
    return torch.log(z)


def test_a_function_that_raises_off_its_domain_is_not_a_raw_exception():
    """A Beta log-density with its support validated, and a function that asserts its input is
    positive, raised their own ValueError and a bare AssertionError (which reads as a mismatch
    in pytest) out of the effective-precision probe, 10% away from x (a fresh user). The probes
    and the finite differences take a raise there as a step off the domain: UNVERIFIED with
    why; and a function that raises wherever samples move is FunctionRaised, named as such."""
    from jacverify.errors import FunctionRaised

    beta = torch.distributions.Beta(torch.tensor(2.0, dtype=torch.float64),  # validated even
                                    torch.tensor(3.0, dtype=torch.float64),  # where a library
                                    validate_args=True)  # turned the default off
    near_edges = torch.tensor([[1e-6, 0.3], [0.5, 1 - 1e-6]], dtype=torch.float64)
    for fn, x in ((beta.log_prob, near_edges),
                  (_positive_log, torch.tensor([[1e-6, 2.0]], dtype=torch.float64))):
        report = jacverify.check(fn, x)
        assert report.verdict == Verdict.UNVERIFIED and "pin down no" in report.unresolved, \
            report.render()
    assert jacverify.check(beta.log_prob, near_edges.clamp(0.2, 0.8)).passed

    def only_here(z):
        if not torch.equal(z, near_edges):
            raise ValueError("defined at one point only")
        return z.sum(1, keepdim=True)

    with pytest.raises(FunctionRaised, match="samples moved by up to .*defined at one point"):
        jacverify.check(only_here, near_edges)


def _log_scaled(near_edge, elsewhere, asserts=False):
    """log with a backward ``near_edge`` times right under 1e-3 and ``elsewhere`` times above;
    ``asserts``: its forward raises for a batch with any input not positive."""
    class Log(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z):
            assert not asserts or bool((z > 0).all()), "log of a non-positive number"
            ctx.save_for_backward(z)
            return z.log()

        @staticmethod
        def backward(ctx, g):
            (z,) = ctx.saved_tensors
            return g / z * torch.where(z < 1e-3, near_edge, elsewhere)

    return Log.apply


def test_a_wrong_derivative_at_an_entry_off_the_domain_is_not_passed_and_one_elsewhere_fails():
    """A third fresh user: a backward 2x wrong only at the entry by the edge PASSED ("10/18
    verified"), the other entries pinned down; and where the forward raises for the whole batch
    (an assert), the step of every sample at once unpinned the safe sample too, and a backward
    2x wrong there ended UNVERIFIED. Now any entry whose steps leave the domain leaves the check
    UNVERIFIED, and a raising column is taken again sample by sample."""
    x = torch.tensor([[1e-6, 0.7, 0.8]], dtype=torch.float64)
    edge_only = jacverify.check(lambda z: _log_scaled(2.0, 1.0)(z).sum(-1, keepdim=True), x)
    assert edge_only.verdict == Verdict.UNVERIFIED and "leave" in edge_only.unresolved
    batch = torch.tensor([[1e-6] * 3, [0.7, 0.8, 0.9]], dtype=torch.float64)
    for off in (2.0, 1.01):
        assert jacverify.check(_log_scaled(1.0, off, asserts=True), batch).verdict == \
            Verdict.FAILED
    assert jacverify.check(_log_scaled(1.0, 1.0, asserts=True), batch).verdict == \
        Verdict.UNVERIFIED
