# batch_pipelines: `make run` starts the Dagster UI and daemon; `make test` runs everything CI runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA := $(CURDIR)/data
export DAGSTER_HOME ?= $(DATA)/dagster_home
HOST ?= 127.0.0.1
PORT ?= 3000

.PHONY: install run test lint format demo bench clean-state

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

run: install $(DAGSTER_HOME)/dagster.yaml
	mkdir -p $(DATA)/inbox
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h $(HOST) -p $(PORT)

lint: install
	$(BIN)/ruff check batch_pipelines batch_pipelines_tests bench
	$(BIN)/ruff format --check batch_pipelines batch_pipelines_tests bench

format: install
	$(BIN)/ruff check --fix batch_pipelines batch_pipelines_tests bench
	$(BIN)/ruff format batch_pipelines batch_pipelines_tests bench

test: install lint
	$(BIN)/dagster definitions validate -w workspace.yaml
	$(BIN)/pytest -q $(PYTEST_ARGS)

demo: install
	$(BIN)/batch-pipelines demo

bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean-state:
	rm -rf $(DATA)/dagster_home $(DATA)/warehouse.duckdb* $(DATA)/staging $(DATA)/exports $(DATA)/reports
