"""``jacverify``: check Jacobians of the modules and functions in a file, from the command line.

Exit status: 0 when every target that ran passed (at least one method verified against a trusted
reference, none wrong) and at least one did; 1 when a method disagrees, the references find a wrong
derivative formula, or a target fails a pre-check (nondeterminism, NaN output, its forward raising
or exiting); 2 on usage errors (a file not found, not Python, raising on import, nothing to check, a
bad option); 3 when nothing wrong was found but something was not verified (every method of a target
raised or did not apply, a target ran past --timeout or over the memory budget, or every target was
skipped).
"""

from __future__ import annotations

import argparse
import sys

from jacverify import options
from jacverify.cli_common import (
    EXIT_MISMATCH,
    EXIT_OK,
    EXIT_UNVERIFIED,
    EXIT_USAGE,
    Timeout,
    Usage,
    exit_status,
    time_limit,
    writable_path,
)

from jacverify.quantity_table import STANDALONE as QUANTITIES  # no torch import for --help
from jacverify.shards import parse_shard, select_shard, shard_body


def _parser() -> argparse.ArgumentParser:
    import jacverify

    parser = argparse.ArgumentParser(prog="jacverify", description=__doc__.replace("``", ""),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"jacverify {jacverify.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check every module and marked function in FILEs",
                           description="Imports each FILE as a module (its top-level code runs, "
                           "its `if __name__ == \"__main__\":` block does not), then checks every "
                           "nn.Module subclass constructible with no arguments (or configured in "
                           "[tool.jacverify]), every module instance at top level, and every "
                           "function marked @jacverify.target.")
    check.add_argument("files", nargs="+", metavar="FILE",
                       help="a .py file or a dotted module name (e.g. jacverify.examples.mlp)")
    options.add_to_argparse(check)
    check.add_argument("--batch-size", type=int, default=4, metavar="B",
                       help="batch size of inferred inputs (default: 4)")
    check.add_argument("--eval", action="store_true", help="check modules in eval mode")
    check.add_argument("--config", metavar="TOML", default=None,
                       help="constructor arguments and example inputs per target, a "
                       "[tool.jacverify.targets] table (default: the pyproject.toml nearest each "
                       "FILE; NOTE [target configuration] in jacverify/config.py)")
    check.add_argument("--quantity", default="batch_jacobian", choices=QUANTITIES,
                       help="what to check (default: batch_jacobian); the JVP/VJP sets use the "
                       "first sample as the point and 3 random vectors, per_sample_jvp one "
                       "random tangent per sample")
    check.add_argument("--json", metavar="PATH", help="write the session report as JSON")
    check.add_argument("--html", metavar="PATH", help="write a self-contained HTML report")
    check.add_argument("--quiet", action="store_true", help="one line per target")
    check.add_argument("--timeout", type=float, default=300.0, metavar="S",
                       help="seconds one target may take before it is abandoned (default: 300)")
    fz = sub.add_parser("fuzz", help="draw random networks and cases, shrink any failure",
                        description="Draws random network cases with Hypothesis, requires every "
                        "applicable method to agree with the references, and shrinks the first "
                        "failure to a runnable reproducer.")
    budget = fz.add_mutually_exclusive_group()
    budget.add_argument("--examples", type=int, default=None, metavar="N",
                        help="examples to generate (default: the Hypothesis profile's: ci 15, "
                        "dev 60, fuzz 5000)")
    budget.add_argument("--seconds", type=float, default=None, metavar="S",
                        help="fuzz for S seconds instead")
    options.add_to_argparse(fz, ("methods", "dtype", "seed", "database"), defaults={"seed": None},
                            helps={"seed": options.CAMPAIGN_SEED,
                                   "dtype": "float32 or float64 (default: both, drawn)"})
    fz.add_argument("--quantity", default="batch_jacobian", choices=QUANTITIES,
                    help="what to fuzz (default: batch_jacobian)")
    fz.add_argument("--profile", default=None, choices=["ci", "dev", "fuzz"],
                    help="Hypothesis profile (default: JACVERIFY_PROFILE, else ci under CI, else dev)")
    fz.add_argument("--function", action="append", default=[], metavar="MODULE:CLASS",
                    help="put this custom autograd.Function in every network (repeatable)")
    fz.add_argument("--families", metavar="NAMES",
                    help="comma-separated network families: mlp, residual, layernorm, conv1d, "
                    "conv2d, attention, rnn, elementwise (default: all)")
    fz.add_argument("--coupled", action="store_true", help="also draw batch-coupled networks")
    fz.add_argument("--shrink-seconds", type=float, default=30.0, metavar="S",
                    help="how long to shrink a failure (default: 30)")
    fz.add_argument("--max-depth", type=int, default=3, metavar="D", help="max depth (default: 3)")
    fz.add_argument("--max-width", type=int, default=5, metavar="W", help="max width (default: 5)")
    _sharded(fz, "the campaign's counts and failure", "fuzz only shard I of N of the families")
    sub.add_parser("demo", help="check the README's network and print the report",
                   description="Checks the README's example network (a 5-16-3 tanh MLP on a batch "
                   "of 8) every registered way and prints the report: a first look at what "
                   "jacverify shows, with no file of your own.")
    fr = sub.add_parser("fuzz-rules", help="fuzz the batching rules of custom ops and "
                        "autograd.Functions (in FILEs, or --op NS::NAME)",
                        description="Finds the torch.library custom ops and the autograd.Functions "
                        "with a vmap rule (a vmap staticmethod or generate_vmap_rule=True) in each "
                        "FILE, and fuzzes each rule against loops: vmap with every kind of in_dims, "
                        "out_dims, layouts and batch sizes, nested vmap, and vmap of jacrev, "
                        "jacfwd, vjp and jvp. The first failure is shrunk and printed as code.")
    fr.add_argument("files", nargs="*", metavar="FILE", help="a .py file or dotted module name")
    fr.add_argument("--op", action="append", default=[], metavar="NS::NAME",
                    help="an operator already registered (repeatable), e.g. aten::sin")
    fr.add_argument("--examples", type=int, default=100, metavar="N",
                    help="examples per rule (default: 100)")
    options.add_to_argparse(fr, ("seed", "database"), defaults={"seed": None},
                            helps={"seed": options.CAMPAIGN_SEED})
    fr.add_argument("--max-batch-size", type=int, default=4, metavar="B",
                    help="largest batch drawn (default: 4)")
    fr.add_argument("--shrink-seconds", type=float, default=30.0, metavar="S",
                    help="how long to shrink a failure (default: 30)")
    _sharded(fr, "every rule's counts and failure", "fuzz only shard I of N of the rules")
    ops = sub.add_parser("ops", help="sweep and fuzz torch's own operators: vmap, forward and "
                         "reverse AD, second derivatives, batching, against loops and FD",
                         description="Runs torch's OpInfo sample inputs (needs expecttest) "
                         "through vmap, forward and reverse AD against float64 finite "
                         "differences and the four forward/reverse compositions (the sweep), "
                         "then fuzzes each operator for --budget seconds: arguments drawn beyond "
                         "the database (built valid, every keyword variant, duplicates, ties, "
                         "partial batching), every route against finite differences of the raw "
                         "op, the first wrong value shrunk to a minimal call printed as code.")
    ops.add_argument("--op", action="append", default=[], metavar="NAME",
                     help="an OpInfo name, e.g. sin or nn.functional.relu, or a fuzzer family "
                     "such as pool (repeatable)")
    ops.add_argument("--all", action="store_true", help="every operator of the database, and "
                     "every fuzzer family")
    ops.add_argument("--samples", type=int, default=2, metavar="K",
                     help="database samples per operator in the sweep (default: 2), plus one drawn")
    ops.add_argument("--budget", type=float, default=0.5, metavar="S",
                     help="seconds of fuzzing per operator before any failure (default: 0.5; "
                     "0 skips the fuzzer)")
    ops.add_argument("--shrink-seconds", type=float, default=1.0, metavar="S",
                     help="seconds to shrink an operator's first failure (default: 1)")
    ops.add_argument("--timeout", type=float, default=20.0, metavar="S",
                     help="seconds per operator before it is abandoned (default: 20)")
    options.add_to_argparse(ops, ("seed", "device"), helps={
        "seed": "seed of the drawn values (default: 0)",
        "device": "device the routes run on, e.g. cuda (default: cpu); samples are drawn and "
                  "references computed on the CPU in float64 (NOTE [ops on a device])"})
    _sharded(ops, "per-operator results", "check only shard I of N of the operators")
    mg = sub.add_parser("merge", help="combine the JSON of a run's shards (ops, fuzz-rules or "
                        "fuzz --shard I/N --json ...) into one report and one exit status",
                        description="Combines the JSON documents that the shards of one "
                        "`jacverify ops`, `jacverify fuzz-rules` or `jacverify fuzz` run wrote "
                        "with --shard I/N "
                        "--json into one document, and exits as the unsharded run would. Refuses "
                        "missing or repeated shards and shards of different runs.")
    mg.add_argument("files", nargs="+", metavar="SHARD.json", help="one JSON document per shard")
    mg.add_argument("--json", metavar="PATH", help="write the merged document")
    bn = sub.add_parser("bench", help="time every method side by side (a FILE's targets or a suite)",
                        description="Checks, then times every method side by side in this process: "
                        "median and IQR over repeated runs after a warm-up, peak memory, the ratio "
                        "to one forward pass and to the loop, and methods over 10x slower than the "
                        "best flagged with the likely cause. With no FILE, runs --suite.")
    bn.add_argument("files", nargs="*", metavar="FILE", help="a .py file or dotted module name")
    bn.add_argument("--suite", default=None, choices=["default", "realistic", "quick"],
                    help="the tanh-MLP suite and its batch/size sweeps (default when no FILE)")
    options.add_to_argparse(bn, ("methods", "device", "dtype", "seed"), defaults={"seed": None})
    bn.add_argument("--batch-size", type=int, default=64, metavar="B",
                    help="batch size of a FILE's inferred inputs (default: 64)")
    bn.add_argument("--no-sweeps", action="store_true", help="skip the suite's sweeps")
    bn.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    bn.add_argument("--min-seconds", type=float, default=None, metavar="S",
                    help="timed work per method and case (default: 0.2)")
    bn.add_argument("--json", metavar="PATH", help="write pytest-benchmark-style JSON")
    bn.add_argument("--compare", metavar="PATH",
                    help="compare each median with a run saved by --json (ratio now / saved)")
    bn.add_argument("--html", metavar="PATH", help="write tables and sweep plots as HTML")
    return parser


def _sharded(parser: argparse.ArgumentParser, written: str, shard: str) -> None:
    """``--json PATH`` and ``--shard I/N`` of a command whose runs shard (NOTE [shards])."""
    parser.add_argument("--json", metavar="PATH", help=f"write {written} as JSON")
    parser.add_argument("--shard", type=parse_shard, default=None, metavar="I/N",
                        help=f"{shard} (NOTE [shards] in jacverify/shards.py); combine the "
                        "shards' --json with jacverify merge")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return _demo()
        if args.command == "fuzz":
            return _fuzz(args)
        if args.command == "fuzz-rules":
            from jacverify.cli_rules import run_fuzz_rules

            return run_fuzz_rules(args, Usage)
        if args.command == "ops":
            from jacverify.cli_rules import run_ops

            return run_ops(args, Usage)
        if args.command == "merge":
            from jacverify.cli_merge import run_merge

            return run_merge(args, Usage)
        if args.command == "bench":
            from jacverify.cli_bench import run_bench

            return run_bench(args, Usage)
        return _check(args)
    except Usage as e:
        print(f"jacverify: error: {e}", file=sys.stderr)
        return EXIT_USAGE


def _demo() -> int:
    import jacverify
    from jacverify.examples.networks import ReadmeNet

    report = jacverify.check(ReadmeNet(), ReadmeNet.example_input())
    print(report.render(color=sys.stdout.isatty()))
    return exit_status([str(report.verdict)])


def _fuzz(args: argparse.Namespace) -> int:
    import importlib

    from hypothesis import strategies as st
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    import jacverify
    from jacverify.databases import database_argument
    from jacverify.fuzzing import fuzz
    from jacverify.profiles import load_profile
    from jacverify.strategies import FAMILIES, TWICE_DIFFERENTIABLE, cases, networks
    from jacverify.validation import check_choice

    _positive(args, ("examples", "seconds", "shrink_seconds", "max_depth", "max_width"))
    writable_path("--json", args.json)
    for path in args.function:
        module, _, name = path.partition(":")
        try:
            ok = isinstance(getattr(importlib.import_module(module), name), type)
        except Exception:  # noqa: BLE001
            ok = False
        if not ok or not name:
            raise Usage(f"--function {path!r}: no class {name!r} importable from {module!r} "
                         "(give MODULE:CLASS, e.g. jacverify.examples.twins:CubeWrongJvp)")
    try:
        methods = options.parse_methods(args.methods)
        if methods:
            jacverify.get_methods(methods, args.quantity)
        dtype = options.parse_dtype(args.dtype)
        families = list(dict.fromkeys(check_choice("families", name, FAMILIES) for name in
                                      options.parse_methods(args.families) or FAMILIES))
        chosen = select_shard(families, args.shard, empty=Usage)  # NOTE [shards]
        second = args.quantity in ("hessian", "hessian_diagonal")
        nets = networks(max_depth=args.max_depth, max_width=args.max_width,
                        coupled=args.coupled, functions=args.function,
                        **({"families": chosen} if tuple(chosen) != FAMILIES else {}),
                        **({"activations": TWICE_DIFFERENTIABLE} if second else {}))
    except (argparse.ArgumentTypeError, jacverify.InvalidArgument) as e:
        raise Usage(str(e)) from None
    profile = load_profile(args.profile)
    from hypothesis import settings

    examples = args.examples if args.examples is not None else settings.default.max_examples
    dtypes = st.just(str(dtype).removeprefix("torch.")) if dtype else None
    strategy = cases(quantity=args.quantity, networks=nets, dtypes=dtypes)
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True)
    total = None if args.seconds else examples
    columns = [TextColumn("fuzzing {task.completed} examples"), BarColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("fuzz", total=total)
        result = fuzz(cases=strategy, methods=methods, quantity=args.quantity,
                      max_examples=examples, database=database_argument(args.database),
                      seconds=args.seconds, seed=args.seed, shrink_seconds=args.shrink_seconds,
                      on_example=lambda case, report: progress.advance(task))
    from jacverify.columns import counts_table
    from jacverify.judge import Status

    title = (f"jacverify fuzz {args.quantity}: {result.examples} examples (shrinking included), "
             f"{result.verified} verified, {result.rejected} rejected, {result.seconds:.1f} s, "
             f"profile {profile}, seed {result.seed}; per method, how many examples ended how")
    out.print(counts_table(result.counts, [str(s) for s in Status], first="method", title=title))
    for method, why in result.reasons.items():
        out.print(f"{method}: {why}", markup=False)
    if args.json:
        from jacverify.outcomes import document, write_json

        write_json(args.json, document("fuzz", **shard_body(args.shard, len(families)),
                                       quantity=args.quantity, methods=methods, profile=profile,
                                       families=chosen, campaigns=[_campaign_json(result, chosen)]))
    if result.failure is None:
        if not result.passed:
            out.print(f"UNVERIFIED: no failure, but none of the {result.examples} examples verified "
                      f"anything (every method raised or did not apply; seed {result.seed})")
            return EXIT_UNVERIFIED
        out.print(f"no failure in {result.examples} examples, {result.verified} verified "
                  f"(seed {result.seed})")
        return EXIT_OK
    f = result.failure
    out.print(f.report.failure_message() if f.report else f"error: {f.error}", markup=False)
    layers, params = f.case.network.size
    out.print(f"\nshrunk to {layers} layers, {params} parameters, batch {f.case.batch_size}; "
              f"replay with (seed {result.seed}):\n", markup=False)
    out.print(f.snippet, markup=False)
    return EXIT_MISMATCH


def _campaign_json(result, families: list[str]) -> dict:
    """One campaign of ``jacverify fuzz --json`` (a shard's: NOTE [shards])."""
    f = result.failure
    return {"families": list(families), "verdict": str(result.verdict),
            "examples": result.examples, "verified": result.verified, "rejected": result.rejected,
            "seconds": result.seconds, "seed": result.seed, "counts": result.counts,
            "failed_at": result.failed_at, "reasons": dict(result.reasons),
            "failure": None if f is None else {
                "example": repr(f.case), "snippet": f.snippet, "error": f.error,
                "message": f.report.failure_message() if f.report else None}}


def _positive(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """Numeric options that must be positive when given: a usage error naming the option."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and not value > 0:
            raise Usage(f"--{name.replace('_', '-')}={value:g} must be positive")


def _check(args: argparse.Namespace) -> int:
    try:
        kwargs = options.resolve(vars(args))
    except argparse.ArgumentTypeError as e:
        raise Usage(str(e)) from None
    if args.batch_size < 1:
        raise Usage(f"--batch-size={args.batch_size} must be at least 1")
    if not args.timeout > 0:
        raise Usage(f"--timeout={args.timeout:g} must be a positive number of seconds")
    writable_path("--json", args.json)
    writable_path("--html", args.html)
    _check_run_options(args.quantity, kwargs)
    from rich.console import Console

    from jacverify.config import config_keys
    from jacverify.discover import LoadError, discover, load
    from jacverify.errors import InvalidArgument
    from jacverify.outcomes import Outcome, session_document, write_json

    # soft_wrap: a line stays one line (greppable, pasteable) whatever the terminal's width.
    # the real width (COLUMNS, else 80 when piped): tables fold their cells to fit, never cut them
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    usage_errors, candidates, passed_over = [], [], []
    configured, named = set(), set()  # target names the configurations give; names they matched
    for spec in args.files:
        try:
            module = load(spec)
        except LoadError as e:
            usage_errors.append(str(e))
            err.print(f"jacverify: error: {e}", markup=False)
            continue
        try:
            configs = _target_configs(args.config, spec)
        except InvalidArgument as e:
            raise Usage(str(e)) from None
        targets, skipped = discover(module, spec, configs)
        configured |= set(configs)
        named |= {key for name in vars(module) for key in config_keys(spec, name)}
        for line in skipped:
            out.print(line, markup=False)
        passed_over += [Outcome(line.partition(": skipped")[0], "module class",
                                error=line.partition(": skipped, ")[2], error_status="skipped")
                        for line in skipped]
        if not targets:
            msg = (f"{spec}: nothing to check (define an nn.Module subclass constructible with no "
                   "arguments, a module instance at top level, or mark a function @jacverify.target)")
            usage_errors.append(msg)
            err.print(f"jacverify: error: {msg}", markup=False)
        candidates += targets
    for name in sorted(configured - named):  # a misspelled name leaves its target unconfigured
        err.print(f"jacverify: note: the configuration's targets.{name} names nothing in "
                  f"{', '.join(args.files)}", markup=False)
    outcomes = _run_all(candidates, args, kwargs, out, err) + passed_over
    if args.json:
        write_json(args.json, session_document(outcomes, device=kwargs.get("device", "cpu"),
                                               dtype=args.dtype, seed=kwargs.get("seed", 0)))
    if args.html:
        from jacverify.html_report import write_html

        write_html(args.html, outcomes, f"jacverify check {' '.join(args.files)} (seed "
                   f"{kwargs.get('seed', 0)}, device {kwargs.get('device', 'cpu')})")
    statuses = [o.status for o in outcomes]
    counts = {s: statuses.count(s) for s in ("passed", "failed", "unverified", "skipped")}
    if outcomes or not usage_errors:  # a run that checked nothing has no summary to give
        out.print(", ".join(f"{n} {s}" for s, n in counts.items()) + " target(s)", markup=False)
    if usage_errors:
        return EXIT_USAGE
    return exit_status(statuses)


def _target_configs(config: str | None, spec: str) -> dict:
    """The target configuration for FILE ``spec``: ``--config``, else its nearest pyproject.toml
    (NOTE [target configuration])."""
    from pathlib import Path

    from jacverify.config import find_pyproject, load_config

    if config:
        if not Path(config).is_file():
            raise Usage(f"--config={config}: no such file")
        return load_config(config)
    found = find_pyproject(spec) if Path(spec).exists() else None
    return load_config(found) if found else {}


def _check_run_options(quantity: str, kwargs: dict) -> None:
    """Options that are wrong for every target are usage errors, found before any target runs."""
    import jacverify
    from jacverify.case import resolve_device

    try:
        if kwargs.get("methods"):
            jacverify.get_methods(kwargs["methods"], quantity)
        resolve_device(kwargs.get("device"))
        if quantity != "batch_jacobian" and {"verification", "probes"} & set(kwargs):
            raise jacverify.InvalidArgument(
                f"--verification and --probes apply to --quantity batch_jacobian only, not "
                f"{quantity!r}")
    except jacverify.InvalidArgument as e:
        raise Usage(str(e)) from None


def _run_all(candidates, args, kwargs, out, err):
    from rich.progress import Progress

    outcomes = []
    show = not args.quiet and err.is_terminal and len(candidates) > 1
    with Progress(console=err, transient=True, disable=not show) as progress:
        task = progress.add_task("checking", total=len(candidates))
        for tgt in candidates:
            progress.update(task, description=tgt.name)
            outcome = _run_one(tgt, args, kwargs)
            outcomes.append(outcome)
            _print_outcome(outcome, args.quiet, out)
            progress.advance(task)
    return outcomes


def _run_one(tgt, args, kwargs):
    import jacverify
    from jacverify.discover import NoInput, example_input
    from jacverify.outcomes import Outcome
    from jacverify.quantities import check_quantity

    base = dict(name=tgt.name, kind=tgt.kind)
    try:
        with time_limit(args.timeout):
            import torch

            torch.manual_seed(kwargs.get("seed", 0))  # weights built in the target are seeded too
            fn = tgt.build()
            if args.eval and hasattr(fn, "eval"):
                fn.eval()
            inputs, axis = example_input(tgt, fn, args.batch_size, kwargs.get("seed", 0),
                                         kwargs.get("dtype"))
            shapes = tuple(tuple(t.shape) for t in inputs)
            base["input_shapes"] = shapes
            report = check_quantity(args.quantity, fn, inputs, batch_axis=axis, **kwargs)
    except Timeout:
        return Outcome(**base, error=f"{tgt.name}: abandoned after --timeout={args.timeout:g} s "
                       "before anything was verified; raise --timeout or check a smaller input "
                       "(--batch-size)", error_status="unverified")
    except NoInput as e:
        return Outcome(**base, error=str(e))
    except jacverify.JacobianTooLarge as e:
        return Outcome(**base, error=f"{tgt.name}: {e}", error_status="unverified")
    except (jacverify.NondeterministicFunction, jacverify.NonFiniteOutput,
            jacverify.FunctionRaised, jacverify.InvalidArgument) as e:
        return Outcome(**base, error=f"{tgt.name}: {e}", error_status="failed")
    except jacverify.JacverifyError as e:
        return Outcome(**base, error=f"{tgt.name}: {e}")
    except (Exception, SystemExit, GeneratorExit) as e:  # noqa: BLE001 - the user's code ran
        what = f"called sys.exit({e.code!r})" if isinstance(e, SystemExit) else \
            f"raised {type(e).__name__}: {e}"
        return Outcome(**base, error=f"{tgt.name}: building or running it {what}",
                       error_status="failed")
    return Outcome(**base, report=report)


def _print_outcome(o, quiet: bool, out) -> None:
    if o.report is None:
        out.print(f"{o.name}: {o.status.upper()}: {o.error.removeprefix(o.name + ': ')}",
                  markup=False)
        return
    r = o.report
    if quiet:
        agree = len(r.verified)
        line = f"{o.name}: {o.status.upper()} ({agree}/{len(r.results)} agree"
        if r.mismatches:
            worst = r.mismatches[0].worst
            line += (f", {len(r.mismatches)} mismatch: {', '.join(x.method for x in r.mismatches)};"
                     f" worst {worst.max_abs_error:.3g} at {worst.worst_index})")
        else:
            line += f", fastest {r.fastest})" if r.fastest else ")"
        if o.status == "unverified":  # why: the hint, else the one reason every method gave
            reasons = {x.reason for x in r.results if x.reason}
            why = reasons.pop() if len(reasons) == 1 else r.headline().partition(": ")[2]
            line += f": {r.hint or why}"
        out.print(line, markup=False)
        return
    out.rule(f"{o.name} ({o.kind})")
    for line in r.lead_lines():
        out.print(line, markup=False)
    out.print(r.table(width=out.width))
    for line in r.footer_lines():
        out.print(line, markup=False)


if __name__ == "__main__":
    sys.exit(main())
