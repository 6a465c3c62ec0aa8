# minivl: every target sets up .venv on first use (scripts/setup.sh).
VENV   ?= .venv
PY     := $(VENV)/bin/python
SETUP  := $(VENV)/.minivl-installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: setup quickstart test test-slow test-all notebooks notebooks-sync book lint bench clean

setup: $(SETUP)

$(SETUP): pyproject.toml scripts/setup.sh
	./scripts/setup.sh

## The main job: the whole pipeline at cpu scale (see README)
quickstart: $(SETUP)
	$(VENV)/bin/minivl quickstart

## The whole test suite: unit and parity tests, notebooks at smoke scale, the book build
test: $(SETUP)
	$(PY) -m pytest

## Tests marked slow (skipped by `make test`)
test-slow: $(SETUP)
	$(PY) -m pytest -m slow

test-all: test test-slow

## Re-execute every notebook in place at cpu scale (the outputs the book shows)
notebooks: $(SETUP)
	for py in notebooks/[0-9][0-9]_*.py; do $(VENV)/bin/jupytext --quiet --update --to ipynb $$py; done
	cd notebooks && for nb in $(notdir $(NOTEBOOKS)); do \
	  echo "== $$nb"; MINIVL_SCALE=cpu ../$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=3600 $$nb || exit 1; done

## Build the book (offline, warnings are errors) into book/_build/html
book: $(SETUP)
	$(VENV)/bin/jupyter-book build --all -W -n --keep-going book

lint: $(SETUP)
	$(VENV)/bin/ruff check minivl tests benchmarks

## Speed and memory measurements (not tests)
bench: $(SETUP)
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf book/_build .ruff_cache
