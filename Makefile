# batch_pipelines: `make run` starts the Dagster UI and daemon; `make test` runs everything CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA := $(CURDIR)/data
export DAGSTER_HOME ?= $(DATA)/dagster_home
HOST ?= 127.0.0.1
PORT ?= 3000

.PHONY: install run test lint format demo bench clean-state system-deps fresh-clone

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev,postgres,lake]"
	touch $@

install: $(VENV)/.installed

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# The instance storage block appended to dagster.yaml: SQLite writing event batches in one
# transaction (see batch_pipelines/app/dagster_storage.py), or another one, e.g.
# DAGSTER_STORAGE=batch_pipelines/deploy/dagster.postgres.yaml. DAGSTER_EVENT_BATCH_SIZE lets
# Dagster hand asset events to the storage in batches (0: one by one).
DAGSTER_STORAGE ?= batch_pipelines/deploy/dagster.sqlite.yaml
DAGSTER_EVENT_BATCH_SIZE ?= 1000
run: install $(DAGSTER_HOME)/dagster.yaml
	mkdir -p $(DATA)/inbox
	cat dagster.yaml $(DAGSTER_STORAGE) > $(DAGSTER_HOME)/dagster.yaml
	DAGSTER_EVENT_BATCH_SIZE=$(DAGSTER_EVENT_BATCH_SIZE) $(BIN)/batch-pipelines dev --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check batch_pipelines batch_pipelines_tests bench
	$(BIN)/ruff format --check batch_pipelines batch_pipelines_tests bench

format: install
	$(BIN)/ruff check --fix batch_pipelines batch_pipelines_tests bench
	$(BIN)/ruff format batch_pipelines batch_pipelines_tests bench

test: install lint system-deps $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster definitions validate -w workspace.yaml
	$(BIN)/pytest -q $(PYTEST_ARGS)

demo: install
	$(BIN)/batch-pipelines demo

bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean-state:
	rm -rf $(DATA)/dagster_home $(DATA)/warehouse.duckdb* $(DATA)/staging $(DATA)/exports $(DATA)/reports

# Debian packages the end-to-end tests use: Chromium for the web UI test, PostgreSQL for the
# Postgres storage test. Installed only where missing (needs root: CI runs as root).
DEBIAN_TEST_PACKAGES := chromium chromium-driver postgresql
system-deps:
	@missing=""; for p in $(DEBIAN_TEST_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	    echo "missing Debian packages:$$missing (install them as root: sudo make system-deps)" >&2; exit 1; \
	  fi; \
	  echo "installing Debian packages:$$missing"; \
	  log=$$(mktemp); \
	  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	         DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; } >$$log 2>&1; then \
	    tail -30 $$log >&2; rm -f $$log; exit 1; \
	  fi; \
	  rm -f $$log; \
	fi

# Clone the committed repository into a temporary directory and run the README's two commands
# there (`make test`, then `make run` until the UI answers): see .ci/fresh_clone.
fresh-clone:
	bash .ci/fresh_clone
