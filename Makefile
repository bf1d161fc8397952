# Two commands on a fresh machine: `make up` runs the stack, `make test` runs the tests.
# Each creates and uses ./.venv itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install up test test-containers check fmt lint typecheck bench docs clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' -e clients/python
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(VENV)/bin/atomic-guide up

test: $(STAMP)
	$(PY) -m pytest -q
	cd clients/python && ../../$(PY) -m pytest -q
	@if command -v node >/dev/null; then node --test clients/js/test/; \
	elif [ "$$AG_REQUIRE_JS" = 1 ]; then echo "node is required (AG_REQUIRE_JS=1)"; exit 1; \
	else echo "node not found: JS client tests skipped"; fi

check: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	cd clients/python && ../../$(VENV)/bin/ruff format --check . && ../../$(VENV)/bin/ruff check . \
		&& ../../$(VENV)/bin/mypy src
	$(MAKE) test

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Container tests alone: installs Docker if missing, starts dockerd, prepares images offline.
test-containers: $(STAMP)
	bash ops/images/ci-containers.sh

# The AsyncAPI document and frame JSON Schemas, generated from the frame Structs (a test checks).
docs: $(STAMP)
	$(PY) -m ops.asyncapi

bench: $(STAMP)
	$(VENV)/bin/atomic-guide bench chat

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
