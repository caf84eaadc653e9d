"""Layouts the engine accepts, and the specific error every bad input gets."""

from __future__ import annotations

import pytest
import torch

import jacverify
from jacverify.examples import networks as nets


def _randn(*shape: int, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_several_inputs_each_get_their_block():
    def f(x, y):  # per sample: x (3,), y (2, 2) -> out (2,)
        return torch.stack([(x * x).sum(-1) * y[:, 0, 1], torch.sin(x[:, 0]) + y.sum((1, 2))], 1)

    x, y = _randn(4, 3), _randn(4, 2, 2, seed=2)
    report = jacverify.check(f, (x, y))
    assert report.passed, report.failure_message()
    jx = torch.func.vmap(torch.func.jacrev(lambda a, b: f(a[None], b[None])[0], argnums=(0, 1)))(x, y)
    expected = torch.cat([jx[0].reshape(4, 2, 3), jx[1].reshape(4, 2, 4)], dim=2)
    torch.testing.assert_close(report.reference, expected)


def test_batch_axis_one_and_tuple_outputs():
    lin = torch.nn.Linear(3, 2).double()

    def f(x):  # x: (T=2, B=5, 3); outputs keep the batch on axis 1
        h = lin(x)
        return h.tanh(), h.sum(0, keepdim=True)

    report = jacverify.check(f, _randn(2, 5, 3), batch_axis=1)
    assert report.passed, report.failure_message()
    assert report.reference.shape == (5, 2 * 2 + 2, 2 * 3)
    assert report.flat.describe_index((4, 5, 5)) == "sample 4, output[1][0, 1], input[1, 2]"


def test_out_batch_axis_differs_from_batch_axis():
    report = jacverify.check(lambda x: x.sin().T, _randn(4, 3), out_batch_axis=1)
    assert report.passed
    torch.testing.assert_close(report.reference, torch.diag_embed(_randn(4, 3).cos()))


def test_float32_method_against_float64_references():
    report = jacverify.check(nets.ReadmeNet(), _randn(8, 5, dtype=torch.float32))
    assert report.reference_dtype == torch.float64
    assert report.passed
    assert all(r.max_rel_error < 1e-5 for r in report.results if r.status == "agree")


def test_function_that_cannot_run_in_float64_gets_references_in_its_own_dtype():
    net = nets.ReadmeNet()  # float32 weights, closed over: the function ignores its input's dtype
    report = jacverify.check(lambda x: net(x.float()), _randn(8, 5, dtype=torch.float32))
    assert report.reference_dtype == torch.float32
    assert any("references computed in float32" in n for n in report.notes)
    assert report.passed, report.failure_message()


def test_unknown_method_suggests_the_closest():
    with pytest.raises(jacverify.InvalidArgument, match="'vmap_jacrevv'.*did you mean 'vmap_jacrev'"):
        jacverify.check(nets.ReadmeNet(), _randn(2, 5), methods=["vmap_jacrevv"])


BAD = [
    pytest.param(lambda: ((nets.ReadmeNet(), torch.ones(4, 5, dtype=torch.long)), {}),
                 "inputs\\[0\\] has dtype torch.int64, which has no derivative", id="integer"),
    pytest.param(lambda: ((nets.ReadmeNet(), [torch.ones(4, 5), 3]), {}),
                 "inputs\\[1\\]=3 \\(type=int\\) is not a tensor", id="non_tensor"),
    pytest.param(lambda: ((lambda x, y: x + y, (torch.ones(4, 5), torch.ones(3, 5))), {}),
                 "different batch sizes along batch_axis=0: \\(4, 5\\), \\(3, 5\\)", id="batch_sizes"),
    pytest.param(lambda: ((nets.ReadmeNet(), torch.ones(4, 5)), {"batch_axis": 2}),
                 "batch_axis=2 is out of range for inputs\\[0\\] of shape \\(4, 5\\); use an axis in \\[0, 1\\]",
                 id="batch_axis"),
    pytest.param(lambda: ((lambda x: x.sum(0), torch.ones(4, 5)), {}),
                 "the output has shape \\(5,\\), with no batch axis 0 of size 4", id="no_batch_axis"),
    pytest.param(lambda: ((lambda x: x.sum(), torch.ones(4, 5)), {}),
                 "the output has shape \\(\\), with no batch axis", id="scalar_output"),
    pytest.param(lambda: ((nets.ReadmeNet(), torch.ones(4, 5)), {"dtype": torch.int32}),
                 "dtype=torch.int32 .* must be a floating torch.dtype", id="dtype"),
    pytest.param(lambda: ((42, torch.ones(4, 5)), {}), "fn=42 \\(type=int\\) is not callable",
                 id="not_callable"),
    pytest.param(lambda: ((nets.ReadmeNet(), torch.ones(4, 5)), {"max_memory": -1}),
                 r"max_memory=-1 \(type=int\) must be a positive number", id="max_memory"),
    pytest.param(lambda: ((nets.ReadmeNet(), torch.ones(4, 5)), {"max_memory": 1.5}),
                 r"max_memory=1.5 \(type=float\) must be a whole number of bytes",
                 id="fractional_max_memory"),  # int() made it a budget of 1 byte
    pytest.param(lambda: ((lambda x: x[:, :0], torch.ones(4, 5)), {}),
                 r"the Jacobian per sample is empty: 0 output entries by 5 input entries",
                 id="no_output_entries"),  # torch's max() of an empty tensor, from a probe
    pytest.param(lambda: ((lambda x: x.sum(1, keepdim=True), torch.ones(4, 0)), {}),
                 r"empty: 1 output entries by 0 input entries", id="no_input_entries"),
    pytest.param(lambda: ((nets.ReadmeNet(), torch.ones(4, 5)), {"rtol": {torch.float32: 0}}),
                 "tolerances\\[torch.float32\\]=0 must be a positive number", id="rtol"),
]


@pytest.mark.parametrize(("make", "message"), BAD)
def test_bad_input_is_invalid_argument_with_a_specific_message(make, message):
    args, kwargs = make()
    with pytest.raises(jacverify.InvalidArgument, match=message):
        jacverify.check(*args, **kwargs)


@pytest.mark.parametrize(("make", "message"), [
    p for p in BAD if p.id in ("fractional_max_memory", "no_output_entries", "no_input_entries")])
def test_batch_jacobian_refuses_the_same_bad_input(make, message):
    """auto's plan: its coupling probe raised torch's "max(): Expected reduction dim" on an output
    with no entries, and max_memory=1.5 was refused as "max_memory=1 bytes cannot hold"."""
    (fn, x), kwargs = make()
    jacverify.clear_plans()
    with pytest.raises(jacverify.InvalidArgument, match=message):
        jacverify.batch_jacobian(fn, x, max_memory=kwargs.get("max_memory"))


def test_cuda_asked_for_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    with pytest.raises(jacverify.InvalidArgument, match="CUDA is not available here; use 'cpu'"):
        jacverify.check(nets.ReadmeNet(), torch.ones(2, 5), device="cuda")


def test_function_that_raises():
    with pytest.raises(jacverify.FunctionRaised, match="raised RuntimeError: .*mat1 and mat2.*"
                       "inputs of shape \\(4, 7\\)"):
        jacverify.check(nets.ReadmeNet(), torch.ones(4, 7))


def test_non_finite_output():
    with pytest.raises(jacverify.NonFiniteOutput, match="returned -inf at sample 0, output\\[0\\]"):
        jacverify.check(torch.log, torch.zeros(2, 3))


def test_dropout_in_training_mode_is_nondeterministic():
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Dropout(0.5)).train()
    with pytest.raises(jacverify.NondeterministicFunction, match="model.eval\\(\\)"):
        jacverify.check(net, _randn(4, 5, dtype=torch.float32))


def test_hidden_state_is_nondeterministic():
    calls = []

    def f(x):
        calls.append(1)
        return x * len(calls)

    with pytest.raises(jacverify.NondeterministicFunction, match="randomness or hidden state"):
        jacverify.check(f, _randn(3, 2))


def test_jacobian_too_large_is_refused_before_computing():
    b, n = 64, 2048
    with pytest.raises(jacverify.JacobianTooLarge, match=r"need 6144\.0 MiB .*B=64, out=2048, in=2048"):
        jacverify.check(torch.sin, torch.zeros(b, n), max_memory=2**30, verification="full")


def test_auto_verification_projects_when_the_full_references_do_not_fit():
    """NOTE [verification choice]: the default does not refuse the case; it projects and says
    why (the full references need 3 x 8 x 512 x 512 float64 = 48 MiB, over 32 MiB)."""
    report = jacverify.check(torch.sin, _randn(8, 512), max_memory=2**25)
    assert report.verification.startswith("projection")
    assert any("full references need 48 MiB, over max_memory" in n for n in report.notes)
    assert report.passed


def test_method_too_large_for_the_budget_is_not_applicable():
    report = jacverify.check(torch.sin, _randn(16, 8), max_memory=16 * 8 * 8 * 8 * 3,
                             methods=["full_diagonal", "sum_trick"])
    assert report["full_diagonal"].status == "not_applicable"
    assert "over the max_memory" in report["full_diagonal"].reason
    # in bytes too: "needs about 0.0 MiB ..., over the max_memory=100 bytes" read as a
    # contradiction (a fresh user)
    assert report["full_diagonal"].reason.startswith("needs about ") \
        and " bytes (0.1 MiB: " in report["full_diagonal"].reason
    assert report["sum_trick"].status == "agree"


def test_a_method_that_raises_is_unsupported_and_the_check_goes_on():
    def broken(flat):
        raise RuntimeError("no batching rule for aten::frobnicate\nmore detail")

    method = jacverify.Method("frobnicate", broken, "reverse", vectorized=True, assumes_independent=True)
    report = jacverify.check(torch.sin, _randn(3, 2), methods=["loop"], extra_methods=[method])
    assert report["frobnicate"].status == "unsupported"
    assert report["frobnicate"].reason == "RuntimeError: no batching rule for aten::frobnicate"
    assert report.passed


def test_a_method_with_the_wrong_shape_is_a_mismatch():
    def transposed(flat):  # (B, in, out) instead of (B, out, in)
        return torch.func.vmap(torch.func.jacrev(lambda xi: flat.fn(xi[None])[0]))(flat.x).mT

    method = jacverify.Method("transposed", transposed, "reverse", vectorized=True,
                              assumes_independent=True)
    report = jacverify.check(lambda x: x[:, :1] * x[:, 1:].expand(-1, 4), _randn(3, 2),
                             methods=[], extra_methods=[method])
    assert report["transposed"].status == "mismatch"
    assert report["transposed"].reason == ("returned (3, 2, 4), expected shape (3, 4, 2); it looks "
                                           "transposed: (B, in, out) rather than (B, out, in)")
    assert not report.passed


@pytest.mark.parametrize("method", ["auto", "batched_grad"])
def test_batch_jacobian_names_x_when_it_holds_nan(method):
    """The refusal named ``inputs[0]`` (make_case's name), where batch_jacobian's argument is
    ``x`` (a fresh user)."""
    jacverify.clear_plans()
    x = torch.randn(4, 3)
    x[1, 2] = float("nan")
    with pytest.raises(jacverify.InvalidArgument, match=r"^x \(shape \(4, 3\)\) holds 1 NaN or Inf "
                       "entry; batch_jacobian's first call"):
        jacverify.batch_jacobian(torch.nn.Linear(3, 2), x, method=method)
