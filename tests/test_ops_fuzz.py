"""The operator fuzzer: each detector against a broken twin (flagged) and a correct op (not), the
twins found and shrunk by a campaign, torch findings, the budget, the replay snippet, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jacverify.errors import InvalidArgument
from jacverify.examples.op_twins import CHECKED_SQRT, LOWER_MATVEC, POWER, SCALE, TAKE_ROWS
from jacverify.judge import WRONG
from jacverify.rules.op_args import op_family
from jacverify.rules.op_fuzzer import OpExample, check_example, form, fuzz_op, snippet


def _statuses(family, example) -> dict[str, str]:
    return {c.check: str(c.status) for c in check_example(family, example)}


def _wrong(family, example) -> set[str]:
    return {c.check for c in check_example(family, example) if c.status in WRONG}


# One example per twin on which the broken one is wrong: (pair, example fields, wrong routes).
TWIN_CASES = [
    (LOWER_MATVEC, dict(form=form(n=2), batch_size=1, in_dims=(0, 0), seed=0), {"reverse_ad"}),
    (POWER, dict(form=form(n=1, cube=True), batch_size=1, in_dims=(0,), seed=0),
     {"forward_ad", "rev_over_fwd"}),
    (TAKE_ROWS, dict(form=form(n=1, k=2, duplicates=True), batch_size=1, in_dims=(0, 0), seed=0),
     {"reverse_ad"}),
    (SCALE, dict(form=form(n=1), batch_size=2, in_dims=(0, 0), seed=0), {"vmap"}),
    (CHECKED_SQRT, dict(form=form(n=1, shift=0.5), batch_size=2, in_dims=(0,), seed=1),
     {"errors"}),
]


@pytest.mark.parametrize("pair, fields, routes", TWIN_CASES,
                         ids=["triangle", "keyword_jvp", "duplicates", "batched_scalar", "errors"])
def test_broken_twin_flagged_correct_twin_not(pair, fields, routes):
    correct, broken = pair
    assert _wrong(broken, OpExample(broken.name, **fields)) == routes
    statuses = _statuses(correct, OpExample(correct.name, **fields))
    assert not {c for c, s in statuses.items() if s in WRONG}, statuses
    assert "agree" in statuses.values()


def test_twins_are_right_where_their_bug_is_not_drawn():
    """The keyword, the duplicate and the batched scale are what the bugs need."""
    _, power = POWER
    assert not _wrong(power, OpExample(power.name, form(n=2, cube=False), 1, (0,), 0))
    _, take = TAKE_ROWS
    assert not _wrong(take, OpExample(take.name, form(n=3, k=2, duplicates=False), 1, (0, 0), 0))
    _, scale = SCALE
    assert not _wrong(scale, OpExample(scale.name, form(n=2), 2, (0, None), 0))


def test_custom_op_without_forward_formula_is_unsupported_not_zero():
    """torch.func.jvp returns a zero tangent for a custom op with only register_autograd; the
    fuzzer says unsupported (no formula) instead of judging the zero."""
    correct, _ = SCALE
    checks = {c.check: c for c in check_example(correct, OpExample(correct.name, form(n=2), 1,
                                                                   (0, 0), 0))}
    assert checks["forward_ad"].status == "unsupported"
    assert "no forward-mode formula" in checks["forward_ad"].detail
    assert checks["reverse_ad"].status == "agree"


def test_frozen_running_statistics_let_batch_norm_reverse_mode_be_checked():
    """Kind 6: running_mean/var never get requires_grad, so reverse mode and vmap of vjp run."""
    family = op_family("nn.functional.batch_norm")
    ex = OpExample(family.name, form(affine=True, channels=2, length=1, n=3, training=False),
                   2, (0, None, None, 0, None), 3)
    statuses = _statuses(family, ex)
    assert statuses["reverse_ad"] == "agree" and statuses["vmap_vjp"] == "agree", statuses


@pytest.mark.parametrize("name, fields", [
    ("linalg.solve_triangular", dict(form=form(n=3, k=2, upper=True, left=False,
                                               unitriangular=True), in_dims=(0, None))),
    ("linalg.cholesky", dict(form=form(n=3, upper=True), in_dims=(0,))),
    ("index_add", dict(form=form(n=3, m=2, k=4, dim=0, duplicates=True, alpha=-0.5),
                       in_dims=(None, 0, 0))),
    ("pool", dict(form=form(kind="max", dims=2, kernel=3, stride=1, padding=1, dilation=1,
                            extra=1, channels=1, ceil_mode=True, count_include_pad=False,
                            divisor_override=None), in_dims=(-1,))),
    ("fft.rfft", dict(form=form(n=4, size=6, norm="ortho"), in_dims=(0,))),
])
def test_correct_torch_ops_agree_on_drawn_structure(name, fields):
    family = op_family(name)
    statuses = _statuses(family, OpExample(name, batch_size=2, seed=0, **fields))
    assert not {c for c, s in statuses.items() if s in WRONG}, statuses
    assert statuses["vmap"] == "agree" and statuses["reverse_ad"] == "agree"


# torch 2.13 findings (README "Fuzzing torch's operators"), each checked independently there.
FINDINGS = [
    ("cholesky_solve", dict(form=form(k=1, n=2, upper=False), in_dims=(0, 0)),
     {"forward_ad", "reverse_ad"}),
    ("cholesky_inverse", dict(form=form(n=2, upper=False), in_dims=(0,)),
     {"forward_ad", "reverse_ad"}),
    ("triangular_solve", dict(form=form(k=1, n=2, transpose=False, unitriangular=False,
                                        upper=False), in_dims=(0, 0)), {"forward_ad"}),
    ("scatter_reduce", dict(form=form(dim=0, duplicates=False, include_self=False, k=1, m=1, n=1,
                                      reduce="prod", zeros=False), in_dims=(0, 0, 0)),
     {"forward_ad", "fwd_over_rev"}),
    ("linalg.eigh", dict(form=form(UPLO="L", n=1, spectrum="spread"), in_dims=(0,)),
     {"rev_over_fwd"}),
]


@pytest.mark.parametrize("name, fields, routes", FINDINGS, ids=[f[0] for f in FINDINGS])
def test_torch_findings_are_flagged(name, fields, routes):
    assert routes <= _wrong(op_family(name), OpExample(name, batch_size=1, seed=0, **fields))


# torch 2.13 findings of the generic family (README "Fuzzing torch's operators"): the shrunk
# examples of `jacverify ops --all`, each checked independently there.
GENERIC_FINDINGS = [
    ("sinc", (("sample", 0), ("values", "zeros")), 1, (0,), 0, {"fwd_over_fwd", "rev_over_rev"}),
    ("logit", (("sample", 3), ("values", "zeros")), 1, (0,), 135, {"rev_over_fwd"}),
    ("nn.functional.poisson_nll_loss", (("sample", 0), ("values", "zeros")), 1, (0, 0), 2,
     {"reverse_ad"}),
    ("masked.cumprod", (("sample", 0), ("values", "zeros")), 1, (0, 0), 0, {"fwd_over_fwd"}),
    ("nn.functional.nll_loss", (("sample", 1), ("values", "sample")), 1, (0, 0, 0), 0,
     {"forward_ad"}),
    ("index_fill", (("sample", 1), ("values", "sample")), 2, (None, 0, 0), 0, {"vmap"}),
    ("nn.functional.grid_sample", (("sample", 0), ("values", "sample")), 1, (-1, 0), 0, {"vmap"}),
    ("linalg.pinv", (("sample", 2), ("values", "sample")), 1, (0, 0), 1, {"forward_ad"}),
    # hardshrink(x, lambd=0) is x itself: derivative 1 at x = 0, where torch's is 0
    ("nn.functional.hardshrink", (("sample", 1), ("values", "zeros")), 1, (0,), 0,
     {"forward_ad", "reverse_ad"}),
]


def test_hardshrink_at_zero_lambd_is_the_identity_yet_torch_differentiates_it_to_zero():
    """The independent check of the hardshrink finding: the closed form."""
    import torch

    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.hardshrink(x, 0.0)
    assert torch.equal(y.detach(), x.detach())  # the identity: its derivative is 1
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert grad.eq(0).all()  # torch 2.13: 0 (the finding; fails when torch fixes it)


def test_a_route_through_forward_mode_of_an_op_declaring_none_is_known():
    """linear_cross_entropy's chunked variants declare supports_forward_ad=False; forward mode
    through them returns 0 instead of raising: a wrong value torch declares (known), with why."""
    name = "nn.functional.linear_cross_entropy.chunked"
    checks = check_example(op_family(name, opinfo=True),
                           OpExample(name, (("sample", 0), ("values", "sample")), 1, (0, 0, 0), 0))
    known = {c.check: c.detail for c in checks if c.status == "known"}
    assert {"forward_ad", "fwd_over_fwd"} <= set(known)
    assert "supports_forward_ad=False" in known["fwd_over_fwd"]
    assert not [c for c in checks if c.status == "mismatch"]


def test_a_mismatch_stands_only_if_finite_differences_agree_at_every_step():
    """NOTE [confirmed mismatch]: the detector's twin is a reference that the default step gets
    wrong (as across a kink) while the other steps give the route's value: skipped, not a
    mismatch; a reference that every step confirms: a mismatch that names the other steps."""
    import torch

    from jacverify.compare import Reference
    from jacverify.rules.ops import judge_route

    def ref(value):
        return Reference("finite_differences", torch.tensor([value], dtype=torch.float64),
                         torch.tensor([1e-12], dtype=torch.float64))

    route = lambda: torch.tensor([1.0], dtype=torch.float64)  # noqa: E731
    fooled = judge_route("forward_ad", "", route, ref(2.0), 1.0, lambda h: ref(1.0))
    assert fooled.status == "skipped" and "depend on the step" in fooled.detail
    confirmed = judge_route("forward_ad", "", route, ref(2.0), 1.0, lambda h: ref(2.0))
    assert confirmed.status == "mismatch" and "confirmed at other steps: 2 at 8x" in confirmed.detail
    assert judge_route("forward_ad", "", route, ref(1.0), 1.0, lambda h: ref(2.0)).status == "agree"


@pytest.mark.parametrize("name, f, batch, dims, seed, routes", GENERIC_FINDINGS,
                         ids=[g[0] for g in GENERIC_FINDINGS])
def test_generic_family_torch_findings_are_flagged(name, f, batch, dims, seed, routes):
    family = op_family(name, opinfo=True)
    assert routes <= _wrong(family, OpExample(name, f, batch, dims, seed))


# Former false mismatches of the generic family (NOTE [generic family domains], complex outputs
# compared exactly): the shrunk examples of `jacverify ops --all`, and what each now says.
GENERIC_FIXED = [
    ("fft.fft2", (("sample", 3), ("values", "sample")), 2, (0,), 0, ""),
    ("fft.ifft2", (("sample", 3), ("values", "sample")), 2, (0,), 0, ""),
    ("linalg.eig", (("sample", 0), ("values", "sample")), 1, (0,), 1, ""),
    ("linalg.cholesky_ex", (("sample", 0), ("values", "general")), 1, (0,), 0, ""),
    ("nn.functional.ctc_loss", (("sample", 0), ("values", "sample")), 1, (0, 0), 0, ""),
    ("nn.functional.embedding", (("sample", 3), ("values", "sample")), 1, (0, 0), 0,
     "padding_idx"),
    ("nextafter", (("sample", 4), ("values", "zeros")), 1, (0, 0), 0, "x == y"),
    ("scatter_reduce.amax", (("sample", 0), ("values", "zeros")), 1, (0, 0, 0), 0, "ties"),
]


@pytest.mark.parametrize("name, f, batch, dims, seed, why", GENERIC_FIXED,
                         ids=[g[0] for g in GENERIC_FIXED])
def test_generic_family_draws_in_the_domain_and_says_where_it_cannot(name, f, batch, dims, seed,
                                                                    why):
    checks = check_example(op_family(name, opinfo=True), OpExample(name, f, batch, dims, seed))
    assert not [c for c in checks if c.status in WRONG]
    assert any(c.status == "agree" for c in checks)
    if why:
        assert any(c.status == "not_applicable" and why in c.detail for c in checks)


def test_complex_outputs_are_compared_with_a_tolerance_not_exactly():
    import torch

    from jacverify.rules.checks import differ

    x = torch.fft.fft2(torch.randn(3, 4, dtype=torch.float64))
    assert differ(x * (1 + 1e-15), x) is None
    assert "differ" in differ(x + 1e-3j, x)


def test_undefined_point_is_said_not_judged():
    """Repeated eigenvalues: the eigenvectors' derivative is not defined; a route there is skipped
    (finite differences see the kink) or not_applicable, with the reason, never a mismatch."""
    family = op_family("linalg.eigh")
    checks = check_example(family, OpExample("linalg.eigh", form(UPLO="U", n=3,
                                                                 spectrum="repeated"), 1, (0,), 0))
    assert not [c for c in checks if c.status in WRONG]
    assert any(c.status in ("skipped", "not_applicable") and "repeated" in c.detail
               for c in checks)


@pytest.mark.slow  # a subprocess
def test_snippet_replays_the_failure():
    _, broken = LOWER_MATVEC
    ex = OpExample(broken.name, form(n=2), 1, (0, 0), 0)
    code = snippet(broken, ex, check_example(broken, ex))
    assert "LOWER_MATVEC[1].fn(torch.tensor([[" in code
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "reverse_ad" in proc.stdout and "mismatch" in proc.stdout


def test_budget_is_validated_and_bounds_the_campaign():
    correct, _ = SCALE
    with pytest.raises(InvalidArgument, match="budget=0"):
        fuzz_op(correct, budget=0)
    report = fuzz_op(correct, budget=1e-9, seed=0)  # spent before the first example
    assert report.examples == 0 and report.reason and str(report.verdict) == "unverified"


@pytest.mark.slow  # torch's OpInfo database
def test_unknown_operator_is_refused():
    pytest.importorskip("expecttest")
    with pytest.raises(InvalidArgument, match="did you mean"):
        op_family("choleksy_solve")


# -- campaigns: found and shrunk ------------------------------------------------------------------

SHRUNK = [
    (LOWER_MATVEC, {"reverse_ad"}, lambda ex: dict(ex.form) == {"n": 2} and ex.batch_size == 1),
    (POWER, {"forward_ad", "rev_over_fwd"},
     lambda ex: dict(ex.form) == {"n": 1, "cube": True} and ex.batch_size == 1),
    (TAKE_ROWS, {"reverse_ad"},
     lambda ex: dict(ex.form) == {"n": 1, "k": 2, "duplicates": True} and ex.batch_size == 1),
    (SCALE, {"vmap"}, lambda ex: ex.batch_size == 2 and ex.in_dims[1] is not None),
    (CHECKED_SQRT, {"errors"}, lambda ex: ex.batch_size == 2 and dict(ex.form)["n"] == 1),
]


@pytest.mark.slow
@pytest.mark.parametrize("pair, routes, minimal", SHRUNK,
                         ids=["triangle", "keyword_jvp", "duplicates", "batched_scalar", "errors"])
def test_campaign_finds_and_shrinks_each_broken_twin(pair, routes, minimal):
    correct, broken = pair
    report = fuzz_op(broken, max_examples=100, seed=0, shrink_examples=300)
    assert report.failure is not None, report.describe()
    assert {c.check for c in report.wrong} == routes, report.describe()
    assert minimal(report.failure), report.describe()
    assert report.snippet and f"example = {report.failure!r}" in report.snippet
    ok = fuzz_op(correct, max_examples=30, seed=0)
    assert ok.passed, ok.describe()


@pytest.mark.slow
def test_campaign_passes_correct_torch_families():
    for name in ("linalg.solve_triangular", "linalg.cholesky", "gather", "index_put", "pool",
                 "nn.functional.cross_entropy", "fft.irfft", "polar"):
        report = fuzz_op(op_family(name), max_examples=15, seed=0)
        assert report.passed, report.describe()


@pytest.mark.slow  # the CLI in a subprocess, torch's OpInfo database
def test_cli_ops_budget_fuzzes_and_reports(tmp_path):
    pytest.importorskip("expecttest")
    out = tmp_path / "ops.json"
    proc = subprocess.run([sys.executable, "-m", "jacverify", "ops", "--op", "cholesky_solve",
                           "--op", "pool", "--budget", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = {o["name"]: o for o in json.loads(out.read_text())["operators"]}
    failure = doc["cholesky_solve"]["fuzz"]["failure"]
    assert {w["check"] for w in failure["wrong"]} >= {"forward_ad", "reverse_ad"}
    assert "torch.cholesky_solve(torch.tensor(" in failure["snippet"]
    assert doc["pool"]["status"] == "agree" and doc["pool"]["fuzz"]["verdict"] == "passed"
    bad = subprocess.run([sys.executable, "-m", "jacverify", "ops", "--op", "sin", "--budget",
                          "-1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--budget -1 must be >= 0" in bad.stderr


def _det3(m):
    return (m[0, 0] * (m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1])
            - m[0, 1] * (m[1, 0] * m[2, 2] - m[1, 2] * m[2, 0])
            + m[0, 2] * (m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0]))


def _fwd_over_fwd_cases():
    import torch

    b = torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64)

    def cramer(m):  # x_i = det(m with column i replaced by b) / det(m)
        cols = [torch.stack([b if j == i else m[:, j] for j in range(3)], 1) for i in range(3)]
        return torch.stack([_det3(c) for c in cols]) / _det3(m)

    def layer_norm(t):
        return (t - t.mean(-1, keepdim=True)) / torch.sqrt(t.var(-1, unbiased=False, keepdim=True)
                                                           + 1e-5)

    return [
        ("layer_norm", lambda t: torch.nn.functional.layer_norm(t, (3,)), layer_norm, (2, 3)),
        ("linalg.det", torch.linalg.det, _det3, (3, 3)),
        ("linalg.solve", lambda m: torch.linalg.solve(m, b), cramer, (3, 3)),
    ]


@pytest.mark.parametrize("name", ["layer_norm", "linalg.det", "linalg.solve"])
def test_fwd_over_fwd_findings_by_decomposition(name):
    """The independent check of the sweep's forward-over-forward findings (README): a
    decomposition into ops whose routes agree, whose forward over forward FD of torch's own jvp
    reproduces at three steps, while torch's forward over forward does not."""
    import torch
    from torch.func import jvp

    _, op, decomposed, shape = next(c for c in _fwd_over_fwd_cases() if c[0] == name)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if shape == (3, 3):
        x = x + 3 * torch.eye(3, dtype=torch.float64)
    v, w = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2))

    def second(f):
        return jvp(lambda y: jvp(f, (y,), (v,))[1], (x,), (w,))[1]

    right = second(decomposed)
    for h in (1e-3, 1e-4, 1e-5):
        fd = (jvp(op, (x + h * w,), (v,))[1] - jvp(op, (x - h * w,), (v,))[1]) / (2 * h)
        assert torch.allclose(fd, right, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(second(op), right, rtol=1e-2)  # torch 2.13: wrong (the finding)
