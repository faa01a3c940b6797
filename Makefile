# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FER := $(BIN)/fer


.PHONY: setup demo test test-fast bench lint clean sample-data docs realdata accuracy

setup: $(STAMP)

# Re-install only when the venv is missing or pyproject.toml changed.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python scripts/ensure_single_cv2.py
	touch $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python scripts/bench.py --memory

# Real faces (FER_DATA = the development copies of ../shared/DATA.md; skipped when unset).
realdata: $(STAMP)
	$(BIN)/python scripts/realdata.py

accuracy: $(STAMP)
	$(BIN)/python scripts/accuracy.py ckplus48 jaffe

lint: $(STAMP)
	$(BIN)/ruff check fercli tests scripts

sample-data: $(STAMP)
	$(FER) sample-data sample_data --force

clean:
	rm -rf demo-work .pytest_cache

docs: $(STAMP)
	$(BIN)/python scripts/update_readme.py
