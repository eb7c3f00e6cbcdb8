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

.PHONY: help setup test docs docs-build docs-serve screenshots wheel demo bench clean distclean

help:
	@echo "make demo       set up, then run the demo: $(VENV)/bin/paser demo --gui --out $(DEMO_OUT)"
	@echo "make test       set up, then run the tests headless (pytest-xvfb); PYTEST_ARGS=... to select"
	@echo "make docs       set up, then build the docs site into site/ (mkdocs build --strict)"
	@echo "make docs-serve set up, then serve the docs with live reload on http://127.0.0.1:8000"
	@echo "make screenshots set up, then regenerate docs/images/gui-*.png from the real napari window"
	@echo "make wheel      set up, then build the wheel and sdist into dist/"
	@echo "make bench      set up, then run the quick benchmarks (benchmarks/run_all.py; --list names every one)"
	@echo "make setup      only the set-up (.venv, Debian packages, editable install with gui, dev, docs)"
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

# The docs site (mkdocs-material). --strict: a broken link, a missing page or image fails the build.
# The CLI reference and the shortcuts page are generated from the code (scripts/mkdocs_cli_reference.py).
# docs-build skips the set-up: `make docs-build PY=/path/to/python` builds with another environment.
docs: setup
	@$(MAKE) --no-print-directory docs-build

docs-build:
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

# Drives the real napari window through the demo walkthrough (under Xvfb without a display) and
# copies each step's screenshot to docs/images; the first run trains the demo models (minutes).
screenshots: setup
	$(PY) scripts/screenshots.py --out $(DEMO_OUT)

wheel: setup
	rm -rf dist
	$(PY) -m build --outdir dist .

# With a display napari stays open after the walkthrough; without one the demo runs itself
# under xvfb-run, saves a screenshot per step into $(DEMO_OUT)/gui and exits.
demo: setup
	$(VENV)/bin/paser demo --gui --out $(DEMO_OUT)

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf demo_out .pytest_cache build dist site *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
