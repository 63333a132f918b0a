# The two commands of the README: `make up` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup up test lint bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

up: setup
	$(VENV)/bin/vna up

test: setup
	bash scripts/test-deps.sh
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check vna services storage tests benchmarks
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/ingest.py

clean:
	rm -rf $(VENV) vna-data .pytest_cache .mypy_cache .ruff_cache
