"""Docs stay true: the CLI reference matches --help, and every docs page linked from the README exists."""

import importlib.util
import re

from tests.conftest import REPO


def _gen():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", REPO / "tools" / "gen_cli_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_reference_is_current():
    expected = _gen().render()
    actual = (REPO / "docs" / "cli.md").read_text()
    assert actual == expected, "docs/cli.md is stale: run `make docs`"


def test_readme_links_exist():
    readme = (REPO / "README.md").read_text()
    for link in re.findall(r"\]\(((?:docs|recipes|benchmarks)/[^)#]+)", readme):
        assert (REPO / link).exists(), f"README links to missing {link}"
