# The two commands of the README: `make up` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# Every version `make up`, `make test` and CI install: what CI tested. `make lock` renews it.
LOCK := requirements.lock

.PHONY: setup up test lint bench lock clean viewer

$(VENV)/.installed: pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) -e '.[dev]'
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

# Resolve pyproject.toml's dependencies into the lock, for Python >= 3.11 on every platform
# (uv: one version per package; markers for what only some platforms need). Versions
# already locked stay while pyproject.toml allows them; UPGRADE=1 takes the newest of all.
# Then `make test`, and commit the lock.
lock:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q 'uv>=0.9'
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		$(if $(UPGRADE),--upgrade) --quiet --custom-compile-command 'make lock' -o $(LOCK)

clean:
	rm -rf $(VENV) vna-data .pytest_cache .mypy_cache .ruff_cache

# The OHIF viewer that `vna api` serves at /viewer: the prebuilt dist of @ohif/app from npm,
# unpacked into viewer/ohif (not in git). Set the VNA_VIEWER_DIR it prints and restart vna.
OHIF_VERSION ?= 3.13.2
viewer:
	OHIF_VERSION=$(OHIF_VERSION) bash scripts/fetch-ohif.sh viewer/ohif
	@echo "then: export VNA_VIEWER_DIR=$(CURDIR)/viewer/ohif; vna up (or vna api); open http://127.0.0.1:8000/viewer"
