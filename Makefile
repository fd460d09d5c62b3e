# Two entry points for a fresh clone on a machine with only Python and pip:
#   make train   -> virtual environment + the default job (fastwsss train on the built-in synthetic set)
#   make test    -> virtual environment + the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: train test lint clean-venv bench-serving

$(BIN)/fastwsss: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-cache-dir -e ".[dev]"
	touch $(BIN)/fastwsss

train: $(BIN)/fastwsss
	$(BIN)/fastwsss train $(ARGS)

test: $(BIN)/fastwsss
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(BIN)/fastwsss
	$(BIN)/ruff check fastwsss kernels export tests bench

# CPU serving benchmark of a finished run: RUN is copied to SERVING_COPY (the run itself is never written),
# the copy exported with --int8, then bench/serving.py -> bench/results/serving-cpu.json (about 10 minutes).
SERVING_COPY ?= /tmp/fastwsss-serving-run
bench-serving: $(BIN)/fastwsss
	@test -n "$(RUN)" || { echo "make bench-serving RUN=RUNDIR (a finished run)"; exit 2; }
	$(BIN)/python -m pip install --quiet -e ".[openvino]"
	rm -rf $(SERVING_COPY) && cp -r $(RUN) $(SERVING_COPY) && rm -rf $(SERVING_COPY)/export
	$(BIN)/fastwsss export $(SERVING_COPY) --int8
	$(BIN)/python -m bench.serving --model $(SERVING_COPY) --device cpu --compile $(ARGS)

clean-venv:
	rm -rf $(VENV)
