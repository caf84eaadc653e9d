"""Issue #16's check-cost figures, measured side by side (README "Checks at realistic sizes").

For each realistic model (jacverify.bench.SUITES["realistic"], float32), in a fresh process each:
torch's one-off set-up of its transforms (once per process, paid by whatever differentiates
first), the default jacverify.check (its first call, then a steady one), the process's peak
RSS after it, one vmap(jacrev) call (warmed up), and whether a 1% wrong backward is flagged; then verification="routes"
against torch.autograd.gradcheck(fast_mode=True, check_forward_ad=True, check_batched_grad=True)
in float64 (forward AD off where a kernel has none: the encoder layer's CPU attention), and the
1%-wrong backward, jvp and batching-rule twins under the routes. CPU time, one thread.

    OMP_NUM_THREADS=1 python benchmarks/check_cost.py
"""

from __future__ import annotations

import json
import subprocess
import sys

CASES = {"mlp": "mlp784-256-10/B32", "cnn": "cnn1x28x28/B8", "encoder": "encoder16x64/B4"}


def _one(model: str) -> dict:
    import resource
    import time
    import warnings

    import torch
    from torch.func import jacrev, vmap

    import jacverify
    from jacverify.bench import SUITES
    from jacverify.examples.twins import Apply, cube_off

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    spec = next(c for c in SUITES["realistic"] if c.name == f"{CASES[model]}/float32")
    net, x = spec.build()

    def one_sample(z):
        return net(z[None])[0]

    def best(fn, n=5):
        times = []
        for _ in range(n):
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
        return sorted(times)[n // 2]

    from jacverify.judge import warm_up_transforms

    start = time.process_time()  # torch's one-off set-up of its transforms, once per process
    warm_up_transforms("reverse")
    warm_up_transforms("forward")
    vmap(jacrev(torch.sin))(torch.ones(2, 2))
    one_off = time.process_time() - start
    start = time.process_time()  # then the check, before any vmap(jacrev) of the model
    report = jacverify.check(net, x)
    first = time.process_time() - start
    steady = best(lambda: jacverify.check(net, x), 3)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the process's, so far
    vj = lambda: vmap(jacrev(one_sample))(x)  # noqa: E731
    vj()
    t_vj = best(vj)

    def with_layer(layer):  # the twin layer after the first Tanh
        net2, _ = spec.build()
        i = next(i for i, m in enumerate(net2) if isinstance(m, torch.nn.Tanh)) \
            if isinstance(net2, torch.nn.Sequential) else None
        if i is None:  # the encoder: the twin before the layer
            return torch.nn.Sequential(layer, net2)
        return torch.nn.Sequential(*net2[:i + 1], layer, *net2[i + 1:])

    wrong = jacverify.check(with_layer(Apply(cube_off(backward=1.01))), x).verdict
    # routes against gradcheck, float64
    net64, x64 = net.double(), x.double()
    forward_ad = model != "encoder"

    def gc():
        return torch.autograd.gradcheck(net64, (x64.clone().requires_grad_(),), fast_mode=True,
                                        check_forward_ad=forward_ad, check_batched_grad=True)

    def rt():
        return jacverify.check(net64, x64, verification="routes")

    gc(), rt()
    t_gc, t_rt = [], []
    for _ in range(5):  # round-robin
        t_gc.append(best(gc, 1))
        t_rt.append(best(rt, 1))
    t_gc, t_rt = sorted(t_gc)[2], sorted(t_rt)[2]
    twins = {}
    for name, kw in (("backward", {"backward": 1.01}), ("jvp", {"jvp": 1.01}),
                     ("rule", {"rule": 1.01})):
        r = jacverify.check(with_layer(Apply(cube_off(**kw))).double(), x64, verification="routes")
        twins[name] = sorted(m.method.removeprefix("route:") for m in r.results
                             if m.status == "mismatch")
    return dict(model=spec.name, one_off_s=one_off, vmap_jacrev_ms=t_vj * 1e3, check_first_s=first,
                check_steady_s=steady, ratio_first=first / t_vj, ratio_steady=steady / t_vj,
                peak_rss_gb=peak / 1e9, verdict=str(report.verdict),
                verification=report.verification, wrong_backward_1pct=str(wrong),
                gradcheck_ms=t_gc * 1e3, routes_ms=t_rt * 1e3, routes_ratio=t_rt / t_gc,
                routes_flag_1pct=twins)


def main() -> None:
    if len(sys.argv) > 1:
        print(json.dumps(_one(sys.argv[1])))
        return
    rows = []
    for model in CASES:
        out = subprocess.run([sys.executable, __file__, model], capture_output=True, text=True,
                             check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print("| model | torch's one-off set-up | vmap(jacrev) | default check: first call (x) | "
          "steady (x) | peak RSS | verdict | 1% wrong backward | routes / gradcheck fast | "
          "1% twins flagged by |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        flags = "; ".join(f"{k}: {', '.join(v)}" for k, v in r["routes_flag_1pct"].items())
        print(f"| {r['model']} | {r['one_off_s']:.2f} s | {r['vmap_jacrev_ms']:.1f} ms | {r['check_first_s']:.2f} s "
              f"({r['ratio_first']:.0f}x) | {r['check_steady_s']:.2f} s ({r['ratio_steady']:.0f}x) "
              f"| {r['peak_rss_gb']:.2f} GB | {r['verdict']}, {r['verification']} | "
              f"{r['wrong_backward_1pct']} | {r['routes_ms']:.1f} / {r['gradcheck_ms']:.1f} ms = "
              f"{r['routes_ratio']:.2f}x | {flags} |")


if __name__ == "__main__":
    main()
