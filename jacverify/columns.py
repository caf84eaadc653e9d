"""One column definition for result tables, and the status styles, rendered by rich (terminal)
and as HTML: the CLI, the plugin, the fuzzers and bench draw their tables from here.

Importing it does not import torch or rich.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Column", "STATUS_STYLE", "STATUS_CSS", "RESULT_COLUMNS", "rich_table", "html_table",
           "counts_table", "styled_status", "number"]

# status -> rich style; the same colours as CSS for the HTML pages
STATUS_STYLE: Mapping[str, str] = {
    "agree": "green", "mismatch": "bold red", "known": "red", "not_applicable": "yellow",
    "unsupported": "magenta", "skipped": "dim", "passed": "green", "failed": "bold red",
    "unverified": "yellow",
}
STATUS_CSS: Mapping[str, str] = {
    "agree": "color: #11772d", "passed": "color: #11772d",
    "mismatch": "color: #b00020; font-weight: bold", "failed": "color: #b00020; font-weight: bold",
    "known": "color: #b00020", "not_applicable": "color: #9a6700", "unverified": "color: #9a6700",
    "unsupported": "color: #7a3db8", "skipped": "color: #777",
}


@dataclass(frozen=True)
class Column:
    """A column: its header, alignment, and how a row's cell reads (plain text; ``status``
    columns are styled by :data:`STATUS_STYLE`)."""

    header: str
    cell: Callable[[Any, Any], str]  # (row, context) -> text
    justify: str = "left"
    status: bool = False
    terminal: bool = True  # shown in the terminal table
    page: bool = True  # shown in the HTML table
    wrap: bool = False  # may fold onto several lines in a narrow terminal (names never do)
    optional: bool = False  # left out of a terminal table too narrow for every column


def number(v: float | None) -> str:
    """A measured number in 2 significant digits, blank when not measured.

    >>> number(3.14159e-8), number(None), number(float("nan"))
    ('3.1e-08', '', '')
    """
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2g}"


def _speed(r: Any, report: Any) -> str:
    loop = next((x.time_s for x in report.results if x.method == "loop" and x.time_s), None)
    return f"{loop / r.time_s:.1f}x" if loop and r.time_s else ""


def _where(r: Any, report: Any) -> str:
    if r.worst_index is None:
        return ""
    if report.flat is None:
        return str(r.worst_index)
    return f"{r.worst_index}: {report.flat.describe_index(r.worst_index, report.index_labels)}"


# The columns of a check's results (rows: MethodResult; context: the Report).
RESULT_COLUMNS: tuple[Column, ...] = (
    Column("method", lambda r, _: r.method),
    Column("mode", lambda r, _: r.mode + (" vmap" if r.vectorized else ""), wrap=True,
           optional=True),
    Column("status", lambda r, _: str(r.status), status=True),
    Column("max abs err", lambda r, _: number(r.max_abs_error), wrap=True, optional=True),
    Column("max rel err", lambda r, _: number(r.max_rel_error), wrap=True),
    Column("worst entry", lambda r, _: "" if r.worst_index is None else str(r.worst_index),
           page=False, wrap=True, optional=True),
    Column("worst entry (in your shapes)", _where, terminal=False),
    Column("time", lambda r, _: "" if r.time_s is None else f"{r.time_s * 1e3:.2f} ms", "right"),
    Column("vs loop", _speed, "right", optional=True),
    # reasons are shown once per group of methods, in the details under the table
    Column("reason", lambda r, _: r.reason or "", terminal=False, page=False),
)


def styled_status(text: str) -> str:
    """``text`` in rich markup with its status style."""
    style = STATUS_STYLE.get(text)
    return f"[{style}]{text}[/]" if style else text


def rich_table(columns: Sequence[Column], rows: Sequence[Any], context: Any = None, *,
               title: str | None = None, width: int | None = None):
    """A ``rich.table.Table`` of ``rows`` under the terminal ``columns``; with the console's
    ``width``, the optional columns are left out when every column would not fit unfolded."""
    from rich.table import Table

    shown = [c for c in columns if c.terminal]
    widths = {c.header: max([len(c.header)] + [len(c.cell(r, context)) for r in rows])
              for c in shown}
    if width is not None and sum(widths.values()) + 3 * len(shown) + 1 > width:
        shown = [c for c in shown if not c.optional]
    table = Table(title=title)
    for c in shown:
        table.add_column(c.header, justify=c.justify,  # type: ignore[arg-type]
                         overflow="fold", no_wrap=not c.wrap,
                         min_width=None if c.wrap else widths[c.header])
    for row in rows:
        table.add_row(*(styled_status(c.cell(row, context)) if c.status else c.cell(row, context)
                        for c in shown))
    return table


def html_table(columns: Sequence[Column], rows: Sequence[Any], context: Any = None,
               css_class: str = "results") -> str:
    """The same rows as an HTML table (the page's columns; a status cell has its status as its
    class, which the page styles from :data:`STATUS_CSS`)."""
    e = html.escape
    columns = [c for c in columns if c.page]
    head = "".join(f"<th>{e(c.header)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            text = c.cell(row, context)
            css = f" class='{text}'" if c.status and text in STATUS_CSS else ""
            cells.append(f"<td{css}>{e(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='{css_class}'><tr>{head}</tr>" + "".join(body) + "</table>"


def counts_table(counts: Mapping[str, Mapping[str, int]], statuses: Sequence[str], *,
                 first: str, title: str | None = None):
    """A rich table of how often each name ended with each status (the fuzzers' summaries); a
    status no name ended with is left out, but for agree and mismatch."""
    statuses = [s for s in statuses if s in ("agree", "mismatch")
                or any(c.get(s) for c in counts.values())]
    columns = [Column(first, lambda row, _: row[0])] + [
        Column(s, lambda row, _, s=s: str(row[1].get(s, 0)), "right") for s in statuses]
    return rich_table(columns, list(counts.items()), title=title)
