"""Write docs/cli.md from the commands' own --help texts (a test checks that the file is current).

python tools/gen_cli_docs.py          # rewrite docs/cli.md
python tools/gen_cli_docs.py --check  # exit 1 if docs/cli.md is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vincie_cli.cli import main  # noqa: E402

HEADER = """# Command reference

Generated from `vincie --help` and each command's `--help` by `tools/gen_cli_docs.py`
(`make docs`); a test fails when this file and the commands disagree.

Exit codes of every command: `0` success, `1` failure (one line on stderr), `2` usage error,
`3` partial success under `--keep-going` (failures recorded), `130` interrupted.
stdout carries JSON lines only (one record per produced item, each with a `"type"`); logs and
progress bars go to stderr.
"""


def _help(cmd: click.Command, path: list[str]) -> str:
    ctx = click.Context(
        cmd, info_name=" ".join(path), terminal_width=100, max_content_width=100, help_option_names=["-h", "--help"]
    )
    return cmd.get_help(ctx)


def _walk(cmd: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    out = [(path, cmd)]
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd, info_name=path[-1])
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                out += _walk(sub, path + [name])
    return out


def render() -> str:
    parts = [HEADER]
    for path, cmd in _walk(main, ["vincie"]):
        title = " ".join(path)
        parts.append(f"\n## `{title}`\n\n```text\n{_help(cmd, path).rstrip()}\n```\n")
    return "".join(parts)


if __name__ == "__main__":
    target = ROOT / "docs" / "cli.md"
    text = render()
    if "--check" in sys.argv:
        if not target.exists() or target.read_text() != text:
            print("docs/cli.md is stale: run `make docs`", file=sys.stderr)
            sys.exit(1)
    else:
        target.write_text(text)
