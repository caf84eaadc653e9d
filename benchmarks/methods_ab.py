"""The built-in methods of this working tree against the same methods at another git revision,
timed side by side in one process (the machine's load moved whole runs by up to 1.6x here, so
separate runs cannot be compared).

Each method module of the revision (``git show REV:jacverify/methods/NAME.py``) is loaded under
another name with registration switched off, and each method of ``--methods`` runs in both
versions on the same canonical form of each case (``jacverify.bench.SUITES``), timed
round-robin in a new random order each round (``jacverify.measure.time_calls``, CPU time, one
torch thread, NOTE [benchmark rounds]); both versions' answers must be equal. Prints each
method's median in both and their ratio.

    OMP_NUM_THREADS=1 python benchmarks/methods_ab.py --against HEAD~1 --only B1/ \\
        --methods repeat_trick,batched_grad
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

import jacverify.methods as methods  # noqa: E402
from jacverify.bench import SUITES  # noqa: E402
from jacverify.case import flatten, make_case  # noqa: E402
from jacverify.measure import time_calls  # noqa: E402

MODULES = ("loops", "autograd_functional", "torch_func", "batched", "directional")


def old_methods(rev: str) -> dict:
    """{name: compute} of the built-in methods at ``rev``."""
    found = {}
    register = methods.register_method
    methods.register_method = lambda m, **kw: found.setdefault(m.name, m.compute)
    try:
        for name in MODULES:
            source = subprocess.run(["git", "show", f"{rev}:jacverify/methods/{name}.py"],
                                    capture_output=True, text=True, check=True).stdout
            spec = importlib.util.spec_from_loader(f"_ab_{name}", loader=None)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            exec(compile(source, f"{rev}:{name}.py", "exec"), module.__dict__)
    finally:
        methods.register_method = register
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="a git revision")
    parser.add_argument("--methods", required=True, help="comma-separated method names")
    parser.add_argument("--only", action="append", default=[], help="cases whose name has this")
    parser.add_argument("--min-seconds", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    before = old_methods(args.against)
    names = args.methods.split(",")
    now = {m.name: m.compute for m in methods.get_methods(names)}
    specs = [c for s in SUITES.values() for c in s
             if not args.only or any(o in c.name for o in args.only)]
    print(f"{'case':28s} {'method':24s} {args.against + ' ms':>12s} {'now ms':>9s} {'now/then':>9s}")
    for spec in specs:
        net, x = spec.build()
        flat = flatten(make_case(net, x))
        calls, ran = {}, []
        for name in names:
            try:
                torch.testing.assert_close(now[name](flat), before[name](flat), rtol=0, atol=0)
            except RuntimeError as e:  # a method that cannot run here (no double backward)
                print(f"{spec.name:28s} {name:24s} cannot run: {str(e).splitlines()[0][:60]}")
                continue
            ran.append(name)
            calls[f"{name} then"] = (lambda c=before[name]: c(flat))
            calls[f"{name} now"] = (lambda c=now[name]: c(flat))
        timings = time_calls(calls, min_seconds=args.min_seconds, shuffle=0)
        for name in ran:
            then, cur = timings[f"{name} then"].median, timings[f"{name} now"].median
            print(f"{spec.name:28s} {name:24s} {then * 1e3:12.3f} {cur * 1e3:9.3f} "
                  f"{cur / then:9.2f}", flush=True)


if __name__ == "__main__":
    main()
