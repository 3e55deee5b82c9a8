"""`vincie story`: story keyframes as a multi-turn editing session, with a contact sheet and an animated GIF."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vincie_cli.cli._common import emit, handle_errors
from vincie_cli.cli.edit import run_session_command, session_options

EPILOG = """\b
Examples:
  vincie story hero.png --prompts story.txt --model ckpt/VINCIE-3B -o out/story
  vincie story hero.png -p "she opens the door" -p "she walks into the garden" --gif-ms 600
  vincie story --resume out/story -p "night falls over the garden" --columns 3
"""


@click.command("story", epilog=EPILOG)
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@session_options
@click.option("--columns", type=int, default=4, show_default=True, help="Tiles per row of the contact sheet.")
@click.option("--gif-ms", type=int, default=800, show_default=True, help="Milliseconds per GIF frame.")
@handle_errors
def story(images: tuple[Path, ...], columns: int, gif_ms: int, **kw: Any) -> None:
    """Story keyframes from FIRST_IMAGE: one transition per prompt (--prompts FILE, one per line, or -p repeated).

    Every keyframe sees the whole story so far. Writes turn{k}.png keyframes, contact_sheet.png, story.gif and
    session.json into the session folder; one JSON line per keyframe and a final "story" line on stdout.
    Takes every session option of `vincie edit` (resume, branch, context, chain, precision, speed).
    """
    from vincie_cli.edit.story import story_outputs
    from vincie_cli.utils.io import UsageError

    if columns < 1 or gif_ms < 10:
        raise UsageError("--columns must be >= 1 and --gif-ms >= 10")
    sess = run_session_command(kw, images, "stories")
    outputs = story_outputs(sess, columns=columns, frame_ms=gif_ms)
    emit(
        {
            "type": "story",
            "session": str(sess.out_dir),
            "keyframes": [str(sess.out_dir / t["image"]) for t in sess.turns],
            **outputs,
        }
    )
