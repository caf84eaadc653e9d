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
        out.append((f"time per method for {title}", _png(fig)))
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
        out.append((f"error against tolerance for {title}", _png(fig)))
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


def _sweep_plot(name: str, cases, axis: str) -> str:
    """Median time against the swept size, one line per method, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    methods = dict.fromkeys(r.method for c in cases for r in c.results)
    colors = plt.get_cmap("tab20").colors  # 20 distinct colours, then a second line style
    for i, method in enumerate(methods):
        points = [(c.params[axis], r.time_s) for c in cases for r in c.results
                  if r.method == method and r.time_s and r.status == "agree"]
        if points:
            style = {"linewidth": 3, "color": "black"} if method == "auto" else {
                "color": colors[i % 20], "linestyle": "-" if i % 2 == 0 else "--"}
            ax.plot(*zip(*points), marker="o", markersize=4, label=method, **style)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"{axis} (log scale)")
    ax.set_ylabel("median time (s, log scale)")
    ax.set_title(f"time against {axis} per method ({name} sweep)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _png(fig)


_SWEPT = {"batch": "batch", "inputs": "in", "outputs": "out"}


def write_bench_html(path: str | Path, run) -> None:
    """The bench page: a table per case and a time-against-size plot per sweep, inline."""
    e = html.escape
    parts = [f"<p>suite {e(run.suite)}, device {e(run.device)}, started {e(run.started)}, "
             f"torch {e(str(run.machine.get('torch')))}</p>"]
    for name, cases in run.sweeps:
        axis = _SWEPT.get(name, "batch")
        parts.append(f"<h2>sweep: {e(name)}</h2><img alt='time against {axis}' "
                     f"src='{_sweep_plot(name, cases, axis)}'>")
    for c in run.cases:
        rows = ["<tr><th>method</th><th>status</th><th>median ms</th><th>IQR ms</th>"
                "<th>peak KiB</th><th>x forward</th><th>vs loop</th><th>note</th></tr>"]
        for r in sorted(c.results, key=lambda r: (r.time_s is None, r.time_s or 0.0)):
            t = r.timing
            rows.append(
                f"<tr><td>{e(r.method)}</td><td class='{r.status}'>{r.status}</td>"
                f"<td>{_fmt(t.median * 1e3 if t else None)}</td>"
                f"<td>{_fmt(t.iqr * 1e3 if t else None)}</td>"
                f"<td>{_fmt(r.peak_bytes / 1024 if r.peak_bytes is not None else None)}</td>"
                f"<td>{_fmt(r.forward_ratio)}</td><td>{_fmt(r.speedup_vs_loop)}</td>"
                f"<td>{e(r.pathology or r.reason or '')}</td></tr>")
        parts.append(f"<h2>{e(c.name)}</h2><table>{''.join(rows)}</table>")
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>jacverify bench</title>"
        f"<style>{_CSS}</style></head><body><h1>jacverify bench</h1>{''.join(parts)}"
        f"<script>{_MARK_RENDERED}</script></body></html>\n"
    )
    Path(path).write_text(page)
