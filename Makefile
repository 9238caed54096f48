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

.PHONY: help demo run test compat lint proto bench clean

help:
	@echo "make demo   - keys, tokens, policies, authz, a JWKS server and real Envoy: the tutorial in one command"
	@echo "make run    - run authz serve on examples/policies (gRPC $(GRPC_ADDRESS), admin $(HTTP_ADDRESS))"
	@echo "make test   - install test dependencies (Envoy included) and run the whole suite"
	@echo "make compat - the request path's tests on another Python (PYTHON=python3.13), minimal install"
	@echo "make lint   - ruff, mypy --strict on authz/, and the layering contracts (lint-imports)"
	@echo "make proto  - regenerate authz/_proto from proto/"
	@echo "make bench  - RPS, latency, CPU and memory vs. a bare gRPC ceiling, naive PyJWT and Envoy jwt_authn (docs/benchmarks.md)"

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

# The package says Python >= 3.11. This runs the tests of everything a Check goes
# through on the interpreter PYTHON names, installed as a user would install it (no
# extras, no Envoy), in a virtual environment of its own; CI runs it for each newer
# CPython the machine has. The whole suite on that interpreter: make test PYTHON=...
# VENV=.venv-3.13.
COMPAT_VENV ?= .venv-compat
COMPAT_TESTS := tests/authn tests/envoy tests/http/test_frontdoors.py tests/http/test_render.py \
	tests/http/test_protocol.py tests/http/test_server.py tests/request tests/pipeline tests/policy tests/rbac tests/server tests/test_decision.py \
	tests/test_decision_log.py tests/test_eventloop.py tests/test_grpc_env.py tests/test_heap.py \
	tests/test_memo.py tests/test_observe.py
compat:
	rm -rf $(COMPAT_VENV)
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install --quiet -e . 'pytest>=8' 'pytest-asyncio>=0.24'
	$(COMPAT_VENV)/bin/python -m pytest -q -p no:cacheprovider $(COMPAT_TESTS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check authz tests proto bench examples docs
	$(BIN)/mypy
	$(BIN)/lint-imports

# wrk (end to end) and h2load (load-generator cross-check) come from Debian;
# without them those rows say "skipped". Envoy comes with the test extra.
BENCH_ARGS ?= --workers-compare
bench: $(VENV)/.installed-dev
	@command -v wrk >/dev/null && command -v h2load >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nghttp2-client >/dev/null) || \
		  echo "bench: wrk/h2load not installed (apt-get install wrk nghttp2-client)"; }
	$(BIN)/python bench/run.py $(BENCH_ARGS)

proto: $(VENV)/.installed-dev
	$(BIN)/python proto/generate.py

clean:
	rm -rf $(VENV) $(COMPAT_VENV) .venv-3.* $(TOOLS) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
