# make demo: create/refresh .venv, install, run the end-to-end demo on CPU (outputs/demo/).
# make test: same venv, lint (ruff, import layers), then the test suite (slow end-to-end tests included; the app's browser tests need
#            Debian's chromium, which .ci/install-chromium installs when missing and allowed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= outputs/demo

.PHONY: venv demo demo-check demo-real demo-real-check demo-real-short-check lint test test-fast clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt -e ".[test,app]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/diffheads demo --out $(DEMO_OUT)

# A person-specific model of a real face: GRID speaker s1 from ../shared/data (outputs/demo-grid/, docs/demo.md).
demo-real: $(STAMP)
	$(BIN)/diffheads demo --preset grid --out outputs/demo-grid

demo-real-check: demo-real
	$(BIN)/python -m diffheads.demo.check outputs/demo-grid/report.json

# CI's shortened GRID learning check (make demo-real takes about 30 minutes; this about 15).
demo-real-short-check: $(STAMP)
	$(BIN)/diffheads demo --preset grid --short --out outputs/demo-grid-short
	$(BIN)/python -m diffheads.demo.check outputs/demo-grid-short/report.json

# The demo's learning check: fails unless lip sync was learned (see docs/demo.md).
demo-check: demo
	$(BIN)/python -m diffheads.demo.check $(DEMO_OUT)/report.json

# The house plan's guards (docs/architecture.md): lint, format and the import layers.
lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/lint-imports --no-logo --no-cache

test: lint
	sh .ci/install-chromium
	$(BIN)/python -m pytest

test-fast: lint
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) outputs .pytest_cache
