"""pytest-benchmark over the bench suites: every method and auto, one group per case.

Not in the default test run. Run with:  python -m pytest benchmarks -p no:xdist
(add --benchmark-save=NAME to keep a run, --benchmark-compare to compare with the last saved one).
The cases: SUITES["default"] (tanh MLPs, the 4 -> 64 case among them) and SUITES["realistic"] (an
MNIST-sized MLP, a small CNN, a transformer encoder layer, batch 1), each in float64 and float32.
`jacverify bench --suite default` (or `--suite realistic`) measures the same cases in one process
with memory and sweeps; `python benchmarks/auto_ratio.py` measures auto against the fastest method
and its planning cost, in fresh processes.
"""

from __future__ import annotations

import pytest

import jacverify
from jacverify.bench import SUITES
from jacverify.case import flatten, make_case

METHODS = [m.name for m in jacverify.registered_methods()] + ["auto"]
CASES = SUITES["default"] + SUITES["realistic"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("spec", CASES, ids=lambda c: c.name)
def test_batch_jacobian(benchmark, spec, method):
    net, x = spec.build()
    benchmark.group = spec.name
    flat = flatten(make_case(net, x))
    expected = (spec.batch, flat.n_out, flat.n_in)
    if method == "auto":
        jacverify.batch_jacobian(net, x)  # the first call makes the plan
        result = benchmark(jacverify.batch_jacobian, net, x)
        assert result.reshape(expected).shape == expected
        return
    (chosen,) = jacverify.get_methods([method])
    reason = chosen.supports(flat, None, jacverify.DEFAULT_MAX_MEMORY)
    if reason:
        pytest.skip(reason)
    try:
        chosen.compute(flat)
    except (NotImplementedError, RuntimeError) as e:  # no forward-AD formula or double backward
        pytest.skip(f"{method} cannot run here: {type(e).__name__}")
    result = benchmark(chosen.compute, flat)
    assert result.shape == expected
