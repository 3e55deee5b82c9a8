"""`vincie edit`: multi-turn in-context editing sessions (resume, branch, context window, chain-of-editing,
mask and drag control, multi-image composition, batch manifests). Library code is imported inside the command."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from vincie_cli.cli._common import EXIT_PARTIAL, emit, handle_errors
from vincie_cli.utils.io import UsageError

# option name -> EditSettings field, for options that become settings (all default to None = "not given")
SETTING_OPTIONS = {
    "steps": "steps",
    "guidance": "guidance",
    "rescale": "rescale",
    "partial": "partial",
    "shift": "shift",
    "seed": "seed",
    "resolution": "resolution",
    "aspect": "aspect",
    "fit": "fit",
    "negative": "negative",
    "negative_prompt": "negative_prompt",
    "camera_prefix": "camera_prefix",
    "template": "template",
    "precision": "precision",
    "vae_precision": "vae_precision",
    "attention": "attention",
    "device": "device",
    "text_device": "text_device",
    "offload_text": "offload_text",
    "roundtrip": "roundtrip",
    "batched_cfg": "batched_cfg",
    "compile": "compile",
    "compile_backend": "compile_backend",
    "posterior": "posterior",
    "noise_device": "noise_device",
    "context": "context",
    "chain": "chain",
    "keep_outside": "keep_outside",
    "max_input_pixels": "max_input_pixels",
}


def session_options(fn: Any) -> Any:
    """Every option of an editing session (shared by `edit` and `story`); settings default to the reference."""
    opts = [
        click.option("-p", "--prompt", "prompts", multiple=True, help="An editing instruction, one per turn (repeat)."),
        click.option(
            "--prompts",
            "prompts_file",
            type=click.Path(path_type=Path),
            default=None,
            help="A text file with one instruction per line (after any -p).",
        ),
        click.option(
            "--model",
            default=None,
            help="Model folder (the release's VINCIE-3B, or from `vincie convert` / `vincie train`), hub id, or "
            "`mini` (the packaged model) [default: the session's model on --resume, else the packaged model].",
        ),
        click.option(
            "-o",
            "--out-dir",
            type=click.Path(path_type=Path),
            default=None,
            help="Session folder [default: a new folder under ./edits (./stories for story); the session's own "
            "folder on --resume].",
        ),
        click.option(
            "--resume",
            type=click.Path(path_type=Path),
            default=None,
            help="Continue a session (its session.json or folder) with the new -p turns.",
        ),
        click.option(
            "--from-turn",
            type=int,
            default=None,
            help="With --resume: branch after turn K (0 = from the inputs) into --out-dir, keeping turns 1..K.",
        ),
        click.option("--context", type=int, default=None, help="Past turns kept in context [default: all]."),
        click.option(
            "--chain",
            default=None,
            metavar="current,next",
            help="Chain-of-editing: predict the current and/or next change mask before each image (saved as PNGs).",
        ),
        click.option(
            "--mask",
            type=click.Path(path_type=Path),
            default=None,
            help="Next-frame mask (white = where the edited content goes) for the one new turn; the size of the "
            "edited images or of the first input.",
        ),
        click.option(
            "--current-mask",
            type=click.Path(path_type=Path),
            default=None,
            help="Current-frame mask (white = what the edit changes) for the one new turn, instead of the model's "
            "prediction; the size of the edited images or of the first input.",
        ),
        click.option(
            "--drag",
            default=None,
            metavar="DX,DY[,SCALE[,ANGLE]]",
            help="Predict the current change mask, move it (pixels of the edited image; scale and counter-clockwise "
            "degrees about its centre) to make the next mask, then edit; for the one new turn.",
        ),
        click.option(
            "--keep-outside",
            type=int,
            default=None,
            metavar="PIXELS",
            help="Outside the turn's change masks (grown by PIXELS) the edited image keeps the turn's input "
            "pixels exactly; needs --chain, --mask, --current-mask or --drag.",
        ),
        click.option(
            "--fit",
            type=click.Choice(["pad", "crop", "stretch"]),
            default=None,
            help="How inputs 2.. take the first input's frame: pad (letterbox, default), crop (fill), stretch "
            "(the release: resize, distorting other aspect ratios).",
        ),
        click.option("--steps", type=int, default=None, help="Sampling steps [50]."),
        click.option("--guidance", type=float, default=None, help="Classifier-free guidance scale [7.5]."),
        click.option("--rescale", type=float, default=None, help="Guidance rescale in [0, 1] [0]."),
        click.option("--partial", type=float, default=None, help="Fraction of steps that are guided [1.0]."),
        click.option("--shift", type=float, default=None, help="Timestep shift of the sampling grid [12]."),
        click.option("--seed", type=int, default=None, help="Session seed, the same for every round [1]."),
        click.option("--resolution", type=int, default=None, help="Target pixel area, resolution² [256]."),
        click.option(
            "--aspect", default=None, help="keep_ratio (default), adaptive, or a crop ratio 16:9, 4:3, 1:1, 3:4, 9:16."
        ),
        click.option(
            "--negative",
            type=click.Choice(["auto", "prompt", "empty"]),
            default=None,
            help="Guidance's negative branch: a negative prompt (the release), empty texts (models from "
            "`vincie train`), or auto (default: by the model).",
        ),
        click.option("--negative-prompt", default=None, help="Negative prompt [ours; see docs/editing.md]."),
        click.option(
            "--negative-prompt-file",
            type=click.Path(path_type=Path),
            default=None,
            help="Read the negative prompt from a file (the release's exact text is recognised).",
        ),
        click.option("--camera-prefix", default=None, help="Text put in front of every instruction (release: empty)."),
        click.option(
            "--template/--no-template",
            default=None,
            help="Wrap prompts in 'Based on <IMGi>, ... Output <IMGj>: ' [on]; off sends them verbatim.",
        ),
        click.option(
            "--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None, help="DiT dtype [fp32]."
        ),
        click.option(
            "--vae-precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None, help="VAE dtype [bf16]."
        ),
        click.option(
            "--attention",
            type=click.Choice(["bf16", "fp32"]),
            default=None,
            help="bf16: the release's q/k/v rounding (default); fp32: full precision.",
        ),
        click.option("--device", default=None, help="Torch device: auto (default), cpu, cuda, cuda:1, ..."),
        click.option("--text-device", default=None, help="Device of the text encoder [--device], e.g. cpu."),
        click.option(
            "--offload-text/--no-offload-text",
            default=None,
            help="Move the text encoder to the CPU once the session's prompts are encoded.",
        ),
        click.option(
            "--roundtrip",
            type=click.Choice(["latent", "png"]),
            default=None,
            help="Carry context between turns as latents (default) or as PNGs re-encoded each round (the release).",
        ),
        click.option(
            "--batched-cfg/--no-batched-cfg", default=None, help="Both guidance passes in one batched forward."
        ),
        click.option("--compile/--no-compile", default=None, help="torch.compile the transformer."),
        click.option("--compile-backend", default=None, help="torch.compile backend [inductor]."),
        click.option(
            "--posterior",
            type=click.Choice(["mean", "sample"]),
            default=None,
            help="VAE posterior: mean (default, deterministic) or a seeded sample.",
        ),
        click.option(
            "--noise-device",
            type=click.Choice(["device", "cpu"]),
            default=None,
            help="Generator of the initial noise: the compute device's (default, as the release) or the CPU's.",
        ),
        click.option("--max-input-pixels", type=int, default=None, help="Refuse larger input images [64000000]."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def collect_settings(kw: dict[str, Any]) -> dict[str, Any]:
    """The setting overrides the user actually gave (None means 'not given')."""
    out = {SETTING_OPTIONS[k]: v for k, v in kw.items() if k in SETTING_OPTIONS and v is not None}
    neg_file = kw.get("negative_prompt_file")
    if neg_file is not None:
        if "negative_prompt" in out:
            raise UsageError("pass --negative-prompt or --negative-prompt-file, not both")
        try:
            out["negative_prompt"] = Path(neg_file).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--negative-prompt-file {neg_file}: cannot read it ({e})") from None
    return out


def collect_prompts(prompts: tuple[str, ...], prompts_file: Path | None) -> list[str]:
    from vincie_cli.edit.story import read_prompt_file

    out = list(prompts)
    if prompts_file is not None:
        out += read_prompt_file(prompts_file)
    return out


def _turn_record(rec: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    line = {
        "type": "edit_turn",
        "session": str(out_dir),
        "turn": rec["turn"],
        "prompt": rec["prompt"],
        "image": str(out_dir / rec["image"]),
        "masks": {k: str(out_dir / v) for k, v in rec["masks"].items()},
        "seed": rec["seed"],
        "size": rec["size"],
        "sha256": rec["sha256"],
        "seconds": rec["seconds"]["total"],
    }
    if rec.get("kept_outside") is not None:
        line["kept_outside"] = rec["kept_outside"]
    if "matches" in rec:
        line["matches_recorded"] = rec["matches"]
    return line


def run_session_command(kw: dict[str, Any], images: tuple[Path, ...], default_root: str) -> Any:
    """The shared body of `edit` and `story`: returns the EditSession that ran (None in manifest/replay mode)."""
    from vincie_cli.edit.models import default_model_path, is_synthetic_world_scene, load_model, with_model_defaults
    from vincie_cli.edit.session import EditSession, check_prompts, read_session, session_path
    from vincie_cli.edit.settings import EditSettings, TurnControl

    overrides = collect_settings(kw)
    prompts = collect_prompts(kw["prompts"], kw["prompts_file"])
    resume, from_turn, out_dir = kw["resume"], kw["from_turn"], kw["out_dir"]
    if from_turn is not None and resume is None:
        raise UsageError("--from-turn needs --resume SESSION")
    one_turn = (kw["mask"], kw["drag"], kw["current_mask"])
    if any(v is not None for v in one_turn) and len(prompts) != 1:
        raise UsageError(
            "--mask, --current-mask and --drag control one turn: give exactly one -p (add more turns with --resume)"
        )
    control = TurnControl(
        str(kw["mask"]) if kw["mask"] is not None else None,
        kw["drag"],
        str(kw["current_mask"]) if kw["current_mask"] is not None else None,
    )

    if resume is not None:
        if images:
            raise UsageError("--resume continues a recorded session; do not pass IMAGE arguments")
        if not prompts:
            raise UsageError("--resume needs at least one new -p PROMPT")
        path = session_path(resume)
        record = read_session(path)
        settings = EditSettings.from_dict(overrides, base=EditSettings.from_dict(record["settings"]))
        spec = kw["model"] or record["model"].get("path")
        if spec is None:
            raise UsageError(f"{path} does not name a model folder; pass --model")
        if out_dir is None and from_turn is not None and from_turn < len(record["turns"]):
            out_dir = path.parent.with_name(f"{path.parent.name}-from{from_turn}")
        model = load_model(spec, settings)
        sess = EditSession.open(model, path, overrides, out_dir, from_turn)
    else:
        if not images:
            raise UsageError("give at least one IMAGE (or --resume SESSION, --replay SESSION, --manifest FILE)")
        if not prompts:
            raise UsageError("give at least one instruction with -p PROMPT (or --prompts FILE)")
        settings = EditSettings.from_dict(overrides)
        check_prompts(prompts, settings.camera_prefix)
        spec = kw["model"]
        if spec is None:
            spec = default_model_path()
            strangers = [str(p) for p in images if not is_synthetic_world_scene(p)]
            if strangers:
                raise UsageError(
                    f"{strangers[0]}: no --model given, and the packaged mini model only knows synthetic-world "
                    "scenes (`vincie synth`); for other images pass the released weights, e.g. --model "
                    "path/to/VINCIE-3B (download ByteDance-Seed/VINCIE-3B from Hugging Face) or a folder "
                    "written by `vincie convert` / `vincie train`"
                )
        if out_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out_dir = Path(default_root) / f"{Path(images[0]).stem}-{stamp}"
        from vincie_cli.edit.compose import prepare_inputs

        prepare_inputs(list(images), settings)  # bad images fail before the model loads
        model = load_model(spec, settings)
        settings = with_model_defaults(settings, overrides, model)
        sess = EditSession.create(model, list(images), out_dir, settings)
    out = sess.out_dir
    controls = [control] if len(prompts) == 1 else None
    sess.run(prompts, controls, on_turn=lambda rec: emit(_turn_record(rec, out)))
    return sess


def _run_manifest(kw: dict[str, Any], manifest: Path, keep_going: bool) -> int:
    from vincie_cli.edit.batch import read_manifest, run_sessions

    if kw["prompts"] or kw["prompts_file"] or kw["resume"] or kw["mask"] or kw["drag"]:
        raise UsageError(
            "--manifest takes the sessions from the file; do not pass -p, --prompts, --resume, --mask or --drag"
        )
    overrides = collect_settings(kw)
    sessions = read_manifest(manifest)
    out_root = kw["out_dir"] or Path("edits")
    results = run_sessions(
        kw["model"],
        sessions,
        out_root,
        overrides,
        keep_going=keep_going,
        on_turn=lambda rec: emit({**_turn_record(rec, Path(rec["dir"])), "session_id": rec["session"]}),
        on_session=lambda r: emit({"type": "edit_session", **r}),
    )
    return EXIT_PARTIAL if any(r["status"] == "failed" for r in results) else 0


def _run_replay(kw: dict[str, Any], session: Path) -> None:
    from vincie_cli.edit.models import load_model
    from vincie_cli.edit.session import read_session, replay, session_path
    from vincie_cli.edit.settings import EditSettings

    if kw["prompts"] or kw["prompts_file"] or kw["resume"]:
        raise UsageError("--replay re-runs a recorded session as it is; do not pass -p, --prompts or --resume")
    path = session_path(session)
    record = read_session(path)
    overrides = collect_settings(kw)
    settings = EditSettings.from_dict(overrides, base=EditSettings.from_dict(record["settings"]))
    spec = kw["model"] or record["model"].get("path")
    if spec is None:
        raise UsageError(f"{path} does not name a model folder; pass --model")
    out = kw["out_dir"] or path.parent.with_name(f"{path.parent.name}-replay")
    model = load_model(spec, settings)
    results = replay(model, path, out, overrides, on_turn=lambda rec: emit(_turn_record(rec, Path(out))))
    emit(
        {
            "type": "edit_replay",
            "session": str(out),
            "replayed": str(path),
            "turns": len(results),
            "identical": sum(bool(r["matches"]) for r in results),
        }
    )


EPILOG = """\b
Examples:
  vincie edit photo.jpg -p "add a red hat" -p "make it snow" --model ckpt/VINCIE-3B -o out/hat
  vincie edit --resume out/hat/session.json -p "turn the hat blue" --chain current,next
  vincie edit --resume out/hat --from-turn 1 -p "remove the hat" --drag 40,0 -o out/hat-b
  vincie edit scene.png dog.png -p "put <IMG1> on the sofa of <IMG0>" --fit pad --model ckpt/VINCIE-3B
  vincie edit --manifest sessions.jsonl -o out/bench --model ckpt/VINCIE-3B --batched-cfg
"""


@click.command("edit", epilog=EPILOG)
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@session_options
@click.option(
    "--manifest",
    type=click.Path(path_type=Path),
    default=None,
    help="Batch mode: a JSON-lines file of sessions {id, images, prompts[, seed]}; outputs in OUT_DIR/<id>/.",
)
@click.option("--keep-going", is_flag=True, help="Batch mode: record failing sessions and continue (exit code 3).")
@click.option(
    "--replay",
    type=click.Path(path_type=Path),
    default=None,
    help="Re-run a recorded session from its inputs and settings, reporting whether each image is identical.",
)
@handle_errors
def edit(images: tuple[Path, ...], manifest: Path | None, keep_going: bool, replay: Path | None, **kw: Any) -> None:
    """Edit IMAGE(s) over several turns: every turn sees the whole session so far.

    Writes one PNG per turn and a session.json (model identity, prompts, seeds, settings, timings) into the
    session folder, and one JSON line per turn on stdout. With several IMAGEs, refer to them as <IMG0>,
    <IMG1>, ... in the first prompt (multi-concept composition).
    """
    import sys

    if manifest is not None:
        if images or replay is not None:
            raise UsageError("--manifest runs the file's sessions; do not pass IMAGE arguments or --replay")
        sys.exit(_run_manifest(kw, manifest, keep_going))
    if replay is not None:
        if images:
            raise UsageError("--replay takes the images from the session; do not pass IMAGE arguments")
        _run_replay(kw, replay)
        return
    run_session_command(kw, images, "edits")
