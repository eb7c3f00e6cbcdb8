# Set-up is two commands on a fresh machine: `make demo` and `make test`.
# Every target below runs `setup` first (scripts/bootstrap.sh): idempotent, a second run is a
# quick check of the stamp .venv/.paser-stamp.
#
# Variables:
#   PYTEST_ARGS  extra arguments for pytest, e.g. make test PYTEST_ARGS="tests/test_manifest.py -x"
#   DEMO_OUT     output folder of `make demo` (default demo_out; `make clean` removes only demo_out)
#   PYTHON       interpreter that creates .venv (default python3)

VENV        := .venv
PY          := $(VENV)/bin/python
PYTEST_ARGS ?=
DEMO_OUT    ?= demo_out
PYTHON      ?= python3
export PYTHON

.PHONY: help setup test demo bench clean distclean

help:
	@echo "make demo       set up, then run the demo: $(VENV)/bin/paser demo --gui --out $(DEMO_OUT)"
	@echo "make test       set up, then run the tests headless (pytest-xvfb); PYTEST_ARGS=... to select"
	@echo "make bench      set up, then run the quick benchmarks (benchmarks/run_all.py; --list names every one)"
	@echo "make setup      only the set-up (.venv, Debian packages, editable install)"
	@echo "make clean      remove demo_out, caches and build files (keeps .venv)"
	@echo "make distclean  clean, and remove .venv"

setup:
	@bash scripts/bootstrap.sh

# pytest exits 5 when it collected no tests: make turns it into a failure like any non-zero
# status; the message says why.
test: setup
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): failing" >&2; fi; \
	exit $$rc

# With a display napari stays open after the walkthrough; without one the demo runs itself
# under xvfb-run, saves a screenshot per step into $(DEMO_OUT)/gui and exits.
demo: setup
	$(VENV)/bin/paser demo --gui --out $(DEMO_OUT)

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf demo_out .pytest_cache build dist *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
