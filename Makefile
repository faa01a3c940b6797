# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FER := $(BIN)/fer
# Exact versions of every dependency (and extra), resolved for CPython 3.11 on Linux x86_64.
LOCK := requirements/lock-linux-x86_64-py311.txt


.PHONY: setup lock demo test test-fast bench lint clean sample-data docs realdata accuracy

setup: $(STAMP)

# Re-install only when the venv is missing or pyproject.toml or the lock changed: exactly the
# locked versions (pip install -r $(LOCK), then fercli with --no-deps), checked afterwards.
# On another interpreter than the lock's target, pyproject.toml's bounds (with a warning).
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python scripts/lock.py install $(LOCK)
	$(BIN)/python scripts/ensure_single_cv2.py
	$(BIN)/python scripts/lock.py check $(LOCK)
	touch $(STAMP)

# Refresh the lock: the newest versions pyproject.toml's bounds allow (pip's resolver);
# the next `make setup` installs them.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python scripts/lock.py refresh $(LOCK)

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
