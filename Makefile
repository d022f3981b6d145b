# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test schemas bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch first: a bare `torch` would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	# janggu ships the DNA test FASTA (GPL-3): installed as a test dependency, never copied.
	$(BIN)/python -m pip install -q --no-deps janggu
	# desc (MIT) ships the 10x PBMC 3k raw counts, the cell model's second real dataset: read in place.
	$(BIN)/python -m pip install -q --no-deps desc==0.1.4.1
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/biomm run pipelines/demo.yaml pipelines/cells.yaml pipelines/sequences.yaml

test: $(STAMP)
	bash scripts/test.sh

schemas: $(STAMP)
	$(BIN)/biomm schemas --out schemas
	$(BIN)/python -m biomm.serve.openapi schemas/openapi.json

clean:
	rm -rf demo_out .pytest_cache
