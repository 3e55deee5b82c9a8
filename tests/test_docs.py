"""Docs stay true: the CLI reference matches --help, and every docs page linked from the README exists."""

import re

from tests.conftest import REPO, load_script


def _gen():
    return load_script("tools/gen_cli_docs.py")


def test_cli_reference_is_current():
    expected = _gen().render()
    actual = (REPO / "docs" / "cli.md").read_text()
    assert actual == expected, "docs/cli.md is stale: run `make docs`"


def test_readme_links_exist():
    readme = (REPO / "README.md").read_text()
    for link in re.findall(r"\]\(((?:docs|recipes|benchmarks)/[^)#]+)", readme):
        assert (REPO / link).exists(), f"README links to missing {link}"
