# The two commands: `make demo` and `make test`. Everything else here serves them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements/lock.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint typecheck pytest system-deps services lock bench clean

$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements/lock.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

## Run both services with synthetic data on 127.0.0.1 (EHR :8080, imaging :8081).
demo: $(STAMP)
	$(BIN)/imagebridge demo $(DEMO_ARGS)

## Lint, type-check and run the whole test suite.
test: $(STAMP) system-deps services lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check --no-cache src tests bench
	$(BIN)/ruff format --no-cache --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

system-deps:
	@sh scripts/system-deps.sh

services:
	@sh scripts/services.sh

## Re-resolve requirements/lock.txt from pyproject.toml (needs network access to PyPI).
lock:
	$(PYTHON) -m pip install -q uv && $(PYTHON) -m uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements/lock.txt

bench: $(STAMP) system-deps
	$(BIN)/python bench/run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var bench/work src/*.egg-info
