# screader-db: `make run` sets everything up and runs the main job; `make test` runs the checks.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ATLAS ?= atlases/baron_human
RESULTS ?= results
PYTEST_ARGS ?= -m "not slow"
# Every extra the run and the tests use; the base install (no extras) builds and annotates with the default method.
EXTRAS ?= dev,llm,server,client,dask,layout
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup run test test-all lint browser clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/screader-db fetch
	$(BIN)/screader-db build --reference baron_human --label-key cell_ontology_class \
		--atlas $(ATLAS) --dataset-name baron_human --overwrite
	mkdir -p $(RESULTS)
	$(BIN)/screader-db query baron_mouse --atlas $(ATLAS) --truth-key cell_ontology_class \
		--out $(RESULTS)/baron_mouse_annotated.h5ad --table $(RESULTS)/baron_mouse_labels.csv --overwrite

lint: setup
	$(BIN)/ruff check screader_db tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

# Debian's chromium, which the web page's browser tests drive (skipped without it, except in CI).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi; \
		$$sudo apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

test-all: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
