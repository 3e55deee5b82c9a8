# vincie developer targets. `make help` lists them.
PY ?= .venv/bin/python
PIP ?= $(PY) -m pip
export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export PYTHONHASHSEED=0

.PHONY: help install lint format test test-all test-parity test-gpu docs demo clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

.venv/bin/python:
	python3 -m venv .venv

.venv/.installed: .venv/bin/python requirements-cpu.txt setup.cfg
	$(PIP) install -q -r requirements-cpu.txt
	$(PIP) install -q --no-deps -e .
	touch $@

install: .venv/.installed ## create .venv and install the pinned CPU stack + vincie (editable)

lint: .venv/.installed ## ruff check + format check
	$(PY) -m ruff check vincie_cli tests benchmarks tools
	$(PY) -m ruff format --check vincie_cli tests benchmarks tools

format: ## fix lint and formatting
	$(PY) -m ruff check --fix vincie_cli tests benchmarks tools
	$(PY) -m ruff format vincie_cli tests benchmarks tools

test: .venv/.installed ## the fast test suite (what CI runs)
	$(PY) -m pytest -q

test-all: .venv/.installed ## every CPU test, slow ones included
	$(PY) -m pytest -q -m "not gpu"

test-parity: ## numeric parity against $$VINCIE_PARITY_DIR (default ../shared/parity)
	$(PY) -m pytest -q tests -k parity

test-gpu: ## tests that need CUDA
	$(PY) -m pytest -q -m gpu

docs: ## regenerate docs/cli.md from the commands' --help
	$(PY) tools/gen_cli_docs.py

demo: .venv/.installed ## the main job on the embedded defaults: videos -> ... -> scored edits, in demo-run/
	.venv/bin/vincie demo --out-dir demo-run

clean: ## remove caches and build outputs
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache demo-run
