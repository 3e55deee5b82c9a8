"""What every subcommand shares: JSON-line output, error handling and exit codes, common options.

Exit codes: 0 success; 1 runtime failure; 2 usage error; 3 partial success under --keep-going
(each failure was emitted as an "error" record); 130 interrupted.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from vincie_cli.utils.io import VincieError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130


def emit(record: dict[str, Any]) -> None:
    """Write one record as a JSON line on stdout and flush (records carry a "type" field)."""
    assert "type" in record, "every stdout record needs a 'type'"
    sys.stdout.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = EXIT_FAILURE) -> None:
    """Print one clear line on stderr and exit with `code`."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn: F) -> F:
    """Turn expected errors into one stderr line and an exit code (no traceback unless --log-level debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context(silent=True)
        debug = bool(ctx and ctx.find_root().obj and ctx.find_root().obj.get("debug"))
        try:
            return fn(*args, **kwargs)
        except VincieError as e:
            if debug:
                raise
            fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; finished work is kept, re-run to continue", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper  # type: ignore[return-value]


def shard_option(fn: F) -> F:
    return click.option(
        "--shard",
        default=None,
        metavar="I/N",
        help="Process only shard I of N (0-based) of the inputs; shards never overlap.",
    )(fn)


def keep_going_option(fn: F) -> F:
    return click.option(
        "--keep-going",
        is_flag=True,
        help="Record failures in failures.jsonl and continue; exit code 3 if anything failed.",
    )(fn)


def seed_option(default: int = 0) -> Callable[[F], F]:
    return click.option("--seed", type=int, default=default, show_default=True, help="Random seed.")


def device_option(fn: F) -> F:
    return click.option(
        "--device",
        default="auto",
        show_default=True,
        help="Torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...",
    )(fn)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
