"""Performance of every method side by side: time, peak memory, ratios, pathologies; the suite."""

from __future__ import annotations

import datetime
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from jacverify.auto import batch_jacobian, plan
from jacverify.compare import Reference, compare, tolerances
from jacverify.engine import check
from jacverify.errors import MismatchError
from jacverify.measure import Timing, peak_memory, time_calls
from jacverify.methods import get_methods
from jacverify.routes import ROUTE_QUANTITY

__all__ = ["MethodBench", "CaseBench", "SuiteCase", "BenchRun", "bench", "bench_suite", "bench_run",
           "SUITES",
           "SWEEPS", "MODELS", "PATHOLOGY_RATIO"]

# NOTE [pathology]
# A method more than PATHOLOGY_RATIO times slower than the fastest correct one on a case is marked,
# with its registered cost model as the likely cause (e.g. "the full (B*M, B*N) Jacobian then its
# diagonal: quadratic in the batch"). Ten times is past any constant-factor difference between
# two sound ways (the correct methods of the suite spread over about 3x) and into a different
# growth law.
PATHOLOGY_RATIO = 10.0


@dataclass(frozen=True)
class MethodBench:
    """One method on one case: its verdict from the check, and how fast and big it ran."""

    method: str
    status: str
    reason: str | None = None
    timing: Timing | None = None
    peak_bytes: int | None = None
    forward_ratio: float | None = None
    speedup_vs_loop: float | None = None
    pathology: str | None = None

    @property
    def time_s(self) -> float | None:
        return self.timing.median if self.timing else None


@dataclass(frozen=True)
class CaseBench:
    """Every method on one case, with the forward pass as the unit of cost."""

    name: str
    params: dict = field(compare=False)
    forward: Timing
    jacobian_bytes: int
    results: tuple[MethodBench, ...]
    plan: str | None = None  # why auto planned what it did
    planned: str | None = None  # auto's method (and its rows per pass where it chunks)

    def __getitem__(self, method: str) -> MethodBench:
        for r in self.results:
            if r.method == method:
                return r
        raise KeyError(f"no result for {method!r}; ran {[r.method for r in self.results]}")

    @property
    def fastest(self) -> MethodBench | None:
        """The fastest registered method that agrees with the references (``auto`` aside)."""
        ok = [r for r in self.results if r.status == "agree" and r.timing and r.method != "auto"]
        return min(ok, key=lambda r: r.timing.median) if ok else None  # type: ignore[union-attr]

    def ratio(self, method: str, to: str) -> float | None:
        """time(method) / time(to), medians; None when either did not run."""
        try:
            a, b = self[method].time_s, self[to].time_s
        except KeyError:
            return None
        return a / b if a and b else None


@dataclass(frozen=True)
class SuiteCase:
    """A case of the bench suite, batch first; printable data, built into a module at the last moment.

    ``model`` is one of ``MODELS``: "mlp" (tanh, ``in -> hidden -> hidden -> out``, ``sizes`` =
    (in, hidden, out)), "cnn" (two stride-2 tanh convolutions and a linear layer over a flat
    image, ``sizes`` = (channels, height, width)), "encoder" (``nn.TransformerEncoderLayer(d, 4,
    dim_feedforward=2d, dropout=0).eval()``, ``sizes`` = (sequence, d)).

    >>> SuiteCase(64, (8, 64, 8), "float32").name
    'mlp8-64-8/B64/float32'
    >>> SuiteCase(4, (16, 64), "float64", model="encoder").name
    'encoder16x64/B4/float64'
    """

    batch: int
    sizes: tuple[int, ...]
    dtype: str = "float32"
    seed: int = 0
    model: str = "mlp"

    @property
    def name(self) -> str:
        sep = "-" if self.model == "mlp" else "x"
        return f"{self.model}{sep.join(map(str, self.sizes))}/B{self.batch}/{self.dtype}"

    @property
    def params(self) -> dict:
        """What a saved run records about the case (pytest-benchmark's ``params``)."""
        if self.model == "mlp":
            n, h, m = self.sizes
            return {"batch": self.batch, "in": n, "hidden": h, "out": m, "dtype": self.dtype}
        return {"batch": self.batch, "model": self.model, "sizes": list(self.sizes),
                "dtype": self.dtype}

    def build(self, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, torch.Tensor]:
        """The module (seeded weights) and the inputs (B, *in), in ``dtype`` on ``device``."""
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        net, in_shape = MODELS[self.model](*self.sizes)
        dtype = getattr(torch, self.dtype)
        x = torch.randn(self.batch, *in_shape, generator=gen)
        return net.to(device=device, dtype=dtype), x.to(device=device, dtype=dtype)


def _mlp(n: int, h: int, m: int) -> tuple[torch.nn.Module, tuple[int, ...]]:
    nn = torch.nn
    return nn.Sequential(nn.Linear(n, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, m)), (n,)


def _cnn(c: int, h: int, w: int) -> tuple[torch.nn.Module, tuple[int, ...]]:
    nn = torch.nn

    def after(side: int) -> int:  # two 3x3 stride-2 convolutions, no padding
        return ((side - 3) // 2 + 1 - 3) // 2 + 1

    return nn.Sequential(nn.Unflatten(1, (c, h, w)), nn.Conv2d(c, 8, 3, stride=2), nn.Tanh(),
                         nn.Conv2d(8, 16, 3, stride=2), nn.Tanh(), nn.Flatten(),
                         nn.Linear(16 * after(h) * after(w), 10)), (c * h * w,)


def _encoder(seq: int, d: int) -> tuple[torch.nn.Module, tuple[int, ...]]:
    layer = torch.nn.TransformerEncoderLayer(d, 4, dim_feedforward=2 * d, dropout=0.0,
                                             batch_first=True)
    return layer.eval(), (seq, d)


# The architectures a SuiteCase names: sizes -> (module, per-sample input shape).
MODELS: dict[str, Callable[..., tuple[torch.nn.Module, tuple[int, ...]]]] = {
    "mlp": _mlp, "cnn": _cnn, "encoder": _encoder}

SUITES: dict[str, tuple[SuiteCase, ...]] = {
    "default": tuple(SuiteCase(b, s, dt) for b, s in [(64, (8, 64, 8)), (64, (32, 128, 4)),
                                                       (64, (4, 256, 64)), (16, (64, 64, 64))]
                     for dt in ("float64", "float32")),
    # issue #16's realistic models: an MNIST-sized MLP 784-256-256-10 at batch 32, a small CNN on
    # 1x28x28 at batch 8 (input flat, (8, 784)), a transformer encoder layer on (4, 16, 64); and
    # the batch-1 shape (the default suite's 4->64 case covers wide outputs)
    "realistic": tuple(SuiteCase(b, s, dt, model=model) for model, b, s in [
        ("mlp", 32, (784, 256, 10)), ("cnn", 8, (1, 28, 28)), ("encoder", 4, (16, 64)),
        ("mlp", 1, (8, 64, 8))] for dt in ("float64", "float32")),
    "quick": (SuiteCase(8, (4, 16, 2), "float64"), SuiteCase(8, (2, 16, 6), "float32")),
}
# How cost grows: batch size, then input size, then output size, one at a time (float32).
SWEEPS: dict[str, dict[str, tuple[SuiteCase, ...]]] = {
    "default": {
        "batch": tuple(SuiteCase(b, (8, 64, 8)) for b in (1, 4, 16, 64, 256)),
        "inputs": tuple(SuiteCase(64, (n, 64, 8)) for n in (2, 8, 32)),
        "outputs": tuple(SuiteCase(64, (8, 64, m)) for m in (2, 8, 32)),
    },
    "realistic": {},
    "quick": {"batch": tuple(SuiteCase(b, (3, 8, 2)) for b in (1, 4))},
}


def bench(fn: Callable, x: torch.Tensor, *, name: str | None = None,
          methods: Sequence[str] | None = None, device: str | torch.device | None = None,
          memory: bool = True, min_seconds: float | None = None, params: dict | None = None
          ) -> CaseBench:
    """Time every method (and ``batch_jacobian(method="auto")``) on one case, side by side.

    Each method is first checked (``jacverify.check``): a wrong method is timed and marked, one
    that cannot run says why. Then timed per NOTE [benchmark rounds], and its peak memory measured
    per NOTE [peak memory] in one more run.

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    >>> result = bench(net, torch.randn(4, 3), methods=["loop", "batched_grad"], memory=False)
    >>> [r.status for r in result.results]
    ['agree', 'agree', 'agree']
    >>> result.fastest.method in ("loop", "batched_grad")
    True
    """
    timing = {} if min_seconds is None else {"min_seconds": min_seconds}
    report = check(fn, x, methods=methods, device=device, warm_timing=False)
    flat, dev = report.flat, report.case.device
    fwd_fn, fwd_x = report.case.fn, report.case.inputs[0]
    # the methods' results: a check verified by route probes (verification="auto" picks it from
    # timed costs) lists the routes too, which are not methods (crashed `jacverify bench`)
    results = [r for r in report.results if r.quantity != ROUTE_QUANTITY]
    chosen = {m.name: m for m in get_methods([r.method for r in results])}
    calls = {r.method: (lambda c=chosen[r.method].compute: c(flat))
             for r in results if r.status in ("agree", "mismatch")}
    auto_plan, auto_status, planned = None, None, None
    if len(report.case.inputs) == 1 and report.case.batch_axis == 0 and len(flat.out_shapes) == 1:
        # planned first, so the value judged is the plan's (auto's first calls race candidates)
        made = plan(fwd_fn, fwd_x)
        auto_plan = made.reason
        planned = made.method + ("" if made.chunk_size >= made.rows else
                                 f" ({made.chunk_size} of {made.rows} rows per pass)")
        value = batch_jacobian(fwd_fn, fwd_x).reshape(flat.batch_size, flat.n_out, flat.n_in)
        if report.reference.shape == value.shape:
            ref = Reference(report.trusted[0], report.reference)
            auto_status = "agree" if compare(value, ref, report.case.dtype, tolerances()).passed \
                else "mismatch"
        else:  # the check verified by projections (verification="auto"): so is auto's answer
            try:
                batch_jacobian(fwd_fn, fwd_x, verify=True)
                auto_status = "agree"
            except MismatchError:
                auto_status = "mismatch"
        calls["auto"] = lambda: batch_jacobian(fwd_fn, fwd_x)
    timings = time_calls({**calls, "one forward": lambda: fwd_fn(fwd_x)}, dev, **timing)
    forward = timings["one forward"]  # timed side by side with the methods: the unit of cost
    rows: list[MethodBench] = []
    for r in results:
        if r.method not in calls:
            rows.append(MethodBench(r.method, r.status, r.reason))
            continue
        rows.append(MethodBench(r.method, r.status, r.reason, timings[r.method],
                                peak_memory(calls[r.method], dev) if memory else None))
    if auto_status:
        rows.append(MethodBench("auto", auto_status, auto_plan, timings["auto"],
                                peak_memory(calls["auto"], dev) if memory else None))
    return CaseBench(name or repr(report.case), dict(params or {}), forward,
                     flat.batch_size * flat.n_out * flat.n_in * flat.x.element_size(),
                     with_ratios(rows, forward), auto_plan, planned)


def with_ratios(rows: list[MethodBench], forward: Timing) -> tuple[MethodBench, ...]:
    loop = next((r.time_s for r in rows if r.method == "loop" and r.time_s), None)
    correct = [r.time_s for r in rows if r.status == "agree" and r.time_s]
    best = min(correct, default=None)
    best_name = next((r.method for r in rows if r.time_s == best), None)
    costs = {m.name: m.cost for m in get_methods(None)}
    out = []
    for r in rows:
        if r.time_s is None:
            out.append(r)
            continue
        slow = best and r.time_s > PATHOLOGY_RATIO * best
        cause = costs.get(r.method) or "no cost model registered"
        out.append(MethodBench(
            r.method, r.status, r.reason, r.timing, r.peak_bytes,
            forward_ratio=r.time_s / forward.median if forward.median else None,
            speedup_vs_loop=loop / r.time_s if loop else None,
            pathology=f"{r.time_s / best:.0f}x slower than {best_name}: {cause}" if slow else None))
    return tuple(out)


@dataclass(frozen=True)
class BenchRun:
    """A suite run: its cases, its sweeps (how cost grows), and where it ran."""

    suite: str
    cases: tuple[CaseBench, ...]
    sweeps: tuple[tuple[str, tuple[CaseBench, ...]], ...]
    device: str
    started: str
    machine: dict = field(compare=False)

    def to_json(self) -> dict:
        """pytest-benchmark's saved-run layout: one entry per (case, method), stats in seconds."""
        import jacverify

        benchmarks = []
        groups = [("suite", c) for c in self.cases] + [
            (f"sweep:{s}", c) for s, cs in self.sweeps for c in cs]
        for group, case in groups:
            for r in case.results:
                stats = r.timing.to_dict() if r.timing else None
                if stats:  # every statistic measured (measure.stats); one call per round
                    stats.update(iterations=1, total=stats["mean"] * stats["rounds"])
                benchmarks.append({
                    "group": f"{group}:{case.name}", "name": f"{r.method}[{case.name}]",
                    "fullname": f"jacverify bench::{group}::{case.name}::{r.method}",
                    "params": {**case.params, "method": r.method}, "param": case.name,
                    "extra_info": {"status": r.status, "reason": r.reason,
                                   "peak_bytes": r.peak_bytes, "forward_ratio": r.forward_ratio,
                                   "speedup_vs_loop": r.speedup_vs_loop,
                                   "pathology": r.pathology, "forward_median_s": case.forward.median,
                                   "jacobian_bytes": case.jacobian_bytes},
                    "options": {"timer": "process_time" if self.device == "cpu" else "perf_counter",
                                "warmup": 1, "device": self.device},
                    "stats": stats,
                })
        return {"machine_info": self.machine, "commit_info": {}, "benchmarks": benchmarks,
                "datetime": self.started, "version": f"jacverify {jacverify.__version__}"}


def bench_suite(suite: str = "default", *, sweeps: bool = True, device: str = "cpu",
                methods: Sequence[str] | None = None, memory: bool = True,
                min_seconds: float | None = None,
                on_case: Callable[[str, CaseBench], None] | None = None) -> BenchRun:
    """Run a named suite (``SUITES``) and its sweeps (``SWEEPS``) in this process.

    ``on_case(group, result)`` is called after each case (progress bars).
    """
    from jacverify.errors import InvalidArgument

    if suite not in SUITES:
        raise InvalidArgument(f"suite={suite!r} is not one of {', '.join(SUITES)}")
    started = datetime.datetime.now(datetime.timezone.utc).isoformat()

    def run(group: str, spec: SuiteCase) -> CaseBench:
        net, x = spec.build(device)
        result = bench(net, x, name=spec.name, methods=methods, memory=memory,
                       min_seconds=min_seconds, params=spec.params)
        if on_case:
            on_case(group, result)
        return result

    cases = tuple(run("suite", c) for c in SUITES[suite])
    swept = tuple((s, tuple(run(f"sweep {s}", c) for c in cs))
                  for s, cs in (SWEEPS[suite].items() if sweeps else ()))
    return bench_run(suite, cases, device, swept, started)


def bench_run(suite: str, cases: Sequence[CaseBench], device: str,
              sweeps: tuple = (), started: str | None = None) -> BenchRun:
    """A :class:`BenchRun` stamped with the time and this machine's description."""
    started = started or datetime.datetime.now(datetime.timezone.utc).isoformat()
    return BenchRun(suite, tuple(cases), sweeps, device, started, _machine(device))


def _machine(device: str) -> dict:
    import os

    info = {"node": platform.node(), "processor": platform.processor(),
            "machine": platform.machine(), "python_version": platform.python_version(),
            "system": platform.system(), "release": platform.release(),
            "cpu": {"count": os.cpu_count()}, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
