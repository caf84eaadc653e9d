"""How close ``batch_jacobian(method="auto")`` comes to the fastest correct method, what its plan
costs, and whether separate processes choose the same plan (issue #16's "auto without gaps").

For every case of ``SUITES["default"]`` and ``SUITES["realistic"]`` (the MNIST-sized MLP, the CNN,
the transformer encoder layer, batch 1; the default suite holds the 4 -> 64 case), in float32 and
float64:

1. this process checks every registered method (``jacverify.check``): the correct ones;
2. PROCESSES fresh subprocesses per case each plan it (``jacverify.plan``: the process's first
   plan; torch's once-per-process warm-up is stated apart, ``Plan.planning_seconds`` leaves it
   out), call each correct method once, then time auto and every correct method within SCREEN of
   the best single call round-robin in a new random order each round
   (``measure.time_calls(shuffle=...)``, CPU time, one torch thread, medians). Each reports the
   plan, auto / the fastest method, auto / its own method called directly ("own": what finding
   the plan costs per call) and the planning cost in steady calls of auto
   (``plan.planning_seconds`` / auto's median).

Run (about 10 minutes here):  OMP_NUM_THREADS=1 python benchmarks/auto_ratio.py [--json out.json]
``--compile aot_eager`` (or ``inductor``) races compiled routes too (NOTE [compiled route]).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

import jacverify  # noqa: E402
from jacverify.auto import chunked_compute  # noqa: E402
from jacverify.bench import SUITES, SuiteCase  # noqa: E402
from jacverify.case import flatten, make_case  # noqa: E402
from jacverify.measure import time_calls  # noqa: E402

PROCESSES = 3
SCREEN = 2.0  # methods timed side by side with auto: within this of the best single call
MIN_SECONDS = 1.0  # per method in the round-robin timing (NOTE [benchmark rounds])


def cases(suites: list[str], only: list[str]) -> list[SuiteCase]:
    picked = [c for s in suites for c in SUITES[s]]
    return [c for c in picked if not only or any(o == c.name or o in c.name for o in only)]


def describe(p: jacverify.Plan) -> str:
    chunk = "" if p.chunk_size >= p.rows else f"/{p.chunk_size}"
    return f"{p.method}{chunk}" + (f"[{p.compiled}]" if p.compiled else "")


def measure(spec: SuiteCase, correct: list[str], compile: str | bool, seed: int) -> dict:
    """In a fresh process: plan, then auto against every correct method."""
    net, x = spec.build()
    p = jacverify.plan(net, x, compile=compile)
    flat = flatten(make_case(net, x))
    methods = {m.name: m for m in jacverify.get_methods(correct)}
    once = time_calls({n: (lambda c=m.compute: c(flat)) for n, m in methods.items()},
                      min_seconds=0.0, warmup=1)
    best = min(t.median for t in once.values())
    timed = {n: (lambda c=methods[n].compute: c(flat)) for n, t in once.items()
             if t.median <= SCREEN * best}
    timed["auto"] = lambda: jacverify.batch_jacobian(net, x, compile=compile)
    own = chunked_compute(p.method)
    passes = None if p.chunk_size >= p.rows else p.chunk_size
    timed["auto's method"] = lambda: own(flat, passes)
    timings = time_calls(timed, min_seconds=MIN_SECONDS, shuffle=seed)
    auto = timings.pop("auto").median
    itself = timings.pop("auto's method").median
    fastest = min(timings, key=lambda n: timings[n].median)
    return {"case": spec.name, "plan": describe(p), "fastest": fastest,
            "fastest_ms": timings[fastest].median * 1e3, "auto_ms": auto * 1e3,
            "ratio": auto / timings[fastest].median, "own": auto / itself,
            "planning_calls": p.planning_seconds / auto, "plan_says": p.planning_calls,
            "reason": p.reason}


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
        report = jacverify.check(net, x, warm_timing=False)
        correct = [r.method for r in report.results if r.status == "agree"]
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
