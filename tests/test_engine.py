"""The engine on correct networks, on the broken twins, and on a batch-coupled module."""

from __future__ import annotations

import pytest
import torch

import jacverify
from jacverify.examples import networks as nets
from jacverify.examples import twins
from jacverify.methods import registered_methods

ALL = {m.name for m in registered_methods()}
REVERSE = {m.name for m in registered_methods() if m.mode == "reverse"}
FORWARD = {m.name for m in registered_methods() if m.mode == "forward"}
INDEPENDENT_ONLY = {m.name for m in registered_methods() if m.assumes_independent}
DTYPES = [torch.float32, torch.float64]


def _randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _by_status(report: jacverify.Report, status: str) -> set[str]:
    return {r.method for r in report.results if r.status == status}


# Broken twins: which methods each must be flagged by (exactly), and which cannot run on it.
TWINS = [
    pytest.param(twins.CubeWrongBackward, REVERSE, set(), id="wrong_backward"),
    pytest.param(twins.CubeWrongJvp, FORWARD, set(), id="wrong_jvp"),
    pytest.param(twins.CubeWrongVmap, {"vmap_jacrev", "vmap_jacfwd"}, set(), id="wrong_vmap"),
    pytest.param(twins.CubeNoJvp, set(), FORWARD, id="no_jvp"),
    pytest.param(twins.Cube, set(), set(), id="correct"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("function", "flagged", "unsupported"), TWINS)
def test_twin_flagged_by_exactly_the_methods_it_breaks(function, flagged, unsupported, dtype):
    report = jacverify.check(twins.cube_net(function), _randn(6, 5), dtype=dtype)
    assert _by_status(report, "mismatch") == flagged
    assert _by_status(report, "unsupported") == unsupported
    assert _by_status(report, "agree") == ALL - flagged - unsupported
    assert report.passed is (not flagged)


def test_every_method_has_a_twin_that_flags_it():
    covered = REVERSE | FORWARD | {"vmap_jacrev", "vmap_jacfwd"}
    assert covered == ALL


def test_wrong_backward_makes_the_loop_untrusted_and_says_so():
    report = jacverify.check(twins.cube_net(twins.CubeWrongBackward), _randn(6, 5))
    assert report.trusted == ("finite_differences",)
    assert any("loop reference disagrees with finite differences" in n for n in report.findings)
    assert report.verdict == "failed"
    assert "backward formula is wrong" in report.hint
    assert "dual_loop" not in {r.method for r in report.mismatches}


def test_wrong_vmap_hint_names_the_batching_rule():
    report = jacverify.check(twins.cube_net(twins.CubeWrongVmap), _randn(6, 5))
    assert "batching rule is wrong" in report.hint


CORRECT = [
    pytest.param(nets.ReadmeNet, (8, 5), id="mlp"),
    pytest.param(nets.ConvNet, (4, 2, 7), id="conv1d"),
    pytest.param(nets.Conv2dNet, (3, 1, 4, 4), id="conv2d"),
    pytest.param(nets.LayerNormResidual, (5, 6), id="layernorm_residual"),
    pytest.param(nets.Attention, (3, 4, 4), id="attention"),
    pytest.param(nets.TorchAttention, (3, 4, 4), id="nn_multihead_attention"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("net", "shape"), CORRECT)
def test_correct_networks_have_no_false_mismatch(net, shape, dtype):
    torch.manual_seed(0)
    report = jacverify.check(net().eval(), _randn(*shape), dtype=dtype)
    assert report.passed, report.failure_message()
    assert report.trusted == ("loop", "finite_differences")
    assert _by_status(report, "agree") >= {"loop", "sum_trick", "repeat_trick", "loop_rows"}


def test_batch_coupled_module_is_not_applicable_not_mismatch():
    torch.manual_seed(0)
    net = nets.BatchCoupled().train()
    report = jacverify.check(net, _randn(6, 5), dtype=torch.float64)
    assert report.coupling.coupled and "changing sample 0" in report.coupling.reason
    assert _by_status(report, "not_applicable") == INDEPENDENT_ONLY
    assert _by_status(report, "agree") == ALL - INDEPENDENT_ONLY == {
        "loop", "full_diagonal", "batched_grad_per_sample"}
    assert all("assumes samples do not interact" in report[m].reason for m in INDEPENDENT_ONLY)
    assert report.passed


def test_coupled_reference_is_the_diagonal_block_of_the_full_jacobian():
    torch.manual_seed(0)
    net = nets.BatchCoupled().double().train()
    x = _randn(4, 5).double()
    report = jacverify.check(net, x)
    full = torch.autograd.functional.jacobian(net, x)  # (B, M, B, N)
    diag = torch.stack([full[b, :, b] for b in range(4)])
    torch.testing.assert_close(report.reference, diag)
    alone = torch.func.vmap(torch.func.jacrev(lambda xi: net(xi[None])[0]), randomness="same")
    with pytest.raises(Exception):  # per-sample BatchNorm in training mode is not even defined
        alone(x)


def test_buffers_are_restored_after_the_check():
    net = nets.BatchCoupled().train()
    before = net[1].running_mean.clone()
    jacverify.check(net, _randn(6, 5))
    torch.testing.assert_close(net[1].running_mean, before)


def _mutated(method: jacverify.Method, how: str) -> jacverify.Method:
    def compute(flat):
        jac = method.compute(flat).clone()
        if how == "entry":  # one entry off by 1e-3 of the Jacobian's scale
            jac[-1, -1, -1] += 1e-3 * jac.abs().max()
        else:  # samples swapped: the classic batching slip
            jac = jac.roll(1, dims=0)
        return jac

    return jacverify.Method(f"{method.name}_{how}", compute, method.mode, method.vectorized,
                            method.assumes_independent)


@pytest.mark.parametrize("how", ["entry", "roll"])
@pytest.mark.parametrize("method", registered_methods(), ids=lambda m: m.name)
def test_a_mutant_of_every_method_is_flagged_and_the_original_is_not(method, how):
    mutant = _mutated(method, how)
    report = jacverify.check(twins.cube_net(), _randn(5, 5), methods=[method.name],
                             extra_methods=[mutant])
    assert report[method.name].status == "agree"
    assert report[mutant.name].status == "mismatch"
    assert report[mutant.name].worst_index[0] in ((4,) if how == "entry" else range(5))


@pytest.mark.parametrize("offset", [1e-7, 1e-5, 2e-4, 4e-4, 7e-4])
def test_a_kink_inside_the_fd_steps_is_no_false_mismatch(offset):
    """ReLU's kink a little right of the input: every step size (h ~ 1e-3) or only some cross it."""
    f = lambda x: torch.relu(x - 0.3 - offset) * 2.0 + x**2  # noqa: E731
    x = torch.tensor([[0.3], [1.0], [-0.5]], dtype=torch.float64)
    report = jacverify.check(f, x, methods=["vmap_jacrev", "loop_rows"])
    assert report.passed, report.failure_message()
    assert report.trusted == ("loop", "finite_differences")


def test_finite_differences_bound_their_own_error():
    x = _randn(4, 3).double()
    from jacverify.case import flatten, make_case
    from jacverify.oracles import finite_differences

    flat = flatten(make_case(lambda x: torch.stack([x.sin().prod(1), (x**3).sum(1)], 1), x))
    value, error = finite_differences(flat, independent=True)
    exact = torch.stack([torch.stack([x.cos()[:, j] * x.sin()[:, [k for k in range(3) if k != j]].prod(1)
                                      for j in range(3)], 1), 3 * x**2], 1)
    actual = (value - exact).abs()
    assert (actual <= error).all()
    assert error.max() < 1e-7  # sharp enough to catch any wrong formula
    coupled_value, _ = finite_differences(flat, independent=False)
    torch.testing.assert_close(coupled_value, value, rtol=0, atol=1e-9)


def test_a_jacobian_that_cancels_to_zero_is_no_false_mismatch():
    """Found by the long fuzz run: LayerNorm of a vector whose entries move together has J = 0
    exactly, while autodiff returns rounding noise; the derivative scale max|f|/max(1,|x|)
    absorbs it."""
    from jacverify.specs import Activation, CaseSpec, Dense, LayerNorm, Network

    net = Network((1,), (Dense(1, 3, (0.75, 0.75, 0.75), (0.0, 0.0, 0.0)), LayerNorm(3),
                         Activation("sigmoid"), Dense(3, 2, (1.0, 0.5, 0.25, -1.0, 0.0, 1.5), (0.0, 0.0))))
    module, x = CaseSpec(net, 3, (0.3, -1.1, 1.7)).build()
    report = jacverify.check(module, x)
    assert report.passed, report.failure_message()
    assert float(report.reference.abs().max()) < 1e-12
    from jacverify.compare import compare

    noisy = jacverify.get_methods(["vmap_jacfwd"])[0].compute(report.flat)
    without = compare(noisy, jacverify.Reference("loop", report.reference), torch.float64)
    assert without.max_abs_error > 0 and not without.passed  # real noise, absorbed only by the scale


def test_float32_rounding_of_a_batchnorm_over_two_samples_is_no_false_mismatch():
    """Found by the property run when d lost its role away from rows that cancel to ~0: float32
    methods differ from the float64 loop by 8.4e-8 on an entry of 8.9e-5, the rounding of the O(1)
    values a BatchNorm over two samples cancels (d, NOTE [tolerances])."""
    from jacverify.specs import BatchNorm, CaseSpec, Dense, Flatten, Network, SelfAttention

    def attention(at, value, out_at, out_value):
        qkv, out = [0.0] * 48, [0.0] * 16
        qkv[at], out[out_at] = value, out_value
        return SelfAttention(embed=4, heads=2, qkv=tuple(qkv), out=tuple(out))

    net = Network((1, 4), (attention(43, 1.1201171875, 10, 0.8505859375),
                           attention(34, 0.2841796875, 0, 1.2509765625),
                           attention(36, 1.494140625, 1, 1.4990234375), Flatten(), BatchNorm(4),
                           Dense(4, 3, (0.6767578125,) + (0.0,) * 11, (0.0, 0.0, 0.0))))
    module, x = CaseSpec(net, 2, (0.0,) * 7 + (0.80859375,), dtype="float32").build()
    report = jacverify.check(module, x, warm_timing=False)
    assert report.passed, report.failure_message()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_is_compared_honestly(dtype):
    """sqrt(eps) of bfloat16/float16 and the measured rounding: no false mismatch, twins still caught."""
    report = jacverify.check(nets.ReadmeNet(), nets.ReadmeNet.example_input(), dtype=dtype)
    assert report.passed, report.failure_message()
    assert report.reference_dtype == torch.float64
    broken = jacverify.check(twins.cube_net(twins.CubeWrongJvp), _randn(6, 5), dtype=dtype)
    assert _by_status(broken, "mismatch") == FORWARD


def test_hardtanh_kink_between_the_fd_steps_found_by_the_long_fuzz_run():
    """A kink between h/4 and h/2 slipped past the old detector (Richardson alone underestimates
    there); the second difference's scaling across all three steps catches it."""
    from jacverify.specs import Activation, BatchNorm, CaseSpec, Conv1d, Dense, Flatten, Network
    from jacverify.strategies import kink_margin_ok

    net = Network((2, 2), (
        Conv1d(2, 2, 2, (-0.8876953125, 1.0, 0.431640625, -0.76171875, 0.0, 0.0, 0.0, 0.0),
               (0.5068359375, 0.0009765625)),
        Activation("hardtanh"), Flatten(), BatchNorm(2), Dense(2, 2, (0.0, 0.0, 2**-10, 0.0), (0.0, 0.0))))
    case = CaseSpec(net, 2, (0.0, 0.0, 0.0, 0.0, -0.037109375, 0.724609375, -1.361328125, -0.423828125))
    module, x = case.build()
    report = jacverify.check(module, x, seed=2005698596)
    assert report.passed, report.failure_message()
    assert report.trusted == ("loop", "finite_differences")
    assert not kink_margin_ok(net, x)  # and the strategies no longer draw it


def test_a_kink_every_fd_step_crosses_is_not_a_wrong_backward():
    """NOTE [kinks the steps cross]: a ReLU 3e-5 from its kink under a curvature large enough
    to hide it from the kink test (found by a fresh user on a stock TransformerEncoderLayer):
    finite differences were off the derivative by 0.46 of 3376, and the check called the correct
    backward wrong. Re-differenced at smaller steps it passes; a 1% wrong backward still fails."""
    x = torch.tensor([[1.5, 0.3], [0.7, -0.4]], dtype=torch.float64)
    a = torch.tensor([1.5 - 3e-5, 0.0], dtype=torch.float64)
    right, wrong_cube = twins.cube_off(), twins.cube_off(backward=1.01)
    report = jacverify.check(lambda z: torch.relu(z - a) + 500 * right.apply(z), x)
    assert report.passed, report.failure_message()
    assert any("256x smaller at 1 entry" in n for n in report.notes)
    wrong = jacverify.check(lambda z: torch.relu(z - a) + 500 * wrong_cube.apply(z), x)
    assert wrong.verdict == "failed"
    assert any("loop reference disagrees with finite differences" in f for f in wrong.findings)
