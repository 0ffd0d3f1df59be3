# `make demo` and `make test` each set up .venv on a fresh machine (Python 3.11+), then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO ?= demo
PERFUSION := ../$(BIN)/perfusion

.PHONY: install test test-fast demo clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

# The edit-run loop: everything but the end-to-end checks marked slow (real architectures, learning tests).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# The whole job on the synthetic marketplace with the bundled tiny models, in the workspace $(DEMO)/.
demo: $(STAMP)
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	cd $(DEMO) && $(PERFUSION) prepare --synthetic   # writes the tiny recipe as $(DEMO)/perfusion.toml
	cd $(DEMO) && $(PERFUSION) train-rm
	cd $(DEMO) && $(PERFUSION) eval rm --checkpoint runs/rm --checkpoint zero-shot:tiny --json outputs/eval-rm.json
	cd $(DEMO) && $(PERFUSION) train-gen --group-size 5
	cd $(DEMO) && $(PERFUSION) eval gen --report outputs/report --json outputs/eval-gen.json
	cd $(DEMO) && $(PERFUSION) generate --merchant 123 "linen dress"
	@echo "report: $(DEMO)/outputs/report/index.html"

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
