"""``jacverify fuzz-rules`` and ``jacverify ops``: the batching-rule fuzzer from the command line."""

from __future__ import annotations

import argparse
import json
import time

from jacverify.outcomes import document
from jacverify.cli_merge import OP_STATUSES, ops_exit_status
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

    out = Console(highlight=False, soft_wrap=True)  # the real width; tables fold to fit
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
    for r in reports:
        for check, why in r.unsupported.items():
            out.print(f"{r.target} {check}: unsupported: {why}", markup=False)
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
            "unsupported": dict(r.unsupported),
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
    if args.budget < 0 or not args.shrink_seconds > 0:
        raise usage(f"--budget {args.budget:g} must be >= 0 (0 skips the fuzzer) and "
                    f"--shrink-seconds {args.shrink_seconds:g} positive")
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    import jacverify
    from jacverify.case import resolve_device
    from jacverify.references import warnings_recorded
    from jacverify.rules.op_args import FAMILIES
    from jacverify.rules.op_fuzzer import ROUTES
    from jacverify.rules.ops import DEFAULT_OPS, OP_CHECKS, OpCheck, OpResult, full_name, select_ops

    out = Console(highlight=False, soft_wrap=True, width=max(Console().width, 160))
    err = Console(stderr=True)
    try:
        device = resolve_device(args.device)  # NOTE [ops on a device]
        targets = _op_targets(None if args.all else (args.op or DEFAULT_OPS), select_ops,
                              full_name, FAMILIES)
        total, targets = len(targets), select_shard(targets, args.shard, empty=usage)  # NOTE [shards]
    except jacverify.InvalidArgument as e:
        raise usage(str(e)) from None
    start = time.perf_counter()
    results = []
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("ops", total=len(targets))
        for name, op in targets:
            progress.update(task, description=name)
            began = time.perf_counter()
            try:
                with time_limit(args.timeout), warnings_recorded():
                    result = _one_op(name, op, args, FAMILIES, device)
            except Timeout:
                result = OpResult(name, (OpCheck("vmap", "", "skipped", "timed out"),),
                                  time.perf_counter() - began, f"abandoned after {args.timeout:g} s")
            results.append(result)
            progress.advance(task)
    seconds = time.perf_counter() - start
    statuses = OP_STATUSES  # one list, the one jacverify merge counts
    on = "" if device.type == "cpu" else f" on {device} (references on the CPU)"
    per_check = Table(title=f"jacverify ops{on}: {len(results)} operators, {seconds:.0f} s "
                      "(sweep checks + fuzzed examples, per route and status)")
    per_check.add_column("route")
    for st_ in statuses:
        per_check.add_column(st_, justify="right")
    for check in dict.fromkeys((*OP_CHECKS, *ROUTES)):
        row = [sum(c.check == check and c.status == st_ for r in results for c in r.checks
                   if c.sample != "fuzzed")
               + sum((r.fuzz.counts.get(check, {}).get(st_, 0) if r.fuzz else 0) for r in results)
               for st_ in statuses]
        per_check.add_row(check, *map(str, row))
    out.print(per_check)
    wrong = [r for r in results if r.status in ("mismatch", "known")]
    if wrong:
        table = Table(title="wrong values (mismatch, known), by operator; fuzzed ones replay "
                      "from the snippet below the table")
        for col in ("operator", "check", "sample", "status", "what differs"):
            table.add_column(col)
        for r in wrong:
            for c in r.checks:
                if c.status in ("mismatch", "known"):
                    table.add_row(r.name, c.check, c.sample, str(c.status), c.detail)
        out.print(table)
        for r in wrong:
            if r.fuzz is not None and r.fuzz.failure is not None:
                out.print(r.fuzz.describe(), markup=False)
            if any(c.status in ("mismatch", "known") and c.sample != "fuzzed" for c in r.checks):
                out.print(f"replay {r.name}'s samples: python -c \"from jacverify.rules.ops import "
                          f"check_op, select_ops; print([c for c in check_op(select_ops(["
                          f"'{r.name}'])[0], samples={args.samples}, seed={args.seed}"
                          f"{'' if device.type == 'cpu' else f', device={str(device)!r}'}).checks "
                          f"if c.status != 'agree'])\"", markup=False, soft_wrap=True)
    counts = {s: sum(r.status == s for r in results) for s in statuses}
    out.print(f"operators: {counts['agree']} agree, {counts['mismatch']} with wrong values, "
              f"{counts['known']} with wrong values torch declares, {counts['unsupported']} "
              f"unsupported only, {counts['skipped']} skipped; {seconds:.0f} s{on}", markup=False)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(document("ops", **shard_body(args.shard, total), seconds=seconds,
                               counts=counts, budget=args.budget, seed=args.seed,
                               device=str(device),
                               operators=[_op_json(r) for r in results]),
                      f, indent=2)
    return ops_exit_status([str(r.status) for r in results])  # the rule merge applies too


def _op_targets(names, select_ops, full_name, families) -> list:
    """(name, OpInfo or None) per operator: OpInfo entries by name (every one for None), and the
    fuzzer's own families that are not OpInfo names."""
    if names is None:
        ops = select_ops(None)
        seen = {full_name(o) for o in ops}
        return [(full_name(o), o) for o in ops] + [(n, None) for n in families if n not in seen]
    targets = []
    for name in names:
        try:
            targets += [(full_name(o), o) for o in select_ops([name])]
        except Exception:
            if name not in families:
                raise
            targets.append((name, None))
    return targets


def _one_op(name: str, op, args: argparse.Namespace, families, device):
    """The sweep over OpInfo's samples (when there is an entry) and the fuzzer's campaign, the
    routes on ``device`` (NOTE [ops on a device])."""
    import dataclasses

    import jacverify
    from jacverify.rules.op_args import opinfo_family
    from jacverify.rules.op_fuzzer import fuzz_op
    from jacverify.rules.ops import OpCheck, OpResult, check_op

    began = time.perf_counter()
    result = (check_op(op, samples=args.samples, seed=args.seed, device=device) if op is not None
              else OpResult(name, (), 0.0))
    if not args.budget:
        return result
    try:
        family = families[name] if name in families else opinfo_family(op)
    except jacverify.InvalidArgument as e:
        return dataclasses.replace(result, reason=result.reason or f"not fuzzed: {e}")
    try:
        report = fuzz_op(family, budget=args.budget, seed=args.seed, database=None,
                         shrink_seconds=args.shrink_seconds, device=device)
    except Exception as e:  # noqa: BLE001 - the fuzzer could not run this op: say so, go on
        from jacverify.judge import raised

        return dataclasses.replace(result, reason=result.reason or f"not fuzzed: {raised(e)}")
    fuzzed = tuple(OpCheck(c.check, "fuzzed", c.status, f"{c.detail} [{report.failure!r}]")
                   for c in report.wrong)
    if report.error:
        fuzzed += (OpCheck("errors", "fuzzed", "skipped",
                           f"jacverify could not run it: {report.error}"),)
    if report.verified and not fuzzed:
        fuzzed += (OpCheck("fuzz", "fuzzed", "agree", f"{report.verified} examples verified"),)
    return dataclasses.replace(result, checks=result.checks + fuzzed, fuzz=report,
                               seconds=time.perf_counter() - began)


def _op_json(r) -> dict:
    doc = {"name": r.name, "status": r.status, "seconds": r.seconds, "reason": r.reason,
           "checks": [{"check": c.check, "sample": c.sample, "status": c.status,
                       "detail": c.detail} for c in r.checks]}
    f = r.fuzz
    if f is not None:
        doc["fuzz"] = {"verdict": str(f.verdict), "examples": f.examples,
                       "verified": f.verified, "rejected": f.rejected, "seconds": f.seconds,
                       "seed": f.seed, "counts": f.counts, "reason": f.reason,
                       "failure": None if f.failure is None else {
                           "example": repr(f.failure), "snippet": f.snippet,
                           "wrong": [{"check": c.check, "status": str(c.status),
                                      "detail": c.detail} for c in f.wrong]}}
    return doc
