"""`vincie edit` and `vincie story` on the command line: outputs, JSON lines, sessions, control, batch,
replay, and one clear line plus a non-zero exit code for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO
from tests.edit.conftest import jsonl, make_image
from vincie_cli.cli import main
from vincie_cli.edit.session import read_session
from vincie_cli.utils.io import sha256_file

FAST = ["--steps", "2", "--resolution", "64", "--device", "cpu"]


def _edit(runner, *args):
    return runner.invoke(main, ["edit", *map(str, args)])


def _ok(r):
    assert r.exit_code == 0, r.stderr
    assert "Traceback" not in r.stderr
    return jsonl(r.stdout)


def test_edit_writes_turns_and_json_lines(runner, model_dir, image, tmp_path):
    out = tmp_path / "s"
    lines = _ok(_edit(runner, image, "-p", "add a hat", "-p", "make it blue", "--model", model_dir, "-o", out, *FAST))
    assert [ln["type"] for ln in lines] == ["edit_turn", "edit_turn"] and [ln["turn"] for ln in lines] == [1, 2]
    for ln in lines:
        assert Image.open(ln["image"]).size == (64, 48) and ln["sha256"] == sha256_file(ln["image"])
        assert ln["session"] == str(out) and ln["size"] == [64, 48] and ln["seed"] == 1
    rec = read_session(out / "session.json")
    assert rec["model"]["path"] == str(model_dir) and rec["settings"]["steps"] == 2


def test_resume_and_branch_on_the_command_line(runner, model_dir, image, tmp_path):
    args = [*FAST, "--roundtrip", "png", "--model", model_dir]
    _ok(_edit(runner, image, "-p", "a", "-p", "b", "-p", "c", "-o", tmp_path / "once", *args))
    _ok(_edit(runner, image, "-p", "a", "-p", "b", "-o", tmp_path / "twice", *args))
    lines = _ok(_edit(runner, "--resume", tmp_path / "twice" / "session.json", "-p", "c"))  # model from the session
    assert lines[0]["turn"] == 3
    for k in (1, 2, 3):
        assert sha256_file(tmp_path / "once" / f"turn{k}.png") == sha256_file(tmp_path / "twice" / f"turn{k}.png")
    lines = _ok(_edit(runner, "--resume", tmp_path / "once", "--from-turn", "1", "-p", "other"))
    branch = tmp_path / "once-from1"
    assert lines[0]["session"] == str(branch) and read_session(branch / "session.json")["parent"]["from_turn"] == 1
    r = _edit(runner, "--resume", tmp_path / "once", "--resolution", "128", "-p", "x")
    assert r.exit_code == 2 and "cannot change on --resume: resolution 64 -> 128" in r.stderr


def test_chain_mask_and_drag_options(runner, model_dir, image, tmp_path):
    base = ["--model", model_dir, *FAST]
    lines = _ok(_edit(runner, image, "-p", "add a lamp", "--chain", "current,next", "-o", tmp_path / "c", *base))
    assert set(lines[0]["masks"]) == {"current", "next"}
    m = np.zeros((48, 64), np.uint8)
    m[5:20, 5:30] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    lines = _ok(_edit(runner, image, "-p", "add a lamp", "--mask", tmp_path / "m.png", "-o", tmp_path / "m", *base))
    assert list(lines[0]["masks"]) == ["next"]
    lines = _ok(_edit(runner, image, "-p", "move it", "--drag", "4,0", "--seed", "2", "-o", tmp_path / "d", *base))
    assert set(lines[0]["masks"]) == {"current", "next"}
    r = _edit(runner, image, "-p", "a", "-p", "b", "--mask", tmp_path / "m.png", "-o", tmp_path / "x", *base)
    assert r.exit_code == 2 and "--mask, --current-mask and --drag control one turn" in r.stderr
    args = ["-p", "remove it", "--current-mask", tmp_path / "m.png", "--mask", tmp_path / "m.png"]
    lines = _ok(_edit(runner, image, *args, "-o", tmp_path / "cm", *base))
    assert set(lines[0]["masks"]) == {"current", "next"}
    assert json.loads((tmp_path / "cm" / "session.json").read_text())["turns"][0]["dit_calls"] == 2 * 2  # image only
    Image.fromarray(m[:30, :30]).save(tmp_path / "small_mask.png")
    r = _edit(runner, image, "-p", "a", "--mask", tmp_path / "small_mask.png", "-o", tmp_path / "y", *base)
    assert r.exit_code == 1 and "small_mask.png: mask is 30x30 px; expected 64x48" in r.stderr
    assert not (tmp_path / "y").exists()
    r = _edit(runner, image, "-p", "a", "--chain", "previous", "-o", tmp_path / "z", *base)
    assert r.exit_code == 2 and "--chain: unknown step(s) 'previous'" in r.stderr
    args = ["-p", "add a lamp", "--mask", tmp_path / "m.png", "--keep-outside", "1", "-o", tmp_path / "k", *base]
    lines = _ok(_edit(runner, image, *args))
    assert lines[0]["kept_outside"] == pytest.approx(1 - (17 * 27) / (48 * 64), abs=1e-4)  # 15x25 grown by 1
    r = _edit(runner, image, "-p", "a", "--keep-outside", "1", "-o", tmp_path / "n", *base)
    assert r.exit_code == 2 and "this turn has none: add --chain current,next" in r.stderr
    assert not (tmp_path / "n" / "turn1.png").exists()


def test_multi_image_and_exif_rotated_input(runner, model_dir, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(make_image(tmp_path / "a.png", 64, 48)).save(tmp_path / "rot.jpg", exif=exif)
    other = make_image(tmp_path / "b.png", 30, 70, seed=1)
    lines = _ok(
        _edit(runner, tmp_path / "rot.jpg", other, "-p", "put <IMG1> next to <IMG0>", "--model", model_dir,
              "-o", tmp_path / "comp", *FAST)
    )  # fmt: skip
    assert Image.open(lines[0]["image"]).size == (48, 64)  # the rotated first image sets the frame
    assert read_session(tmp_path / "comp" / "session.json")["turns"][0]["texts"][0] == "<IMG1>: "


def test_story_writes_keyframes_sheet_and_gif(runner, model_dir, image, tmp_path):
    (tmp_path / "story.txt").write_text("# a short story\nthe sun rises\n\nbirds fly over the square\n")
    r = runner.invoke(
        main, ["story", str(image), "--prompts", str(tmp_path / "story.txt"), "--model", str(model_dir),
               "-o", str(tmp_path / "st"), "--columns", "2", "--gif-ms", "300", *FAST],
    )  # fmt: skip
    lines = _ok(r)
    assert [ln["type"] for ln in lines] == ["edit_turn", "edit_turn", "story"]
    story = lines[-1]
    assert story["keyframes"] == [str(tmp_path / "st" / "turn1.png"), str(tmp_path / "st" / "turn2.png")]
    gif = Image.open(story["gif"])
    assert gif.n_frames == 3 and gif.info["duration"] == 300 and gif.size == (64, 48)
    sheet = Image.open(story["contact_sheet"])
    assert sheet.size[0] == 2 * 64 + 3 * 6 and sheet.size[1] > 2 * 48  # 2 columns, 2 rows with captions
    assert [t["prompt"] for t in read_session(tmp_path / "st" / "session.json")["turns"]] == [
        "the sun rises",
        "birds fly over the square",
    ]
    lines = _ok(runner.invoke(main, ["story", "--resume", str(tmp_path / "st"), "-p", "night falls"]))
    assert Image.open(lines[-1]["gif"]).n_frames == 4


def test_manifest_and_replay(runner, model_dir, tmp_path):
    a = make_image(tmp_path / "a.png")
    (tmp_path / "m.jsonl").write_text(
        '{"id": "one", "images": ["a.png"], "prompts": ["add a hat", "make it red"]}\n'
        '{"id": "two", "images": ["missing.png"], "prompts": ["x"]}\n'
    )
    args = ["--manifest", tmp_path / "m.jsonl", "-o", tmp_path / "out", "--model", model_dir, *FAST]
    r = _edit(runner, *args, "--keep-going")
    assert r.exit_code == 3, r.stderr
    lines = jsonl(r.stdout)
    assert [(ln["type"], ln.get("session_id")) for ln in lines[:2]] == [("edit_turn", "one"), ("edit_turn", "one")]
    assert {(ln["id"], ln["status"]) for ln in lines if ln["type"] == "edit_session"} == {
        ("one", "done"),
        ("two", "failed"),
    }
    r = _edit(runner, *args)  # without --keep-going the first failure stops the run
    assert r.exit_code == 1 and "missing.png: no such image file" in r.stderr
    assert a.is_file()
    lines = _ok(_edit(runner, "--replay", tmp_path / "out" / "one", "-o", tmp_path / "re"))
    assert lines[-1] == {
        "type": "edit_replay",
        "session": str(tmp_path / "re"),
        "replayed": str(tmp_path / "out" / "one" / "session.json"),
        "turns": 2,
        "identical": 2,
    }


def test_official_negative_prompt_is_recognised(runner, model_dir, image, tmp_path):
    neg = REPO.parent / "shared" / "parity" / "text" / "negative_prompt.txt"
    if not neg.is_file():
        pytest.skip(f"no copy of the release's negative prompt at {neg}")
    _ok(
        _edit(
            runner, image, "-p", "a", "--negative-prompt-file", neg, "--model", model_dir, "-o", tmp_path / "s", *FAST
        )
    )
    turn = read_session(tmp_path / "s" / "session.json")["turns"][0]
    assert turn["negative_prompt_official"] is True and turn["negative_prompt"] == neg.read_text()


@pytest.mark.parametrize(
    "case, code, message",
    [
        ("not_image", 1, "notes.png: not an image file"),
        ("corrupt", 1, "corrupt.png: truncated or corrupt image"),
        ("too_small", 1, "tiny.png: image too small (10x10 px); need at least 16 px"),
        ("too_large", 1, "is 400x300 = 120000 pixels, more than the limit 1000"),
        ("empty_prompt", 2, "prompt 2 (turn 2) is empty"),
        ("too_many_turns", 2, "turn 65 would give the model 65 text segments"),
        ("no_model_dir", 1, "nowhere: no such model folder"),
        ("no_prompt", 2, "give at least one instruction with -p PROMPT"),
        ("bad_option", 2, "invalid edit settings: steps must be >= 1"),
        ("out_is_file", 2, "out: exists and is not a folder"),
        ("no_cuda", 2, "--device cuda: CUDA is not available on this machine"),
    ],
)
def test_bad_input_gives_one_clear_line(runner, model_dir, image, tmp_path, case, code, message):
    args = [image, "-p", "fine"]
    extra = []
    if case == "not_image":
        (tmp_path / "notes.png").write_text("hello")
        args = [tmp_path / "notes.png", "-p", "x"]
    elif case == "corrupt":
        (tmp_path / "corrupt.png").write_bytes(image.read_bytes()[:100])
        args = [tmp_path / "corrupt.png", "-p", "x"]
    elif case == "too_small":
        args = [make_image(tmp_path / "tiny.png", 10, 10), "-p", "x"]
    elif case == "too_large":
        args = [make_image(tmp_path / "big.png", 400, 300), "-p", "x"]
        extra = ["--max-input-pixels", "1000"]
    elif case == "empty_prompt":
        args = [image, "-p", "fine", "-p", "   "]
    elif case == "too_many_turns":
        args = [image] + [x for i in range(65) for x in ("-p", f"turn {i}")]
    elif case == "no_model_dir":
        extra = ["--model", tmp_path / "nowhere"]
    elif case == "no_prompt":
        args = [image]
    elif case == "bad_option":
        extra = ["--steps", "0"]
    elif case == "no_cuda":
        if __import__("torch").cuda.is_available():
            pytest.skip("this machine has CUDA")
        extra = ["--device", "cuda"]
    elif case == "out_is_file":
        (tmp_path / "out").write_text("a file")
    model = [] if case == "no_model_dir" else ["--model", model_dir]
    r = _edit(runner, *args, *model, "-o", tmp_path / "out", *FAST, *extra)
    assert r.exit_code == code, (r.stdout, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")
    assert case == "out_is_file" or not (tmp_path / "out").exists()  # a refused command leaves nothing behind


def test_without_model_the_message_says_how_to_get_one(runner, image, tmp_path, monkeypatch):
    from vincie_cli.edit import models

    monkeypatch.setattr(models, "PACKAGED_MODEL", tmp_path / "no-packaged-model")
    r = _edit(runner, image, "-p", "x", "-o", tmp_path / "out")
    assert r.exit_code == 2 and "no --model given" in r.stderr and "--model path/to/VINCIE-3B" in r.stderr


def test_help_has_examples(runner):
    for cmd in ("edit", "story"):
        r = runner.invoke(main, [cmd, "--help"])
        assert r.exit_code == 0 and "Examples:" in r.output and f"vincie {cmd}" in r.output
