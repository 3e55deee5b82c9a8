"""`vincie eval compare RUN...`: several runs in one table and one plot.

Runs are grouped by benchmark; each benchmark gets one table (a row per run, a column per lead
metric and turn) and the PNG has one subplot per (benchmark, metric) with one curve per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vincie_cli.eval.report import fmt, load_report, plot, run_names, table
from vincie_cli.utils.io import UsageError, atomic_write_json, atomic_write_text


def compare_table(reports: list[dict[str, Any]], names: list[str], max_metrics: int = 4) -> str:
    """One Markdown table for runs of the same benchmark."""
    metrics: list[str] = []
    for r in reports:
        for m in r.get("plot_metrics") or list(r["metrics"]):
            if m in r["metrics"] and m not in metrics:
                metrics.append(m)
    metrics = metrics[:max_metrics]
    turns = sorted({t for r in reports for t in r["turns"]})
    header = ["run", "sessions"] + [f"{m} T{t}" for m in metrics for t in turns]
    rows = []
    for r, name in zip(reports, names):
        row: list[Any] = [name, r.get("n_sessions")]
        for m in metrics:
            values = dict(zip(r["turns"], r["metrics"].get(m, [])))
            row += [values.get(t) for t in turns]
        rows.append(row)
    return table(header, rows)


def compare(runs: list[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Load the runs' reports and write compare.json, compare.md and compare.png into `out_dir`."""
    if len(runs) < 1:
        raise UsageError("compare needs at least one run folder or report.json")
    reports = [load_report(r) for r in runs]
    names = run_names(reports)
    out = Path(out_dir)
    benchmarks: list[str] = []
    for r in reports:
        if r["benchmark"] not in benchmarks:
            benchmarks.append(r["benchmark"])
    md = ["# Comparison", ""]
    for b in benchmarks:
        idx = [i for i, r in enumerate(reports) if r["benchmark"] == b]
        md += [f"## {b}", "", compare_table([reports[i] for i in idx], [names[i] for i in idx]), ""]
        for i in idx:
            summary = reports[i].get("summary") or {}
            if summary:
                md.append(f"- {names[i]}: " + ", ".join(f"{k} {fmt(v)}" for k, v in summary.items()))
        md.append("")
    md += ["Sources:", ""] + [f"- {n}: `{r['_path']}`" for n, r in zip(names, reports)] + [""]
    paths = {"json": out / "compare.json", "markdown": out / "compare.md", "plot": out / "compare.png"}
    summary = {
        "type": "eval_compare",
        "runs": [
            {"name": n, "path": r["_path"], "benchmark": r["benchmark"], "turns": r["turns"], "metrics": r["metrics"]}
            for n, r in zip(names, reports)
        ],
    }
    atomic_write_json(paths["json"], summary)
    atomic_write_text(paths["markdown"], "\n".join(md))
    plot(reports, paths["plot"], title="comparison")
    return {"runs": names, "benchmarks": benchmarks, **{k: str(v) for k, v in paths.items()}}
