"""NOTE [cost model], [method budget], [verification choice], [coupling probes]: estimates decide
what runs, never the machine's speed alone; each rule against a case it must refuse and one it
must let through."""

from __future__ import annotations

import math
import platform
import sys

import pytest

import torch

import jacverify
from jacverify.case import flatten, make_case
from jacverify.costs import FULL_FLOOR_S, METHOD_BUDGET_FLOOR_PASSES, Budget, UnitCosts, Work, \
    choose_verification
from jacverify.oracles.prechecks import separating_groups, check_coupling


def _wide(n: int = 8192) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return torch.nn.Linear(n, 2).double(), torch.randn(2, n, dtype=torch.float64)


def test_a_method_over_the_budget_is_not_applicable_with_its_estimate():
    """dual_loop makes N = 8192 passes where batched_grad makes M = 2: 4096x the cheapest, and
    over the floor of 64 passes."""
    net, x = _wide()
    report = jacverify.check(net, x, verification="projection")
    dual = report["dual_loop"]
    assert dual.status == "not_applicable" and dual.time_s is None
    assert "8,192 forward-mode passes of the batch" in dual.reason
    assert "over this check's method budget" in dual.reason and "methods=" in dual.reason
    assert report["batched_grad"].status == "agree" and report.passed


def test_a_method_named_in_methods_runs_whatever_its_estimate():
    net, x = _wide()
    report = jacverify.check(net, x, verification="projection", methods=["dual_loop"])
    assert report["dual_loop"].status == "agree"


def test_no_budget_when_method_budget_is_none():
    net, x = _wide(512)
    report = jacverify.check(net, x, verification="projection", method_budget=None)
    assert all(r.status != "not_applicable" for r in report.results)


def test_the_budget_is_a_factor_of_the_cheapest_estimate_with_a_floor_in_passes():
    units = UnitCosts(forward=1e-3, reverse=2e-3, saved_bytes=100)
    budget = Budget.of(units, [Work(10, "reverse"), Work(100, "jvp")], 5.0)
    assert budget.seconds == 5 * 10 * 2e-3
    assert budget.refuses(Work(100, "jvp")) and not budget.refuses(Work(50, "reverse"))
    tiny = Budget.of(UnitCosts(1e-6, 1e-6, 0), [Work(1, "reverse")], 5.0)
    assert not tiny.refuses(Work(METHOD_BUDGET_FLOOR_PASSES, "jvp"))
    assert "over 64 passes" in tiny.refuses(Work(METHOD_BUDGET_FLOOR_PASSES + 1, "jvp"))
    assert Budget.of(units, [Work(1, "reverse")], None) is None
    assert units.bytes(Work(10, "reverse", held=10), 7) == 10 * 100 + 7


@pytest.mark.parametrize("slowdown", [1e-3, 1.0, 1e3])
def test_which_methods_a_small_check_runs_does_not_depend_on_the_machines_speed(slowdown):
    """A CI run on a loaded machine once measured the 6 x 5 cube's pass at 0.33 ms and its 10 ms
    floor dropped functional_vectorized_forward (30 passes): the floor is now in passes."""
    units = UnitCosts(forward=slowdown * 5e-5, reverse=slowdown * 1.6e-4, saved_bytes=960)
    flat = flatten(make_case(lambda x: x ** 3, torch.randn(6, 5)))
    works = [w for m in jacverify.registered_methods() if (w := m.estimate(flat)) is not None]
    budget = Budget.of(units, works, 5.0)
    assert [w for w in works if budget.refuses(w)] == []
    wide = flatten(make_case(lambda x: x[:, :5] ** 3, torch.randn(6, 50)))  # M = 5, N = 50
    methods = [(m.name, w) for m in jacverify.registered_methods()
               if (w := m.estimate(wide)) is not None]
    budget = Budget.of(units, [w for _, w in methods], 5.0)
    refused = {name for name, w in methods if budget.refuses(w)}
    # B N = 300 and 2 N = 100 passes, over 64 and over 5x the cheapest (3 passes)
    assert refused == {"functional_vectorized_forward", "batched_double_backward"}


def test_auto_verification_is_full_when_cheap_and_projection_when_far_over_the_methods():
    x = torch.zeros(4, 1000)
    flat = flatten(make_case(torch.sin, x))
    slow = UnitCosts(forward=1e-3, reverse=3e-3, saved_bytes=0)
    # references: 6 N + 3 B M forwards = 6 s + 12 s, methods' cheapest 0.01 s
    mode, why = choose_verification(slow, flat, False, 0.01, 2**30)
    assert mode == "projection" and "over 10x the cheapest method's estimate" in why
    fast = UnitCosts(forward=1e-8, reverse=3e-8, saved_bytes=0)
    assert choose_verification(fast, flat, False, 1e-6, 2**30)[0] == "full"  # under the floor
    assert FULL_FLOOR_S > 6 * 1000 * 1e-8
    assert choose_verification(fast, flat, False, 1e-6, 2**10)[0] == "projection"  # memory


def test_unit_costs_survive_a_backward_that_raises():
    class NoBackward(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return x * 2

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, g):
            raise RuntimeError("broken on purpose")

    flat = flatten(make_case(NoBackward.apply, torch.randn(3, 2)))
    units = UnitCosts.measure(flat)
    assert units.reverse == 3 * units.forward


def test_coupling_between_two_distant_samples_is_found_and_named():
    """NOTE [coupling probes]: samples 2 and 5 of 8 move each other, nothing else does."""
    def f(x):
        y = x.clone()
        y[2] = x[2] + 0.5 * x[5]
        y[5] = x[5] + 0.5 * x[2]
        return torch.tanh(y)

    flat = flatten(make_case(f, torch.randn(8, 3, dtype=torch.float64)))
    coupling = check_coupling(flat, seed=0)
    assert coupling.coupled
    assert coupling.reason.startswith(("changing sample 2 changed the outputs of sample(s) 5",
                                       "changing sample 5 changed the outputs of sample(s) 2"))
    independent = check_coupling(flatten(make_case(torch.tanh, torch.randn(8, 3))), seed=0)
    assert not independent.coupled and independent.probes == 5  # C(5, 2) = 10 >= 8 samples


@pytest.mark.parametrize("b", [2, 3, 8, 20, 64, 71])
def test_coupling_groups_separate_every_ordered_pair_with_the_fewest_passes(b):
    """NOTE [coupling probes]: for every i != j some group holds i and not j, and no smaller k
    has C(k, k/2) >= B (Sperner); an interaction from one sample alone to one other is found for
    every such pair at B=8."""
    groups = [set(g) for g in separating_groups(b)]
    assert all(any(i in g and j not in g for g in groups)
               for i in range(b) for j in range(b) if i != j)
    k = len(groups)
    assert math.comb(k, k // 2) >= b > math.comb(k - 1, (k - 1) // 2)
    if b == 8:
        for i in range(b):
            for j in range(b):
                if i != j:
                    def f(x, i=i, j=j):
                        return x + 0.5 * torch.nn.functional.one_hot(
                            torch.tensor(j), b).to(x)[:, None] * x[i]
                    flat = flatten(make_case(f, torch.randn(b, 2, dtype=torch.float64)))
                    assert check_coupling(flat, seed=0).coupled, (i, j)


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim is glibc's")
def test_freed_tensor_memory_goes_back_to_the_system_when_a_run_left_it():
    """NOTE [freed memory]: pages torch freed in the middle of glibc's heap stay resident until
    malloc_trim; 100 freed 1 MB tensors between live ones come back (measured: 105 MB), and only
    when the resident size grew by over TRIM_ABOVE since the reading passed in."""
    from jacverify.measure import TRIM_ABOVE, release_freed_memory, resident_bytes

    big = torch.ones(2**22)  # freeing 16 MB raises glibc's mmap threshold past 1 MB
    del big
    start = resident_bytes()
    tensors = [torch.ones(2**18) for _ in range(200)]  # 1 MB each, from the heap
    del tensors[::2]
    before = resident_bytes()
    assert before - start > TRIM_ABOVE
    release_freed_memory(since=before)  # no growth since that reading: nothing is trimmed
    assert resident_bytes() > before - 2**20
    release_freed_memory(since=start)  # 200 MB of growth since: trimmed
    assert before - resident_bytes() > 50 * 2**20
