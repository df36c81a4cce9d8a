# The README's commands: `make demo` and `make test`. `make install` creates .venv with the test extras.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned to the release this project is tested with; pip takes it from the local wheel cache when present.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test test-fast lint demo bench clean docs readme

$(BIN)/larp: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(BIN)/larp

install: $(BIN)/larp

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q --timeout=600 tests

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: install
	$(BIN)/ruff check src tests benchmarks

demo: install
	$(BIN)/larp demo --out runs/demo

bench: install
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache

# docs/cli.md is generated from the parser (tests/test_cli.py checks that it is current).
docs: install
	$(BIN)/python -c "from larp.cli import write_cli_doc; write_cli_doc('docs/cli.md')"

readme: docs
