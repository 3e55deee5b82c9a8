"""Import rules of docs/architecture.md: stages talk through records and files, never through internals."""

import ast
import importlib
import pkgutil

import vincie_cli
from tests.conftest import REPO

CORE = {"records", "config", "prompts", "utils", "model", "flow"}
STAGES = {"video", "annotate", "segment", "sessions", "train", "edit", "eval", "synth"}
# Sanctioned cross-stage imports (docs/architecture.md): decoding for annotate; the synthetic world as a data
# source for oracle backends, the synthetic benchmark and the packaged model's domain check; edit's
# run_sessions for eval; SessionDataset for train.
ALLOWED = {("annotate", "video"), ("annotate", "synth"), ("segment", "synth"), ("eval", "synth"), ("eval", "edit"),
           ("train", "sessions"), ("edit", "synth")}  # fmt: skip


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vincie_cli."):
            yield node.module.split(".")[1]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("vincie_cli."):
                    yield alias.name.split(".")[1]


def test_stage_and_core_import_rules():
    bad = []
    for path in sorted((REPO / "vincie_cli").rglob("*.py")):
        part = path.relative_to(REPO / "vincie_cli").parts[0].removesuffix(".py")
        for target in set(_imports(path)):
            if target == part or target in CORE:
                if part in {"model", "flow"} and target not in CORE:
                    bad.append((path, target))
                if part == "flow" and target == "model":
                    bad.append((path, target))
                continue
            if (target == "cli" and part != "__main__") or (part in CORE and target in STAGES):
                bad.append((path, target))
            elif part in STAGES and target in STAGES and (part, target) not in ALLOWED:
                bad.append((path, target))
    assert not bad, "forbidden imports: " + ", ".join(f"{p.relative_to(REPO)} -> {t}" for p, t in bad)


def test_every_module_imports():
    for mod in pkgutil.walk_packages(vincie_cli.__path__, "vincie_cli."):
        importlib.import_module(mod.name)
