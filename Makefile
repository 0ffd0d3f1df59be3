# `make demo` and `make test` each set up .venv on a fresh machine (Python 3.10+), then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO ?= demo

.PHONY: install test demo clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

demo: $(STAMP)
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	cd $(DEMO) && ../$(BIN)/perfusion prepare --synthetic

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
