"""Sharded runs: ``--shard I/N`` picks a deterministic part of a run's targets (the operators of
``jacverify ops``, the rules of ``jacverify fuzz-rules``, the network families of ``jacverify
fuzz``), each shard writes its JSON, and
``jacverify merge`` (:mod:`jacverify.cli_merge`) combines them into one report and one exit status.
Importing this module does not import torch.

NOTE [shards]
Shard I of N takes the targets at positions I-1, I-1+N, I-1+2N, ... of the run's own order (for
``ops``, torch's OpInfo database order; variants of one operator, which sit side by side and cost
alike, land on different shards). Nothing else depends on the shard: each operator's samples and
drawn values come from ``--seed`` alone (``check_op`` seeds torch's generator per operator), so an
operator's result in a shard is the one it has in an unsharded run. Each shard's JSON records
``{"index", "count", "of"}`` (``of``: the targets of the whole run), so ``merge`` can tell a
missing or repeated shard from a complete set.

``jacverify fuzz`` is one campaign, not one per target: a shard runs one campaign (its own
``--examples`` or ``--seconds``) whose networks are drawn from its families only, so its cases are
not the unsharded campaign's. What carries over is the verdict: the merged exit status is the
unsharded run's rule (failed if any shard's campaign found a failure, else unverified if one
verified nothing), and the merged ``families`` are the whole run's, in its order.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Shard", "parse_shard", "select_shard", "shard_body"]

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (from 1) of ``count``.

    >>> Shard(2, 3).select("abcdefg")
    ['b', 'e']
    >>> sorted(x for i in (1, 2, 3) for x in Shard(i, 3).select("abcdefg")) == list("abcdefg")
    True
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (isinstance(self.index, int) and isinstance(self.count, int)
                and 1 <= self.index <= self.count):
            from jacverify.errors import InvalidArgument

            raise InvalidArgument(f"Shard(index={self.index!r}, count={self.count!r}): give "
                                  "1 <= index <= count, e.g. Shard(1, 2)")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, items: Sequence[T]) -> list[T]:
        """This shard's part of ``items`` (NOTE [shards])."""
        return [x for k, x in enumerate(items) if k % self.count == self.index - 1]


def parse_shard(text: str) -> Shard:
    """``"1/2"`` -> ``Shard(1, 2)`` (argparse's ``type=``).

    >>> parse_shard("2/4")
    Shard(index=2, count=4)
    """
    index, sep, count = str(text).partition("/")
    try:
        if not sep:
            raise ValueError
        return Shard(int(index), int(count))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shard {text!r} must be I/N with 1 <= I <= N, e.g. "
                                         "1/2") from None
    except Exception as e:  # noqa: BLE001 - InvalidArgument
        raise argparse.ArgumentTypeError(f"shard {text!r} must be I/N with 1 <= I <= N, e.g. "
                                         f"1/2 ({e})") from None


def select_shard(items: Sequence[T], shard: Shard | None, *,
                 empty: Callable[[str], Exception] | None = None) -> list[T]:
    """``items`` for ``shard`` (all of them for None). With ``empty``, raise ``empty(message)``
    when the shard gets nothing (more shards than targets)."""
    if shard is None:
        return list(items)
    chosen = shard.select(items)
    if not chosen and empty is not None:
        raise empty(f"--shard {shard}: {len(items)} target(s) leave nothing for shard "
                    f"{shard.index}; use at most {len(items)} shards")
    return chosen


def shard_body(shard: Shard | None, total: int) -> dict[str, Any]:
    """The ``shard`` field of a shard's JSON document (none for an unsharded run)."""
    if shard is None:
        return {}
    return {"shard": {"index": shard.index, "count": shard.count, "of": total}}
