"""Wall time and peak memory of one call, device-synchronized: what ``bench`` and ``auto`` share."""

from __future__ import annotations

import contextlib
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

__all__ = ["Timing", "Race", "stats", "timer", "time_call", "time_calls", "race", "peak_memory",
           "saved_activation_bytes"]


@dataclass(frozen=True)
class Timing:
    """Seconds per call over ``rounds`` timed calls (after warm-up), pytest-benchmark's statistics."""

    rounds: int
    median: float
    q1: float
    q3: float
    min: float
    max: float
    mean: float
    stddev: float
    ld15iqr: float = 0.0  # the lowest time within 1.5 IQR below Q1 (pytest-benchmark's)
    hd15iqr: float = 0.0  # the highest time within 1.5 IQR above Q3
    iqr_outliers: int = 0  # times beyond 1.5 IQR of the quartiles
    stddev_outliers: int = 0  # times beyond one standard deviation of the mean

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def noisy(self) -> bool:
        """The spread is too wide for a ratio to mean much: IQR over half the median."""
        return self.iqr > 0.5 * self.median

    def to_dict(self) -> dict[str, float | int | str]:
        """pytest-benchmark's ``stats`` block, every entry computed from the timed rounds."""
        return {"min": self.min, "max": self.max, "mean": self.mean, "stddev": self.stddev,
                "rounds": self.rounds, "median": self.median, "iqr": self.iqr, "q1": self.q1,
                "q3": self.q3, "iqr_outliers": self.iqr_outliers,
                "stddev_outliers": self.stddev_outliers,
                "outliers": f"{self.stddev_outliers};{self.iqr_outliers}",
                "ld15iqr": self.ld15iqr, "hd15iqr": self.hd15iqr,
                "ops": 1.0 / self.mean if self.mean else 0.0}


# NOTE [which clock]
# On CPU every time is the process's CPU time (time.process_time: all of its threads, torch's
# intra-op threads included), not the wall clock: on a shared 2-core machine another process
# preempts this one, and wall-clock times there came in multiples of the scheduler's 15 ms slice
# for methods that take 0.2 ms. CPU time does not count the time this process was not running.
# On CUDA it is the wall clock around a synchronised call (the device's time; the CPU waits).
def timer(device: torch.device | str) -> Callable[[], float]:
    """The clock of NOTE [which clock] for ``device``, in seconds."""
    return time.perf_counter if torch.device(device).type == "cuda" else time.process_time


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


# NOTE [benchmark rounds]
# One warm-up call (the first call of a transform pays one-off set-up: forward AD's first use took
# 600 ms here), then timed calls until MIN_ROUNDS calls and MIN_SECONDS of timed work, at most
# MAX_ROUNDS; a call slower than SLOW_CALL_S stops at SLOW_ROUNDS (the naive loop on a batch of 64
# takes a second, and its median over three calls is as telling as over thirty). The median and
# quartiles are reported, not the mean: a scheduler hiccup on a 2-core machine moves the mean.
# Several functions compared side by side are timed round-robin (one call of each per round), so a
# slow drift of the machine (another process, a frequency change) moves all of them alike instead
# of whichever happened to run then: back to back, the same computation timed twice differed by
# 25% here.
MIN_ROUNDS, MAX_ROUNDS, MIN_SECONDS = 5, 200, 0.2
SLOW_CALL_S, SLOW_ROUNDS = 0.5, 3


def time_call(fn: Callable[[], object], device: torch.device | str = "cpu", *,
              warmup: int = 1, min_seconds: float = MIN_SECONDS) -> Timing:
    """Time ``fn()`` per NOTE [benchmark rounds], synchronizing CUDA around every call.

    >>> t = time_call(lambda: torch.ones(8).sum())
    >>> t.rounds >= MIN_ROUNDS and t.min <= t.median <= t.max
    True
    """
    return time_calls({"fn": fn}, device, warmup=warmup, min_seconds=min_seconds)["fn"]


def time_calls(fns: dict[str, Callable[[], object]], device: torch.device | str = "cpu", *,
               warmup: int = 1, min_seconds: float = MIN_SECONDS,
               shuffle: int | None = None) -> dict[str, Timing]:
    """Time each of ``fns`` round-robin per NOTE [benchmark rounds]: {name: Timing}.

    ``shuffle``: a seed; each round then calls them in a new random order, so no function always
    runs after the same other one (NOTE [race]: that moved a 0.1 ms call by up to 1.4x)."""
    sync = _sync(torch.device(device))
    clock = timer(device)
    first: dict[str, float] = {}
    for name, fn in fns.items():
        for _ in range(max(1, warmup)):
            sync()
            start = clock()
            fn()
            sync()
            first[name] = clock() - start
    wanted = {name: SLOW_ROUNDS if t > SLOW_CALL_S else
              max(MIN_ROUNDS, min(MAX_ROUNDS, math.ceil(min_seconds / max(t, 1e-9))))
              for name, t in first.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    rng = random.Random(shuffle)
    for r in range(max(wanted.values(), default=0)):
        if shuffle is not None:
            rng.shuffle(order)
        for name, fn in order:
            if r >= wanted[name]:
                continue
            sync()
            start = clock()
            fn()
            sync()
            times[name].append(clock() - start)
    return {name: stats(t) for name, t in times.items()}


def stats(times: list[float]) -> Timing:
    """The statistics of timed rounds, as pytest-benchmark computes them (its ``stats.py``).

    >>> t = stats([1.0, 1.0, 1.1, 1.2, 9.0])
    >>> t.median, t.iqr_outliers, t.hd15iqr, t.to_dict()["outliers"]
    (1.1, 1, 1.2, '1;1')
    """
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    mean, sd = statistics.fmean(times), statistics.pstdev(times)
    low, high = q[0] - 1.5 * (q[2] - q[0]), q[2] + 1.5 * (q[2] - q[0])
    inside = [t for t in times if low <= t <= high] or times
    return Timing(len(times), statistics.median(times), q[0], q[2], min(times), max(times),
                  mean, sd, ld15iqr=min(inside), hd15iqr=max(inside),
                  iqr_outliers=sum(not low <= t <= high for t in times),
                  stddev_outliers=sum(not mean - sd <= t <= mean + sd for t in times))


@dataclass(frozen=True)
class Race:
    """What :func:`race` measured: the winner, each candidate's best call (seconds) and first
    call, who dropped out and why, and what the race cost (calls made and their seconds)."""

    winner: str | None
    times: dict[str, float]
    first: dict[str, float]
    dropped: dict[str, str]
    calls: int
    seconds: float

    @property
    def steady(self) -> float:
        """The winner's best timed call (seconds); 0.0 when nothing ran."""
        return self.times.get(self.winner, 0.0) if self.winner else 0.0


# NOTE [race]
# Picking the fastest of a few ways to compute the same thing, cheaply and the same way every time
# (what `batch_jacobian(method="auto")` plans with; numbers in NOTE [auto plan]). Single calls are
# noisy here (the same call's CPU time varied 1.3-6 ms on a shared 2-core machine), a candidate's
# first call on a new shape ran 1.0-1.8x its steady time, and a call of 0.1 ms ran 1.1-1.4x slower
# after a different method than after itself (caches, the allocator's free lists), so no single
# call decides:
# 1. each candidate is called once, in the caller's order of preference. A candidate with an
#    `estimates` entry (a cost predicted before running it, e.g. M backward passes for a loop over
#    the outputs) is not called when that estimate is over ESTIMATE_CUT x the best first call so
#    far, or would take the race past its budget; one in `fallbacks` runs only when the one it
#    stands in for raised. One that raises drops out; so does one whose first call is over
#    FIRST_CUT x the best first call, except the champion (the first that ran: it paid the
#    shape's one-off costs for everyone). When one round of the rest would take the race past
#    `budget` calls of the best first call, the slowest first calls drop out until it fits (the
#    champion and the fastest stay);
# 2. the rest are timed round-robin, one call each per round, in reverse order every other round,
#    at most ROUNDS rounds. A candidate's estimate is the median of its timed calls (the first
#    call left out), paired with the champion's: the median over rounds of its time over the
#    champion's in the same round, times the champion's median, so a load that drifts between
#    rounds moves both alike. The minimum was tried first and misled: vmap_vjp's calls spread
#    wide (64-64-64 at B=16, float64: its best call 7% under batched_grad's, its median 20% over).
#    After the first round a candidate whose best call is over ROUND_CUT x the best estimate
#    drops out, after later rounds one over CONTEND x (the rounds go to the contenders); a round
#    that would take the race past `budget` calls of the best estimate is not run (the first
#    always is);
# 3. the winner is the champion unless another is faster by more than TIE; among several, the
#    first in preference order within TIE of the fastest. Candidates that close cannot be told
#    apart by a few calls here, and a fixed order makes separate processes choose the same one;
#    two candidates whose true ratio is near TIE still split processes (NOTE [auto plan]).
FIRST_CUT, ESTIMATE_CUT, ROUND_CUT, CONTEND, ROUNDS, TIE = 2.0, 1.5, 1.3, 1.15, 4, 1.07


def race(calls: dict[str, Callable[[], object]], device: torch.device | str = "cpu", *,
         estimates: dict[str, float] | None = None, fallbacks: dict[str, str] | None = None,
         budget: float = 16.0, spent: float = 0.0, rounds: int = ROUNDS, tie: float = TIE) -> Race:
    """The fastest of ``calls`` (preference order: the dict's), per NOTE [race].

    ``budget`` is in calls of the best candidate; ``spent``, seconds the caller has spent already
    (counted against it); ``estimates``, predicted seconds per call for some candidates;
    ``fallbacks``, {candidate: the one it stands in for}: run only when that one raised.

    >>> fast, slow = (lambda: sum(range(100))), (lambda: sum(range(100_000)))
    >>> r = race({"slow": slow, "fast": fast, "broken": lambda: 1 / 0})
    >>> r.winner, r.dropped["broken"], r.calls >= 3, r.steady > 0
    ('fast', 'raised ZeroDivisionError', True, True)
    """
    sync = _sync(torch.device(device))
    clock = timer(device)
    estimates = estimates or {}
    first: dict[str, float] = {}
    dropped: dict[str, str] = {}
    made, before = 0, spent

    def call(fn: Callable[[], object]) -> float:
        nonlocal spent, made
        sync()
        start = clock()
        fn()
        sync()
        elapsed = clock() - start
        spent, made = spent + elapsed, made + 1
        return elapsed

    for name, fn in calls.items():
        best_first = min(first.values(), default=math.inf)
        instead = (fallbacks or {}).get(name)
        if instead in first:
            dropped[name] = f"stands in for {instead}, which ran"
            continue
        guess = estimates.get(name, 0.0)
        if name in estimates and (guess > ESTIMATE_CUT * best_first
                                  or spent + guess > budget * best_first):
            dropped[name] = (f"predicted {guess * 1e3:.3g} ms, over {ESTIMATE_CUT:g}x the best "
                             f"first call ({best_first * 1e3:.3g} ms) or the budget")
            continue
        try:
            first[name] = call(fn)
        except Exception as e:  # noqa: BLE001 - no formula, rule or memory for this one here
            dropped[name] = f"raised {type(e).__name__}"
    champion = next(iter(first), None)
    best_first = min(first.values(), default=math.inf)
    for name, t in first.items():
        if t > FIRST_CUT * best_first and name != champion:
            dropped[name] = f"first call {t / best_first:.2f}x the best"
    alive = sorted((n for n in first if n not in dropped), key=first.get)
    keep = {champion, alive[0]} if alive else set()
    while len(alive) > len(keep) and spent + sum(first[n] for n in alive) > budget * best_first:
        slowest = next(n for n in reversed(alive) if n not in keep)
        alive.remove(slowest)
        dropped[slowest] = "first call among the slowest, over the budget for a timed round"
    alive = [n for n in first if n in alive]  # back in preference order
    samples: dict[str, list[float]] = {n: [] for n in first}
    ref = [champion]  # the candidate the others are paired with, while it races

    def estimate(name: str) -> float:
        """The median of its timed calls (its first call before it has one); paired with the
        reference: the median of its time over the reference's in the same round, times the
        reference's median (a load that drifts between rounds moves both alike)."""
        own = samples[name]
        if not own:
            return first[name]
        base = samples[ref[0]] if ref[0] in samples else []
        if name == ref[0] or len(base) < len(own):
            return statistics.median(own)
        return statistics.median(a / b for a, b in zip(own, base)) * statistics.median(base)

    for r in range(rounds if alive else 0):
        if r and (len(alive) == 1 or spent + sum(map(estimate, alive))
                  > budget * min(map(estimate, alive))):
            break
        for name in (alive if r % 2 == 0 else alive[::-1]):  # what ran just before matters
            samples[name].append(call(calls[name]))
        best = min(map(estimate, alive))
        cut = ROUND_CUT if r == 0 and len(alive) > 2 else CONTEND
        for name in alive:
            if min(first[name], *samples[name]) > cut * best:
                dropped[name] = f"{estimate(name) / best:.2f}x the fastest after {r + 1} round(s)"
        alive = [n for n in alive if n not in dropped]
        if ref[0] not in alive and alive:
            ref[0] = alive[0]
    finishers = {n: estimate(n) for n in alive}
    fastest = min(finishers.values(), default=math.inf)
    winner = next((n for n in finishers if finishers[n] <= tie * fastest), None)
    return Race(winner, {n: estimate(n) for n in first}, first, dropped, made, spent - before)


# NOTE [peak memory]
# CUDA: the caching allocator's peak (torch.cuda.max_memory_allocated) after resetting it, minus
# what was allocated before the call -- exact, per byte the call allocated.
# CPU: torch has no allocator statistics, so we run the call once under torch.profiler with
# profile_memory=True, which records every allocation and free of torch's CPU allocator, and take
# the running total's maximum over operators in time order. That is the peak of live tensor bytes
# the call allocated (not RSS: Python objects, the allocator's cached pages and memory freed
# inside a single operator are not in it). It costs a profiled run, so it is measured once, apart
# from the timed runs.
def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Peak bytes of tensors ``fn()`` allocated, per NOTE [peak memory]."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()  # noqa: F841 - kept alive until the peak is read
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_native_output(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()  # noqa: F841
    running = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        running += event.self_cpu_memory_usage
        peak = max(peak, running)
    return peak


@contextlib.contextmanager
def _quiet_native_output() -> Iterator[None]:
    """The profiler's native library prints start/stop lines on the process's stdout/stderr file
    descriptors; a benchmark table must not be interleaved with them."""
    try:
        fds = [sys.stdout.fileno(), sys.stderr.fileno()]
    except (AttributeError, OSError, ValueError):  # captured streams (pytest) have no descriptor
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            os.dup2(null, fd)
        yield
    finally:
        for fd, copy in zip(fds, saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(null)


def saved_activation_bytes(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                           parameters: bool = True) -> int:
    """Bytes of the tensors one forward of ``fn`` saves for backward (each storage counted once,
    the input excluded; weights a layer saves are included, as autograd keeps them alive too,
    unless ``parameters=False``: then leaves that require grad are left out, which leaves what
    grows with the batch and with every extra row of a vectorized backward).

    >>> saved_activation_bytes(torch.tanh, torch.zeros(4, 3, dtype=torch.float64))  # saves tanh(x)
    96
    >>> lin = torch.nn.Linear(3, 2, bias=False).double()  # saves its input and its weight
    >>> saved_activation_bytes(lin, torch.zeros(4, 3, dtype=torch.float64), parameters=False)
    0
    """
    seen: dict[tuple[int, torch.device], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t if t._base is None else t._base  # a layer may save a view of its weight
        if not parameters and base.is_leaf and base.requires_grad:
            return t
        if t.layout == torch.strided and t.untyped_storage().nbytes():
            seen[(t.untyped_storage().data_ptr(), t.device)] = t.untyped_storage().nbytes()
        return t

    leaf = x.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(leaf)
    seen.pop((leaf.untyped_storage().data_ptr(), leaf.device), None)
    return sum(seen.values())
