"""Renderings of benchmark results: rich tables for the terminal, one per case and a summary."""

from __future__ import annotations

from rich.table import Table

from jacverify.bench import BenchRun, CaseBench

from jacverify.columns import Column, rich_table

__all__ = ["case_table", "summary_table", "pathology_lines"]



def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e3:.3f}"


def _kib(n: int | None) -> str:
    return "" if n is None else f"{n / 1024:,.0f}"


def _note(r, _case) -> str:
    t = r.timing
    note = r.pathology or (r.reason if r.status != "agree" or r.method == "auto" else "") or ""
    noisy = f"noisy: IQR {t.iqr / t.median:.1f}x median; " if t and t.noisy else ""
    return ("SLOW " if r.pathology else "") + noisy + note


# pytest-benchmark's statistics per method (times in ms), then jacverify's own
BENCH_COLUMNS: tuple[Column, ...] = (
    Column("method", lambda r, _: r.method),
    Column("status", lambda r, _: str(r.status), status=True),
    Column("min", lambda r, _: _ms(r.timing.min if r.timing else None), "right", optional=True),
    Column("median", lambda r, _: _ms(r.time_s), "right"),
    Column("mean", lambda r, _: _ms(r.timing.mean if r.timing else None), "right",
           optional=True),
    Column("stddev", lambda r, _: _ms(r.timing.stddev if r.timing else None), "right",
           optional=True),
    Column("IQR", lambda r, _: _ms(r.timing.iqr if r.timing else None), "right"),
    Column("outliers", lambda r, _: r.timing.to_dict()["outliers"] if r.timing else "", "right",
           optional=True),
    Column("rounds", lambda r, _: str(r.timing.rounds) if r.timing else "", "right",
           optional=True),
    Column("peak KiB", lambda r, _: _kib(r.peak_bytes), "right", optional=True),
    Column("x forward", lambda r, _: f"{r.forward_ratio:.1f}" if r.forward_ratio else "", "right",
           optional=True),
    Column("vs loop", lambda r, _: f"{r.speedup_vs_loop:.1f}x" if r.speedup_vs_loop else "",
           "right"),
    Column("note", _note, wrap=True),
)


def case_table(case: CaseBench, width: int | None = None) -> Table:
    """Per method (fastest first): pytest-benchmark's statistics in ms (min, median, mean, stddev,
    IQR, outliers as stddev;IQR counts, rounds), peak memory, vs one forward, vs loop, and a note:
    SLOW with the likely cause (NOTE [pathology]), noisy when the IQR is over half the median."""
    best = case.fastest
    title = (f"{case.name}: forward {_ms(case.forward.median)} ms, Jacobian "
             f"{_kib(case.jacobian_bytes)} KiB; fastest correct: {best.method if best else '-'} "
             "(times in ms)")
    rows = sorted(case.results, key=lambda r: (r.time_s is None, r.time_s or 0.0))
    return rich_table(BENCH_COLUMNS, rows, case, title=title, width=width)


def summary_table(run: BenchRun) -> Table:
    """Per suite case: the fastest correct method, and auto against it and against the loop."""
    table = Table(title=f"jacverify bench --suite {run.suite} ({run.device}, torch "
                  f"{run.machine.get('torch')}, {run.machine.get('torch_threads')} threads)",
                  title_justify="left")
    for col in ("case", "fastest correct", "ms", "auto ms", "auto / fastest", "loop / auto",
                "auto plan"):  # headers never fold; the plan's text does
        table.add_column(col, justify="left" if col in ("case", "fastest correct", "auto plan")
                         else "right", min_width=None if col == "auto plan" else len(col),
                         no_wrap=col != "auto plan")
    for c in run.cases:
        best = c.fastest
        auto = next((r for r in c.results if r.method == "auto"), None)
        vs_best = auto.time_s / best.time_s if auto and best and auto.time_s and best.time_s else None
        table.add_row(c.name, best.method if best else "-", _ms(best.time_s if best else None),
                      _ms(auto.time_s if auto else None),
                      f"{vs_best:.2f}" if vs_best else "",
                      f"{c.ratio('loop', 'auto'):.0f}x" if c.ratio("loop", "auto") else "",
                      (c.planned or "").replace("[", "\\["))
    return table


def pathology_lines(run: BenchRun) -> list[str]:
    """One line per method flagged slow (NOTE [pathology]) on a suite case."""
    return [f"{c.name}: {r.method} {r.pathology}" for c in run.cases for r in c.results
            if r.pathology]
