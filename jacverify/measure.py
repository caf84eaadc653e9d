"""Wall time and peak memory of one call, device-synchronized: what ``bench`` and ``auto`` share."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field

import torch

__all__ = ["Timing", "Race", "stats", "timer", "time_call", "time_calls", "race", "racing",
           "synchronizer", "peak_memory", "release_freed_memory", "resident_bytes",
           "recorded_forward", "saved_activation_bytes"]


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


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """What waits for ``device`` to finish its queued work: torch.cuda.synchronize on CUDA, nothing
    on the CPU (NOTE [which clock])."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


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
    sync = synchronizer(device)
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
    call, who dropped out and why, what the race cost (calls made and their seconds), and why
    each challenger that ran every round lost (``lost``: a time under the winner's is not enough,
    NOTE [race] 3)."""

    winner: str | None
    times: dict[str, float]
    first: dict[str, float]
    dropped: dict[str, str]
    calls: int
    seconds: float
    lost: dict[str, str] = field(default_factory=dict)

    @property
    def steady(self) -> float:
        """The winner's best timed call (seconds); 0.0 when nothing ran."""
        return self.times.get(self.winner, 0.0) if self.winner else 0.0


# NOTE [race]
# Picking the fastest of a few ways to compute the same thing, cheaply and the same way every time
# (what `batch_jacobian(method="auto")` plans with; numbers in NOTE [auto plan]). Single calls are
# noisy here (the same call's CPU time varied 1.3-6 ms on a shared 2-core machine), a candidate's
# first call on a new shape ran 1.0-1.8x its steady time, and a call ran up to 1.3x slower after a
# different method than after itself (caches, the allocator's free lists), so no single call
# decides. Each timed round asks the question a tie can be settled by: is this candidate faster
# than the preferred one, measured side by side?
# 1. Each candidate is called once, in the caller's order of preference. A candidate with an
#    `estimates` entry (a cost predicted before running it, e.g. M backward passes for a loop over
#    the outputs) is not called when that estimate is over ESTIMATE_CUT x the best first call so
#    far, or would take the race past its budget. One in `siblings` (the same work through another
#    API: vmap over torch.func.vjp and autograd.grad's is_grads_batched) is called after the
#    others, predicted at its sibling's first call (they ran 0.8-1.3x of each other here), and cut
#    as that first call would be, over FIRST_CUT: the prediction carries the sibling's first-call
#    noise (cut at ESTIMATE_CUT, vmap_vjp, 20% faster than batched_grad on 64-64-64 at B=16 in
#    float32, never ran in one process of three, where batched_grad's first call was 1.6x the
#    best first call and 1.9x its own steady time). One in
#    `fallbacks` runs only when the one it stands in for raised. One that raises drops out. The
#    first that ran is the champion (the caller's preferred way); any other whose first call is
#    over FIRST_CUT x the best first call drops out, and when one round of the rest would take the
#    race past `budget`, the slowest first calls drop out until it fits.
# 2. The champion and its challengers are timed round-robin, in reverse order every other round,
#    at most `rounds` rounds; `primed`, each is called twice in a row and the round keeps the
#    faster of the two: what a call costs after a call of itself, as the plan will run (on
#    64-64-64 at B=16, float32, vmap_vjp took 0.50-0.54 ms after itself and 0.64-1.03 ms after
#    batched_grad; unprimed, its ratio swung from round to round), and one call's spike (a
#    preemption's cache misses) needs both to move the round. Timing the second call only, at
#    batch 1 one spike put repeat_trick, 0.75x batched_grad, at 1.44x in a first round and cut
#    it: batched_grad was planned in 2 processes of 6; with the faster of two, 2 of 18
#    (`benchmarks/auto_ratio.py --only mlp8-64-8/B1`, three runs). Each round gives a challenger
#    a paired ratio: its time over
#    the champion's in the same round (a load that drifts between rounds moves both alike). A
#    challenger whose median ratio is over ROUND_CUT after one round (unless its first call was
#    faster than the champion's: the two disagree, and a second round decides; one round cut
#    repeat_trick, 0.75x batched_grad at batch 1, at 1.54x in 1 process of 6 with the faster of
#    two calls already kept), over TIE after two or three,
#    or over 1 after four, drops out: it will not unseat the champion (dropped at a median over 1
#    after two rounds, one of them noisy, vmap_vjp lost where it is 13% faster; kept four rounds,
#    challengers 1.2x slower cost the CNN's plan 5 calls). So does one whose median is over
#    ROUND_CUT times that of a challenger leading the champion: it will not be within TIE of the
#    winner (at batch 1, batched_double_backward, 1.2-1.3x batched_grad and 1.7-1.8x
#    repeat_trick, ran two rounds where repeat_trick needed the budget). Nearer the leader only
#    the champion's cuts apply: cut at TIE times the leader after two rounds, vmap_vjp, 1.1x
#    faster than repeat_trick on the CNN in float32, lost to it in one process. The rounds stop
#    when no challenger is left, or when the next would take the race past `budget`.
# 3. A challenger unseats the champion only with evidence: at least `min_rounds` rounds, a median
#    ratio under 1 / TIE, and faster than the champion in every round (all but one in four when
#    there were four or more), or in two rounds when both were clear wins, under 1 / (TIE x
#    CLEAR). Two rounds of the first test were too few: loop_rows, 1.2x slower than batched_grad
#    on the CNN in float64, won in two processes of three where the budget ended the rounds there;
#    at batch 1, where the probes and first calls leave two rounds, repeat_trick, 1.4-1.5x faster
#    than batched_grad, lost in 3 processes of 6 for want of a third. Where the rounds were
#    fewer than `min_rounds`, the first calls' ratio counts as one more (both tests): at batch 1
#    the budget left one or two rounds after a spike, and repeat_trick lost at 0.49x and 0.80x
#    (2 processes of 6). With it and the round-one rule above, the input's checks were counted
#    in auto's budget too (NOTE [auto plan]), and 2 processes of 18 planned batched_grad: no
#    better and no worse than before both, with fewer calls. A first call runs 1.0-1.8x its
#    steady time, so this evidence only ever adds to rounds that agree. Otherwise the champion
#    wins: a challenger within TIE, or one the budget left too few rounds to judge, loses the
#    same way in every process, which is what
#    makes separate processes choose alike (the first version took the fastest median after 1-4
#    unprimed rounds and split processes on 8 of 16 cases here). Among challengers with that
#    evidence, the first in preference order within TIE of the fastest wins. TIE is the margin
#    auto promises (within 1.1x of the fastest way): a challenger faster by less is not worth a
#    plan that differs from process to process (at 1.07, vmap_vjp, 4-7% faster than batched_grad
#    on 64-64-64 at B=16 in float64, won in two processes of three). The rounds end early once a
#    challenger has won CONCLUSIVE rounds of CONCLUSIVE with a median under 1 / (TIE x CLEAR): a
#    clear win needs no more rounds, one near the TIE line gets every round there is (a tie wins
#    four rounds of four one time in 16, before the median's test). That first rule asked for
#    every round won and a median under 1 / (TIE x CLEAR): one noisy round (a call's page
#    faults, below), or a true ratio near 0.83, kept a clear winner racing to the budget --
#    vmap_vjp, 0.80-0.85x batched_grad on 64-64-64 at B=16 in float32, ran 9-14 rounds (races of
#    48-77 calls, where 21-28 sufficed), and the longer races split the processes more, not less
#    (6 fresh processes a case: 64-64-64 float64 5/1, the CNN float32 4/2, batch 1 float32 5/1).
#    Now the rounds end once a challenger has CONCLUSIVE rounds or more, lost no more of them
#    than the evidence allows (one in four) and a median under 1 / (TIE x SETTLED): the same
#    processes chose alike in 6 of 6 on those three cases, and no other case's choice moved.
# The budget is counted in the best median so far (before any, the fastest call seen): the
# winner's steady time or near it, so a race under `budget` of them costs about `budget` calls of
# the plan it picks, however slow its first calls were. When the caller uses every call's value
# (`useful`), a call counts only beyond that median.
# Much of a timed call's noise on the CPU is the C allocator's: a call that touches pages glibc
# handed back to the kernel takes a minor page fault per page (ru_minflt), counted in its CPU
# time. On the CNN (1x28x28, B=8, float32) vmap_vjp took 1.6 ms without faults and 2.3-2.6 ms
# with 390-500, in runs of rounds of one race, after another method and even on the second call
# of itself; its calls in a row took none. Re-timing a call that faulted, up to 3 timed calls a
# round, was tried: the CNN planned vmap_vjp in 9 processes of 9, as it did without that in the
# same hour, 64-64-64 at B=16 in float64 in 7 of 9 (6 without), and its planning took 17-23 calls
# instead of 6-21; not kept. A method whose buffers are over glibc's mmap threshold faults on
# every call (vmap_vjp on the encoder layer: 26,913 pages a call), which the plan pays too.
FIRST_CUT, ESTIMATE_CUT, ROUND_CUT, ROUNDS, MIN_ROUNDS, TIE = 2.0, 1.5, 1.3, 6, 3, 1.1
CONCLUSIVE, CLEAR, SETTLED = 4, 1.1, 1.05  # NOTE [race] 3: two clear rounds; the early end


def race(calls: dict[str, Callable[[], object]], device: torch.device | str = "cpu",
         **options) -> Race:
    """The fastest of ``calls`` (preference order: the dict's), per NOTE [race]: :func:`racing`
    with every call made here (``options`` are its own).

    >>> fast, slow = (lambda: sum(range(100))), (lambda: sum(range(100_000)))
    >>> r = race({"slow": slow, "fast": fast, "broken": lambda: 1 / 0}, budget=1e4)
    >>> r.winner, r.dropped["broken"], r.calls >= 3, r.steady > 0
    ('fast', 'raised ZeroDivisionError', True, True)
    """
    sync, clock = synchronizer(device), timer(device)
    steps = racing(list(calls), **options)
    try:
        name = next(steps)
        while True:
            sync()
            start = clock()
            try:
                calls[name]()
                sync()
                outcome: float | BaseException = clock() - start
            except Exception as e:  # noqa: BLE001 - no formula, rule or memory for this one here
                outcome = e
            name = steps.send(outcome)
    except StopIteration as stop:
        return stop.value


def racing(names: list[str], *, estimates: dict[str, float] | None = None,
           fallbacks: dict[str, str] | None = None, siblings: dict[str, str] | None = None,
           budget: float = 16.0, spent: float = 0.0, rounds: int = ROUNDS,
           min_rounds: int = MIN_ROUNDS, tie: float = TIE, useful: bool = False,
           primed: bool = False) -> Generator[str, float | BaseException, Race]:
    """NOTE [race] as a generator: it yields the name of the candidate to call next and is sent
    that call's seconds (or the exception it raised); it returns the :class:`Race`.

    ``names``: the candidates in preference order. ``budget`` is in calls of the best median
    so far (the fastest call seen before any); ``spent``, seconds the caller has spent already
    (counted against it); ``estimates``, predicted seconds per call for some candidates; ``fallbacks``, {candidate: the one it stands
    in for}: run only when that one raised; ``siblings``, {candidate: one doing the same work
    another way}: called after the others, predicted at its sibling's first call; ``useful``: the
    caller uses every call's result (NOTE [auto plan]'s exploration), so a call costs the budget
    only its time beyond the best median so far; ``primed``: in each round a candidate is
    called twice in a row and the second call timed (what it costs after itself, as the plan
    will run).
    """
    estimates = dict(estimates or {})
    siblings = siblings or {}
    first: dict[str, float] = {}
    dropped: dict[str, str] = {}
    own: dict[str, list[float]] = {}  # the rounds' timed calls
    made, before, floor = 0, spent, math.inf

    def over(seconds: float = 0.0, calls: int = 0) -> bool:
        """Would ``calls`` more calls taking ``seconds`` take the race past its budget? (Useful
        calls count beyond the best median so far: what the plan's own calls will take.)"""
        medians = [statistics.median(t) for t in own.values() if t]
        steady = min(medians) if medians else floor
        total = spent + seconds - ((made + calls) * steady if useful else 0.0)
        return total > budget * steady

    def record(outcome: float) -> float:
        nonlocal spent, made, floor
        spent, made, floor = spent + outcome, made + 1, min(floor, max(outcome, 1e-9))
        return outcome

    for name in [n for n in names if n not in siblings] + [n for n in names if n in siblings]:
        best_first = min(first.values(), default=math.inf)
        instead = (fallbacks or {}).get(name)
        if instead in first:
            dropped[name] = f"stands in for {instead}, which ran"
            continue
        if siblings.get(name) in first:
            estimates[name] = first[siblings[name]]
        guess = estimates.get(name, 0.0)
        cut = FIRST_CUT if name in siblings else ESTIMATE_CUT  # a first call's cut: NOTE [race]
        if name in estimates and (guess > cut * best_first or over(guess, 1)):
            dropped[name] = (f"predicted {guess * 1e3:.3g} ms, over {cut:g}x the best "
                             f"first call ({best_first * 1e3:.3g} ms) or the budget")
            continue
        outcome = yield name
        if isinstance(outcome, BaseException):
            dropped[name] = f"raised {type(outcome).__name__}"
            continue
        first[name] = record(outcome)
    champion = next((n for n in names if n in first), None)
    best_first = min(first.values(), default=math.inf)
    for name, t in first.items():
        if t > FIRST_CUT * best_first and name != champion:
            dropped[name] = f"first call {t / best_first:.2f}x the best"
    challengers = sorted((n for n in first if n not in dropped and n != champion), key=first.get)
    while challengers and over(first[champion] + sum(first[n] for n in challengers),
                               1 + len(challengers)):
        slowest = challengers.pop()
        dropped[slowest] = ("first call among the slowest, over the budget for a timed round"
                            if challengers else "no timed round fits what the probes and first "
                            "calls left of the budget: no evidence against the champion")
    challengers = [n for n in names if n in challengers]  # back in preference order
    own.update({n: [] for n in first})
    ratios: dict[str, list[float]] = {n: [] for n in challengers}
    per_call = 2 if primed else 1
    for r in range(rounds if challengers else 0):
        alive = [champion, *challengers]
        if r and over(per_call * sum((own[n] or [first[n]])[-1] for n in alive),
                      per_call * len(alive)):
            break
        for name in (alive if r % 2 == 0 else alive[::-1]):  # what ran just before matters
            primer = math.inf
            if primed:  # the first call of two: the round keeps the faster (NOTE [race] 2)
                outcome = yield name
                if not isinstance(outcome, BaseException):
                    primer = record(outcome)
            outcome = yield name
            if isinstance(outcome, BaseException):
                dropped[name] = f"raised {type(outcome).__name__} in a timed round"
            else:
                own[name].append(min(primer, record(outcome)))
        if champion in dropped:  # it ran once; challengers that kept running take its place
            champion = next((n for n in challengers if n not in dropped), None)
            ratios, challengers = {}, []
            break
        medians = {}
        for name in challengers:
            if name not in dropped:
                ratios[name].append(own[name][-1] / own[champion][-1])
                medians[name] = statistics.median(ratios[name])
        leader = min(medians, key=medians.get, default=None)  # the best challenger so far
        for name, median in medians.items():
            # after one round, a first call that says otherwise gets it a second (NOTE [race] 2)
            if median > (ROUND_CUT if r == 0 else tie if r < 3 else 1.0) \
                    and (r or first[name] >= first[champion]):
                dropped[name] = (f"{median:.2f}x the champion {champion} after {r + 1} "
                                 "round(s), paired")
            elif medians[leader] < 1 and median > ROUND_CUT * medians[leader] \
                    and (r or first[name] >= first[leader]):
                dropped[name] = (f"{median / medians[leader]:.2f}x {leader}, which leads the "
                                 f"champion, after {r + 1} round(s), paired")
        challengers = [n for n in challengers if n not in dropped]
        if not challengers or any(_settled(ratios[n], tie) for n in challengers):
            break
    def evidence(name: str) -> bool:
        """NOTE [race] 3: enough rounds (with the first calls' ratio as one more where the
        rounds were fewer), faster by TIE in the median and in (nearly) every round; or two,
        both clear wins."""
        q = ratios[name]
        if not q:
            return False
        seen = [*q, first[name] / first[champion]] if len(q) < min_rounds else q
        steady = len(seen) >= min_rounds and statistics.median(seen) < 1 / tie \
            and sum(x >= 1 for x in seen) <= len(seen) // 4
        return steady or (len(seen) >= 2 and max(seen) < 1 / (tie * CLEAR))

    proven = {n: statistics.median(ratios[n]) for n in challengers if evidence(n)}
    if proven:
        fastest = min(proven.values())
        winner = next(n for n in proven if proven[n] <= tie * fastest)
    else:
        winner = champion
    def beaten(name: str) -> str:
        """Why a challenger with evidence is not the winner (the fastest's within-TIE rule)."""
        if proven[name] <= tie * min(proven.values()):
            return f"within {tie:g}x of {winner}, which comes first in preference"
        return (f"{proven[name] / proven[winner]:.2f}x {winner} (their medians against the "
                f"champion {champion})")

    lost = {n: (beaten(n) if n in proven
                else f"{statistics.median(q):.2f}x the champion {champion} in the median of "
                f"{len(q)} round(s), faster in {sum(r < 1 for r in q)}: not the evidence to "
                f"unseat it ({min_rounds} rounds, a median under 1/{tie:g}, faster in nearly "
                "every round)")
            for n, q in ((n, ratios[n]) for n in challengers) if n != winner and q}
    base = statistics.median(own[champion]) if champion and own.get(champion) else None

    def estimate(name: str) -> float:
        """Its paired median times the champion's median (its first call when never timed)."""
        if name == champion and base is not None:
            return base
        if ratios.get(name) and base is not None:
            return statistics.median(ratios[name]) * base
        return statistics.median(own[name]) if own.get(name) else first[name]

    return Race(winner, {n: estimate(n) for n in first}, first, dropped, made, spent - before,
                lost)


def _settled(q: list[float], tie: float) -> bool:
    """NOTE [race] 3's early end: CONCLUSIVE rounds or more, lost in no more of them than the
    evidence allows, and a median under 1 / (``tie`` x SETTLED)."""
    return len(q) >= CONCLUSIVE and sum(r >= 1 for r in q) <= len(q) // 4 \
        and statistics.median(q) < 1 / (tie * SETTLED)


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


# NOTE [freed memory]
# glibc's malloc keeps what torch frees on CPU: past the first large free it raises its mmap
# threshold (up to 32 MB), so later tensors come from the heap, and the heap's freed pages stay in
# the process. A check runs its methods one after another, each allocating and freeing hundreds of
# MB, and the pages each left behind added up: on the encoder layer (d_model 64, sequence 16,
# batch 4) the resident size grew from 0.59 GB before vmap_jacrev to 1.09 GB after it with nothing
# of it alive, and the check peaked at 1.36 GB (1.14 GB with the threshold held fixed by
# MALLOC_MMAP_THRESHOLD_). malloc_trim(0) hands the freed pages back; the check calls it after a
# method whose run left the resident size TRIM_ABOVE higher than before it. Not after every
# method: a trim that finds pages to free costs 0.2-1.6 ms, and trimming after each route probe
# took the CNN's route verification from 2.75x to 3.5x gradcheck's fast mode. Elsewhere than
# glibc (macOS, musl) it does nothing. Changing the threshold instead (mallopt) would change the
# caller's whole process for good.
TRIM_ABOVE = 2**25  # 32 MiB: glibc's largest mmap threshold, what one free can leave in the heap


# NOTE [settled allocator]
# The other side of NOTE [freed memory], for timing: a fresh process's glibc starts with a 128 KiB
# mmap threshold and trims the heap's top past 128 KiB free, so a Jacobian's buffers of a few
# hundred KB go back to the kernel at each free and fault in again at the next call (ru_minflt,
# counted in its CPU time). That settles by itself once the process frees a large block (glibc
# raises both thresholds to the block's size, up to 32 MiB, and trims past twice that): in a
# long-running process vmap_vjp ran 1.11-1.21x faster than batched_grad on 64-64-64 at B=16,
# where a fresh process's race saw it anywhere from 0.8x to 1.3x. On the CNN (1x28x28, B=8,
# float32), vmap_vjp primed took 1.6-2.5 ms a call in a fresh process, one mode or the other by
# the call, and batched_grad 2.1-2.9 ms; after one 31 MiB tensor allocated and freed, 1.52-1.64
# and 2.0-2.3 ms, in three processes of three (MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_
# set to 1 GB gave the same). So auto's warm-up does that once per process before it times
# anything: what glibc does after any large free (a training step's), leaving the thresholds
# adjustable, not mallopt's fixed ones (which would hold for good). The cost: up to 64 MiB of
# freed heap kept instead of returned. Elsewhere than glibc it allocates and frees 31 MiB, once.
# What it does not settle: a torch CPU tensor is allocated 64-byte aligned (posix_memalign), and
# a freed 10 MiB buffer, less its alignment remainder, did not fit the next same-size request in
# 3 processes of 6 here, which took fresh heap pages above it (2,560 faults); the heap's layout
# decides, by process. Its test allocates with malloc, which reuses the block every time.
SETTLING_BYTES = 31 * 2**20  # under glibc's 32 MiB cap on the threshold it raises on a free


@functools.cache
def settle_allocator() -> None:
    """Raise glibc's dynamic mmap and trim thresholds to their cap, once per process, by one
    large allocation freed untouched (NOTE [settled allocator])."""
    torch.empty(SETTLING_BYTES, dtype=torch.uint8)  # freed at once: the free raises them


def resident_bytes() -> int | None:
    """The process's resident memory in bytes (Linux's /proc/self/statm), or None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def release_freed_memory(since: int | None = None) -> None:
    """Return the C heap's freed pages to the operating system (NOTE [freed memory]): always, or
    with ``since`` (a :func:`resident_bytes` reading), only when the resident size has grown by
    over TRIM_ABOVE since. glibc only, a no-op elsewhere. CUDA memory is untouched: torch's
    caching allocator keeps its own."""
    trim = _malloc_trim()
    if trim is None:
        return
    if since is not None and (now := resident_bytes()) is not None and now - since <= TRIM_ABOVE:
        return
    trim(0)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


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
    return recorded_forward(fn, x, parameters=parameters)[2]


def recorded_forward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                     parameters: bool = True) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One forward of ``fn`` on a leaf copy of ``x``: (the leaf, the output with its graph, the
    bytes it saved for backward as :func:`saved_activation_bytes` counts them).

    >>> leaf, y, saved = recorded_forward(torch.tanh, torch.zeros(4, 3, dtype=torch.float64))
    >>> leaf.requires_grad, y.grad_fn is not None, saved
    (True, True, 96)
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
        y = fn(leaf)
    seen.pop((leaf.untyped_storage().data_ptr(), leaf.device), None)
    return leaf, y, sum(seen.values())
