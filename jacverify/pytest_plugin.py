"""The pytest plugin: the ``jacverify`` fixture and marker, options, a summary, a JSON report.

Registered through the ``pytest11`` entry point, so a repo that installs jacverify gets it with no
configuration. Importing this module does not import torch: the engine is imported the first time
a test uses the fixture.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import pytest

from jacverify import options

_RECORDS = pytest.StashKey[list]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("jacverify", "jacverify: Jacobian cross-checks")
    options.add_to_pytest(group, parser)
    group.addoption("--jacverify-report", dest="jacverify_report", metavar="PATH", default=None,
                    help="write every check of the session as one JSON document")
    parser.addini("jacverify_report", "write every check of the session as JSON to this path")
    group.addoption("--jacverify-profile", dest="jacverify_profile", metavar="NAME", default=None,
                    help="load jacverify's Hypothesis profile NAME (ci, dev, fuzz)")
    parser.addini("jacverify_profile", "jacverify's Hypothesis profile to load")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "jacverify(methods=None, dtype=None, device=None, seed=None, ...): options for the "
        "jacverify fixture's checks in this test (any keyword of jacverify.check)",
    )
    config.stash[_RECORDS] = []
    report = _option(config, "report")
    if report and not hasattr(config, "workeroutput"):
        from jacverify.cli_common import Usage, writable_path

        try:
            writable_path("--jacverify-report", report)
        except Usage as e:
            raise pytest.UsageError(str(e)) from None
    profile = _option(config, "profile")
    if profile:
        from jacverify.profiles import load_profile

        load_profile(profile)
    database = _option(config, "database")
    if database:  # every Hypothesis test's default database (NOTE [shared example database])
        from jacverify.databases import use_database
        from jacverify.errors import InvalidArgument

        try:
            use_database(database)
        except InvalidArgument as e:
            raise pytest.UsageError(f"--jacverify-database: {e}") from None


def _option(config: pytest.Config, name: str) -> Any:
    value = config.getoption(f"jacverify_{name}", default=None)
    return value if value not in (None, "") else (config.getini(f"jacverify_{name}") or None)


def marker_keywords() -> tuple[str, ...]:
    """The keywords the marker and the fixture's calls accept: ``jacverify.check``'s own options,
    read from its signature (so a keyword added to ``check`` is a marker keyword at once).
    Imports torch: called only when a test uses the marker."""
    import inspect

    from jacverify.engine import check

    params = inspect.signature(check).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _check_marker(item: pytest.Item) -> None:
    marks = list(item.iter_markers("jacverify"))
    known = marker_keywords() if marks else ()
    for mark in marks:
        if mark.args:
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.jacverify takes keywords only, "
                                    f"got positional {mark.args!r}")
        for key in mark.kwargs:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise pytest.UsageError(
                    f"{item.nodeid}: @pytest.mark.jacverify got unknown keyword {key!r}{hint} "
                    f"(known: {', '.join(known)})")
        if mark.kwargs.get("methods") is not None:
            from jacverify.errors import InvalidArgument
            from jacverify.methods import get_methods

            try:
                get_methods(mark.kwargs["methods"])
            except InvalidArgument as e:
                raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.jacverify: {e}") from None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        _check_marker(item)


class JacverifyFixture:
    """What the ``jacverify`` fixture gives a test: ``check``, every quantity's check
    (``check_jvps``, ``check_vjps``, ``check_per_sample_jvps``, ``check_hessians``,
    ``check_hessian_diagonals``) and ``check_method``, each failing the test with the report unless
    the check passed (NOTE [earned verdict]: a method verified, none wrong), and ``fuzz_rule`` for
    a batching rule.

    Options merge in this order, later winning: command line / ini, the test's marker, the call.
    A method that is ``not_applicable`` or ``unsupported`` fails the test only when the test asked
    for it by name (in the marker or the call); a check in which no method could be verified
    always fails it.
    """

    def __init__(self, defaults: dict[str, Any], marker: dict[str, Any], nodeid: str,
                 records: list[dict[str, Any]], root: str | None = None) -> None:
        self._defaults, self._marker = defaults, marker
        self._nodeid, self._records = nodeid, records
        self._root = root
        self.reports: list[Any] = []

    def _options(self, call: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
        merged = {**self._defaults, **self._marker, **call}
        asked = set(self._marker.get("methods") or ()) | set(call.get("methods") or ())
        return merged, asked

    def check(self, fn: Any, inputs: Any, **kwargs: Any):
        """``jacverify.check`` with this test's options; fails the test on a mismatch."""
        import jacverify

        merged, asked = self._options(kwargs)
        return self._verdict(jacverify.check(fn, inputs, **merged), asked)

    def _quantity(self, name: str, fn: Any, *args: Any, **kwargs: Any):
        import jacverify

        merged, asked = self._options(kwargs)
        known = _keywords_of(getattr(jacverify, name))
        merged = {k: v for k, v in merged.items() if k in known or k in kwargs}
        return self._verdict(getattr(jacverify, name)(fn, *args, **merged), asked)

    def check_jvps(self, fn: Any, x: Any, vectors: Any, **kwargs: Any):
        """``jacverify.check_jvps`` with this test's options: ``J v_i`` at one point."""
        return self._quantity("check_jvps", fn, x, vectors, **kwargs)

    def check_vjps(self, fn: Any, x: Any, vectors: Any, **kwargs: Any):
        """``jacverify.check_vjps`` with this test's options: ``vᵀ_i J`` at one point."""
        return self._quantity("check_vjps", fn, x, vectors, **kwargs)

    def check_per_sample_jvps(self, fn: Any, x: Any, vectors: Any, **kwargs: Any):
        """``jacverify.check_per_sample_jvps`` with this test's options: ``J_b v_b``."""
        return self._quantity("check_per_sample_jvps", fn, x, vectors, **kwargs)

    def check_hessians(self, fn: Any, x: Any, **kwargs: Any):
        """``jacverify.check_hessians`` with this test's options: per-sample Hessians."""
        return self._quantity("check_hessians", fn, x, **kwargs)

    def check_hessian_diagonals(self, fn: Any, x: Any, **kwargs: Any):
        """``jacverify.check_hessian_diagonals`` with this test's options: ``d²y/dx_k²``."""
        return self._quantity("check_hessian_diagonals", fn, x, **kwargs)

    def check_method(self, method: Any, fn: Any, inputs: Any, **kwargs: Any):
        """``jacverify.check_method``: the user's own code against the references, for any
        ``quantity=`` (the session's options that quantity does not take are left out)."""
        import jacverify

        from jacverify.user_methods import accepted_options

        merged, asked = self._options(kwargs)
        merged.setdefault("methods", list(self._marker.get("methods") or ()))
        known = accepted_options(kwargs.get("quantity", "batch_jacobian"))
        merged = {k: v for k, v in merged.items() if k in known or k in kwargs}
        report = jacverify.check_method(method, fn, inputs, **merged)
        name = getattr(method, "__name__", None) or type(method).__name__
        return self._verdict(report, asked | {name})

    def fuzz_rule(self, rule: Any, **kwargs: Any):
        """``jacverify.fuzz_batching_rule`` seeded from ``--jacverify-seed``; fails the test with
        the shrunk example and its replay snippet when the rule disagrees with the loop."""
        from jacverify.rules import fuzz_batching_rule

        kwargs.setdefault("seed", self._defaults.get("seed", 0))
        self.fuzzed = True
        report = fuzz_batching_rule(rule, **kwargs)
        if not report.passed:
            pytest.fail(report.describe(), pytrace=False)
        return report

    def _verdict(self, report: Any, asked: set[str]):
        self.reports.append(report)
        self._records.append(_record(self._nodeid, report))
        problems = [r for r in report.results
                    if r.method in asked and r.status in ("not_applicable", "unsupported")]
        if report.passed and not problems:
            return report
        message = report.failure_message() if not report.passed else ""
        for r in problems:
            message += f"\nasked-for method {report.describe(r)}"
        replay = self._replay(report)
        if replay:
            message += f"\nreplay (saved module and inputs):\n{replay}"
        pytest.fail(message.strip(), pytrace=False)

    def _replay(self, report: Any) -> str | None:
        """Save the failing case under .jacverify/replays/ of the rootdir; the code to replay it."""
        import hashlib
        import os

        if self._root is None:
            return None
        digest = hashlib.sha1(f"{self._nodeid}:{len(self.reports)}".encode()).hexdigest()[:12]
        return report.save_replay(os.path.join(self._root, ".jacverify", "replays",
                                               f"{digest}.pt"))


def _keywords_of(fn: Any) -> set[str]:
    import inspect

    return {p.name for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _record(nodeid: str, report: Any) -> dict[str, Any]:
    return {"nodeid": nodeid, **report.to_dict()}


@pytest.fixture
def jacverify(request: pytest.FixtureRequest):
    """Check Jacobians in a test: ``jacverify.check(model, x)`` fails the test on a mismatch. A
    test that takes the fixture and checks nothing gets a warning: it verified nothing."""
    config = request.config
    raw = {opt.dest: _option(config, opt.dest) for opt in options.OPTIONS}
    try:
        defaults = options.resolve(raw)
    except Exception as e:  # noqa: BLE001 - argparse.ArgumentTypeError and friends
        raise pytest.UsageError(f"jacverify options: {e}") from None
    marker: dict[str, Any] = {}
    for mark in reversed(list(request.node.iter_markers("jacverify"))):
        marker.update(mark.kwargs)
    fixture = JacverifyFixture(defaults, marker, request.node.nodeid, config.stash[_RECORDS],
                               str(config.rootpath))
    yield fixture
    if not fixture.reports and not getattr(fixture, "fuzzed", False):
        import warnings

        warnings.warn(pytest.PytestWarning(
            f"{request.node.nodeid} takes the jacverify fixture but ran no check: it verified "
            "nothing"), stacklevel=1)


# --- the session report: workers hand their records to the controller under pytest-xdist ---

def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if hasattr(config, "workeroutput"):  # an xdist worker
        config.workeroutput["jacverify_records"] = json.dumps(config.stash[_RECORDS])
        return
    path = _option(config, "report")
    if path:
        from jacverify.outcomes import document

        body = document("pytest", checks=config.stash[_RECORDS])
        Path(path).write_text(json.dumps(body, indent=2) + "\n")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: collect a finished worker's records."""
    data = getattr(node, "workeroutput", {}).get("jacverify_records")
    if data:
        node.config.stash[_RECORDS].extend(json.loads(data))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    records = config.stash.get(_RECORDS, [])
    if not records or hasattr(config, "workeroutput"):
        return
    tr = terminalreporter
    tr.write_sep("=", "jacverify summary")
    statuses = ("agree", "mismatch", "known", "not_applicable", "unsupported", "skipped")
    counts: dict[str, dict[str, int]] = {}
    times: dict[str, list[float]] = {}
    for rec in records:
        for r in rec["results"]:
            counts.setdefault(r["method"], dict.fromkeys(statuses, 0))[r["status"]] += 1
            if r["time_s"] is not None:
                times.setdefault(r["method"], []).append(r["time_s"])
    verdicts = [rec.get("verdict", "passed" if rec["passed"] else "failed") for rec in records]
    tr.write_line(f"{len(records)} check(s) in {len({r['nodeid'] for r in records})} test(s): "
                  f"{verdicts.count('passed')} passed, {verdicts.count('failed')} failed, "
                  f"{verdicts.count('unverified')} unverified")
    for line in _counts_lines(counts, statuses, getattr(tr, "_tw", None)):
        tr.write_line(line)
    slowest = sorted(((sum(t) / len(t), m) for m, t in times.items()), reverse=True)[:3]
    tr.write_line("slowest methods (mean time per check): "
                  + ", ".join(f"{m} {t * 1e3:.2f} ms" for t, m in slowest))


def _counts_lines(counts: dict[str, dict[str, int]], statuses: tuple[str, ...],
                  writer: Any) -> list[str]:
    """The method x status table (jacverify.columns), as plain lines at the terminal's width."""
    import io

    from rich import box
    from rich.console import Console

    from jacverify.columns import counts_table

    width = getattr(writer, "fullwidth", 80) or 80
    table = counts_table(counts, statuses, first="method")
    table.box = box.SIMPLE
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False).print(table)
    return [line.rstrip() for line in buf.getvalue().splitlines() if line.strip()]
