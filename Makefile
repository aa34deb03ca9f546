# One command each: `make demo` (the main job) and `make test` (the suite). Both create .venv and install what
# they need: torch pinned to the local CPU build, the package in editable mode, the test dependencies and the peers.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
KDIFFUSION_VERSION ?= 0.1.1.post1
PYTEST_ARGS ?=
# pytest-xdist processes for `make test` (CI has 2 cores; 0: the suite in one process) and what it runs
TEST_WORKERS ?= 2
TEST_PATHS ?= tests

.PHONY: demo test install clean check-cuda

$(VENV)/.installed: pyproject.toml setup.py
	@echo "make: creating $(VENV) and installing torch $(TORCH_VERSION), fastint and the test dependencies (a few minutes the first time)"
	$(PYTHON) -m venv $(VENV)
	@echo "make: [1/4] pip"
	$(PIP) install -q --upgrade pip
	@echo "make: [2/4] torch==$(TORCH_VERSION), setuptools, wheel, ninja"
	$(PIP) install -q torch==$(TORCH_VERSION) setuptools wheel ninja
	@echo "make: [3/4] fastint (editable) with its dev extras; compiling the C++ kernel (about 2 minutes on 2 cores: the compiler's lines follow)"
	set -o pipefail; $(PIP) install -v --no-build-isolation -e '.[dev]' 2>&1 | \
	  { grep --line-buffered -E "^ *(fastint setup:|\[[0-9]+/[0-9]+\] c\+\+|Successfully installed)|error:" | cut -c1-160 || true; }
	@test -n "$$(ls fastint/_C*.so 2>/dev/null)" -o "$$FASTINT_BUILD_EXT" = 0 || echo "make: warning: the C++ kernel was not built (see docs/build.md); the cpp backend will compile on first use"
	@echo "make: [4/4] k-diffusion (bare: its metadata pulls torchvision and a CUDA torch; the tests load only sampling.py)"
	$(PIP) install -q --no-deps k-diffusion==$(KDIFFUSION_VERSION)
	@echo "make: $(VENV) ready"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m fastint demo

test: $(VENV)/.installed
	FASTINT_REQUIRE_PEERS=1 $(PY) -m pytest -n $(TEST_WORKERS) --durations=15 $(PYTEST_ARGS) $(TEST_PATHS)

# Compile-only nvcc check of the CUDA kernel sources for sm_90 (fails on a compile error; skips without nvcc).
NVCC ?= $(shell command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)
check-cuda:
	@if [ ! -x "$(NVCC)" ]; then echo "check-cuda: nvcc not found, skipping the CUDA compile check"; exit 0; fi; \
	set -e; out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; \
	echo "$(NVCC) -arch=sm_90 csrc/cuda/fused_step_check.cu"; \
	"$(NVCC)" -std=c++17 -O3 -arch=sm_90 -Icsrc -c csrc/cuda/fused_step_check.cu -o "$$out/check.o"

clean:
	rm -rf $(VENV) build *.egg-info fastint/*.so fastint/_build_info.py fastint/_csrc
