"""What a steady ``batch_jacobian(net, x)`` call costs beyond its plan's method (NOTE [last plan]).

After the race has ended, times round-robin in a new random order each round, each call right
after a call of another method (as a training loop and NOTE [race] run them: the call's code and
objects out of the CPU's caches), CPU time of this thread, one torch thread:
- ``auto``: ``batch_jacobian(net, x)``;
- ``method``: the plan's method on the canonical form with the function itself (what auto's fast
  path calls; no wrapper), made once;
- ``fits``: the last plan's check alone (``_Last.fits``).
Prints the medians and auto / method.

    OMP_NUM_THREADS=1 python benchmarks/call_overhead.py mlp8-64-8/B1/float32 [--seconds 15]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

import jacverify  # noqa: E402
from jacverify import auto  # noqa: E402
from jacverify.bench import SUITES  # noqa: E402
from jacverify.case import flatten, make_case  # noqa: E402
from jacverify.judge import warm_up_transforms  # noqa: E402

OTHERS = ("batched_grad", "vmap_vjp")  # called before each timed call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", help="a case of jacverify.bench.SUITES, e.g. mlp8-64-8/B1/float32")
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    (spec,) = [c for s in SUITES.values() for c in s if c.name == args.case]
    net, x = spec.build()
    warm_up_transforms("reverse")
    warm_up_transforms("forward")
    auto.warm_up_methods(x.dtype, "cpu")
    for _ in range(500):  # the race runs on these calls (NOTE [auto plan])
        jacverify.batch_jacobian(net, x)
        if auto._LAST[0].entry[0].explore is None:  # a private field: a benchmark
            break
    p = jacverify.plan(net, x)
    last = auto._LAST[0]
    flat = flatten(make_case(net, x))
    bare = last.template.at(net, x)
    method = auto.runner(p.method, None if p.chunk_size >= p.rows else p.chunk_size)
    calls = {"auto": lambda: jacverify.batch_jacobian(net, x), "method": lambda: method(bare),
             "fits": lambda: last.fits(net, x, None, False)}
    others = [lambda c=m.compute: c(flat) for m in jacverify.get_methods(OTHERS)]
    times: dict[str, list[int]] = {n: [] for n in calls}
    rng, order = random.Random(0), list(calls.items())
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        rng.shuffle(order)
        for name, call in order:
            rng.choice(others)()
            start = time.thread_time_ns()
            call()
            times[name].append(time.thread_time_ns() - start)
    med = {n: statistics.median(t) / 1e3 for n, t in times.items()}
    print(f"{args.case}: plan {p.method}; " + ", ".join(f"{n} {v:.1f} us" for n, v in med.items())
          + f"; auto / method {med['auto'] / med['method']:.3f} ({len(times['auto'])} rounds)")


if __name__ == "__main__":
    main()
