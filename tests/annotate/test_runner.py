"""The runner: inputs, resume, shards, locks, settings, bad input."""

from __future__ import annotations

import io
import json
import os

import av
import numpy as np
import pytest

from tests.annotate.conftest import cli_args, make_videos
from tests.annotate.helpers import as_json
from tests.video.videos import write_video
from vincie_cli.annotate.inputs import collect_inputs
from vincie_cli.annotate.runner import OutputLock, clip_id
from vincie_cli.cli import main
from vincie_cli.utils.io import VincieError, in_shard, read_jsonl


def records(out):
    return sorted(read_jsonl(out / "annotations.jsonl"), key=lambda r: r["clip_id"])


def stable(rec):
    """A record without the fields that differ between runs (timings)."""
    rec = json.loads(json.dumps(rec))
    for k in ("created", "elapsed_s"):
        rec["provenance"].pop(k)
    return rec


def test_rerun_skips_finished_work_and_redoes_lost_records(runner, server, video_folder, tmp_path):
    srv, _ = server()
    out = tmp_path / "out"
    assert runner.invoke(main, cli_args([str(video_folder)], out, srv)).exit_code == 0
    first = records(out)
    assert len(first) == 3 and len(srv.requests) == 6
    res = runner.invoke(main, cli_args([str(video_folder)], out, srv))
    assert res.exit_code == 0 and res.stdout == ""  # nothing new
    assert len(srv.requests) == 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["videos_already_done"] == 3 and summary["clips"] == 0
    # lose a record and the video's done-marker: only that clip is redone, from cached frames and transitions
    lost = first[1]
    kept = [r for r in read_jsonl(out / "annotations.jsonl") if r["clip_id"] != lost["clip_id"]]
    (out / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    videos = [v for v in read_jsonl(out / "videos.jsonl") if v["source"] != lost["source"]]
    (out / "videos.jsonl").write_text("".join(json.dumps(v) + "\n" for v in videos))
    res = runner.invoke(main, cli_args([str(video_folder)], out, srv))
    assert res.exit_code == 0
    assert len(srv.requests) == 6  # transitions came from the cache
    assert [stable(r) for r in records(out)] == [stable(r) for r in first]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["clips"], summary["pairs"], summary["pairs_cached"]) == (1, 0, 2)


def test_failed_clips_are_retried_on_the_next_run(runner, server, video_folder, tmp_path):
    bad, _ = server(default=lambda body: {"content": "no idea"})
    out = tmp_path / "out"
    res = runner.invoke(main, cli_args([str(video_folder)], out, bad, "--keep-going", "--max-attempts", "1"))
    assert res.exit_code == 3
    assert len(list(read_jsonl(out / "failures.jsonl"))) == 3
    assert not (out / "videos.jsonl").exists()
    good, _ = server()
    res = runner.invoke(main, cli_args([str(video_folder)], out, good))
    assert res.exit_code == 0
    assert len(records(out)) == 3 and len(good.requests) == 6


def test_shards_partition_the_videos(runner, server, tmp_path):
    folder = tmp_path / "videos"
    paths = make_videos(folder, 6, frames=48)
    # Shards hash the absolute path, which changes with tmp_path: rename until both shards get one.
    k = 0
    while len({in_shard(os.path.normpath(os.path.abspath(p)), (0, 2)) for p in paths}) < 2:
        k += 1
        paths[0] = paths[0].rename(folder / f"w{k}.mp4")
    srv, _ = server()
    out = tmp_path / "out"
    ids = []
    for shard in ("0/2", "1/2"):
        res = runner.invoke(main, cli_args([str(folder)], out, srv, "--shard", shard))
        assert res.exit_code == 0, res.stderr
        ids.append({json.loads(line)["clip_id"] for line in res.stdout.splitlines()})
        assert (out / f"summary-shard-{shard.replace('/', '-of-')}.json").is_file()
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    full = tmp_path / "full"
    assert runner.invoke(main, cli_args([str(folder)], full, srv)).exit_code == 0
    assert ids[0] | ids[1] == {r["clip_id"] for r in records(full)}


def test_locks_refuse_overlapping_processes(tmp_path):
    out = tmp_path / "out"
    a = OutputLock(out, (0, 2)).acquire()
    try:
        b = OutputLock(out, (1, 2)).acquire()  # another shard of the same split: fine
        b.release()
        with pytest.raises(VincieError, match="another process is working on this output"):
            OutputLock(out, (0, 2)).acquire()
        with pytest.raises(VincieError, match="split into 2 shards"):
            OutputLock(out, (0, 1)).acquire()
        with pytest.raises(VincieError, match="split into 2 shards"):
            OutputLock(out, (0, 3)).acquire()
    finally:
        a.release()
    OutputLock(out, (0, 1)).acquire().release()  # alone again: any split


def test_locked_folder_refuses_a_second_cli_run(runner, server, video_folder, tmp_path):
    out = tmp_path / "out"
    lock = OutputLock(out, (0, 1)).acquire()
    try:
        res = runner.invoke(main, cli_args([str(video_folder)], out, server()[0]))
        assert res.exit_code == 1 and "another process is working on this output" in res.stderr
    finally:
        lock.release()


def test_changed_clip_settings_are_refused(runner, server, video_folder, tmp_path):
    srv, _ = server()
    out = tmp_path / "out"
    assert runner.invoke(main, cli_args([str(video_folder / "v0.mp4")], out, srv)).exit_code == 0
    res = runner.invoke(main, cli_args([str(video_folder / "v0.mp4")], out, srv, "--interval", "0.5"))
    assert res.exit_code == 2 and "sampling.interval: 1.0 -> 0.5" in res.stderr


def _bad_inputs(tmp_path, good):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "text.mp4").write_text("this is a text file, not a video\n" * 10)
    data = good.read_bytes()
    (bad / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (bad / "empty.mp4").write_bytes(b"")
    c = av.open(str(bad / "noframes.mp4"), "w")
    s = c.add_stream("libx264", rate=24)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    c.start_encoding()  # write the header, then close without a single frame
    c.close()
    write_video(bad / "short.mp4", num_frames=36)  # 1.5 s: less than one 2 s sampling interval
    locked = tmp_path / "locked"
    locked.mkdir()
    expected = {
        "missing.mp4": "no such file",
        "text.mp4": "not a readable video",
        "truncated.mp4": "not a readable video",
        "empty.mp4": "empty file (0 bytes)",
        "noframes.mp4": "zero-length video",
        "short.mp4": "shorter than one sampling interval (2 s",
        "locked": "cannot list the folder (permission denied)",
    }
    inputs = [str(bad / "missing.mp4"), str(bad / "text.mp4"), str(bad / "truncated.mp4"), str(bad / "empty.mp4"),
              str(bad / "noframes.mp4"), str(bad / "short.mp4"), str(locked), str(good)]  # fmt: skip
    return inputs, expected, locked


@pytest.fixture
def unreadable(monkeypatch):
    """Make listing one folder fail as it would for a non-root user (tests run as root here)."""
    real = os.scandir
    blocked = set()

    def scandir(path="."):
        if os.fspath(path) in blocked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return blocked


def test_bad_inputs_are_reported_and_never_stop_the_others(runner, server, video_folder, tmp_path, unreadable):
    inputs, expected, locked = _bad_inputs(tmp_path, video_folder / "v0.mp4")
    unreadable.add(str(locked))
    srv, _ = server()
    out = tmp_path / "out"
    res = runner.invoke(main, cli_args(inputs, out, srv, "--keep-going", "--interval", "2"))
    assert res.exit_code == 3, res.stderr
    fails = list(read_jsonl(out / "failures.jsonl"))
    assert len(fails) == len(expected)
    for name, problem in expected.items():
        (f,) = [f for f in fails if name in f["reason"]]
        assert problem in f["reason"], f["reason"]
        assert "Traceback" not in f["reason"] and "\n" not in f["reason"]
    assert len(records(out)) == 1  # the good video after all of them
    errors = [json.loads(line) for line in res.stdout.splitlines() if '"type":"error"' in line]
    assert len(errors) == len(expected)
    assert "Traceback" not in res.stderr


def test_without_keep_going_the_first_bad_input_stops_with_one_line(runner, server, video_folder, tmp_path):
    srv, _ = server()
    out = tmp_path / "out"
    res = runner.invoke(main, cli_args([str(tmp_path / "missing.mp4"), str(video_folder)], out, srv))
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'missing.mp4'}: no such file"
    assert "Traceback" not in res.stderr
    assert not (out / "annotations.jsonl").exists() and len(srv.requests) == 0


def test_manifests_globs_stdin_and_captions(runner, server, video_folder, tmp_path):
    manifest = tmp_path / "m.jsonl"
    rel = os.path.relpath(video_folder / "v1.mp4", tmp_path)
    manifest.write_text(
        json.dumps({"path": str(video_folder / "v0.mp4"), "caption": "a red square slides"}) + "\n"
        + "# a comment\n\n" + json.dumps({"path": rel}) + "\n"
    )  # fmt: skip
    text = tmp_path / "list.txt"
    text.write_text(f"{video_folder / 'v2.mp4'}\n{video_folder / 'v0.mp4'}\n")
    vids, problems = collect_inputs([str(manifest), str(text), str(video_folder / "*.mp4")])
    assert problems == []
    assert [v.path.name for v in vids] == ["v0.mp4", "v1.mp4", "v2.mp4"]  # de-duplicated, first caption wins
    assert vids[0].caption == "a red square slides" and vids[1].caption is None
    vids, problems = collect_inputs(["-"], stdin=io.StringIO(f"{video_folder / 'v1.mp4'}\n{{broken\n"))
    assert [v.path.name for v in vids] == ["v1.mp4"] and "<stdin>:2: not valid JSON" in str(problems[0])
    _, problems = collect_inputs([str(tmp_path / "nothing-*.mp4"), str(tmp_path)])
    assert "no video file matches this pattern" in str(problems[0])

    srv, _ = server()
    out = tmp_path / "out"
    line = json.dumps({"path": str(video_folder / "v1.mp4"), "caption": "from stdin"})
    res = runner.invoke(main, cli_args(["-"], out, srv), input=line + "\n")
    assert res.exit_code == 0, res.stderr
    (rec,) = records(out)
    assert rec["source_caption"] == "from stdin" and rec["source"].endswith("v1.mp4")
    out = tmp_path / "out2"
    res = runner.invoke(main, cli_args([str(manifest)], out, srv))
    assert res.exit_code == 0, res.stderr
    by_name = {r["source"].rsplit("/", 1)[-1]: r for r in records(out)}
    assert by_name["v0.mp4"]["source_caption"] == "a red square slides"
    assert by_name["v1.mp4"]["source_caption"] is None
    prompts = [b["messages"][1]["content"][-1]["text"] for b in srv.requests[-4:]]
    assert sum("a red square slides" in p for p in prompts) == 2


def test_clip_ids_are_stable_and_distinct():
    assert clip_id("/v/a.mp4", 0.0, 2.0) == clip_id("/v/a.mp4", 0.0, 2.0000001)
    assert len({clip_id("/v/a.mp4", 0.0, 2.0), clip_id("/v/b.mp4", 0.0, 2.0), clip_id("/v/a.mp4", 2.0, 4.0)}) == 3


def test_static_clips_are_skipped_not_failed(runner, server, tmp_path):

    folder = tmp_path / "still"
    # noise of +-2 levels on a flat picture: nothing changes
    rng = np.random.default_rng(0)

    def still(i):
        return np.clip(100 + rng.integers(-2, 3, (48, 64, 3)), 0, 255).astype(np.uint8)

    write_video(folder / "still.mp4", num_frames=72, frame_fn=still)
    srv, _ = server()
    out = tmp_path / "out"
    res = runner.invoke(main, cli_args([str(folder)], out, srv, "--no-skip-frozen"))
    assert res.exit_code == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips_static"] == 1 and summary["clips"] == 0 and summary["failures"] == 0
    assert len(srv.requests) == 0
    (video,) = list(read_jsonl(out / "videos.jsonl"))
    assert video["static"] == 1


def test_reply_kept_raw_for_a_json_answer(runner, server, video_folder, tmp_path):
    srv, _ = server(default=lambda body: {"content": "```json\n" + as_json() + "\n```"})
    out = tmp_path / "out"
    assert runner.invoke(main, cli_args([str(video_folder / "v2.mp4")], out, srv)).exit_code == 0
    (rec,) = records(out)
    assert rec["transitions"][0]["raw"].startswith("```json")


def test_letterbox_is_cropped_and_frame_options_apply(runner, server, tmp_path):
    from tests.annotate.conftest import moving_square

    def boxed(i):
        img = moving_square(i)
        img[:8] = 0
        img[-8:] = 0
        return img

    write_video(tmp_path / "v" / "boxed.mp4", num_frames=72, frame_fn=boxed)
    srv, _ = server()
    out = tmp_path / "out"
    args = ["annotate", str(tmp_path / "v"), "--out-dir", str(out), "--base-url", srv.base_url, "--model", "m",
            "--sampling", "interval", "--interval", "1", "--frame-format", "jpeg", "--frame-size", "32"]  # fmt: skip
    res = runner.invoke(main, args)  # default clip analysis: cuts, black, frozen, borders
    assert res.exit_code == 0, res.stderr
    (rec,) = records(out)
    assert rec["crop"] == [0, 8, 64, 40]
    assert (rec["width"], rec["height"]) == (32, 16)
    from PIL import Image

    for f in rec["frames"]:
        assert f["path"].endswith(".jpg")
        with Image.open(out / f["path"]) as im:
            assert im.size == (32, 16) and im.format == "JPEG"
            assert np.asarray(im.convert("L")).min() > 40  # no black bar left
