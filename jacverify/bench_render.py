"""Renderings of benchmark results: rich tables for the terminal, one per case and a summary."""

from __future__ import annotations

from rich.table import Table

from jacverify.bench import BenchRun, CaseBench

from jacverify.columns import styled_status

__all__ = ["case_table", "summary_table", "pathology_lines"]



def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e3:.3f}"


def _kib(n: int | None) -> str:
    return "" if n is None else f"{n / 1024:,.0f}"


def case_table(case: CaseBench) -> Table:
    """Per method: status, median and IQR time, peak memory, vs one forward, vs loop."""
    best = case.fastest
    title = (f"{case.name}: forward {_ms(case.forward.median)} ms, Jacobian "
             f"{_kib(case.jacobian_bytes)} KiB; fastest correct: {best.method if best else '-'}")
    table = Table(title=title, title_justify="left")
    for col in ("method", "status", "median ms", "IQR ms", "rounds", "peak KiB", "x forward",
                "vs loop", "note"):
        table.add_column(col, justify="left" if col in ("method", "status", "note") else "right")
    for r in sorted(case.results, key=lambda r: (r.time_s is None, r.time_s or 0.0)):
        t = r.timing
        note = r.pathology or (r.reason if r.status != "agree" or r.method == "auto" else "") or ""
        table.add_row(
            r.method, styled_status(str(r.status)), _ms(r.time_s),
            _ms(t.iqr) if t else "", str(t.rounds) if t else "", _kib(r.peak_bytes),
            f"{r.forward_ratio:.1f}" if r.forward_ratio else "",
            f"{r.speedup_vs_loop:.1f}x" if r.speedup_vs_loop else "",
            ("[bold red]SLOW[/] " if r.pathology else "") + note.replace("[", "\\["))
    return table


def summary_table(run: BenchRun) -> Table:
    """Per suite case: the fastest correct method, and auto against it and against the loop."""
    table = Table(title=f"jacverify bench --suite {run.suite} ({run.device}, torch "
                  f"{run.machine.get('torch')}, {run.machine.get('torch_threads')} threads)",
                  title_justify="left")
    for col in ("case", "fastest correct", "ms", "auto ms", "auto / fastest", "loop / auto",
                "auto plan"):
        table.add_column(col, justify="left" if col in ("case", "fastest correct", "auto plan")
                         else "right")
    for c in run.cases:
        best = c.fastest
        auto = next((r for r in c.results if r.method == "auto"), None)
        vs_best = auto.time_s / best.time_s if auto and best and auto.time_s and best.time_s else None
        table.add_row(c.name, best.method if best else "-", _ms(best.time_s if best else None),
                      _ms(auto.time_s if auto else None),
                      f"{vs_best:.2f}" if vs_best else "",
                      f"{c.ratio('loop', 'auto'):.0f}x" if c.ratio("loop", "auto") else "",
                      (c.plan or "").split(";")[-1].strip().replace("[", "\\["))
    return table


def pathology_lines(run: BenchRun) -> list[str]:
    """One line per method flagged slow (NOTE [pathology]) on a suite case."""
    return [f"{c.name}: {r.method} {r.pathology}" for c in run.cases for r in c.results
            if r.pathology]
