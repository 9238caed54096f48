# Every target that needs Python makes its own virtual environment (.venv by
# default) and installs what it needs, so each works on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
GRPC_ADDRESS ?= 127.0.0.1:9000
HTTP_ADDRESS ?= 127.0.0.1:9090
PYTEST_ARGS ?=
TOOLS := .tools
BUF := $(TOOLS)/node_modules/.bin/buf

.PHONY: help demo run test lint proto bench clean

help:
	@echo "make demo   - keys, tokens, policies, authz, a JWKS server and real Envoy: the tutorial in one command"
	@echo "make run    - run authz serve on examples/policies (gRPC $(GRPC_ADDRESS), admin $(HTTP_ADDRESS))"
	@echo "make test   - install test dependencies (Envoy included) and run the whole suite"
	@echo "make lint   - ruff and mypy --strict on authz/"
	@echo "make proto  - regenerate authz/_proto from proto/"
	@echo "make bench  - Check cost with 10 policies in scope vs. 10,000 more elsewhere"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "authz needs Python >= 3.11; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamps record what was installed; they are rebuilt when pyproject.toml changes.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	@touch $@ $(VENV)/.installed-run

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed-run $(VENV)/.installed-demo

demo: $(VENV)/.installed-demo
	$(BIN)/python examples/demo.py

run: $(VENV)/.installed-run
	$(BIN)/authz serve --policy examples/policies \
		--grpc-address $(GRPC_ADDRESS) --http-address $(HTTP_ADDRESS)

# buf curl is an independent gRPC client for the tests; npm is optional.
$(BUF):
	@if command -v npm >/dev/null 2>&1; then \
		npm install --silent --no-audit --no-fund --prefix $(TOOLS) @bufbuild/buf@1.75.0 >/dev/null; \
	else echo "npm not found: tests that use buf curl will be skipped"; fi

test: $(VENV)/.installed-dev $(BUF)
	PATH="$(CURDIR)/$(TOOLS)/node_modules/.bin:$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check authz tests proto bench examples docs
	$(BIN)/mypy

bench: $(VENV)/.installed-run
	$(BIN)/python bench/policy_scale.py

proto: $(VENV)/.installed-dev
	$(BIN)/python proto/generate.py

clean:
	rm -rf $(VENV) $(TOOLS) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
