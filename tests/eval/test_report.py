import json
import math

import pytest
from PIL import Image

from vincie_cli.cli import main
from vincie_cli.eval.compare import paired_turns, sign_test
from vincie_cli.eval.report import finalize, load_report, markdown, write_report
from vincie_cli.utils.io import BadInputError, write_jsonl


def mse_report(name, sr):
    return finalize(
        {
            "benchmark": "mse-bench",
            "n_sessions": 4,
            "turns": [1, 2, 3],
            "metrics": {"success_rate": sr, "overall": [7.0, 5.5, None], "judged": [4, 3, 1]},
            "plot_metrics": ["success_rate", "overall"],
            "summary": {"success_rate_turn3": sr[-1]},
            "config": {"judge": {"model": "judge-x"}, "judge_prompt": {"official": True}},
            "failures": [{"session": "s1", "turn": 2, "status": "error", "error": "HTTP 500"}],
            "warnings": ["session s2: turn 2 is 64x64, turn 1 is 32x32"],
        },
        name,
    )


def synth_report(name):
    return finalize(
        {
            "benchmark": "synthetic",
            "n_sessions": 2,
            "turns": [1, 2],
            "metrics": {"success_rate": [1.0, 0.5], "psnr": [40.0, 30.0]},
            "plot_metrics": ["success_rate", "psnr"],
        },
        name,
    )


def png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_write_report_files(tmp_path):
    report = mse_report("run-a", [0.75, 0.5, 0.25])
    paths = write_report(tmp_path / "a", report)
    assert json.loads((tmp_path / "a/report.json").read_text())["metrics"]["success_rate"] == [0.75, 0.5, 0.25]
    md = (tmp_path / "a/report.md").read_text()
    assert md.startswith("# mse-bench: run-a")
    assert "judge `judge-x` with the official instruction" in md
    assert "| metric | turn 1 | turn 2 | turn 3 |" in md
    assert "| success_rate | 0.7500 | 0.5000 | 0.2500 |" in md
    assert "| overall | 7.0000 | 5.5000 | – |" in md  # no value: a dash
    assert "| judged | 4 | 3 | 1 |" in md
    assert "## Failures (1)" in md and "HTTP 500" in md and "## Warnings (1)" in md
    assert png_size(paths["plot"]) == (840, 400)  # two subplots side by side
    assert load_report(tmp_path / "a")["name"] == "run-a"


def test_load_report_rejects_other_files(tmp_path):
    with pytest.raises(BadInputError, match="no report.json"):
        load_report(tmp_path)
    (tmp_path / "x.json").write_text('{"type": "something"}')
    with pytest.raises(BadInputError, match="not a vincie eval report"):
        load_report(tmp_path / "x.json")
    bad = mse_report("b", [0.1, 0.2, 0.3])
    bad["metrics"]["overall"] = [1.0]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(BadInputError, match="metric 'overall' needs one value per turn"):
        load_report(tmp_path / "bad.json")


def test_compare_runs_in_one_table_and_plot(tmp_path, runner):
    write_report(tmp_path / "a", mse_report("vincie-3b", [0.9, 0.6, 0.3]))
    write_report(tmp_path / "b", mse_report("vincie-3b", [0.95, 0.7, 0.5]))  # same name: made unique
    write_report(tmp_path / "c", synth_report("mini"))
    r = runner.invoke(
        main,
        [
            "eval",
            "compare",
            str(tmp_path / "a"),
            str(tmp_path / "b/report.json"),
            str(tmp_path / "c"),
            "-o",
            str(tmp_path / "cmp"),
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip())
    assert out["type"] == "eval_compare" and out["runs"] == ["vincie-3b", "vincie-3b #2", "mini"]
    assert out["benchmarks"] == ["mse-bench", "synthetic"]
    md = (tmp_path / "cmp/compare.md").read_text()
    header = "| run | sessions | success_rate T1 | success_rate T2 | success_rate T3 | overall T1 | overall T2 | overall T3 |"  # noqa: E501
    assert header in md
    assert "| vincie-3b | 4 | 0.9000 | 0.6000 | 0.3000 | 7.0000 | 5.5000 | – |" in md
    assert "| vincie-3b #2 | 4 | 0.9500 | 0.7000 | 0.5000 |" in md
    assert "| mini | 2 | 1.0000 | 0.5000 | 40.0000 | 30.0000 |" in md
    # one figure: mse-bench x 2 metrics + synthetic x 2 metrics = 4 subplots in a row
    assert png_size(tmp_path / "cmp/compare.png") == (1680, 400)
    saved = json.loads((tmp_path / "cmp/compare.json").read_text())
    assert [x["name"] for x in saved["runs"]] == out["runs"]

    r = runner.invoke(main, ["eval", "compare", str(tmp_path / "nothing"), "-o", str(tmp_path / "cmp2")])
    assert r.exit_code == 1 and "no report.json" in r.stderr


def test_markdown_without_optional_parts():
    md = markdown(synth_report("x"))
    assert "## Failures" not in md and "| psnr | 40.0000 | 30.0000 |" in md


def test_sign_test_golden_values():
    assert sign_test(0, 0) == 1.0
    assert sign_test(0, 6) == pytest.approx(2 / 64)  # all six discordant pairs one way
    assert sign_test(5, 1) == pytest.approx(2 * 7 / 64)
    assert sign_test(3, 3) == 1.0  # capped at 1
    assert sign_test(14, 3) == pytest.approx(2 * sum(math.comb(17, i) for i in range(4)) / 2**17)


def _scores(outcomes: dict[str, list[bool]], instruction: str = "do it") -> list[dict]:
    return [
        {
            "session_id": sid,
            "turns": [{"turn": k, "instruction": f"{instruction} {k}", "success": ok} for k, ok in enumerate(oks, 1)],
        }  # fmt: skip
        for sid, oks in outcomes.items()
    ]


def test_paired_turns_counts_each_turn_and_skips_turns_one_run_lacks():
    base = _scores({"s1": [True, True, False], "s2": [True, False, False], "s3": [False, False, True]})
    other = _scores({"s1": [True, False, True], "s2": [False, False], "s4": [True, True, True]})
    res = paired_turns(base, other)
    by_turn = {r["turn"]: r for r in res["turns"]}
    assert sorted(by_turn) == [1, 2, 3]
    assert by_turn[1] == {"turn": 1, "paired": 2, "both": 1, "only_base": 1, "only_other": 0, "neither": 0, "p": 1.0}
    assert by_turn[2] == {"turn": 2, "paired": 2, "both": 0, "only_base": 1, "only_other": 0, "neither": 1, "p": 1.0}
    assert by_turn[3] == {"turn": 3, "paired": 1, "both": 0, "only_base": 0, "only_other": 1, "neither": 0, "p": 1.0}
    assert res["all"]["paired"] == 5 and (res["all"]["only_base"], res["all"]["only_other"]) == (2, 1)
    # another benchmark's session with the same id but other instructions is not paired
    assert paired_turns(base, _scores({"s1": [True, True, True]}, "other"))["all"]["paired"] == 0


def test_compare_pairs_synthetic_runs_that_kept_their_scores(tmp_path, runner):
    sessions = [f"s{i}" for i in range(8)]
    runs = {
        "ctx": {s: [True, False] for s in sessions},
        "noctx": {s: [True, True] for s in sessions},
        "half": {s: [i % 2 == 0, True] for i, s in enumerate(sessions)},
    }
    for name, outcomes in runs.items():
        write_report(tmp_path / name, synth_report(name))
        write_jsonl(tmp_path / name / "scores.jsonl", _scores(outcomes))
    write_report(tmp_path / "no-scores", synth_report("no-scores"))  # in the table, not in the pairs
    args = ["eval", "compare", *(str(tmp_path / n) for n in ("no-scores", "noctx", "ctx", "half")), "-o"]
    r = runner.invoke(main, [*args, str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "cmp/compare.json").read_text())
    assert [(p["base"], p["run"]) for p in saved["paired"]] == [("noctx", "ctx"), ("noctx", "half")]
    ctx_turn2 = saved["paired"][0]["turns"][1]
    assert (ctx_turn2["only_base"], ctx_turn2["only_other"], ctx_turn2["p"]) == (8, 0, round(2 / 256, 4))
    md = (tmp_path / "cmp/compare.md").read_text()
    assert "### Turn success, paired with noctx" in md
    assert "| ctx | 2 | 8 | 0 | 8 | 0 | 0 | 0.0078 |" in md
    assert "| half | 1 | 8 | 4 | 4 | 0 | 0 | 0.1250 |" in md
    assert "| half | all | 16 | 12 | 4 | 0 | 0 | 0.1250 |" in md


def test_compare_names_a_scores_file_that_is_not_synthetic_scores(tmp_path, runner):
    for name in ("a", "b"):
        write_report(tmp_path / name, synth_report(name))
        write_jsonl(tmp_path / name / "scores.jsonl", _scores({"s1": [True]}))
    write_jsonl(tmp_path / "b" / "scores.jsonl", [{"session_id": "s1", "turns": [{"turn": 1}]}])
    r = runner.invoke(main, ["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "c")])
    assert r.exit_code == 1
    assert "b/scores.jsonl: not the scores of `vincie eval synthetic`" in r.stderr and "'success'" in r.stderr
    assert not (tmp_path / "c").exists()  # nothing written
