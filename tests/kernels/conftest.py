"""Fixtures of the compiled-kernel tests (tests/kernels/); the rules live in kernel_backends.py."""

import pytest

from kernel_backends import backend_cases, require_backend


@pytest.fixture(params=backend_cases(), ids=lambda c: f"{c[0]}-{c[1]}")
def backend(request):
    name, device = request.param
    require_backend(name, device)
    return name, device
