"""``jacverify fuzz-rules`` and ``jacverify ops``: the batching-rule fuzzer from the command line."""

from __future__ import annotations

import argparse
import json
import time

from jacverify.outcomes import document
from jacverify.cli_merge import ops_exit_status
from jacverify.shards import select_shard, shard_body
from jacverify.cli_common import (
    Timeout,
    exit_status,
    time_limit,
)


def run_fuzz_rules(args: argparse.Namespace, usage: type[Exception]) -> int:
    if not args.files and not args.op:
        raise usage("give a FILE with custom ops or autograd.Functions, or --op NS::NAME")
    if args.examples < 1 or args.max_batch_size < 1 or not args.shrink_seconds > 0:
        raise usage("--examples and --max-batch-size must be at least 1, --shrink-seconds positive")
    from rich.console import Console
    from rich.table import Table

    import jacverify
    from jacverify.discover import LoadError, load
    from jacverify.rules import CHECKS, as_target, discover_rules, fuzz_batching_rule

    out = Console(highlight=False, soft_wrap=True, width=max(Console().width, 160))
    targets = []
    try:
        for spec in args.files:
            found = discover_rules(load(spec))
            if not found:
                raise usage(f"{spec}: no torch.library custom op and no autograd.Function with a "
                            "vmap rule (a vmap staticmethod or generate_vmap_rule=True) in it")
            targets += found
        targets += [as_target(op) for op in args.op]
    except (LoadError, jacverify.InvalidArgument) as e:
        raise usage(str(e)) from None
    from jacverify.databases import database_argument

    total, targets = len(targets), select_shard(targets, args.shard, empty=usage)

    database = database_argument(args.database)  # NOTE [shared example database]
    reports = []
    for target in targets:
        report = fuzz_batching_rule(target, max_examples=args.examples, seed=args.seed,
                                    max_batch_size=args.max_batch_size, database=database,
                                    shrink_seconds=args.shrink_seconds)
        reports.append(report)
        out.print(report.describe(), markup=False)
    table = Table(title="jacverify fuzz-rules: per rule, each check's examples as agree / mismatch "
                  "/ unsupported (an unsupported check raised; its reason is in the JSON)")
    table.add_column("rule")
    table.add_column("verdict")
    for check in CHECKS:
        table.add_column(check, justify="right")
    for r in reports:
        cells = ["/".join(str(r.counts.get(c, {}).get(s, 0))
                          for s in ("agree", "mismatch", "unsupported")) for c in CHECKS]
        style = {"passed": "green", "failed": "bold red"}.get(str(r.verdict), "yellow")
        table.add_row(r.target, f"[{style}]{r.verdict}[/]", *cells)
    out.print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(document("fuzz-rules", **shard_body(args.shard, total),
                               rules=[_rule_json(r) for r in reports]), f, indent=2)
    verdicts = [str(r.verdict) for r in reports]
    out.print(f"{verdicts.count('passed')} passed, {verdicts.count('failed')} failed, "
              f"{verdicts.count('unverified')} unverified rule(s)", markup=False)
    return exit_status(verdicts)


def _rule_json(r) -> dict:
    return {"rule": r.target, "verdict": str(r.verdict), "passed": r.passed,
            "examples": r.examples, "verified": r.verified, "rejected": r.rejected,
            "seconds": r.seconds, "seed": r.seed, "counts": r.counts, "failed_at": r.failed_at,
            "failure": None if r.failure is None else {
                "example": repr(r.failure.example), "snippet": r.failure.snippet,
                "mismatches": [{"check": o.check, "detail": o.detail}
                               for o in r.failure.mismatches]}}


def run_ops(args: argparse.Namespace, usage: type[Exception]) -> int:
    if args.op and args.all:
        raise usage("give --op NAME or --all, not both")
    if args.samples < 1 or not args.timeout > 0:
        raise usage("--samples must be at least 1 and --timeout positive")
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    import jacverify
    from jacverify.references import warnings_recorded
    from jacverify.rules.ops import DEFAULT_OPS, OP_CHECKS, OpCheck, OpResult, check_op, select_ops

    out = Console(highlight=False, soft_wrap=True, width=max(Console().width, 160))
    err = Console(stderr=True)
    try:
        ops = select_ops(None if args.all else (args.op or DEFAULT_OPS))
        total, ops = len(ops), select_shard(ops, args.shard, empty=usage)  # NOTE [shards]
    except jacverify.InvalidArgument as e:
        raise usage(str(e)) from None
    start = time.perf_counter()
    results = []
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("ops", total=len(ops))
        for op in ops:
            progress.update(task, description=op.name)
            began = time.perf_counter()
            try:
                with time_limit(args.timeout), warnings_recorded():
                    result = check_op(op, samples=args.samples, seed=args.seed)
            except Timeout:
                result = OpResult(op.name, (OpCheck("vmap", "", "skipped", "timed out"),),
                                  time.perf_counter() - began, f"abandoned after {args.timeout:g} s")
            results.append(result)
            progress.advance(task)
    seconds = time.perf_counter() - start
    statuses = ("agree", "mismatch", "known", "unsupported", "skipped")
    per_check = Table(title=f"jacverify ops: {len(results)} operators, {seconds:.0f} s "
                      "(checks per status, over samples and in_dims)")
    per_check.add_column("check")
    for s in statuses:
        per_check.add_column(s, justify="right")
    for check in OP_CHECKS:
        row = [sum(c.check == check and c.status == s for r in results for c in r.checks)
               for s in statuses]
        per_check.add_row(check, *map(str, row))
    out.print(per_check)
    wrong = [r for r in results if r.status in ("mismatch", "known")]
    if wrong:
        table = Table(title="wrong values (mismatch), by operator")
        for col in ("operator", "check", "sample", "what differs"):
            table.add_column(col)
        for r in wrong:
            for c in r.mismatches:
                table.add_row(r.name, c.check, c.sample, c.detail)
        out.print(table)
    counts = {s: sum(r.status == s for r in results) for s in statuses}
    out.print(f"operators: {counts['agree']} agree, {counts['mismatch']} with wrong values, "
              f"{counts['known']} with wrong values torch declares, {counts['unsupported']} "
              f"unsupported only, {counts['skipped']} skipped; {seconds:.0f} s", markup=False)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(document("ops", **shard_body(args.shard, total), seconds=seconds,
                               counts=counts, operators=[
                {"name": r.name, "status": r.status, "seconds": r.seconds, "reason": r.reason,
                 "checks": [{"check": c.check, "sample": c.sample, "status": c.status,
                             "detail": c.detail} for c in r.checks]} for r in results]),
                      f, indent=2)
    return ops_exit_status([str(r.status) for r in results])  # the rule merge applies too
