# The two set-up commands: `make demo` and `make test`. Both create the virtualenv if missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision are installed first and pinned, so pip takes the wheels on local disk instead of
# resolving a multi-GB download. Override for other machines, e.g. TORCH_SPEC="torch torchvision".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

# Local state for the demo and the UI (tests make their own in temp dirs).
LOCAL_HOME := $(if $(CURATION_HOME),$(CURATION_HOME),$(CURDIR)/.curation)
demo ui db-stop clean: export CURATION_HOME := $(LOCAL_HOME)
demo ui db-stop clean: export DAGSTER_HOME := $(if $(DAGSTER_HOME),$(DAGSTER_HOME),$(LOCAL_HOME)/dagster_home)

STAMP := $(VENV)/.installed

.PHONY: install browser demo test ui db-stop lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/curation demo

# Browser tests drive Debian's chromium through its chromedriver (never a downloaded browser).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  echo "installing Debian chromium + chromium-driver for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

test: $(STAMP) browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

ui: $(STAMP)
	$(BIN)/curation ui

db-stop: $(STAMP)
	$(BIN)/curation db stop

# ruff (lint + format check) everywhere; mypy over the Dagster-free layers that everything builds on.
lint: $(STAMP)
	$(BIN)/ruff check curation_pipeline curation_pipeline_tests benchmarks
	$(BIN)/ruff format --check curation_pipeline curation_pipeline_tests benchmarks
	$(BIN)/mypy curation_pipeline/core curation_pipeline/resources

clean:
	-$(BIN)/curation db stop
	rm -rf $(LOCAL_HOME)
