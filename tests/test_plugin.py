"""The pytest plugin, driven through real pytest runs in subprocesses (pytester): those are in the
slow set (``python -m pytest -m slow``); the import check stays in the default run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jacverify import registered_methods

# a wrong backward fails the reverse-mode methods, a wrong jvp the forward-mode ones
N_REVERSE = sum(m.mode == "reverse" for m in registered_methods())
N_FORWARD = sum(m.mode == "forward" for m in registered_methods())

DOWNSTREAM = """
import pytest, torch
from jacverify.examples.twins import CubeWrongBackward, cube_net
from jacverify.examples.networks import BatchCoupled

def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))

@pytest.mark.jacverify(methods=["vmap_jacrev", "sum_trick"], dtype=torch.float64)
def test_model_jacobians(jacverify):
    report = jacverify.check(model(), torch.randn(8, 5))
    assert [r.method for r in report.results] == ["vmap_jacrev", "sum_trick"]
    assert report.case.dtype == torch.float64

def test_my_fast_jacobian(jacverify):
    def my_batch_jacobian(f, x):
        return torch.func.vmap(torch.func.jacrev(lambda xi: f(xi[None])[0]))(x)
    jacverify.check_method(my_batch_jacobian, model(), torch.randn(8, 5))
"""

BROKEN = """
import torch
from jacverify.examples.twins import CubeWrongBackward, cube_net

def test_broken_model(jacverify):
    jacverify.check(cube_net(CubeWrongBackward), torch.randn(6, 5))

def test_my_wrong_jacobian(jacverify):
    def my_batch_jacobian(f, x):
        return torch.func.vmap(torch.func.jacrev(lambda xi: f(xi[None])[0]))(x).flip(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Tanh())  # per-sample Jacobians differ
    jacverify.check_method(my_batch_jacobian, net, torch.randn(4, 5))
"""


def test_importing_the_plugin_does_not_import_torch():
    code = ("import sys, jacverify.pytest_plugin, jacverify.options; "
            "assert 'torch' not in sys.modules, 'torch was imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.slow  # pytest in a subprocess
def test_plugin_is_registered_through_the_entry_point(pytester):
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["jacverify: Jacobian cross-checks:", "*--jacverify-methods=NAMES*",
                                 "*--jacverify-report=PATH*"])


@pytest.mark.slow  # pytest in a subprocess
def test_a_passing_downstream_test(pytester):
    pytester.makepyfile(test_downstream=DOWNSTREAM)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*= jacverify summary =*", "2 check(s) in 2 test(s): 2 passed, 0 failed, 0 unverified",
                                 "*vmap_jacrev * 1 * 0*", "slowest methods (mean time per check): *"])


@pytest.mark.slow  # pytest in a subprocess
def test_a_failing_downstream_test_shows_the_report(pytester):
    pytester.makepyfile(test_broken=BROKEN)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        f"*jacverify: batch_jacobian: FAILED: {N_REVERSE} method(s) disagree with the "
        "finite_differences reference; the references found a wrong derivative formula",
        "hint: only reverse-mode methods disagree: a backward formula is wrong*",
        "finding: the float64 loop reference disagrees with finite differences*",
        f"{N_REVERSE} methods (reverse) ended the same way -- loop, loop_rows, *: mismatch",
        "  against finite_differences: max abs error *, max rel error *; worst entry (*) "
        "(sample *, output[[]*[]], input[[]*[]]): value *, reference * (finite_differences), "
        "allowed error *",
        "  tolerance: |value - ref| <= rtol * (|ref| + max|ref| of its row or column, the smaller + d of its sample and "
        "output) + 2 * fd_error, rtol=0.00035 (sqrt(eps) of float32)",
        "case: jacverify.make_case(Sequential(...), (torch.randn(6, 5),), *seed=0)",
        "seed: 0",
        "replay (saved module and inputs):",
        "saved = torch.load(*.jacverify/replays/*.pt*",
    ])
    result.stdout.fnmatch_lines([
        "*jacverify: batch_jacobian: FAILED: 1 method(s) disagree with the loop and finite_differences*",
        "hint: my_batch_jacobian (your own code) disagrees with the references*",
        "my_batch_jacobian (user): mismatch -- worst entry in your layout*"])
    assert "Traceback" not in result.stdout.str()


COUPLED = """
import pytest, torch
from jacverify.examples.networks import BatchCoupled

def test_default_methods(jacverify):
    jacverify.check(BatchCoupled().train(), torch.randn(6, 5))

@pytest.mark.jacverify(methods=["sum_trick", "loop"])
def test_asked_for_sum_trick(jacverify):
    jacverify.check(BatchCoupled().train(), torch.randn(6, 5))
"""


@pytest.mark.slow  # pytest in a subprocess
def test_not_applicable_fails_only_when_asked_for_by_name(pytester):
    pytester.makepyfile(test_coupled=COUPLED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_asked_for_sum_trick*",
                                 "asked-for method sum_trick (reverse, vmap): not_applicable -- "
                                 "assumes samples do not interact, but changing sample 0 *"])


OPTIONED = """
import torch

def test_model_jacobians(jacverify):
    report = jacverify.check(torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Tanh()),
                             torch.randn(8, 5))
    assert [r.method for r in report.results] == ["loop", "dual_loop"]
    assert report.case.dtype == torch.float64 and report.case.seed == 7

def test_my_fast_jacobian(jacverify):
    def my_batch_jacobian(f, x):
        return torch.func.vmap(torch.func.jacrev(lambda xi: f(xi[None])[0]))(x)
    jacverify.check_method(my_batch_jacobian, torch.nn.Linear(5, 3), torch.randn(8, 5))
"""


@pytest.mark.slow  # pytest in a subprocess
def test_options_ini_and_session_json(pytester):
    pytester.makepyfile(test_downstream=OPTIONED)
    pytester.makeini("[pytest]\njacverify_dtype = float64\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--jacverify-methods=loop,dual_loop",
                                           "--jacverify-report=out.json", "--jacverify-seed=7")
    result.assert_outcomes(passed=2)
    doc = json.loads((pytester.path / "out.json").read_text())
    assert (doc["schema_version"], doc["kind"]) == (2, "pytest")
    assert len(doc["checks"]) == 2
    assert {c["verdict"] for c in doc["checks"]} == {"passed"}
    first, second = doc["checks"]
    assert first["nodeid"] == "test_downstream.py::test_model_jacobians"
    assert (first["dtype"], first["seed"]) == ("float64", 7)
    # check_method runs the user's method plus the methods asked for on the command line
    assert [r["method"] for r in second["results"]] == ["loop", "dual_loop", "my_batch_jacobian"]


@pytest.mark.slow  # pytest in a subprocess
@pytest.mark.parametrize(("marker", "message"), [
    ("methods=['sum_trik']", "*'sum_trik', which is not a registered batch_jacobian method; did you mean 'sum_trick'?*"),
    ("method=['sum_trick']", "*unknown keyword 'method'; did you mean 'methods'?*"),
])
def test_marker_keywords_and_method_names_are_validated(pytester, marker, message):
    pytester.makepyfile(test_bad=f"""
import pytest
@pytest.mark.jacverify({marker})
def test_x(jacverify):
    pass
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: test_bad.py::test_x: @pytest.mark.jacverify*{message.strip('*')}*"])


@pytest.mark.slow  # pytest in a subprocess
def test_bad_option_value_is_a_usage_error(pytester):
    pytester.makepyfile(test_downstream=DOWNSTREAM)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--jacverify-dtype=float8")
    result.stdout.fnmatch_lines(["*jacverify options: dtype 'float8' is not one of float32, *"])


@pytest.mark.slow  # pytest in a subprocess
def test_xdist_loses_and_duplicates_nothing(pytester):
    body = "\n".join(
        f"def test_{i}(jacverify):\n    jacverify.check(torch.nn.Linear(3, 2), torch.randn({i + 1}, 3),"
        f" methods=['loop', 'sum_trick'])\n" for i in range(6))
    pytester.makepyfile(test_many="import torch\n" + body)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2",
                                           "--jacverify-report=out.json")
    result.assert_outcomes(passed=6)
    doc = json.loads((pytester.path / "out.json").read_text())
    ids = sorted(c["nodeid"] for c in doc["checks"])
    assert ids == sorted(f"test_many.py::test_{i}" for i in range(6))
    result.stdout.fnmatch_lines(["6 check(s) in 6 test(s): 6 passed, 0 failed, 0 unverified"])


@pytest.mark.slow  # pytest in a subprocess
def test_warnings_as_errors_do_not_hide_a_wrong_jvp(pytester):
    """torch warns inside forward AD; under -W error that must not turn methods 'unsupported'."""
    pytester.makepyfile(test_jvp="""
import torch
from jacverify.examples.twins import CubeWrongJvp, cube_net

def test_wrong_jvp(jacverify):
    jacverify.check(cube_net(CubeWrongJvp), torch.randn(6, 5))
""")
    # (pytest-benchmark warns at start-up under xdist, which -W error would make fatal)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:benchmark", "-W", "error")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*jacverify: batch_jacobian: FAILED: {N_FORWARD} method(s) disagree*"])


@pytest.mark.slow  # pytest in a subprocess
def test_fixture_fuzzes_a_repo_s_own_batching_rules(pytester):
    pytester.makepyfile(test_rules="""
from jacverify.examples.rules import MixesSamples, RowScaled

def test_good_rule(jacverify):
    assert jacverify.fuzz_rule(RowScaled, max_examples=10).passed

def test_bad_rule(jacverify):
    jacverify.fuzz_rule(MixesSamples, max_examples=30, shrink_seconds=600)  # ends on its own
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--jacverify-seed", "1")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*MixesSamples: FAILED*", "*vmap: values differ*",
                                 "*shrunk to RuleExample(batch_size=2*replay with:",
                                 "*as_target(MixesSamples)*"])


UNVERIFIED = """
import torch

class BackwardRaises(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x.sin()
    @staticmethod
    def setup_context(ctx, inputs, output):
        pass
    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("broken on purpose")

def test_nothing_verified(jacverify):
    jacverify.check(BackwardRaises.apply, torch.randn(3, 2, dtype=torch.float64))

def test_every_quantity(jacverify):
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh()).double()
    x = torch.randn(4, 2, dtype=torch.float64)
    jacverify.check_hessians(net, x)
    jacverify.check_hessian_diagonals(net, x)
    jacverify.check_per_sample_jvps(net, x, torch.randn(4, 2, dtype=torch.float64))
    jacverify.check_jvps(lambda p: net(p[None])[0], x[0], torch.randn(2, 2, dtype=torch.float64))
    jacverify.check_vjps(lambda p: net(p[None])[0], x[0], torch.randn(2, 3, dtype=torch.float64))
"""


@pytest.mark.slow  # pytest in a subprocess
def test_the_fixture_fails_an_unverified_check_and_has_every_quantity(pytester):
    pytester.makepyfile(test_unverified=UNVERIFIED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*jacverify: batch_jacobian: UNVERIFIED: no method was verified*"])
    result.stdout.fnmatch_lines(["*6 check(s) in 2 test(s): 5 passed, 0 failed, 1 unverified"])


@pytest.mark.slow  # pytest in a subprocess
def test_an_unwritable_report_path_is_a_usage_error_before_any_test(pytester):
    pytester.makepyfile(test_downstream=DOWNSTREAM)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider",
                                           "--jacverify-report=/nonexistent-dir/out.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--jacverify-report '/nonexistent-dir/out.json'*does not exist*"])


@pytest.mark.slow  # pytest in a subprocess
def test_a_test_that_takes_the_fixture_and_checks_nothing_is_warned(pytester):
    pytester.makepyfile(test_idle="def test_idle(jacverify):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*takes the jacverify fixture but ran no check*"])
