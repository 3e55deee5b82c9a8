"""Story keyframes (paper appendix E.3): a multi-turn session whose prompts are story transitions, shown as a
contact sheet (PNG) and an animated GIF.

The keyframes are the session's turn images; the first tile / frame is the first input as the model saw it
(after preprocessing), so every tile has the same size.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vincie_cli.utils.io import BadInputError, atomic_path

SHEET_FILE = "contact_sheet.png"
GIF_FILE = "story.gif"
_BG = (255, 255, 255)
_FG = (20, 20, 20)
_GAP = 6


def read_prompt_file(path: str | os.PathLike) -> list[str]:
    """One prompt per non-empty line; lines starting with '#' are comments."""
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{p}: no such prompts file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise BadInputError(f"{p}: not a UTF-8 text file (one prompt per line)") from None
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise BadInputError(f"{p}: holds no prompts (one per line)")
    return prompts


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def contact_sheet(
    frames: list[Image.Image], captions: list[str], out: str | os.PathLike, columns: int = 4
) -> tuple[int, int]:
    """Tile `frames` (same size) in a grid with a wrapped caption under each; write PNG `out`. Returns (W, H)."""
    if not frames:
        raise ValueError("no frames for the contact sheet")
    if columns < 1:
        raise BadInputError(f"columns must be >= 1, got {columns}")
    w, h = frames[0].size
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    char_w = max(1, probe.textlength("M", font=font))
    wrap = max(4, int(w // char_w))
    bbox = probe.textbbox((0, 0), "Hg", font=font)
    line_h = bbox[3] - bbox[1] + 2
    lines = [textwrap.wrap(c, wrap)[:4] or [""] for c in captions]
    cap_h = line_h * max(len(x) for x in lines) + _GAP
    cols = min(columns, len(frames))
    rows = -(-len(frames) // cols)
    sheet = Image.new("RGB", (cols * (w + _GAP) + _GAP, rows * (h + cap_h + _GAP) + _GAP), _BG)
    draw = ImageDraw.Draw(sheet)
    for i, (frame, text) in enumerate(zip(frames, lines)):
        if frame.size != (w, h):
            frame = frame.resize((w, h), Image.Resampling.BICUBIC)
        x0 = _GAP + (i % cols) * (w + _GAP)
        y0 = _GAP + (i // cols) * (h + cap_h + _GAP)
        sheet.paste(frame.convert("RGB"), (x0, y0))
        for j, line in enumerate(text):
            draw.text((x0, y0 + h + 2 + j * line_h), line, fill=_FG, font=font)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return sheet.size


def animated_gif(frames: list[Image.Image], out: str | os.PathLike, frame_ms: int = 800) -> int:
    """Write the frames as a looping GIF (`frame_ms` per frame); returns the number of frames."""
    if not frames:
        raise ValueError("no frames for the GIF")
    if frame_ms < 10:
        raise BadInputError(f"GIF frame duration must be >= 10 ms, got {frame_ms}")
    size = frames[0].size
    rgb = [f.convert("RGB") if f.size == size else f.convert("RGB").resize(size) for f in frames]
    with atomic_path(out) as tmp:
        rgb[0].save(tmp, format="GIF", save_all=True, append_images=rgb[1:], duration=frame_ms, loop=0, disposal=1)
    return len(rgb)


def story_outputs(session, columns: int = 4, frame_ms: int = 800) -> dict[str, str]:
    """Contact sheet and GIF of an `EditSession` (first input + every turn image). Returns their paths."""
    from vincie_cli.model.images import postprocess

    first = Image.fromarray(np.ascontiguousarray(postprocess(session.inputs.tensors[0].float())), mode="RGB")
    frames = [first] + [Image.open(session.out_dir / t["image"]).convert("RGB") for t in session.turns]
    captions = ["(start)"] + [f"{t['turn']}. {t['prompt']}" for t in session.turns]
    sheet = session.out_dir / SHEET_FILE
    gif = session.out_dir / GIF_FILE
    contact_sheet(frames, captions, sheet, columns)
    animated_gif(frames, gif, frame_ms)
    return {"contact_sheet": str(sheet), "gif": str(gif)}
