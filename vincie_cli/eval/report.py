"""Run reports: `report.json` (everything), `report.md` (a per-turn table) and `report.png` (per-turn curves).

A report is one JSON object shared by all benchmarks:

    {"type": "eval_report", "version": 1, "benchmark": "mse-bench" | "magicbrush" | "synthetic",
     "name": "vincie-3b", "created": "2026-...Z", "n_sessions": 100, "turns": [1, 2, 3, 4, 5],
     "metrics": {"success_rate": [0.95, ...], ...},     # one value (or null) per turn
     "plot_metrics": ["success_rate", ...],             # what the table and plot lead with
     "higher_is_better": {"success_rate": true, ...},
     "summary": {...}, "config": {...}, "failures": [...], "warnings": [...], ...}
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from vincie_cli.utils.io import BadInputError, atomic_path, atomic_write_json, atomic_write_text

REPORT_VERSION = 1
REQUIRED = ("benchmark", "turns", "metrics")


def finalize(report: dict[str, Any], name: str) -> dict[str, Any]:
    """Stamp type, version, name and creation time (UTC) on a benchmark's report dict."""
    head = {
        "type": "eval_report",
        "version": REPORT_VERSION,
        "name": name,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return {**head, **report}


def write_report(out_dir: str | Path, report: dict[str, Any]) -> dict[str, str]:
    """Write report.json, report.md and report.png into `out_dir`; return their paths."""
    out = Path(out_dir)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "plot": out / "report.png"}
    atomic_write_json(paths["json"], report)
    atomic_write_text(paths["markdown"], markdown(report))
    plot([report], paths["plot"], title=f"{report['benchmark']}: {report.get('name', '')}")
    return {k: str(v) for k, v in paths.items()}


def load_report(path: str | Path) -> dict[str, Any]:
    """A report from its JSON file or its run folder."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    if not p.is_file():
        raise BadInputError(f"{path}: no report.json (pass a run folder of `vincie eval` or its report.json)")
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(obj, dict) or obj.get("type") != "eval_report":
        raise BadInputError(f'{p}: not a vincie eval report (no "type": "eval_report")')
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        raise BadInputError(f"{p}: report lacks {', '.join(missing)}")
    n = len(obj["turns"])
    for m, values in obj["metrics"].items():
        if not isinstance(values, list) or len(values) != n:
            raise BadInputError(f"{p}: metric {m!r} needs one value per turn ({n})")
    obj.setdefault("name", p.parent.name)
    obj["_path"] = str(p)
    return obj


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def ordered_metrics(report: dict[str, Any]) -> list[str]:
    lead = [m for m in report.get("plot_metrics", []) if m in report["metrics"]]
    return lead + [m for m in report["metrics"] if m not in lead]


def markdown(report: dict[str, Any]) -> str:
    """A Markdown page: a per-turn table of every metric, the summary, failures and warnings."""
    turns = report["turns"]
    out = [f"# {report['benchmark']}: {report.get('name', '')}", ""]
    meta = [f"{report.get('n_sessions', '?')} sessions", f"created {report.get('created', '?')}"]
    judge = report.get("config", {}).get("judge")
    if judge:
        prompt = report["config"].get("judge_prompt", {})
        meta.append(
            f"judge `{judge.get('model')}`" + (" with the official instruction" if prompt.get("official") else "")
        )
    out += [", ".join(meta), ""]
    rows = [[m] + list(report["metrics"][m]) for m in ordered_metrics(report)]
    out += [table(["metric"] + [f"turn {t}" for t in turns], rows), ""]
    if report.get("summary"):
        out += ["## Summary", ""] + [f"- {k}: {fmt(v)}" for k, v in report["summary"].items()] + [""]
    kinds = report.get("by_kind") or {}
    if kinds:
        header = ["edit kind", "turns", "success", "edit right", "unexpected objects", "kept intact"]
        rows = [
            [k, v["turns"], v["success_rate"], v["edit_ok_rate"], v["unexpected_rate"], v["kept_intact"]]
            for k, v in kinds.items()
        ]
        out += ["## By edit kind (every turn)", "", table(header, rows), ""]
        out += ["`edit right`: the instructed change is right, side effects aside; `unexpected objects`: an object "
                "of a colour that should not be there.", ""]  # fmt: skip
    failures = report.get("failures") or []
    if failures:
        out += [f"## Failures ({len(failures)})", ""]
        out += [f"- {json.dumps(f, ensure_ascii=False)}" for f in failures[:50]]
        if len(failures) > 50:
            out.append(f"- ... {len(failures) - 50} more in report.json")
        out.append("")
    warnings = report.get("warnings") or []
    if warnings:
        out += [f"## Warnings ({len(warnings)})", ""] + [f"- {w}" for w in warnings[:50]] + [""]
    return "\n".join(out)


def plot(
    reports: list[dict[str, Any]], path: str | Path, title: str = "", metrics: list[tuple[str, str]] | None = None
) -> None:
    """One PNG: a subplot per (benchmark, metric), one curve per report over the turns."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if metrics is None:
        metrics = []
        for r in reports:
            for m in r.get("plot_metrics") or list(r["metrics"]):
                if (r["benchmark"], m) not in metrics and m in r["metrics"]:
                    metrics.append((r["benchmark"], m))
    benchmarks = {b for b, _ in metrics}
    n = max(1, len(metrics))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    names = run_names(reports)
    for i, (bench, metric) in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1)
        for r, name in zip(reports, names):
            if r["benchmark"] != bench or metric not in r["metrics"]:
                continue
            ys = [float("nan") if v is None else float(v) for v in r["metrics"][metric]]
            ax.plot(r["turns"], ys, marker="o", label=name)
        ax.set_title(metric if len(benchmarks) == 1 else f"{bench}: {metric}", fontsize=10)
        ax.set_xlabel("turn")
        ax.grid(alpha=0.3)
        all_turns = sorted({t for r in reports if r["benchmark"] == bench for t in r["turns"]})
        if all_turns:
            ax.set_xticks(all_turns)
        if len(reports) > 1:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def run_names(reports: list[dict[str, Any]]) -> list[str]:
    """Report names, made unique (a repeated name gets #2, #3, ...)."""
    seen: dict[str, int] = {}
    names = []
    for r in reports:
        base = str(r.get("name") or "run")
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base} #{seen[base]}")
    return names
