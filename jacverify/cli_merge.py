"""``jacverify merge``: the JSON documents of the shards of one run (``jacverify ops --shard I/N
--json ...``, ``jacverify fuzz-rules --shard I/N --json ...``, ``jacverify fuzz --shard I/N --json
...``) combined into one report and one exit status, the ones an unsharded run gives (NOTE [shards]
in :mod:`jacverify.shards`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from jacverify.cli_common import EXIT_MISMATCH, EXIT_OK, EXIT_UNVERIFIED, exit_status

__all__ = ["merge_documents", "document_exit_status", "ops_exit_status", "run_merge",
           "OP_STATUSES"]

OP_STATUSES = ("agree", "mismatch", "known", "unsupported", "skipped", "not_applicable")  # run_ops counts these
# per kind: the list of items, the key naming the target(s) an item covers (a fuzz campaign covers
# its shard's network families), and the fields every shard of one run has alike
_ITEMS = {"ops": ("operators", "name"), "fuzz-rules": ("rules", "rule"),
          "fuzz": ("campaigns", "families")}
_ALIKE = {"ops": ("seed", "budget", "device"), "fuzz-rules": (),
          "fuzz": ("quantity", "methods")}


def ops_exit_status(statuses: list[str]) -> int:
    """``jacverify ops``'s exit status from its operators' statuses: 1 when one has wrong values
    (a mismatch, declared by torch or not), else 0 when one agreed, else 3.

    >>> ops_exit_status(["agree", "known"]), ops_exit_status(["agree"]), ops_exit_status(["skipped"])
    (1, 0, 3)
    """
    if any(s in ("mismatch", "known") for s in statuses):
        return EXIT_MISMATCH
    return EXIT_OK if "agree" in statuses else EXIT_UNVERIFIED


def merge_documents(documents: list[dict[str, Any]], *, names: list[str] | None = None
                    ) -> dict[str, Any]:
    """One document from the shards' documents: their items in the unsharded run's order, counts
    recomputed.

    Args:
        documents: the shards' JSON documents, each of kind ``ops``, ``fuzz-rules`` or ``fuzz``.
        names: what to call each document in messages (default: its position).

    Returns:
        A document of the same kind with ``merged_from`` (each shard as ``I/N``) in place of
        ``shard``; for ``fuzz``, ``families`` is every shard's, in the unsharded run's order.

    Raises:
        ValueError: the documents are of different kinds or schema versions, not shards of one
            run (missing or repeated shards, different shard counts), or an item is in two.
    """
    names = names or [f"document {k + 1}" for k in range(len(documents))]
    if not documents:
        raise ValueError("give at least one shard's JSON document")
    kinds = {d.get("kind") for d in documents}
    if len(kinds) != 1 or next(iter(kinds)) not in _ITEMS:
        raise ValueError(f"the documents are of kinds {sorted(map(str, kinds))}; merge combines "
                         f"documents of one kind, one of {', '.join(_ITEMS)}")
    (kind,) = kinds
    for name in _ALIKE[kind]:
        values = {json.dumps(d.get(name)) for d in documents}
        if len(values) != 1:
            raise ValueError(f"the documents have {name} {', '.join(sorted(values))}: shards of "
                             "different runs; merge the shards of one run")
    versions = {d.get("schema_version") for d in documents}
    if len(versions) != 1:
        raise ValueError(f"the documents have schema versions {sorted(map(str, versions))}; "
                         "write every shard with the same jacverify")
    shards = [d.get("shard") for d in documents]
    if any(s is None for s in shards):
        if len(documents) > 1:
            bare = [n for n, s in zip(names, shards) if s is None]
            raise ValueError(f"{', '.join(bare)}: not a shard (written without --shard); merge "
                             "the documents of one run's --shard 1/N ... N/N")
    else:
        counts = {s["count"] for s in shards}
        totals = {s["of"] for s in shards}
        if len(counts) != 1 or len(totals) != 1:
            listed = ", ".join(f"{s['index']}/{s['count']} of {s['of']}" for s in shards)
            raise ValueError(f"the shards are {listed}: shards of different runs; merge the "
                             "shards of one run")
        (count,) = counts
        seen = sorted(s["index"] for s in shards)
        if seen != list(range(1, count + 1)):
            missing = sorted(set(range(1, count + 1)) - set(seen))
            repeated = sorted({i for i in seen if seen.count(i) > 1})
            raise ValueError(f"shards of {count}: missing {missing}, repeated {repeated}; give "
                             f"each of --shard 1/{count} ... {count}/{count} once")
    field, key = _ITEMS[kind]
    where: dict[str, str] = {}
    placed: list[tuple[int, dict[str, Any]]] = []
    targets: list[tuple[int, str]] = []
    for name, doc in zip(names, documents):
        shard = doc.get("shard")
        k = 0  # the document's targets so far
        for item in doc.get(field, []):
            # back at its place in the unsharded run (NOTE [shards]: round robin)
            placed.append((k * shard["count"] + shard["index"] - 1 if shard else k, item))
            for target in item[key] if isinstance(item[key], list) else [item[key]]:
                if target in where:
                    raise ValueError(f"{target!r} is in both {where[target]} and {name}")
                where[target] = name
                targets.append((k * shard["count"] + shard["index"] - 1 if shard else k, target))
                k += 1
    items = [item for _, item in sorted(placed, key=lambda p: p[0])]
    if shards[0] is not None and len(targets) != shards[0]["of"]:
        raise ValueError(f"the shards hold {len(targets)} of the run's {shards[0]['of']} targets")
    merged = {k: v for k, v in documents[0].items()
              if k not in ("shard", field, "counts", "seconds", "families")}
    merged["merged_from"] = [f"{s['index']}/{s['count']}" if s else name
                             for name, s in zip(names, shards)]
    if kind == "ops":
        merged["seconds"] = sum(d.get("seconds", 0.0) for d in documents)
        merged["counts"] = {s: sum(i["status"] == s for i in items) for s in OP_STATUSES}
    if kind == "fuzz":
        merged["families"] = [t for _, t in sorted(targets, key=lambda p: p[0])]
    merged[field] = items
    return merged


def document_exit_status(document: dict[str, Any]) -> int:
    """The exit status the unsharded run of a (merged) document would have."""
    if document["kind"] == "ops":
        return ops_exit_status([op["status"] for op in document["operators"]])
    field, _ = _ITEMS[document["kind"]]
    return exit_status([r["verdict"] for r in document[field]])


def run_merge(args: argparse.Namespace, usage: type[Exception]) -> int:
    documents = []
    for path in args.files:
        try:
            documents.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as e:
            raise usage(f"{path}: not a readable JSON document ({e})") from None
    try:
        merged = merge_documents(documents, names=list(args.files))
    except ValueError as e:
        raise usage(str(e)) from None
    if args.json:
        Path(args.json).write_text(json.dumps(merged, indent=2) + "\n")
    if merged["kind"] == "ops":
        wrong = [op for op in merged["operators"] if op["status"] in ("mismatch", "known")]
        for op in wrong:
            for c in op["checks"]:
                if c["status"] == "mismatch":
                    print(f"{op['name']}: {c['check']} on {c['sample']}: {c['detail']}")
        c = merged["counts"]
        print(f"operators ({' + '.join(merged['merged_from'])}): {c['agree']} agree, "
              f"{c['mismatch']} with wrong values, {c['known']} with wrong values torch declares, "
              f"{c['unsupported']} unsupported only, {c['skipped']} skipped; "
              f"{merged['seconds']:.0f} s in all shards")
    elif merged["kind"] == "fuzz":
        for c in merged["campaigns"]:
            print(f"{', '.join(c['families'])}: {c['verdict']} ({c['examples']} examples, "
                  f"{c['verified']} verified, seed {c['seed']})")
            if c["failure"] is not None:
                print(c["failure"]["message"] or f"error: {c['failure']['error']}")
                print(f"replay with (seed {c['seed']}):\n{c['failure']['snippet']}")
        verdicts = [c["verdict"] for c in merged["campaigns"]]
        print(f"campaigns ({' + '.join(merged['merged_from'])}) over {len(merged['families'])} "
              f"families: {verdicts.count('passed')} passed, {verdicts.count('failed')} failed, "
              f"{verdicts.count('unverified')} unverified")
    else:
        verdicts = [r["verdict"] for r in merged["rules"]]
        for r in merged["rules"]:
            print(f"{r['rule']}: {r['verdict']}")
        print(f"rules ({' + '.join(merged['merged_from'])}): {verdicts.count('passed')} passed, "
              f"{verdicts.count('failed')} failed, {verdicts.count('unverified')} unverified")
    return document_exit_status(merged)
