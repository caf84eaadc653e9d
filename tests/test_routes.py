"""NOTE [route probes]: each AD route against its broken twin (flagged: exactly the routes that use
the broken formula) and the correct function (not flagged), in both dtypes, with one probe."""

from __future__ import annotations

import pytest
import torch

import jacverify
from jacverify.examples.twins import Apply, CubeNoJvp, cube_net, cube_off

REVERSE = {"vjp", "is_grads_batched", "vmap_vjp", "double_backward", "per_sample_vjp"}
FORWARD = {"jvp", "vmap_jvp", "dual", "per_sample_jvp"}
RULE = {"per_sample_vjp", "per_sample_jvp"}  # the forward's batching rule, under vmap


def _off_routes(report) -> set[str]:
    return {r.method.removeprefix("route:") for r in report.results if r.status != "agree"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("off, wrong", [({}, set()), ({"backward": 1.01}, REVERSE),
                                        ({"jvp": 1.01}, FORWARD), ({"rule": 1.01}, RULE)],
                         ids=["correct", "backward_1pct", "jvp_1pct", "rule_1pct"])
def test_a_route_one_percent_wrong_is_flagged_and_only_its_routes(dtype, off, wrong):
    net = cube_net(cube_off(**off)).to(dtype)
    report = jacverify.check(net, torch.randn(8, 5, dtype=dtype), verification="routes")
    assert report.verification == "routes (1 probe)"
    assert _off_routes(report) == wrong
    assert {str(r.status) for r in report.results if r.status != "agree"} <= {"mismatch"}
    assert report.verdict == ("failed" if wrong else "passed")


def test_a_route_that_cannot_run_is_unsupported_with_why_and_the_rest_still_pass():
    report = jacverify.check(cube_net(CubeNoJvp), torch.randn(6, 5, dtype=torch.float64),
                             verification="routes")
    assert _off_routes(report) == FORWARD
    assert all(r.status == "unsupported" and r.reason for r in report.results
               if r.method.removeprefix("route:") in FORWARD)
    assert report.passed


def test_routes_do_not_earn_a_pass_for_methods_that_could_not_run():
    """NOTE [earned verdict]: in a projection check the routes agree, the only method cannot run:
    unverified, not passed; the routes are never 'the fastest method'."""
    report = jacverify.check(torch.sin, torch.randn(2, 600), verification="projection",
                             max_memory=2**20, methods=["vmap_jacrev"])
    assert any(r.method == "route:vjp" and r.verified for r in report.results)
    assert report.verdict == "unverified" and report.fastest is None


def test_projection_checks_routes_and_methods_and_the_fastest_is_a_method():
    net = torch.nn.Sequential(torch.nn.Linear(40, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    report = jacverify.check(net, torch.randn(4, 40), verification="projection", probes=2)
    names = {r.method for r in report.results}
    assert {f"route:{r}" for r in REVERSE | FORWARD} <= names and "vmap_jacrev" in names
    assert report.passed and not report.fastest.startswith("route:")


def test_interacting_samples_keep_the_full_batch_routes_and_drop_the_per_sample_ones():
    from jacverify.examples.networks import BatchCoupled

    net = BatchCoupled().double().train()
    report = jacverify.check(net, torch.randn(6, 5, dtype=torch.float64), verification="routes")
    status = {r.method.removeprefix("route:"): str(r.status) for r in report.results}
    assert status["per_sample_vjp"] == status["per_sample_jvp"] == "not_applicable"
    assert status["vjp"] == status["dual"] == "agree" and report.passed  # torch.func refuses
    assert status["jvp"] == "unsupported"  # BatchNorm's in-place running-statistics update


def test_routes_run_the_methods_the_caller_names_and_check_methods_own():
    net = cube_net(cube_off(backward=1.01)).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    report = jacverify.check(net, x, verification="routes", methods=["loop"])
    assert report["loop"].status == "mismatch" and report.verdict == "failed"
    assert report.verification == "routes (1 probe)"
    wrong = lambda f, z: 1.01 * torch.func.vmap(torch.func.jacrev(f))(z)  # noqa: E731
    mine = jacverify.check_method(wrong, cube_net(), x, verification="routes")
    assert mine.verdict == "failed" and "worst projection" in mine["<lambda>"].reason


def test_check_method_under_projection_names_the_worst_projection_not_a_crash():
    net = torch.nn.Sequential(torch.nn.Linear(40, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    wrong = lambda f, z: 1.01 * torch.func.vmap(torch.func.jacrev(f))(z)  # noqa: E731
    report = jacverify.check_method(wrong, net, torch.randn(4, 40), verification="projection")
    assert report.verdict == "failed"
    assert "worst projection uᵀJv (probe" in report["<lambda>"].reason


def test_projection_resolution_a_one_column_error_needs_float64():
    """NOTE [projection probes], resolution: a backward 1% wrong in one of 400 input columns
    moves a projection by about 1% / 20 = 5e-4 of its size: over float64's sqrt(eps) (flagged),
    near float32's 3.5e-4; the full check judges entry by entry and flags it in either dtype."""
    class OneColumn(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return x.clone()

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, g):
            g = g.clone()
            g[..., 0] *= 1.01
            return g

    torch.manual_seed(0)
    net = torch.nn.Sequential(Apply(OneColumn), torch.nn.Linear(400, 16), torch.nn.Tanh(),
                              torch.nn.Linear(16, 3))
    x = torch.randn(4, 400, dtype=torch.float64)
    report = jacverify.check(net.double(), x, verification="projection", methods=["loop_rows"])
    assert report.verdict == "failed"
    report = jacverify.check(net.float(), x.float(), verification="full", methods=["loop_rows"])
    assert report.verdict == "failed"
