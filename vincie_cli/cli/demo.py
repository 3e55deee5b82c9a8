"""`vincie demo`: the whole path on one machine, from generated videos to scored multi-turn edits.

Every stage runs as the real command in a child process (`python -m vincie_cli <stage> ...`), so the demo
does exactly what a user's shell script would; each stage's stdout (JSON lines) is kept in
OUT/logs/<stage>.jsonl and its stderr in OUT/logs/<stage>.log. Stages resume, so a re-run after a crash
redoes only what is missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from vincie_cli.cli._common import emit, handle_errors

EPILOG = """\b
Examples:
  vincie demo                                 # everything in ./demo-run (a few minutes on 2 cores)
  vincie demo --out-dir /tmp/d --videos 40 --train-steps 300 --sessions 20
"""


def _run(stage: str, args: list[str], logs: Path) -> list[dict[str, Any]]:
    """Run `vincie <stage> args...` as a child process; return its JSON lines; raise on failure."""
    from vincie_cli.utils.io import VincieError

    logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "vincie_cli", "--quiet", stage, *args]
    click.echo(f"[demo] vincie {stage} {' '.join(args)}", err=True)
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    (logs / f"{stage}.jsonl").write_text(proc.stdout)
    (logs / f"{stage}.log").write_text(proc.stderr)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise VincieError(f"demo stage `{stage}` failed (exit {proc.returncode}): {last}; see {logs / stage}.log")
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    click.echo(f"[demo]   done in {time.time() - t0:.1f} s, {len(records)} records", err=True)
    return records


@click.command("demo", epilog=EPILOG)
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("demo-run"), show_default=True)
@click.option("--videos", type=int, default=12, show_default=True, help="Synthetic training videos to make.")
@click.option("--train-steps", type=int, default=120, show_default=True, help="Steps of the short `tiny` training.")
@click.option("--sessions", type=int, default=6, show_default=True, help="Held-out sessions to edit and score.")
@click.option("--turns", type=int, default=5, show_default=True, help="Turns per held-out session.")
@click.option("--steps", type=int, default=None, help="Sampling steps per edited turn [default: the model's own].")
@click.option("--model", default=None, help="Model that edits the held-out sessions [default: the packaged mini].")
@click.option("--seed", type=int, default=0, show_default=True, help="First synthetic video seed.")
@handle_errors
def demo(
    out_dir: Path,
    videos: int,
    train_steps: int,
    sessions: int,
    turns: int,
    steps: int | None,
    model: str | None,
    seed: int,
) -> None:
    """Videos → annotate → segment → build-sessions → train → edit → eval, on the synthetic world.

    Makes synthetic videos, annotates and segments them with the oracle backends, packs training sessions,
    trains the `tiny` recipe for a few steps (to show training works end to end), then edits held-out
    sessions with the packaged `mini` model (trained the same way, for longer) and scores every turn with
    the synthetic world's objective scorer. Every artifact stays in --out-dir; one JSON line per stage on
    stdout and a final per-turn table on stderr.
    """
    from vincie_cli.edit.models import default_model_path
    from vincie_cli.utils.io import UsageError

    for name, value in (("--videos", videos), ("--train-steps", train_steps), ("--sessions", sessions)):
        if value < 1:
            raise UsageError(f"{name} must be at least 1")
    if not 1 <= turns <= 10:
        raise UsageError("--turns must be between 1 and 10")
    editor = model or str(default_model_path())
    out = out_dir.resolve()
    logs = out / "logs"
    from vincie_cli.train.recipe import find_recipe

    recipe = find_recipe("tiny")  # the packaged one: works from a wheel install too

    def stage(name: str, **summary: Any) -> None:
        emit({"type": "demo_stage", "stage": name, **summary})

    recs = _run(
        "synth", [str(out / "videos"), "--videos", str(videos), "--seed", str(seed), "--size", "64x64",
                  "--duration", "6"], logs,
    )  # fmt: skip
    stage("synth", videos=len(recs), dir=str(out / "videos"))
    _run(
        "annotate", [str(out / "videos"), "--out-dir", str(out / "annotations"), "--backend", "oracle",
                     "--cuts", "none", "--no-skip-frozen", "--sampling", "interval", "--interval", "1"], logs,
    )  # fmt: skip
    clips = list((out / "annotations").glob("annotations*.jsonl"))
    n_pairs = sum(len(json.loads(line)["transitions"]) for f in clips for line in f.read_text().splitlines() if line)
    stage("annotate", transitions=n_pairs, dir=str(out / "annotations"))
    _run("segment", [str(out / "annotations"), "--out-dir", str(out / "segments"), "--backend", "oracle"], logs)
    stage("segment", dir=str(out / "segments"))
    _run("build-sessions", [str(out / "segments"), "--out-dir", str(out / "sessions"), "--val-fraction", "0"], logs)
    stats = json.loads((out / "sessions" / "stats.json").read_text())
    stage("build-sessions", sessions=stats["sessions"], turns=stats["turns"], dir=str(out / "sessions"))
    resume = ["--resume"] if (out / "train" / "latest").exists() else []
    events = _run(
        "train", [str(recipe), "--out-dir", str(out / "train"), "--set", f"data.sources=[{out / 'sessions'}]",
                  "--set", f"train.max_steps={train_steps}", "--set", f"train.checkpoint_every={train_steps}",
                  *resume], logs,
    )  # fmt: skip
    losses = [e["loss"] for e in events if e.get("event") == "step" and "loss" in e]
    first, last = (losses[0], losses[-1]) if losses else (None, None)
    stage("train", steps=train_steps, first_loss=first, last_loss=last, dir=str(out / "train"))
    gen = ["--gen-set", f"steps={steps}"] if steps is not None else []  # else the model's recommended settings
    _run(
        "eval", ["synthetic", "-o", str(out / "eval"), "--model", editor, "--sessions", str(sessions), "--size", "64",
                 "--turns", str(turns), *gen, "--device", "cpu"], logs,
    )  # fmt: skip
    report = json.loads((out / "eval" / "report.json").read_text())
    stage("eval", model=editor, report=str(out / "eval" / "report.json"), metrics=report.get("metrics"))
    md = out / "eval" / "report.md"
    if md.is_file():
        click.echo(md.read_text(), err=True)
    click.echo(f"[demo] everything is in {out}", err=True)
