"""The openai backend end to end against a real HTTP server on 127.0.0.1 (FakeOpenAI)."""

from __future__ import annotations

import base64
import json

import pytest

from tests.annotate.conftest import cli_args
from tests.annotate.helpers import BROKEN, as_json, in_prose
from vincie_cli.annotate.backends.openai import OpenAIBackend
from vincie_cli.cli import main
from vincie_cli.records import validate_clip
from vincie_cli.utils.io import read_jsonl

SECRET = "sk-test-0123456789-SECRET"


def lines(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def one_video(video_folder) -> list[str]:
    return [str(video_folder / "v0.mp4")]


def test_valid_replies_make_valid_records_and_the_key_stays_secret(runner, server, video_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    srv, handler = server(default=lambda body: {"content": as_json("Slide the square left.")})
    out = tmp_path / "out"
    res = runner.invoke(main, cli_args([str(video_folder)], out, srv, "--image-size", "32"))
    assert res.exit_code == 0, res.stderr
    recs = list(read_jsonl(out / "annotations.jsonl"))
    assert len(recs) == 3 and lines(res) == recs  # stdout carries the same records
    for rec in recs:
        validate_clip(rec)
        assert rec["backend"] == "openai" and rec["model"] == "fake-vlm" and rec["prompt_version"] == "v1"
        assert rec["source"].startswith("../") and rec["source"].endswith(".mp4")
        assert [f["time"] for f in rec["frames"]] == pytest.approx([0.458333, 1.458333, 2.458333], abs=1e-5)
        for f in rec["frames"]:
            assert (out / f["path"]).is_file()
        assert [(t["src"], t["dst"], t["attempts"]) for t in rec["transitions"]] == [(0, 1, 1), (1, 2, 1)]
        assert rec["transitions"][0]["annotation"]["summary_change"] == "Slide the square left."
        assert json.loads(rec["transitions"][0]["raw"])["summary_change"] == "Slide the square left."
    assert len(srv.requests) == 6
    # the request: model, temperature, both images as data URLs at the requested size, the prompt
    body = srv.requests[0]
    assert body["model"] == "fake-vlm" and body["temperature"] == 0.2 and body["max_tokens"] == 1024
    parts = body["messages"][1]["content"]
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(urls) == 2 and all(u.startswith("data:image/jpeg;base64,") for u in urls)
    from io import BytesIO

    from PIL import Image

    im = Image.open(BytesIO(base64.b64decode(urls[0].split(",", 1)[1])))
    assert im.size == (32, 24)
    assert "summary_change" in parts[-1]["text"]
    # the key goes out as a bearer header, and nowhere else
    assert all(h.get("Authorization") == f"Bearer {SECRET}" for h in srv.headers)
    assert SECRET not in res.stdout and SECRET not in res.stderr
    for f in out.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["clips"], summary["pairs"], summary["failures"], summary["requests"]) == (3, 6, 0, 6)


def test_prose_and_retry_after_broken_json(runner, server, video_folder, tmp_path):
    srv, handler = server(script=[{"content": in_prose("From prose.")}, {"content": BROKEN}, {"content": as_json()}])
    out = tmp_path / "out"
    res = runner.invoke(main, cli_args(one_video(video_folder), out, srv))
    assert res.exit_code == 0, res.stderr
    (rec,) = list(read_jsonl(out / "annotations.jsonl"))
    t0, t1 = rec["transitions"]
    assert t0["annotation"]["summary_change"] == "From prose." and t0["attempts"] == 1
    assert t0["raw"].startswith("Sure! Here is")
    assert t1["attempts"] == 2 and t1["raw"] == as_json()
    # the retry used the next temperature and told the model what was wrong
    assert [b["temperature"] for b in srv.requests] == [0.2, 0.2, 0.7]
    assert "could not be used (" in srv.requests[2]["messages"][1]["content"][-1]["text"]
    assert "could not be used" not in srv.requests[1]["messages"][1]["content"][-1]["text"]


def test_invalid_replies_exhaust_attempts_and_are_kept(runner, server, video_folder, tmp_path):
    srv, _ = server(default=lambda body: {"content": "I am not able to help with that."})
    out = tmp_path / "out"
    res = runner.invoke(main, cli_args(one_video(video_folder), out, srv, "--keep-going", "--max-attempts", "2"))
    assert res.exit_code == 3
    assert not (out / "annotations.jsonl").exists()
    (fail,) = list(read_jsonl(out / "failures.jsonl"))
    assert fail["stage"] == "annotate" and fail["clip_id"]
    assert "no valid annotation after 2 attempts (no JSON object in the reply)" in fail["reason"]
    assert "v0.mp4" in fail["reason"]
    assert fail["raw"]["0"] == ["I am not able to help with that."] * 2
    errors = [r for r in lines(res) if r["type"] == "error"]
    assert len(errors) == 1 and "raw" not in errors[0]
    assert len(srv.requests) == 4  # 2 pairs x 2 attempts


def test_429_with_retry_after_is_honoured(runner, server, video_folder, tmp_path):
    srv, handler = server(script=[{"status": 429, "retry_after": 0.4}])
    out = tmp_path / "out"
    res = runner.invoke(main, cli_args(one_video(video_folder), out, srv))
    assert res.exit_code == 0, res.stderr
    assert handler.times[1] - handler.times[0] >= 0.38
    (rec,) = list(read_jsonl(out / "annotations.jsonl"))
    assert rec["provenance"]["requests"] == 3 and rec["transitions"][0]["attempts"] == 1


def test_500_is_retried_with_backoff_then_fails(runner, server, video_folder, tmp_path):
    srv, handler = server(script=[{"status": 500}] + [{"status": 503, "content": "overloaded"}] * 3)
    out = tmp_path / "out"
    res = runner.invoke(main, cli_args(one_video(video_folder), out, srv, "--max-retries", "2", "--keep-going"))
    assert res.exit_code == 3
    (fail,) = list(read_jsonl(out / "failures.jsonl"))
    # pair 0: 500, 503, 503 -> gave up; pair 1: 503 then fine. The clip fails as a whole.
    assert "transition 0: HTTP 503: overloaded (3 tries)" in fail["reason"]
    assert len(srv.requests) == 5
    # a re-run retries the failed pair only (the finished one is cached)
    res = runner.invoke(main, cli_args(one_video(video_folder), out, srv))
    assert res.exit_code == 0, res.stderr
    assert len(srv.requests) == 6
    (rec,) = list(read_jsonl(out / "annotations.jsonl"))
    assert [t["attempts"] for t in rec["transitions"]] == [1, 1]


def test_hanging_server_times_out(runner, server, video_folder, tmp_path):
    srv, _ = server(script=[{"hang": 1.5}, {"hang": 1.5}])
    out = tmp_path / "out"
    args = cli_args(one_video(video_folder), out, srv, "--timeout", "0.3", "--max-retries", "1", "--keep-going")
    res = runner.invoke(main, args)
    assert res.exit_code == 3
    assert srv.requests[0] == srv.requests[1]  # transition 0 was sent again after its first try timed out
    (fail,) = list(read_jsonl(out / "failures.jsonl"))
    assert "transition 0: timed out after 0.3 s (2 tries)" in fail["reason"]


def test_rejected_key_stops_the_run_even_with_keep_going(runner, server, video_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_VLM_KEY", SECRET)
    srv, _ = server(default=lambda body: {"status": 401, "content": f"invalid api key {SECRET}"})
    out = tmp_path / "out"
    res = runner.invoke(main, cli_args([str(video_folder)], out, srv, "--api-key-env", "MY_VLM_KEY", "--keep-going"))
    assert res.exit_code == 1
    assert "rejected the API key (HTTP 401) (check $MY_VLM_KEY)" in res.stderr
    assert SECRET not in res.stderr and "***" in res.stderr
    assert len(srv.requests) == 1
    assert all(h["Authorization"] == f"Bearer {SECRET}" for h in srv.headers)


def test_named_key_variable_must_exist(runner, video_folder, tmp_path, monkeypatch):
    monkeypatch.delenv("NOPE_KEY", raising=False)
    res = runner.invoke(
        main, cli_args([str(video_folder)], tmp_path / "o") + ["--api-key-env", "NOPE_KEY", "--model", "m"]
    )
    assert res.exit_code == 2 and "NOPE_KEY is not set" in res.stderr


def test_no_key_sends_no_header(server, video_folder, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    srv, _ = server()
    backend = OpenAIBackend(srv.base_url, "m", max_retries=0)
    from vincie_cli.annotate.backends.base import PairRequest

    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (10, 20, 30)).save(img)
    (reply,) = backend.generate([PairRequest("k", (img, img), (0.0, 1.0), "src")])
    assert reply.text == as_json() and reply.error is None and reply.usage["total_tokens"] == 2
    assert "Authorization" not in srv.headers[0]
    backend.close()
