"""A self-contained HTML page: the tables, the worst entries, and matplotlib plots embedded as PNG."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from jacverify.columns import RESULT_COLUMNS, STATUS_CSS, Column, html_table
from jacverify.outcomes import Outcome
from jacverify.report import Report

__all__ = ["write_html", "write_bench_html"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-size: 13px; }
th { background: #f0f0f0; }
pre { background: #f7f7f7; padding: 8px; white-space: pre-wrap; }
img { max-width: 100%; }
""" + "".join(f".{status} {{ {css}; }}\n" for status, css in STATUS_CSS.items())


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(report: Report, title: str) -> list[tuple[str, str]]:
    return [(alt, _png(fig)) for alt, fig in plot_figures(report, title)]


def plot_figures(report: Report, title: str) -> list:
    """(alt text, matplotlib Figure) for the time per method and the error against tolerance,
    each with a legend outside its axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in report.results if r.time_s]
    out = []
    if timed:
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(timed) + 1))
        colors = ["#b00020" if r.status == "mismatch" else "#2c7be5" for r in timed]
        ax.barh([r.method for r in timed], [r.time_s * 1e3 for r in timed], color=colors)
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color="#2c7be5", label="agrees"),
                           Patch(color="#b00020", label="wrong (mismatch)")],
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("time (ms, log scale)")
        ax.invert_yaxis()
        ax.set_title(f"{title}: time per method")
        out.append((f"time per method for {title}", fig))
    compared = [r for r in report.results if r.worst is not None]
    if compared:
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(compared) + 1))
        y = range(len(compared))
        floor = 1e-300
        ax.scatter([max(r.worst.max_abs_error, floor) for r in compared], y, label="max abs error",
                   color=["#b00020" if r.status == "mismatch" else "#11772d" for r in compared])
        ax.scatter([max(r.worst.allowed_at_worst, floor) for r in compared], y, marker="|", s=200,
                   color="black", label="tolerance at the worst entry")
        ax.set_yticks(list(y), [r.method for r in compared])
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # outside: hides no point
        ax.set_title(f"{title}: error against tolerance")
        out.append((f"error against tolerance for {title}", fig))
    return out


def _fmt(v: float | None) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def _section(o: Outcome) -> str:
    e = html.escape
    parts = [f"<section class='target'><h2>{e(o.name)} <small>({e(o.kind)}, {o.status})</small></h2>"]
    if o.report is None:
        parts.append(f"<p class='mismatch'>{e(o.error or '')}</p></section>")
        return "".join(parts)
    r = o.report
    parts.append(html_table(RESULT_COLUMNS, r.results, r))
    parts.append("<pre class='details'>" + e("\n".join(r.footer_lines())) + "</pre>")
    for alt, src in _plots(r, o.name):
        parts.append(f"<img alt='{e(alt)}' src='{src}'>")
    parts.append("</section>")
    return "".join(parts)


# Marks on <body> how many images decoded, so a headless browser's DOM dump shows the page rendered.
_MARK_RENDERED = (
    "window.addEventListener('load', () => { const imgs = [...document.images]; "
    "document.body.dataset.imagesRendered = imgs.filter(i => i.complete && i.naturalWidth > 0).length; "
    "document.body.dataset.imagesTotal = imgs.length; });"
)


_SUMMARY_COLUMNS = (
    Column("target", lambda o, _: o.name),
    Column("verdict", lambda o, _: o.status, status=True),
    Column("why", lambda o, _: (o.report.headline() if o.report else o.error or ""), wrap=True),
    Column("hint", lambda o, _: (o.report.hint or "") if o.report else "", wrap=True),
)


def _summary(outcomes: list[Outcome]) -> str:
    """The verdict of every target, first: what a reader wants before any detail."""
    counts = {s: sum(o.status == s for o in outcomes)
              for s in ("passed", "failed", "unverified", "skipped")}
    line = ", ".join(f"<span class='{s}'>{n} {s}</span>" for s, n in counts.items())
    return (f"<section class='summary'><h2>Summary</h2><p>{line}</p>"
            + html_table(_SUMMARY_COLUMNS, outcomes, css_class="summary") + "</section>")


def write_html(path: str | Path, outcomes: list[Outcome], header: str) -> None:
    """Write the page; images are inline, so the file stands alone."""
    body = "".join(_section(o) for o in outcomes)
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>jacverify report</title>"
        f"<style>{_CSS}</style></head><body><h1>jacverify report</h1>"
        f"<p>{html.escape(header)}</p>{_summary(outcomes)}{body}"
        f"<script>{_MARK_RENDERED}</script></body></html>\n"
    )
    Path(path).write_text(page)


SWEEP_LINES = 8  # methods drawn in colour on a sweep plot: the fastest at the largest size


def sweep_figure(name: str, cases, axis: str):
    """Median time against the swept size: ``auto`` in black, the SWEEP_LINES fastest methods at
    the largest size in distinct colours, every other method as one grey family; ticks at the
    swept sizes, in plain numbers (a matplotlib Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    fig, ax = plt.subplots(figsize=(8, 5))
    series = {}
    for c in cases:
        for r in c.results:
            if r.time_s and r.status == "agree":
                series.setdefault(r.method, []).append((c.params[axis], r.time_s))
    largest = max((c.params[axis] for c in cases), default=None)
    ranked = sorted((m for m in series if m != "auto"),
                    key=lambda m: dict(series[m]).get(largest, float("inf")))
    shown, rest = ranked[:SWEEP_LINES], ranked[SWEEP_LINES:]
    colors = plt.get_cmap("tab10").colors
    for i, method in enumerate(shown):
        ax.plot(*zip(*sorted(series[method])), marker="o", markersize=4, color=colors[i % 10],
                label=method)
    for k, method in enumerate(rest):
        ax.plot(*zip(*sorted(series[method])), color="0.75", linewidth=0.8,
                label=f"{len(rest)} slower methods" if k == 0 else None)
    if "auto" in series:
        ax.plot(*zip(*sorted(series["auto"])), marker="o", linewidth=3, color="black", label="auto")
    sizes = sorted({c.params[axis] for c in cases})
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sizes))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel(f"{axis} (log scale; ticks at the sizes measured)")
    ax.set_ylabel("median time (s, log scale)")
    ax.set_title(f"time against {axis} per method ({name} sweep, {len(sizes)} sizes)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def _sweep_plot(name: str, cases, axis: str) -> str:
    return _png(sweep_figure(name, cases, axis))


_SWEPT = {"batch": "batch", "inputs": "in", "outputs": "out"}


def _auto_ratio(case) -> str:
    best = case.fastest
    auto = next((r for r in case.results if r.method == "auto"), None)
    if not (best and auto and best.time_s and auto.time_s):
        return ""
    return f"{auto.time_s / best.time_s:.2f}"


_BENCH_SUMMARY = (
    Column("case", lambda c, _: c.name),
    Column("fastest correct", lambda c, _: c.fastest.method if c.fastest else "-"),
    Column("its median ms", lambda c, _: _fmt(c.fastest.time_s * 1e3) if c.fastest and
           c.fastest.time_s else "", "right"),
    Column("auto / fastest", lambda c, _: _auto_ratio(c), "right"),
    Column("slow methods (over 10x the fastest)", lambda c, _: ", ".join(
        r.method for r in c.results if r.pathology), wrap=True),
)


def write_bench_html(path: str | Path, run) -> None:
    """The bench page: a table per case and a time-against-size plot per sweep, inline."""
    e = html.escape
    parts = [f"<p>suite {e(run.suite)}, device {e(run.device)}, started {e(run.started)}, "
             f"torch {e(str(run.machine.get('torch')))}</p>"]
    for name, cases in run.sweeps:
        axis = _SWEPT.get(name, "batch")
        parts.append(f"<h2>sweep: {e(name)}</h2><img alt='time against {axis}' "
                     f"src='{_sweep_plot(name, cases, axis)}'>")
    from jacverify.bench_render import BENCH_COLUMNS

    parts.insert(1, "<section class='summary'><h2>Summary</h2>"
                 + html_table(_BENCH_SUMMARY, run.cases, css_class="summary") + "</section>")
    for c in run.cases:
        rows = sorted(c.results, key=lambda r: (r.time_s is None, r.time_s or 0.0))
        parts.append(f"<h2>{e(c.name)} (times in ms)</h2>" + html_table(BENCH_COLUMNS, rows, c))
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>jacverify bench</title>"
        f"<style>{_CSS}</style></head><body><h1>jacverify bench</h1>{''.join(parts)}"
        f"<script>{_MARK_RENDERED}</script></body></html>\n"
    )
    Path(path).write_text(page)
