"""How close ``batch_jacobian(method="auto")`` comes to the fastest correct method, what its plan
costs, and whether separate processes choose the same plan (issue #16's "auto without gaps").

For every case of ``SUITES["default"]`` and ``SUITES["realistic"]`` (the MNIST-sized MLP, the CNN,
the transformer encoder layer, batch 1; the default suite holds the 4 -> 64 case), in float32 and
float64:

1. this process checks every registered method (``jacverify.check``, every method estimated
   within CHECK_BUDGET of the cheapest; the route probes are not methods): the correct ones;
2. PROCESSES fresh subprocesses per case each warm torch's transforms up (once per process,
   stated apart by the plan), call ``batch_jacobian(net, x)`` until its race has ended (the race
   runs on these calls, NOTE [auto plan]), call each correct method once, then time auto and
   every correct method within SCREEN of the best single call round-robin in a new random order
   each round (``measure.time_calls(shuffle=...)``, CPU time, one torch thread, medians). Each
   reports the plan, auto / the fastest method, auto / its own method called directly ("own":
   what finding the plan costs per call) and the planning cost in steady calls of auto: the CPU
   time of the calls until the race ended, beyond as many steady calls of auto (everything the
   first call validates and probes included).

Run (about 10 minutes here):  OMP_NUM_THREADS=1 python benchmarks/auto_ratio.py [--json out.json]
``--compile aot_eager`` (or ``inductor``) races compiled routes too (NOTE [compiled route]).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

import jacverify  # noqa: E402
from jacverify import auto  # noqa: E402
from jacverify.auto import runner  # noqa: E402
from jacverify.judge import warm_up_transforms  # noqa: E402
from jacverify.bench import SUITES, SuiteCase  # noqa: E402
from jacverify.case import flatten, make_case  # noqa: E402
from jacverify.measure import time_calls  # noqa: E402
from jacverify.routes import ROUTE_QUANTITY  # noqa: E402

PROCESSES = 3
SCREEN = 2.0  # methods timed side by side with auto: within this of the best single call
MIN_SECONDS = 1.0  # per method in the round-robin timing (NOTE [benchmark rounds])
# every method estimated within this of the cheapest is checked (and so can be "the fastest
# correct"): the check's default, 5x, left out methods whose estimate was 4.3x too high
CHECK_BUDGET = 25.0
MAX_EXPLORING = 500  # auto's calls before giving up on its race ending (it ends within ~100)


def cases(suites: list[str], only: list[str]) -> list[SuiteCase]:
    picked = [c for s in suites for c in SUITES[s]]
    return [c for c in picked if not only or any(o == c.name or o in c.name for o in only)]


def describe(p: jacverify.Plan) -> str:
    chunk = "" if p.chunk_size >= p.rows else f"/{p.chunk_size}"
    return f"{p.method}{chunk}" + (f"[{p.compiled}]" if p.compiled else "")


def measure(spec: SuiteCase, correct: list[str], compile: str | bool, seed: int) -> dict:
    """In a fresh process: auto's calls until its race has ended (NOTE [auto plan]: the race runs
    on them), then auto against every correct method."""
    net, x = spec.build()
    warm_up_transforms("reverse")  # torch's once-per-process set-up, which the plan states apart
    warm_up_transforms("forward")
    auto.warm_up_methods(x.dtype, "cpu")
    exploring = []
    while len(exploring) < MAX_EXPLORING:
        start = time.process_time()
        jacverify.batch_jacobian(net, x, compile=compile)
        exploring.append(time.process_time() - start)
        if auto._LAST[0].entry[0].explore is None:  # the race has ended (a private field: a bench)
            break
    p = jacverify.plan(net, x, compile=compile)  # the cached plan those calls made
    flat = flatten(make_case(net, x))
    methods = {m.name: m for m in jacverify.get_methods(correct)}
    once = time_calls({n: (lambda c=m.compute: c(flat)) for n, m in methods.items()},
                      min_seconds=0.0, warmup=1)
    best = min(t.median for t in once.values())
    timed = {n: (lambda c=methods[n].compute: c(flat)) for n, t in once.items()
             if t.median <= SCREEN * best}
    timed["auto"] = lambda: jacverify.batch_jacobian(net, x, compile=compile)
    own = runner(p.method, None if p.chunk_size >= p.rows else p.chunk_size)
    timed["auto's method"] = lambda: own(flat)
    timings = time_calls(timed, min_seconds=MIN_SECONDS, shuffle=seed)
    auto_s = timings.pop("auto").median
    itself = timings.pop("auto's method").median
    fastest = min(timings, key=lambda n: timings[n].median)
    excess = sum(exploring) - len(exploring) * auto_s
    return {"case": spec.name, "plan": describe(p), "fastest": fastest,
            "fastest_ms": timings[fastest].median * 1e3, "auto_ms": auto_s * 1e3,
            "ratio": auto_s / timings[fastest].median, "own": auto_s / itself,
            "planning_calls": excess / auto_s, "exploring_calls": len(exploring),
            "plan_says": p.planning_calls, "reason": p.reason}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="append", choices=sorted(SUITES),
                        help="default and realistic unless given")
    parser.add_argument("--only", action="append", default=[], help="cases whose name has this")
    parser.add_argument("--processes", type=int, default=PROCESSES)
    parser.add_argument("--compile", default=False, help="a torch.compile backend to race")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # CASE:method,method:seed
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="There is a performance drop")
    if args.measure:
        name, correct, seed = args.measure.split(":")
        (spec,) = cases(["default", "realistic"], [name])
        print(json.dumps(measure(spec, correct.split(","), args.compile, int(seed))))
        return
    specs = cases(args.suite or ["default", "realistic"], args.only)
    print(f"{'case':26s} {'fastest correct':22s} {'ms':>8s} {'auto/fastest':>16s} "
          f"{'own':>5s} {'planning calls':>16s}  plans in {args.processes} processes")
    rows = []
    for spec in specs:
        net, x = spec.build()
        report = jacverify.check(net, x, warm_timing=False, method_budget=CHECK_BUDGET)
        correct = [r.method for r in report.results
                   if r.status == "agree" and r.quantity != ROUTE_QUANTITY]
        runs = []
        for i in range(args.processes):
            cmd = [sys.executable, __file__, "--measure", f"{spec.name}:{','.join(correct)}:{i}"]
            if args.compile:
                cmd += ["--compile", args.compile]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs.append(json.loads(out.splitlines()[-1]))
        plans = [r["plan"] for r in runs]
        fastest = min(runs, key=lambda r: r["fastest_ms"])
        print(f"{spec.name:26s} {fastest['fastest']:22s} {fastest['fastest_ms']:8.3f} "
              f"{'/'.join(format(r['ratio'], '.2f') for r in runs):>16s} "
              f"{max(r['own'] for r in runs):5.2f} "
              f"{'/'.join(format(r['planning_calls'], '.1f') for r in runs):>16s}  "
              f"{'same' if len(set(plans)) == 1 else 'DIFFER'}: {', '.join(plans)}", flush=True)
        rows.append({"case": spec.name, "correct": correct, "runs": runs})
    worst = max(r["ratio"] for row in rows for r in row["runs"])
    costly = max(r["planning_calls"] for row in rows for r in row["runs"])
    unstable = [row["case"] for row in rows if len({r["plan"] for r in row["runs"]}) > 1]
    print(f"worst auto/fastest {worst:.2f}; most planning calls {costly:.1f}; "
          f"plans differing between processes: {', '.join(unstable) or 'none'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
