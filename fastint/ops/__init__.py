"""The fused step op and its backends (see ``fused_step`` and DESIGN: every tensor update goes through it)."""

from . import autograd, compiled, eager  # noqa: F401  (register the built-in backends and the autograd op)
from . import extension, triton_kernel  # noqa: F401  (optional backends: lazy, their import never fails)
from .fused_step import fused_step
from .registry import current_backend, list_backends, use_backend

__all__ = ["fused_step", "list_backends", "use_backend", "current_backend"]
