"""JVP and VJP sets at one point, and per-sample JVPs: each broken twin is flagged by exactly the
methods whose formulas it breaks; coupled samples make the independence-assuming methods
not applicable."""

from __future__ import annotations

import pytest
import torch

import jacverify
from jacverify.examples import networks as nets
from jacverify.examples import twins
from jacverify.methods import registered_methods


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _run(quantity: str, net, dtype=torch.float32):
    if quantity == "jvp_set":
        return jacverify.check_jvps(net, _randn(5, seed=0), _randn(3, 5, seed=1), dtype=dtype)
    if quantity == "vjp_set":
        return jacverify.check_vjps(net, _randn(5, seed=0), _randn(3, 3, seed=2), dtype=dtype)
    return jacverify.check_per_sample_jvps(net, _randn(4, 5, seed=3), _randn(4, 5, seed=4), dtype=dtype)


def _names(report, status):
    return {r.method for r in report.results if r.status == status}


TABLE = [
    ("jvp_set", "CubeWrongBackward", {"double_backward", "full_jacobian", "functional_jvp"}, set()),
    ("jvp_set", "CubeWrongJvp", {"dual_copies", "jvp_loop", "vmap_jvp"}, set()),
    ("jvp_set", "CubeWrongVmap", set(), set()),  # no batch of points: the rule never runs
    ("jvp_set", "CubeNoJvp", set(), {"dual_copies", "jvp_loop", "vmap_jvp"}),
    ("vjp_set", "CubeWrongBackward",
     {"batched_grad", "full_jacobian", "functional_vjp", "vjp_loop", "vmap_vjp"}, set()),
    ("vjp_set", "CubeWrongJvp", set(), set()),
    ("per_sample_jvp", "CubeWrongBackward", {"double_backward"}, set()),
    ("per_sample_jvp", "CubeWrongJvp", {"forward_batched", "jvp_loop", "vmap_jvp"}, set()),
    ("per_sample_jvp", "CubeWrongVmap", {"vmap_jvp"}, set()),
    ("per_sample_jvp", "CubeNoJvp", set(), {"forward_batched", "jvp_loop", "vmap_jvp"}),
    ("per_sample_jvp", "Cube", set(), set()),
    ("jvp_set", "Cube", set(), set()),
    ("vjp_set", "Cube", set(), set()),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(("quantity", "twin", "flagged", "unsupported"), TABLE,
                         ids=[f"{q}-{t}" for q, t, *_ in TABLE])
def test_twins_are_flagged_by_exactly_the_methods_they_break(quantity, twin, flagged, unsupported,
                                                             dtype):
    report = _run(quantity, twins.cube_net(getattr(twins, twin)), dtype)
    assert report.quantity == quantity
    assert _names(report, "mismatch") == flagged
    assert _names(report, "unsupported") == unsupported
    assert report.passed is (not flagged)


def test_every_directional_method_has_a_twin_that_flags_it():
    flagged = {(q, m) for q, _, names, _ in TABLE for m in names}
    for quantity in ("jvp_set", "vjp_set", "per_sample_jvp"):
        assert {(quantity, m.name) for m in registered_methods(quantity)} <= flagged


def test_references_are_the_verified_jacobian_applied_and_directional_fd():
    report = _run("per_sample_jvp", twins.cube_net())
    assert report.trusted == ("loop", "finite_differences", "directional_fd")
    x, v = _randn(4, 5, seed=3).double(), _randn(4, 5, seed=4).double()
    net = twins.cube_net().double()
    exact = torch.func.vmap(lambda xi, vi: torch.func.jvp(lambda z: net(z[None])[0], (xi,), (vi,))[1])(x, v)
    torch.testing.assert_close(report.reference, exact)
    vjp = jacverify.check_vjps(twins.cube_net(), _randn(5, seed=0), _randn(3, 3, seed=2))
    assert vjp.trusted == ("loop", "finite_differences")  # the adjoint identity through verified J


def test_coupled_samples_per_sample_jvp():
    net = nets.BatchCoupled().double().train()
    report = jacverify.check_per_sample_jvps(net, _randn(4, 5, seed=3).double(), _randn(4, 5, seed=4).double())
    assert _names(report, "not_applicable") == {"forward_batched", "vmap_jvp", "double_backward"}
    assert _names(report, "agree") == {"jvp_loop"}
    assert report.passed


def test_copies_of_a_one_point_function_are_not_applicable():
    f = lambda x: torch.stack([x.sin().sum(), (x * x).prod()])  # noqa: E731 - not batched
    report = jacverify.check_jvps(f, torch.tensor([0.5, -1.0]), torch.eye(2))
    assert report["dual_copies"].status == "not_applicable"
    assert "not batched along a new leading axis" in report["dual_copies"].reason
    assert report.passed and len(_names(report, "agree")) == 5


@pytest.mark.parametrize(("call", "message"), [
    (lambda: jacverify.check_jvps(torch.sin, torch.ones(3), torch.ones(3)),
     "vectors has shape \\(3,\\); expected \\(K, 3\\)"),
    (lambda: jacverify.check_jvps(torch.sin, torch.ones(3), [1.0, 2.0, 3.0]),
     "vectors=list must be a floating tensor of shape \\(K, 3\\)"),
    (lambda: jacverify.check_vjps(torch.sin, torch.ones(3), torch.ones(2, 4)),
     "vectors has shape \\(2, 4\\); expected \\(K, 3\\)"),
    (lambda: jacverify.check_per_sample_jvps(torch.sin, torch.ones(4, 3), torch.ones(4, 2)),
     "vectors has shape \\(4, 2\\); per-sample JVPs need one tangent per sample"),
    (lambda: jacverify.check_jvps(torch.sin, torch.ones(3), torch.ones(2, 3), methods=["vmap_jvpp"]),
     "did you mean 'vmap_jvp'"),
])
def test_bad_vectors_and_methods(call, message):
    with pytest.raises(jacverify.InvalidArgument, match=message):
        call()


def test_reports_name_the_entry_and_serialise():
    report = _run("jvp_set", twins.cube_net(twins.CubeWrongJvp))
    text = report.failure_message()
    assert "(vector " in text and ", output[" in text
    doc = report.to_dict()
    assert doc["quantity"] == "jvp_set" and len(doc["results"][0]["worst_index"]) == 2


# --- second derivatives ---

SECOND = {m.name for m in registered_methods("hessian")}
DIAGONAL = {m.name for m in registered_methods("hessian_diagonal")}
HESSIAN_TWINS = [
    pytest.param(lambda: twins.Apply(twins.SinDetachedBackward), SECOND, DIAGONAL,
                 id="detached_saved_tensor_in_backward"),
    pytest.param(twins.HiddenSecondOrderDetach, SECOND, DIAGONAL, id="hidden_detach_term"),
    pytest.param(torch.nn.Tanh, set(), set(), id="correct"),
]


@pytest.mark.parametrize(("layer", "hessian_flagged", "diagonal_flagged"), HESSIAN_TWINS)
def test_second_order_twins_break_exactly_the_second_order_quantities(layer, hessian_flagged,
                                                                      diagonal_flagged):
    net = twins.second_order_net(layer())
    x = _randn(4, 3, seed=0)
    assert jacverify.check(net, x).passed  # first derivatives are right
    assert jacverify.check_per_sample_jvps(net, x, _randn(4, 3, seed=1)).passed
    assert _names(jacverify.check_hessians(net, x), "mismatch") == hessian_flagged
    assert _names(jacverify.check_hessian_diagonals(net, x), "mismatch") == diagonal_flagged


# Cube's jvp is right to first order, but forward-over-forward through an autograd.Function's
# jvp loses the jvp formula's own derivative: a real finding, kept here as data.
CUBE_HESSIAN = [
    ("Cube", {"vmap_jacfwd_jacfwd"}),
    ("CubeWrongJvp", {"hvp_forward_over_reverse", "vmap_hessian", "vmap_jacfwd_jacfwd",
                      "vmap_jacfwd_jacrev"}),
    ("CubeWrongVmap", {"hvp_forward_over_reverse", "vhp_reverse_over_reverse", "vmap_hessian",
                       "vmap_jacfwd_jacfwd", "vmap_jacfwd_jacrev", "vmap_jacrev_jacrev"}),
]


@pytest.mark.parametrize(("twin", "flagged"), CUBE_HESSIAN, ids=[t for t, _ in CUBE_HESSIAN])
def test_first_order_twins_in_hessians(twin, flagged):
    report = jacverify.check_hessians(twins.cube_net(getattr(twins, twin)), _randn(4, 5, seed=0))
    assert _names(report, "mismatch") == flagged


def test_wrong_first_derivative_blocks_second_order_checks_with_the_reason():
    report = jacverify.check_hessians(twins.cube_net(twins.CubeWrongBackward), _randn(4, 5, seed=0))
    assert _names(report, "not_applicable") == SECOND
    assert "first derivative disagrees with finite differences" in report["loop"].reason


def test_relu_networks_are_not_applicable_rather_than_a_false_mismatch():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    report = jacverify.check_hessians(net, _randn(4, 3, seed=0))
    assert _names(report, "not_applicable") == SECOND
    assert report.verdict == "unverified" and not report.passed  # nothing was verified
    assert report["vmap_hessian"].reason.startswith("ReLU is not twice differentiable")


def test_hessian_reference_and_symmetry():
    net = twins.second_order_net(torch.nn.Tanh()).double()
    x = _randn(4, 3, seed=0).double()
    report = jacverify.check_hessians(net, x)
    exact = torch.func.vmap(torch.func.hessian(lambda xi: net(xi[None])[0]))(x)
    torch.testing.assert_close(report.reference, exact, rtol=1e-7, atol=1e-9)
    assert all(r.reason is None for r in report.results)  # symmetric within tolerance

    def asymmetric(flat):  # a mutant: one off-diagonal entry of each Hessian bumped
        h = jacverify.get_methods(["vmap_hessian"], "hessian")[0].compute(flat).clone()
        h[..., 0, 1] += 0.1
        return h

    mutant = jacverify.Method("asymmetric", asymmetric, "forward", True, True, quantity="hessian")
    jacverify.register_method(mutant)
    try:
        bad = jacverify.check_hessians(net, x, methods=["asymmetric"])
    finally:
        jacverify.unregister_method("asymmetric", "hessian")
    assert bad["asymmetric"].status == "mismatch"
    assert bad["asymmetric"].reason.startswith("asymmetric Hessian: max |H - Hᵀ| = 0.1")


def test_the_pinn_loop_beside_its_vectorized_replacements():
    net = twins.second_order_net(torch.nn.Tanh())
    report = jacverify.check_hessian_diagonals(net, _randn(6, 3, seed=0))
    assert [r.method for r in report.results] == ["loop", "vmap_hessian", "forward_over_reverse"]
    assert report.passed and all(r.time_s for r in report.results)
    assert "vs loop" in report.render()


def test_time_growth_with_the_number_of_vectors_is_reported():
    report = jacverify.check_jvps(twins.cube_net(), _randn(5, seed=0), _randn(3, 5, seed=1),
                                  scaling=(1, 8))
    timed = dict(report.scaling)
    assert set(timed) == _names(report, "agree")
    assert all([k for k, _ in points] == [1, 8] and all(t > 0 for _, t in points)
               for points in timed.values())
    assert "time against the number of vectors K:" in report.render()
    assert report.to_dict()["scaling"]["jvp_loop"][1][0] == 8
    assert jacverify.check_vjps(twins.cube_net(), _randn(5, seed=0), _randn(2, 3, seed=2),
                                scaling=()).scaling == ()
