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
