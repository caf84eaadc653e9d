"""``jacverify bench``: the suite, or a file's targets, timed side by side; table, JSON, HTML."""

from __future__ import annotations

import argparse
import json
import sys

from jacverify import options
from jacverify.cli_common import writable_path

EXIT_OK, EXIT_MISMATCH = 0, 1


def run_bench(args: argparse.Namespace, usage: type[Exception]) -> int:
    try:
        kwargs = options.resolve(vars(args))
    except argparse.ArgumentTypeError as e:
        raise usage(str(e)) from None
    if args.files and args.suite:
        raise usage("give FILEs or --suite, not both")
    if args.batch_size < 1:
        raise usage(f"--batch-size={args.batch_size} must be at least 1")
    if args.min_seconds is not None and args.min_seconds <= 0:
        raise usage(f"--min-seconds={args.min_seconds} must be positive")
    if not args.files and (kwargs.get("dtype") is not None or "seed" in kwargs):
        raise usage("--dtype and --seed apply to FILEs; a suite's cases fix their own dtypes "
                    "and seeds (their names say which)")
    writable_path("--json", args.json)  # before any timing is done
    writable_path("--html", args.html)
    saved = _saved_run(args.compare, usage) if args.compare else None
    from rich.console import Console
    from rich.progress import Progress

    import jacverify
    from jacverify.bench import SUITES, SWEEPS, bench_suite
    from jacverify.bench_render import case_table, pathology_lines, summary_table

    out = Console(highlight=False, soft_wrap=True)  # the real width; tables fold to fit
    err = Console(stderr=True)
    device = str(kwargs.get("device", "cpu"))
    common = dict(methods=kwargs.get("methods"), memory=not args.no_memory,
                  min_seconds=args.min_seconds)
    try:
        if kwargs.get("methods"):
            jacverify.get_methods(kwargs["methods"])
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise jacverify.InvalidArgument(
                    f"--device {device} was asked for but CUDA is not available here; use cpu")
    except jacverify.InvalidArgument as e:
        raise usage(str(e)) from None
    with Progress(console=err, transient=True, disable=not err.is_terminal) as progress:
        if not args.files:
            suite = args.suite or "default"
            count = len(SUITES[suite]) + (0 if args.no_sweeps else
                                          sum(map(len, SWEEPS[suite].values())))
            task = progress.add_task(f"bench --suite {suite}", total=count)

            def done(group, result):
                progress.update(task, advance=1, description=f"{group}: {result.name}")

            run = bench_suite(suite, sweeps=not args.no_sweeps, device=device, on_case=done,
                              **common)
        else:
            run = _bench_files(args, kwargs, device, common, usage, progress)
    for case in run.cases:
        out.print(case_table(case, width=out.width))
    if run.suite != "files":
        out.print(summary_table(run))
    for line in pathology_lines(run):
        out.print(f"pathology: {line}", markup=False)
    if saved is not None:
        out.print(compare_table(saved, run.to_json(), args.compare))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(run.to_json(), f, indent=2)
    if args.html:
        from jacverify.html_report import write_bench_html

        write_bench_html(args.html, run)
    wrong = [f"{c.name}: {r.method}" for c in run.cases for r in c.results if r.status == "mismatch"]
    for line in wrong:
        out.print(f"mismatch: {line} disagrees with the references (run jacverify check)",
                  markup=False)
    return EXIT_MISMATCH if wrong else EXIT_OK


def _bench_files(args, kwargs, device, common, usage, progress):
    import jacverify
    from jacverify.bench import bench, bench_run
    from jacverify.discover import LoadError, NoInput, discover, example_input, load

    targets = []
    for spec in args.files:
        try:
            module = load(spec)
        except LoadError as e:
            raise usage(str(e)) from None
        found, skipped = discover(module, spec)
        for line in skipped:  # as `jacverify check FILE` lists them
            print(line, file=sys.stderr)
        if not found:
            raise usage(f"{spec}: nothing to bench (define an nn.Module subclass constructible "
                        "with no arguments, a module instance at top level, or mark a function "
                        "@jacverify.target)")
        targets += found
    task = progress.add_task("bench", total=len(targets))
    cases = []
    for tgt in targets:
        progress.update(task, description=tgt.name)
        try:
            fn = tgt.build()
            inputs, axis = example_input(tgt, fn, args.batch_size, kwargs.get("seed", 0),
                                         kwargs.get("dtype"))
            if axis != 0 or len(inputs) != 1:
                print(f"{tgt.name}: skipped (bench takes one input batched on axis 0)",
                      file=sys.stderr)
                continue
            cases.append(bench(fn, inputs[0], name=tgt.name, device=device,
                               params={"batch": args.batch_size, "target": tgt.name}, **common))
        except (NoInput, jacverify.JacverifyError) as e:
            print(f"{tgt.name}: skipped ({e})", file=sys.stderr)
        progress.advance(task)
    return bench_run("files", cases, device)


def _saved_run(path: str, usage: type[Exception]) -> dict:
    """A run saved by ``--json`` (pytest-benchmark's layout), read before any timing is done."""
    try:
        with open(path) as f:
            saved = json.load(f)
        saved["benchmarks"][0]["fullname"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise usage(f"--compare {path!r} is not a run saved by jacverify bench --json "
                    f"({type(e).__name__}: {e})") from None
    return saved


def compare_table(saved: dict, now: dict, label: str):
    """Per (case, method) in both runs: the saved median, this run's, and their ratio, as
    pytest-benchmark's ``--benchmark-compare`` shows it (ratios over 1.0 are slower now)."""
    from jacverify.columns import Column, rich_table

    old = {b["fullname"]: b for b in saved["benchmarks"] if b.get("stats")}
    rows = [(b["fullname"].removeprefix("jacverify bench::"), old[b["fullname"]]["stats"],
             b["stats"]) for b in now["benchmarks"] if b.get("stats") and b["fullname"] in old]

    def ms(x: float) -> str:
        return f"{x * 1e3:.3f}"

    columns = (
        Column("case::method", lambda r, _: r[0]),
        Column("saved median ms", lambda r, _: ms(r[1]["median"]), "right"),
        Column("now median ms", lambda r, _: ms(r[2]["median"]), "right"),
        Column("now / saved", lambda r, _: f"{r[2]['median'] / r[1]['median']:.2f}", "right"),
    )
    return rich_table(columns, rows, title=f"against {label} ({len(rows)} timings in both runs)")
