# Every target that needs Python makes its own virtual environment (.venv by
# default) and installs what it needs, so each works on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
GRPC_ADDRESS ?= 127.0.0.1:9000
HTTP_ADDRESS ?= 127.0.0.1:9090
PYTEST_ARGS ?=

.PHONY: help run test lint proto clean

help:
	@echo "make run    - run authz serve on examples/policies (gRPC $(GRPC_ADDRESS), admin $(HTTP_ADDRESS))"
	@echo "make test   - install test dependencies (Envoy included) and run the whole suite"
	@echo "make lint   - ruff and mypy --strict on authz/"
	@echo "make proto  - regenerate authz/_proto from proto/"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "authz needs Python >= 3.11; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamps record what was installed; they are rebuilt when pyproject.toml changes.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/authz serve --policy examples/policies \
		--grpc-address $(GRPC_ADDRESS) --http-address $(HTTP_ADDRESS)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check authz tests proto
	$(BIN)/mypy

proto: $(VENV)/.installed-dev
	$(BIN)/python proto/generate.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
