"""The `vincie` command group: one explicit table of subcommands, each imported only when used.

Command modules import nothing heavy at module level (no torch), so `vincie --help` is instant.
Register a command by adding one line to COMMANDS: name -> (module, function).
"""

from __future__ import annotations

import importlib

import click

from vincie_cli import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module under vincie_cli.cli, click command object)
    "annotate": ("annotate", "annotate"),
    "eval": ("eval", "eval_group"),
    "segment": ("segment", "segment"),
    "build-sessions": ("build_sessions", "build_sessions"),
    "synth": ("synth", "synth"),
    "convert": ("convert", "convert"),
    "edit": ("edit", "edit"),
    "story": ("story", "story"),
    "train": ("train", "train"),
    "demo": ("demo", "demo"),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use, in COMMANDS order."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(f"vincie_cli.cli.{module}"), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vincie")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Log level on stderr; 'debug' also shows tracebacks for expected errors.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr, no progress bars.")
@click.pass_context
def main(ctx: click.Context, log_level: str, quiet: bool) -> None:
    """Learn multi-turn, in-context image editing from videos (VINCIE).

    \b
    videos ─annotate─► transitions ─segment─► masks ─build-sessions─► shards ─train─► checkpoint
    checkpoint + image + prompts ─edit / story─► per-turn images;  ─eval─► scores

    stdout carries one JSON line per produced item; logs and progress go to stderr.
    """
    from vincie_cli.utils.log import setup_logging

    setup_logging(log_level, quiet)
    ctx.ensure_object(dict)
    ctx.obj["debug"] = log_level == "debug"
