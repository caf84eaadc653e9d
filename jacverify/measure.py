"""Wall time and peak memory of one call, device-synchronized: what ``bench`` and ``auto`` share."""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

__all__ = ["Timing", "stats", "timer", "time_call", "time_calls", "peak_memory", "saved_activation_bytes"]


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
               warmup: int = 1, min_seconds: float = MIN_SECONDS) -> dict[str, Timing]:
    """Time each of ``fns`` round-robin per NOTE [benchmark rounds]: {name: Timing}."""
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
    for r in range(max(wanted.values(), default=0)):
        for name, fn in fns.items():
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


def saved_activation_bytes(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    """Bytes of the tensors one forward of ``fn`` saves for backward (each storage counted once,
    the input excluded; weights a layer saves are included, as autograd keeps them alive too).

    >>> saved_activation_bytes(torch.tanh, torch.zeros(4, 3, dtype=torch.float64))  # saves tanh(x)
    96
    """
    seen: dict[tuple[int, torch.device], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.layout == torch.strided and t.untyped_storage().nbytes():
            seen[(t.untyped_storage().data_ptr(), t.device)] = t.untyped_storage().nbytes()
        return t

    leaf = x.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(leaf)
    seen.pop((leaf.untyped_storage().data_ptr(), leaf.device), None)
    return sum(seen.values())
