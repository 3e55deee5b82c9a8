import hashlib
import json
import math

import pytest

from tests.eval.helpers import ScoreTable, png_bytes, reply, write_msebench, write_results
from tests.fakes.openai_server import FakeOpenAI
from vincie_cli.cli import main
from vincie_cli.eval import msebench
from vincie_cli.eval.judge import JudgeConfig
from vincie_cli.eval.msebench import TurnJudgement, aggregate
from vincie_cli.utils.io import BadInputError


def ok(sid: str, turn: int, pf: int, c: int) -> TurnJudgement:
    return TurnJudgement(sid, turn, "ok", pf, c)


# --------------------------------------------------------------------------------------------
# scoring rules, hand-computed


def test_aggregate_hand_computed():
    judged = {
        "A": [ok("A", 1, 8, 9), ok("A", 2, 7, 7), ok("A", 3, 9, 8)],  # passes all three
        "B": [ok("B", 1, 7, 8), ok("B", 2, 6, 9), ok("B", 3, 10, 10)],  # fails turn 2; turn 3 must be ignored
        "C": [ok("C", 1, 3, 4)],  # fails turn 1
        "D": [ok("D", 1, 10, 10), ok("D", 2, 7, 10), ok("D", 3, 5, 2)],  # fails turn 3
    }
    m = aggregate(judged, n_sessions=4, n_turns=3, threshold=6)
    assert m["success_rate"] == [3 / 4, 2 / 4, 1 / 4]
    assert m["prompt_following"] == [(8 + 7 + 3 + 10) / 4, (7 + 6 + 7) / 4, (9 + 5) / 4]
    assert m["consistency"] == [(9 + 8 + 4 + 10) / 4, (7 + 9 + 10) / 4, (8 + 2) / 4]
    expected_overall = [
        (math.sqrt(72) + math.sqrt(56) + math.sqrt(12) + 10) / 4,
        (7 + math.sqrt(54) + math.sqrt(70)) / 4,
        (math.sqrt(72) + math.sqrt(10)) / 4,
    ]
    assert m["overall"] == pytest.approx(expected_overall, abs=1e-12)
    assert m["judged"] == [4, 3, 2]


def test_averages_divide_by_all_sessions_including_unjudged_and_failed():
    judged = {
        "A": [ok("A", 1, 10, 10), ok("A", 2, 10, 10)],
        "E": [TurnJudgement("E", 1, "error", error="HTTP 500")],  # a failed judgement: not passed, scores 0
        "M": [TurnJudgement("M", 1, "missing")],
        "Z": [],  # never judged
    }
    m = aggregate(judged, n_sessions=4, n_turns=2, threshold=6)
    assert m["success_rate"] == [0.25, 0.25]
    assert m["prompt_following"] == [2.5, 2.5]
    assert m["overall"] == [2.5, 2.5]
    assert m["errors"] == [1, 0] and m["missing"] == [1, 0] and m["judged"] == [1, 1]


@pytest.mark.parametrize(
    "pf, c, threshold, passed",
    [(6, 10, 6, False), (10, 6, 6, False), (7, 7, 6, True), (6, 6, 5, True), (10, 10, 10, False), (0, 0, -1, True)],
)
def test_threshold_is_strictly_greater(pf, c, threshold, passed):
    assert ok("s", 1, pf, c).passed(threshold) is passed
    m = aggregate({"s": [ok("s", 1, pf, c)]}, 1, 1, threshold)
    assert m["success_rate"] == [1.0 if passed else 0.0]


# --------------------------------------------------------------------------------------------
# judge instruction


def test_builtin_prompt_renders_the_protocol_fields():
    p = msebench.load_judge_prompt(None)
    text = p.render(["add a hat", "make it red"])
    assert "turn 2" in text and "3 images" in text
    assert str({"turn1": "add a hat", "turn2": "make it red"}) in text
    assert '{"reason": "<your grounds>", "prompt_following": <0-10>, "consistency": <0-10>}' in text
    assert p.official is False and p.source == "builtin"


def test_prompt_file_official_detection(tmp_path, monkeypatch):
    f = tmp_path / "judge.txt"
    f.write_text("Grade turn {num_prompts} of {editing_prompt} using {num_images} images. {{json}}\n")
    sha = hashlib.sha256(f.read_text()[:-1].encode()).hexdigest()
    assert msebench.load_judge_prompt(f).official is False
    monkeypatch.setattr(msebench, "OFFICIAL_JUDGE_PROMPT_SHA256", sha)
    p = msebench.load_judge_prompt(f)  # matches once the editor's trailing newline is dropped
    assert p.official and p.info()["official"] and p.sha256 == sha
    assert p.render(["x"]) == "Grade turn 1 of {'turn1': 'x'} using 2 images. {json}"


def test_prompt_file_with_unknown_placeholder(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_text('Reply {"prompt_following": int}')
    with pytest.raises(BadInputError, match="does not format"):
        msebench.load_judge_prompt(f)


# --------------------------------------------------------------------------------------------
# benchmark and results loading


def test_load_benchmark_and_bad_formats(tmp_path):
    sessions = msebench.load_benchmark(str(write_msebench(tmp_path / "bench" / "train-0.parquet", n=3, turns=2)))
    assert [s.id for s in sessions] == ["100", "101", "102"]
    assert sessions[1].prompts == ["edit s101 t1", "edit s101 t2"] and sessions[1].row == 1
    assert msebench.load_benchmark(str(tmp_path / "bench"), limit=2)[-1].id == "101"

    (tmp_path / "b.json").write_text("{}")
    with pytest.raises(BadInputError, match=r"b\.json: not a readable parquet file"):
        msebench.load_benchmark(str(tmp_path / "b.json"))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"img_id": ["1"], "turn_index": [1], "instruction": ["x"]}), tmp_path / "mb.parquet")
    with pytest.raises(
        BadInputError, match=r"mb\.parquet: not an MSE-Bench parquet: missing column\(s\) image, context"
    ):
        msebench.load_benchmark(str(tmp_path / "mb.parquet"))
    with pytest.raises(BadInputError, match="no such file or folder"):
        msebench.load_benchmark(str(tmp_path / "nothing"))


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Exception, match="not a local path, and the hub copy could not be fetched"):
        msebench.load_benchmark("leigangqu/MSE-Bench-not-cached")


def test_results_checks(tmp_path):
    sessions = msebench.load_benchmark(str(write_msebench(tmp_path / "b.parquet", n=3, turns=2)))
    res = write_results(tmp_path / "res", ["100", "101", "102"], 2)
    (res / "101" / "turn2.png").unlink()
    (res / "102" / "turn2.png").write_bytes(png_bytes((1, 1, 1), (64, 64)))
    check = msebench.collect_results(res, sessions)
    assert check.incomplete == {"101": [2]}
    assert check.warnings == ["session 102: turn 2 is 64x64, turn 1 is 32x24"]
    (res / "100" / "turn1.png").write_bytes(b"not an image")
    with pytest.raises(BadInputError, match=r"unreadable result images: .*100/turn1\.png: not a readable image"):
        msebench.collect_results(res, sessions)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no result images for any session"):
        msebench.collect_results(tmp_path / "empty", sessions)


def test_results_parquet_and_official_names(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    sessions = msebench.load_benchmark(str(write_msebench(tmp_path / "b.parquet", n=2, turns=2)))
    cells = {f"turn_{t}_image": [{"bytes": png_bytes((i, t, 0)), "path": None} for i in range(2)] for t in range(2)}
    pq.write_table(pa.table(cells), tmp_path / "vincie_7b.parquet")
    folder = msebench.extract_results_parquet(tmp_path / "vincie_7b.parquet", sessions, tmp_path / "x")
    assert (folder / "101" / "turn2.png").read_bytes() == png_bytes((1, 1, 0))
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "1_turn0_rep0_seed1.png").write_bytes(png_bytes((0, 0, 0)))
    (flat / "1_turn1_seed1.png").write_bytes(png_bytes((0, 0, 0)))
    check = msebench.collect_results(flat, sessions)
    assert check.incomplete == {"100": [1, 2]} and check.paths["101"][1].name == "1_turn1_seed1.png"


def test_judge_images_follow_the_protocol(tmp_path):
    from PIL import Image

    out1 = tmp_path / "t1.png"
    out1.write_bytes(png_bytes((200, 0, 0), (16, 12)))
    out2 = tmp_path / "t2.png"
    out2.write_bytes(png_bytes((0, 200, 0), (20, 20)))
    src = png_bytes((10, 120, 240), (40, 30), fmt="JPEG")
    imgs = msebench.judge_images(src, [out1, out2])
    import io

    first = Image.open(io.BytesIO(imgs[0]))
    assert first.format == "PNG" and first.size == (16, 12)  # resized to the turn-1 output
    assert imgs[1] == out1.read_bytes() and imgs[2] == out2.read_bytes()  # outputs go as raw bytes


# --------------------------------------------------------------------------------------------
# a whole run against a real HTTP server


SCORES = {
    (100, 1): reply(8, 9),
    (100, 2): reply(7, 7),
    (100, 3): "Sure! ```json\n" + reply(9, 8) + "\n```",  # prose-wrapped
    (101, 1): reply(7, 8),
    (101, 2): reply(6, 9),  # fails: session stops, turn 3 never asked
    (102, 1): reply(3, 4),
}


def _judge(srv, **kw):
    return JudgeConfig(base_url=srv.base_url, model="judge-x", api_key="sk-zz-secret", backoff=0.001, **kw)


def test_run_scores_caches_and_resumes(tmp_path):
    sessions = msebench.load_benchmark(str(write_msebench(tmp_path / "b.parquet", n=3, turns=3)))
    res = write_results(tmp_path / "res", ["100", "101", "102"], 3)
    handler = ScoreTable(SCORES, delay=0.05)
    with FakeOpenAI(handler=handler) as srv:
        prompt = msebench.load_judge_prompt(None)
        report = msebench.run_msebench(sessions, res, tmp_path / "run", _judge(srv), prompt, concurrency=3)
        assert sorted(handler.asked) == sorted(SCORES)
        assert handler.max_in_flight >= 2  # sessions are judged concurrently
        m = report["metrics"]
        assert m["success_rate"] == [2 / 3, 1 / 3, 1 / 3]
        assert m["prompt_following"] == [(8 + 7 + 3) / 3, (7 + 6) / 3, 9 / 3]
        assert report["summary"]["judgements_asked"] == 6 and report["failures"] == []
        assert json.loads((tmp_path / "run/judgements/101/turn2.json").read_text())["consistency"] == 9
        assert not (tmp_path / "run/judgements/101/turn3.json").exists()
        first = len(srv.requests)

        # resume: nothing is asked again
        again = msebench.run_msebench(sessions, res, tmp_path / "run", _judge(srv), prompt, concurrency=3)
        assert len(srv.requests) == first
        assert again["metrics"] == report["metrics"] and again["summary"]["judgements_cached"] == 6

        # a regenerated image invalidates exactly the judgements that saw it
        (res / "100" / "turn3.png").write_bytes(png_bytes((99, 99, 99)))
        msebench.run_msebench(sessions, res, tmp_path / "run", _judge(srv), prompt)
        assert len(srv.requests) == first + 1 and handler.asked[-1] == (100, 3)

        # a lower threshold asks the turn that earlier runs never reached
        handler.table = {**SCORES, (101, 3): reply(6, 6)}
        low = msebench.run_msebench(sessions, res, tmp_path / "run", _judge(srv), prompt, threshold=5)
        assert handler.asked[-1] == (101, 3) and len(srv.requests) == first + 2
        assert low["metrics"]["success_rate"] == [2 / 3, 2 / 3, 2 / 3]


def test_failed_judgements_are_recorded_not_fatal(tmp_path):
    sessions = msebench.load_benchmark(str(write_msebench(tmp_path / "b.parquet", n=3, turns=2)))
    res = write_results(tmp_path / "res", ["100", "101", "102"], 2)
    table = {
        (100, 1): reply(8, 8),
        (100, 2): reply(11, 8),  # out of range, every time
        (101, 1): "no idea",  # never parseable
        (102, 1): reply(9, 9),
        (102, 2): reply(9, 9),
    }
    with FakeOpenAI(handler=ScoreTable(table)) as srv:
        prompt = msebench.load_judge_prompt(None)
        report = msebench.run_msebench(sessions, res, tmp_path / "run", _judge(srv, reply_attempts=2), prompt)
        failures = {(f["session"], f["turn"]): f["error"] for f in report["failures"]}
        assert "prompt_following=11 outside 0..10" in failures[("100", 2)]
        assert "no JSON object" in failures[("101", 1)]
        assert report["metrics"]["success_rate"] == [2 / 3, 1 / 3]
        assert report["metrics"]["errors"] == [1, 1]
        assert report["summary"]["judge_failures"] == 2
        assert not (tmp_path / "run/judgements/100/turn2.json").exists()  # failures are asked again next time
        assert len(srv.requests) == 1 + 2 + 2 + 2  # two asks per unusable judgement


def test_server_errors_are_retried_then_recorded(tmp_path):
    sessions = msebench.load_benchmark(str(write_msebench(tmp_path / "b.parquet", n=1, turns=1)))
    res = write_results(tmp_path / "res", ["100"], 1)
    script = [{"status": 429, "retry_after": 0}, {"status": 500}, {"hang": 0.6}, {"status": 502}]
    with FakeOpenAI(script=script) as srv:
        prompt = msebench.load_judge_prompt(None)
        report = msebench.run_msebench(
            sessions, res, tmp_path / "run", _judge(srv, max_attempts=4, timeout=0.2, reply_attempts=1), prompt
        )
        assert len(srv.requests) == 4
        assert report["failures"][0]["status"] == "error" and "HTTP 502" in report["failures"][0]["error"]
        assert report["metrics"]["success_rate"] == [0.0]


def test_wrong_key_or_url_stops_the_run(tmp_path):
    sessions = msebench.load_benchmark(str(write_msebench(tmp_path / "b.parquet", n=2, turns=1)))
    res = write_results(tmp_path / "res", ["100", "101"], 1)
    with FakeOpenAI(handler=lambda body: {"status": 401, "content": "invalid api key"}) as srv:
        with pytest.raises(Exception, match="HTTP 401: invalid api key"):
            msebench.run_msebench(
                sessions, res, tmp_path / "run", _judge(srv), msebench.load_judge_prompt(None), concurrency=1
            )


# --------------------------------------------------------------------------------------------
# the command


def test_cli_mse_bench(tmp_path, runner, monkeypatch):
    bench = write_msebench(tmp_path / "b.parquet", n=3, turns=3)
    res = write_results(tmp_path / "res", ["100", "101", "102"], 3)
    monkeypatch.setenv("JUDGE_KEY", "sk-zz-secret")
    with FakeOpenAI(handler=ScoreTable(SCORES)) as srv:
        args = ["eval", "mse-bench", "--benchmark", str(bench), "--results", str(res), "-o", str(tmp_path / "run")]
        args += ["--base-url", srv.base_url, "--judge-model", "judge-x", "--api-key-env", "JUDGE_KEY"]
        r = runner.invoke(main, args)
        assert r.exit_code == 0, r.output
        assert srv.headers[0]["Authorization"] == "Bearer sk-zz-secret"
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["type"] for x in lines].count("judgement") == 6
    final = lines[-1]
    assert final["type"] == "eval_report" and final["summary"]["success_rate_turn3"] == pytest.approx(1 / 3)
    for name in ("report.json", "report.md", "report.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    assert (tmp_path / "run/report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "run/report.md").read_text()
    assert "| success_rate | 0.6667 | 0.3333 | 0.3333 |" in md
    # the key is never written or printed
    for p in (tmp_path / "run").rglob("*"):
        if p.is_file():
            assert b"sk-zz-secret" not in p.read_bytes(), p
    assert "sk-zz-secret" not in r.output


def test_cli_bad_inputs(tmp_path, runner):
    bench = write_msebench(tmp_path / "b.parquet", n=2, turns=2)
    res = write_results(tmp_path / "res", ["100", "101"], 2)
    (res / "101" / "turn2.png").unlink()
    base = [
        "eval",
        "mse-bench",
        "--benchmark",
        str(bench),
        "-o",
        str(tmp_path / "run"),
        "--base-url",
        "http://127.0.0.1:9/v1",
    ]
    r = runner.invoke(main, base + ["--results", str(res)])
    assert r.exit_code == 1
    assert "1 of 2 sessions are incomplete: 101 (turn 2 missing)" in r.stderr and "--allow-missing" in r.stderr
    r = runner.invoke(main, base)
    assert r.exit_code == 2 and "exactly one of --model" in r.stderr
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    r = runner.invoke(
        main,
        [
            "eval",
            "mse-bench",
            "--benchmark",
            str(tmp_path / "x.csv"),
            "--results",
            str(res),
            "-o",
            str(tmp_path / "r2"),
        ],
    )
    assert r.exit_code == 1 and "x.csv: not a readable parquet file" in r.stderr
    assert "Traceback" not in r.output


def test_cli_allow_missing_and_partial_exit(tmp_path, runner):
    bench = write_msebench(tmp_path / "b.parquet", n=2, turns=2)
    res = write_results(tmp_path / "res", ["100", "101"], 2)
    (res / "101" / "turn2.png").unlink()
    table = {(100, 1): reply(8, 8), (100, 2): "garbage", (101, 1): reply(9, 9)}
    with FakeOpenAI(handler=ScoreTable(table)) as srv:
        args = ["eval", "mse-bench", "--benchmark", str(bench), "--results", str(res), "-o", str(tmp_path / "run")]
        args += ["--base-url", srv.base_url, "--allow-missing", "--reply-retries", "1"]
        r = runner.invoke(main, args)
    assert r.exit_code == 3, r.output
    assert "1 judgement(s) failed" in r.stderr
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert report["metrics"]["missing"] == [0, 1] and report["metrics"]["errors"] == [0, 1]
    assert report["metrics"]["success_rate"] == [1.0, 0.0]


def test_cli_generates_with_edit_then_judges(tmp_path, runner, monkeypatch):
    from vincie_cli.eval import generate as gen_mod

    calls = []

    def run_sessions(model, sessions, out_dir, settings):  # stands in for vincie_cli.edit.run_sessions
        calls.append((model, sessions, settings))
        for s in sessions:
            assert open(s["images"][0], "rb").read()[:3] == b"\xff\xd8\xff"  # the source's original bytes
            write_results(out_dir, [s["id"]], len(s["prompts"]))

    monkeypatch.setattr(gen_mod, "_run_sessions", lambda: run_sessions)
    bench = write_msebench(tmp_path / "b.parquet", n=3, turns=3)
    with FakeOpenAI(handler=ScoreTable(SCORES)) as srv:
        args = ["eval", "mse-bench", "--benchmark", str(bench), "--model", "ckpt/x", "-o", str(tmp_path / "run")]
        args += ["--base-url", srv.base_url, "--gen-set", "steps=2", "--gen-set", "sampler=euler", "--seed", "5"]
        r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    model, sessions, settings = calls[0]
    assert model == "ckpt/x" and [s["id"] for s in sessions] == ["100", "101", "102"]
    assert sessions[0]["prompts"] == ["edit s100 t1", "edit s100 t2", "edit s100 t3"]
    assert settings == {"seed": 5, "device": "auto", "steps": 2, "sampler": "euler"}
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert report["metrics"]["success_rate"] == [2 / 3, 1 / 3, 1 / 3]
    assert report["config"]["results"] == str(tmp_path / "run" / "generated")
