"""`vincie eval compare RUN...`: several runs in one table and one plot.

Runs are grouped by benchmark; each benchmark gets one table (a row per run, a column per lead
metric and turn) and the PNG has one subplot per (benchmark, metric) with one curve per run.

Synthetic runs that kept their per-session scores (`scores.jsonl` beside `report.json`) are also compared
turn by turn with the first such run of their benchmark: the same session, turn and instruction passed by
both, by one only, or by neither, and the exact two-sided sign test on the turns only one passed. Two
rates 3 points apart on 200 sessions may be noise; the pairs say whether they are.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from vincie_cli.eval.report import fmt, load_report, plot, run_names, table
from vincie_cli.utils.io import BadInputError, UsageError, atomic_write_json, atomic_write_text, read_jsonl


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


def sign_test(a: int, b: int) -> float:
    """Exact two-sided p-value of a and b discordant pairs under "either side is as likely" (binomial, 1/2)."""
    n = a + b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(a, b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _turn_outcomes(scores: list[dict[str, Any]]) -> dict[tuple[str, int, str], bool]:
    """{(session id, turn, instruction): the turn's own success} from synthetic `scores.jsonl` rows."""
    return {
        (str(s["session_id"]), int(t["turn"]), str(t.get("instruction", ""))): bool(t["success"])
        for s in scores
        for t in s.get("turns", [])
    }


def paired_turns(base: list[dict[str, Any]], other: list[dict[str, Any]]) -> dict[str, Any]:
    """Turn success of two synthetic runs, paired on the turns both scored (same session, turn, instruction).

    Returns {"turns": [{"turn", "paired", "both", "only_base", "only_other", "neither", "p"}], "all": {...}}:
    `p` is `sign_test(only_base, only_other)`. Sessions are independent, so each turn's test is exact; "all"
    pools the turns of a session, which are not independent (read its p as a rough guide)."""
    return _paired(_turn_outcomes(base), _turn_outcomes(other))


def _paired(a: dict[tuple[str, int, str], bool], b: dict[tuple[str, int, str], bool]) -> dict[str, Any]:
    """`paired_turns` on the outcomes `_turn_outcomes` made."""
    keys = [k for k in a if k in b]
    rows = []
    for turn in sorted({k[1] for k in keys}):
        rows.append(_pair_counts([(a[k], b[k]) for k in keys if k[1] == turn], turn=turn))
    return {"turns": rows, "all": _pair_counts([(a[k], b[k]) for k in keys])}


def _pair_counts(pairs: list[tuple[bool, bool]], **head: Any) -> dict[str, Any]:
    only_a = sum(x and not y for x, y in pairs)
    only_b = sum(y and not x for x, y in pairs)
    both = sum(x and y for x, y in pairs)
    return {
        **head,
        "paired": len(pairs),
        "both": both,
        "only_base": only_a,
        "only_other": only_b,
        "neither": len(pairs) - both - only_a - only_b,
        "p": round(sign_test(only_a, only_b), 4),
    }


def _outcomes_of(report: dict[str, Any]) -> dict[tuple[str, int, str], bool] | None:
    """The turn outcomes of a synthetic run (from its `scores.jsonl`), None for other runs."""
    path = Path(report["_path"]).parent / "scores.jsonl"
    if report["benchmark"] != "synthetic" or not path.is_file():
        return None
    try:
        return _turn_outcomes(list(read_jsonl(path)))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BadInputError(f"{path}: not the scores of `vincie eval synthetic` (a row lacks {e})") from None


def paired_table(base_name: str, names: list[str], results: list[dict[str, Any]]) -> str:
    """Markdown: one row per (run, turn) and one per run for all its turns, against `base_name`."""
    header = ["run", "turn", "paired turns", "both passed", f"only {base_name}", "only this run", "neither", "p"]
    rows = []
    for name, res in zip(names, results):
        for r in [*res["turns"], {**res["all"], "turn": "all"}]:
            rows.append(
                [name, r["turn"], r["paired"], r["both"], r["only_base"], r["only_other"], r["neither"], r["p"]]
            )
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
    paired: list[dict[str, Any]] = []
    for b in benchmarks:
        idx = [i for i, r in enumerate(reports) if r["benchmark"] == b]
        md += [f"## {b}", "", compare_table([reports[i] for i in idx], [names[i] for i in idx]), ""]
        for i in idx:
            summary = reports[i].get("summary") or {}
            if summary:
                md.append(f"- {names[i]}: " + ", ".join(f"{k} {fmt(v)}" for k, v in summary.items()))
        md.append("")
        scored = [(i, s) for i in idx if (s := _outcomes_of(reports[i])) is not None]
        if len(scored) > 1:
            (i0, base), rest = scored[0], scored[1:]
            results = [_paired(base, s) for _, s in rest]
            others = [names[i] for i, _ in rest]
            paired += [{"base": names[i0], "run": n, **res} for n, res in zip(others, results)]
            md += [
                f"### Turn success, paired with {names[i0]}",
                "",
                "The same session, turn and instruction in both runs; `p`: exact two-sided sign test on the turns "
                "only one run passed (per turn, sessions are independent; `all` pools a session's turns).",
                "",
                paired_table(names[i0], others, results),
                "",
            ]
    md += ["Sources:", ""] + [f"- {n}: `{r['_path']}`" for n, r in zip(names, reports)] + [""]
    paths = {"json": out / "compare.json", "markdown": out / "compare.md", "plot": out / "compare.png"}
    summary = {
        "type": "eval_compare",
        "runs": [
            {"name": n, "path": r["_path"], "benchmark": r["benchmark"], "turns": r["turns"], "metrics": r["metrics"]}
            for n, r in zip(names, reports)
        ],
        "paired": paired,
    }
    atomic_write_json(paths["json"], summary)
    atomic_write_text(paths["markdown"], "\n".join(md))
    plot(reports, paths["plot"], title="comparison")
    return {"runs": names, "benchmarks": benchmarks, **{k: str(v) for k, v in paths.items()}}
