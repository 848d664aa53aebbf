# One command per chore. Each target creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev
STAMP_MUTATION := $(VENV)/.installed-mutation

.PHONY: run test test-aiohttp e2e lint bench mutation install dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(STAMP_DEV): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,lint]'
	touch $@ $(STAMP_RUN)

$(STAMP_MUTATION): $(STAMP_DEV)
	$(BIN)/pip install -q -e '.[test,lint,mutation]'
	touch $@

install: $(STAMP_RUN)
dev: $(STAMP_DEV)

## make run: start the gateway on its embedded defaults (or CONFIG=gateway.yaml)
run: $(STAMP_RUN)
	$(BIN)/vllm-gateway serve $(if $(CONFIG),--config $(CONFIG),)

## make test: install everything the tests need, then run them
test: $(STAMP_DEV)
	bash scripts/install-system-deps.sh
	PYTHON=$(PYTHON) bash scripts/install-skypilot-venv.sh
	$(BIN)/python -m pytest --ignore=tests/e2e -n auto --dist loadscope --cov --cov-report=term --cov-fail-under=90 $(PYTEST_ARGS)
	@echo "The simulator, a test double, outside the 90 % floor above:"
	$(BIN)/python -m coverage report --include='gateway/sim/*' --omit='tests/*'

## make test-aiohttp: the forwarding tests again, the gateway on aiohttp as its upstream
## client (upstream_client: aiohttp, given to every gateway the tests start through VGW_*)
AIOHTTP_TESTS := tests/test_streaming.py tests/test_hostile_stream.py tests/test_pools.py \
	tests/test_tls.py tests/test_drain.py tests/test_leaks.py tests/test_headers.py \
	tests/test_responses.py tests/test_anthropic.py tests/test_multipart.py \
	tests/test_pooling_routes.py tests/test_usage_gateway.py tests/test_metrics.py
test-aiohttp: $(STAMP_DEV)
	VGW_UPSTREAM_CLIENT=aiohttp $(BIN)/python -m pytest -n auto --dist loadscope \
		$(AIOHTTP_TESTS) $(PYTEST_ARGS)

## make e2e: build (once, cached) real vLLM for CPU and a small model, then test against it
e2e: $(STAMP_DEV)
	bash e2e/build.sh
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

## make bench: the same load direct and through the gateway, reported as ratios
bench: $(STAMP_DEV)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

## make mutation: mutate the modules that enforce access, limits and usage; run each
## mutant against its tests (tests/mutation_targets.toml) in a copy of the tree, one at a
## time. Slow (hours for all): run by hand, like make bench. MODULES=routes,contract for a subset
mutation: $(STAMP_MUTATION)
	bash scripts/install-system-deps.sh
	$(BIN)/python scripts/mutation.py $(if $(MODULES),--modules $(MODULES),) $(MUTATION_ARGS)

## make lint: ruff and mypy --strict on gateway/
lint: $(STAMP_DEV)
	$(BIN)/ruff check gateway tests e2e bench
	$(BIN)/ruff format --check gateway tests e2e bench
	$(BIN)/mypy --strict gateway

clean:
	rm -rf $(VENV) .coverage .coverage.* .pytest_cache .mypy_cache .ruff_cache
	rm -rf .venv-sky .mutation
