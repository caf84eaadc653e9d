"""pytest-benchmark over the bench suite: every method and auto, one group per case.

Not in the default test run. Run with:  python -m pytest benchmarks -p no:xdist
(add --benchmark-save=NAME to keep a run, --benchmark-compare to compare with the last saved one).
`jacverify bench --suite default` measures the same cases in one process with memory and sweeps.
"""

from __future__ import annotations

import pytest

import jacverify
from jacverify.bench import SUITES
from jacverify.case import flatten, make_case

METHODS = [m.name for m in jacverify.registered_methods()] + ["auto"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("spec", SUITES["default"], ids=lambda c: c.name)
def test_batch_jacobian(benchmark, spec, method):
    net, x = spec.build()
    benchmark.group = spec.name
    if method == "auto":
        jacverify.batch_jacobian(net, x)  # the first call makes the plan
        result = benchmark(jacverify.batch_jacobian, net, x)
        assert result.shape == (spec.batch, spec.sizes[2], spec.sizes[0])
        return
    (chosen,) = jacverify.get_methods([method])
    flat = flatten(make_case(net, x))
    reason = chosen.supports(flat, None, jacverify.DEFAULT_MAX_MEMORY)
    if reason:
        pytest.skip(reason)
    result = benchmark(chosen.compute, flat)
    assert result.shape == (spec.batch, spec.sizes[2], spec.sizes[0])
