import subprocess
import sys
from pathlib import Path

from vincie_cli import __version__
from vincie_cli.cli import COMMANDS, main


def test_help_lists_registered_commands(runner):
    res = runner.invoke(main, ["--help"])
    assert res.exit_code == 0
    for name in COMMANDS:
        assert name in res.stdout


def test_unknown_command_is_usage_error(runner):
    res = runner.invoke(main, ["no-such-command"])
    assert res.exit_code == 2


def test_console_script_and_lazy_imports():
    """The installed entry point works, and --help does not import torch."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from vincie_cli.cli import main; "
            "sys.argv=['vincie','--help'];\ntry:\n main()\nexcept SystemExit: pass\n"
            "print('torch' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "False"  # --help stays instant: torch is never imported
    exe = Path(sys.executable).parent / "vincie"
    assert exe.exists(), "the console script is not installed (pip install -e .)"
    res = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert __version__ in res.stdout
