"""Which backends the compiled-kernel tests (tests/kernels/) run here, and why the others do not.

The Triton backend runs in-process on CUDA tensors when a GPU is present. Without one, its parity suite runs in a
subprocess with ``TRITON_INTERPRET=1`` set before triton is imported (``test_triton_interpreter_suite``), which sets
``FASTINT_TEST_TRITON_INTERPRET=1`` so that this same module parametrises over ("triton", "cpu"). Likewise the cpp
tests rerun under ``ATEN_CPU_CAPABILITY=default`` (``test_cpu_kernel_at_lower_capability``), with only ("cpp", "cpu").
"""

import os
import shutil

import pytest
import torch

import fastint  # noqa: F401  (registers the backends)
from fastint.ops import registry

IN_TRITON_SUBPROCESS = os.environ.get("FASTINT_TEST_TRITON_INTERPRET") == "1"
# Set (to DEFAULT / AVX2) by test_cpu_kernel_at_lower_capability, which runs the cpp tests under ATEN_CPU_CAPABILITY.
CAPABILITY_SUBPROCESS = os.environ.get("FASTINT_TEST_CPU_CAPABILITY", "")


def extension_expected() -> bool:
    """A C++ compiler is present and the build was not switched off: the cpp backend must then exist."""
    if os.environ.get("FASTINT_BUILD_EXT", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return any(shutil.which(c) for c in (os.environ.get("CXX", "c++"), "g++", "clang++"))


def backend_cases():
    """(backend, device) pairs the parity tests cover in this process."""
    if IN_TRITON_SUBPROCESS:
        return [("triton", "cpu")]
    if CAPABILITY_SUBPROCESS:
        return [("cpp", "cpu")]
    cases = [("cpp", "cpu"), ("cuda", "cuda")]
    if torch.cuda.is_available():
        cases.append(("triton", "cuda"))
    return cases


def require_backend(name: str, device: str) -> None:
    """Skip when the backend cannot run here (with the reason); FAIL when it should have been built/usable."""
    reason = registry.get(name).unavailable_reason()
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"{name}: no CUDA device")
    if reason is None:
        return
    if name == "cpp" and extension_expected():
        pytest.fail(f"the cpp backend is unavailable although a C++ compiler is present and FASTINT_BUILD_EXT is "
                    f"not 0: {reason}")
    if name == "triton" and IN_TRITON_SUBPROCESS:
        pytest.fail(f"triton must run under TRITON_INTERPRET=1: {reason}")
    pytest.skip(f"{name} unavailable: {reason}")
