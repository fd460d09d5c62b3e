# Two entry points for a fresh clone on a machine with only Python and pip:
#   make train   -> virtual environment + the default job (fastwsss train on the built-in synthetic set)
#   make test    -> virtual environment + the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: train test lint clean-venv

$(BIN)/fastwsss: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(BIN)/fastwsss

train: $(BIN)/fastwsss
	$(BIN)/fastwsss train $(ARGS)

test: $(BIN)/fastwsss
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(BIN)/fastwsss
	$(BIN)/ruff check fastwsss kernels export tests bench

clean-venv:
	rm -rf $(VENV)
