# The README's commands: `make demo` and `make test`. `make install` creates .venv with the test extras.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned to the newest release this project is tested with; pip takes it from the local wheel cache when
# present. PIP_CONSTRAINT=/dev/null: a machine-wide pip constraint (some images cap torch) must not swap it.
TORCH_PIN ?= torch==2.15.0 torchvision==0.29.2
PIP := PIP_CONSTRAINT=/dev/null $(BIN)/python -m pip

.PHONY: install test test-fast lint demo bench clean docs readme

$(BIN)/larp: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[test]'
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
