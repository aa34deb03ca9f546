# One command each: `make demo` (the main job) and `make test` (the suite). Both create .venv and install what
# they need: torch pinned to the local CPU build, the package in editable mode, the test dependencies and the peers.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
KDIFFUSION_VERSION ?= 0.1.1.post1
PYTEST_ARGS ?=

.PHONY: demo test install clean check-cuda

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION) setuptools wheel ninja
	$(PIP) install -q --no-build-isolation -e '.[dev]'
	# k-diffusion's metadata pulls torchvision (and a CUDA torch): install it bare, the tests load only sampling.py
	$(PIP) install -q --no-deps k-diffusion==$(KDIFFUSION_VERSION)
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m fastint demo

test: $(VENV)/.installed
	FASTINT_REQUIRE_PEERS=1 $(PY) -m pytest $(PYTEST_ARGS) tests

# Compile-only nvcc check of the CUDA kernel sources for sm_90 (fails on a compile error; skips without nvcc).
NVCC ?= $(shell command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)
check-cuda:
	@if [ ! -x "$(NVCC)" ]; then echo "check-cuda: nvcc not found, skipping the CUDA compile check"; exit 0; fi; \
	set -e; out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; \
	echo "$(NVCC) -arch=sm_90 csrc/cuda/fused_step_check.cu"; \
	"$(NVCC)" -std=c++17 -O3 -arch=sm_90 -Icsrc -c csrc/cuda/fused_step_check.cu -o "$$out/check.o"

clean:
	rm -rf $(VENV) build *.egg-info fastint/*.so fastint/_build_info.py
