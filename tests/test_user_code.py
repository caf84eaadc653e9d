"""check_method for every quantity: the user's code called as written, its layout read from the
shapes, the PINN u_xx bugs flagged with the mixed partial named, seed-style tricks and their twins."""

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.func import hessian, jacrev, jvp, vjp, vmap

import jacverify
from jacverify import InvalidArgument, Status, Verdict
from jacverify.user_methods import calling_convention, detect_layout, layouts, user_method

FILES = Path(__file__).parent / "user_files"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_user_file_{name}", FILES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


torch.manual_seed(0)
NET = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
SQUARE = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
SCALAR = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).double()


# --- the two public PINN bugs, in small user files ---

def test_burgers_u_xx_bug_is_flagged_with_the_mixed_partial():
    pinn = _load("pinn_burgers")
    report = jacverify.check_method(pinn.u_xx_buggy, pinn.net, _x(8, 2), quantity="hessian_diagonal",
                                    coordinates=(0,))
    assert report.verdict == Verdict.FAILED
    result = report["u_xx_buggy"]
    assert result.status == Status.MISMATCH
    assert "d²y/dx[0]² + d²y/dx[0]dx[1]" in result.reason and "mixed partial" in result.reason
    assert "worst entry in your layout" in result.reason and "sample" in result.reason
    assert "u_xx_buggy (your own code)" in report.hint
    assert "called as u_xx_buggy(...) (f closed over)" in " ".join(report.notes)


def test_burgers_u_xx_fixed_passes():
    pinn = _load("pinn_burgers")
    report = jacverify.check_method(pinn.u_xx_fixed, pinn.net, _x(8, 2), quantity="hessian_diagonal",
                                    coordinates=(0,))
    assert report.passed, report.failure_message()


def test_pinn_pair_bug_is_flagged_in_its_second_derivative_only():
    pinn = _load("pinn_heat")
    net = pinn.U().double()
    bad = jacverify.check_method(pinn.derivatives_buggy, net, _x(6, 2),
                                 quantity="jacobian_and_hessian_diagonal", coordinates=(0,))
    assert bad.verdict == Verdict.FAILED
    assert bad["derivatives_buggy[0]"].status == Status.AGREE
    assert bad["derivatives_buggy[1]"].status == Status.MISMATCH
    assert "mixed partial d²y/dx[0]dx[1] is added" in bad["derivatives_buggy[1]"].reason
    good = jacverify.check_method(pinn.derivatives_fixed, net, _x(6, 2),
                                  quantity="jacobian_and_hessian_diagonal", coordinates=(0,))
    assert good.passed, good.failure_message()


def test_pinn_fixture_passes_the_fixed_version(jacverify):
    pinn = _load("pinn_burgers")
    jacverify.check_method(pinn.u_xx_fixed, pinn.net, _x(8, 2), quantity="hessian_diagonal",
                           coordinates=(0,))


@pytest.mark.slow
def test_pinn_fixture_fails_the_buggy_version(pytester):
    pytester.makepyfile(test_pinn=f"""
        import importlib.util, torch
        spec = importlib.util.spec_from_file_location("pinn", {str(FILES / "pinn_burgers.py")!r})
        pinn = importlib.util.module_from_spec(spec); spec.loader.exec_module(pinn)

        def test_u_xx(jacverify):
            X = torch.randn(8, 2, dtype=torch.float64)
            jacverify.check_method(pinn.u_xx_buggy, pinn.net, X, quantity="hessian_diagonal",
                                   coordinates=(0,))
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*hint: u_xx_buggy (your own code) disagrees*",
                                 "*u_xx_buggy (user): mismatch*mixed partial*"])


# --- seed-style implementations as user code, each with a broken twin ---

def sum_trick(f, x):
    return jacrev(lambda z: f(z).sum(0))(x).permute(1, 0, 2)


def sum_trick_reshaped(f, x):  # twin: reshape where a permute was needed
    jac = jacrev(lambda z: f(z).sum(0))(x)
    return jac.reshape(x.shape[0], jac.shape[0], x.shape[1])


def repeat_trick(f, x):
    b, m = x.shape[0], 2
    xs = x.repeat(m, 1).requires_grad_()
    cot = torch.eye(m, dtype=x.dtype).repeat_interleave(b, 0)
    (g,) = torch.autograd.grad(f(xs), xs, cot)
    return g.reshape(m, b, -1).permute(1, 0, 2)


def repeat_trick_interleaved(f, x):  # twin: copies interleaved but read as if stacked
    b, m = x.shape[0], 2
    xs = x.repeat_interleave(m, 0).requires_grad_()
    cot = torch.eye(m, dtype=x.dtype).repeat_interleave(b, 0)
    (g,) = torch.autograd.grad(f(xs), xs, cot)
    return g.reshape(m, b, -1).permute(1, 0, 2)


def hessian_diagonal_full(f, x):
    return vmap(hessian(lambda xi: f(xi[None])[0]))(x).diagonal(dim1=-2, dim2=-1)


def hessian_diagonal_rowsum(f, x):  # twin: the Hessian's rows summed
    return vmap(hessian(lambda xi: f(xi[None])[0]))(x).sum(-1)


def per_sample_jvp_double_backward(f, x, v):
    x = x.clone().requires_grad_()
    y = f(x)
    u = torch.zeros_like(y, requires_grad=True)
    (g,) = torch.autograd.grad(y, x, u, create_graph=True)
    return torch.autograd.grad(g, u, v)[0]


def per_sample_jvp_double_backward_one_tangent(f, x, v):  # twin: sample 0's tangent for all
    x = x.clone().requires_grad_()
    y = f(x)
    u = torch.zeros_like(y, requires_grad=True)
    (g,) = torch.autograd.grad(y, x, u, create_graph=True)
    return torch.autograd.grad(g, u, v[:1].expand_as(v))[0]


def hessian_loop(f, x):
    x = x.clone().requires_grad_()
    y = f(x)
    out = x.new_zeros(x.shape[0], y.shape[1], x.shape[1], x.shape[1])
    for m in range(y.shape[1]):
        (g,) = torch.autograd.grad(y[:, m].sum(), x, create_graph=True)
        for j in range(x.shape[1]):
            out[:, m, j] = torch.autograd.grad(g[:, j].sum(), x, retain_graph=True)[0]
    return out


def hessian_loop_rowsums(f, x):  # twin: grad of the summed gradient for every row
    x = x.clone().requires_grad_()
    y = f(x)
    out = x.new_zeros(x.shape[0], y.shape[1], x.shape[1], x.shape[1])
    for m in range(y.shape[1]):
        (g,) = torch.autograd.grad(y[:, m].sum(), x, create_graph=True)
        for j in range(x.shape[1]):
            out[:, m, j] = torch.autograd.grad(g.sum(), x, retain_graph=True)[0]
    return out


def jvp_set(f, x, vectors):
    return torch.stack([jvp(f, (x,), (v,))[1] for v in vectors])


def jvp_set_by_vjp(f, x, vectors):  # twin: vᵀJ where J v was meant (square J)
    _, pullback = vjp(f, x)
    return torch.stack([pullback(v)[0] for v in vectors])


def vjp_set_columns(x, vectors):  # f closed over; one column per vector
    _, pullback = vjp(SQUARE_POINT, x)
    return torch.stack([pullback(v)[0] for v in vectors], -1)


def vjp_set_columns_by_jvp(x, vectors):  # twin
    return torch.stack([jvp(SQUARE_POINT, (x,), (v,))[1] for v in vectors], -1)


def SQUARE_POINT(x):
    return SQUARE(x[None])[0]


TRICKS = [
    # (quantity, right, twin, fn, x, extra kwargs)
    ("batch_jacobian", sum_trick, sum_trick_reshaped, NET, (6, 3), {}),
    ("batch_jacobian", repeat_trick, repeat_trick_interleaved, NET, (6, 3), {}),
    ("hessian_diagonal", hessian_diagonal_full, hessian_diagonal_rowsum, NET, (4, 3), {}),
    ("per_sample_jvp", per_sample_jvp_double_backward, per_sample_jvp_double_backward_one_tangent,
     NET, (5, 3), {}),
    ("hessian", hessian_loop, hessian_loop_rowsums, NET, (3, 3), {}),
    ("jvp_set", jvp_set, jvp_set_by_vjp, SQUARE_POINT, (3,), {"vectors": _x(2, 3, seed=2)}),
    ("vjp_set", vjp_set_columns, vjp_set_columns_by_jvp, SQUARE_POINT, (3,),
     {"vectors": _x(2, 3, seed=2)}),
]


@pytest.mark.parametrize("quantity,right,twin,fn,shape,kwargs", TRICKS,
                         ids=[f"{t[0]}-{t[1].__name__}" for t in TRICKS])
def test_seed_trick_passes_and_its_broken_twin_is_flagged(quantity, right, twin, fn, shape, kwargs):
    x = _x(*shape)
    good = jacverify.check_method(right, fn, x, quantity=quantity, **kwargs)
    assert good.passed, good.failure_message()
    bad = jacverify.check_method(twin, fn, x, quantity=quantity, **kwargs)
    assert bad.verdict == Verdict.FAILED
    assert bad[twin.__name__].status == Status.MISMATCH
    assert f"{twin.__name__} (your own code)" in bad.hint
    assert "worst entry in your layout" in bad[twin.__name__].reason


# --- layouts and calling conventions ---

def test_sum_trick_layout_is_detected_and_stated():
    report = jacverify.check_method(lambda x: jacrev(lambda z: NET(z).sum(0))(x), NET, _x(4, 3))
    assert report.passed
    assert any("sum trick (*out, B, *in) = (2, 4, 3)" in n for n in report.notes)


def test_tuple_per_input_layout():
    def f(a, b):
        return torch.tanh(a * b)

    def mine(f, a, b):
        return tuple(vmap(jacrev(lambda ai, bi: f(ai, bi), argnums=(0, 1)))(a, b))

    report = jacverify.check_method(mine, f, (_x(4, 3), _x(4, 3, seed=1)))
    assert report.passed, report.failure_message()
    assert any("a tuple per input" in n for n in report.notes)


def test_an_ambiguous_layout_is_refused_with_the_fix():
    square = torch.nn.Linear(3, 4).double()  # out = (4,) = (B,): batch first and sum trick collide
    with pytest.raises(InvalidArgument, match="layout='batch_first' or layout='sum_trick'"):
        detect_layout(torch.zeros(4, 4, 3), layouts("batch_jacobian", 4, ((4,),), ((3,),)))
    report = jacverify.check_method(sum_trick, square, _x(4, 3), layout="sum_trick")
    assert report["sum_trick"].status == Status.MISMATCH  # sum_trick permutes: it is batch first
    assert jacverify.check_method(sum_trick, square, _x(4, 3), layout="batch_first").passed


def test_check_method_refuses_an_ambiguous_result():
    with pytest.raises(InvalidArgument, match="vjp_set_columns: the result's layout is ambiguous"):
        jacverify.check_method(vjp_set_columns, SQUARE_POINT, _x(3), quantity="vjp_set",
                               vectors=_x(3, 3, seed=2))


def test_a_result_in_no_layout_lists_the_accepted_ones():
    report = jacverify.check_method(lambda f, x: torch.zeros(7), NET, _x(4, 3))
    assert report.verdict == Verdict.FAILED
    assert "has none of the layouts batch_jacobian accepts" in report["<lambda>"].reason


@pytest.mark.parametrize("impl,expected", [
    (lambda f, x: x, "with_fn"), (lambda x: x, "inputs_only"),
    (lambda model, x=None: x, "with_fn"), (lambda x, v=None: x, "inputs_only"),
    (lambda *args: args, "with_fn"),
])
def test_calling_convention_from_the_signature(impl, expected):
    assert calling_convention(impl, 1) == expected


def test_calling_convention_that_fits_nothing_is_refused():
    with pytest.raises(InvalidArgument, match=r"method=.* must be callable with the function"):
        calling_convention(lambda a, b, c: a, 1)


def test_a_user_method_is_registered_for_a_second_order_quantity():
    mine = user_method(hessian_diagonal_rowsum, quantity="hessian_diagonal", name="rowsum")
    report = jacverify.check_hessian_diagonals(NET, _x(3, 3), methods=["loop"],
                                               extra_methods=[mine])
    assert report["loop"].status == Status.AGREE and report["rowsum"].status == Status.MISMATCH


def test_coordinates_are_validated():
    with pytest.raises(InvalidArgument, match=r"coordinates=\(5,\) \(type=tuple\) must be"):
        jacverify.check_method(hessian_diagonal_full, SCALAR, _x(3, 2), quantity="hessian_diagonal",
                               coordinates=(5,))


def test_a_full_jacobian_with_a_wrong_cross_sample_block_fails():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh()).double()
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def full(f, x):
        return torch.autograd.functional.jacobian(f, x)

    def leaky(f, x):
        j = torch.autograd.functional.jacobian(f, x).clone()
        j[0, :, 1, :] += 5  # sample 1 moves sample 0: wrong where samples are independent
        return j

    assert jacverify.check_method(full, net, x).passed
    report = jacverify.check_method(leaky, net, x)
    assert not report.passed and "off the sample diagonal" in report["leaky"].reason
