"""Options of the pytest-benchmark microbenchmarks (``pytest benchmarks/``); see docs/benchmarks.md."""

import pytest
import torch


def pytest_addoption(parser):
    group = parser.getgroup("fastint benchmarks")
    group.addoption("--bench-sizes", default=None,
                    help="comma-separated element counts (default: 64K..16M on CPU, 64K..64M on CUDA)")
    group.addoption("--bench-large", action="store_true", help="add 64M elements on the CPU (slow on few cores)")
    group.addoption("--bench-dtypes", default="fp32,bf16", help="comma-separated of fp32,bf16,fp16")
    group.addoption("--bench-device", default=None, choices=("cpu", "cuda"), help="default: cuda when available")


def pytest_generate_tests(metafunc):
    from benchmarks.bench_suite import CPU_SIZES, LARGE_SIZE
    config = metafunc.config
    device = config.getoption("--bench-device") or ("cuda" if torch.cuda.is_available() else "cpu")
    if config.getoption("--bench-sizes"):
        sizes = [int(s) for s in config.getoption("--bench-sizes").split(",")]
    else:
        sizes = list(CPU_SIZES) + ([LARGE_SIZE] if device == "cuda" or config.getoption("--bench-large") else [])
    dtypes = [d.strip() for d in config.getoption("--bench-dtypes").split(",") if d.strip()]
    if "elements" in metafunc.fixturenames:
        metafunc.parametrize("elements", sizes, ids=[f"n{n}" for n in sizes])
    if "dtype_name" in metafunc.fixturenames:
        metafunc.parametrize("dtype_name", dtypes)
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", [device])
