"""The compiled extension ``fastint._C``: guarded loading and the ``cpp`` (CPU) and ``cuda`` backends.

Loading is lazy (the first probe, i.e. the first ``list_backends()`` or auto dispatch) and can never break
``import fastint``: a build made for another torch version, or a library that fails to load each make the backends
unavailable with that reason. Without an ahead-of-time build (pip's build isolation hides torch from setup.py) the
first probe compiles the extension just in time (``jit_build``: one line saying so, cached per torch version and
machine); without a compiler one warning says what is missing and that the pure-Python backends are in use.
Loading never initialises CUDA.

The op ``torch.ops.fastint.fused_step(outs, inputs, coeffs, seeds, counter, num_noise)`` is defined in C++
(``csrc/ops.cpp``); its fake (meta) implementation is registered here, so ``torch.compile`` sees one opaque op.
``fastint._C.fused_step`` is a faster Python entry to the same op (CPython argument parsing, typed dispatcher
call) that the sampling loop uses for calls of a kind already validated (``Backend.raw``).
``FASTINT_DISABLE_EXT=1`` skips the extension at run time.
"""

import importlib
import importlib.util
import os
import sys
import threading
import warnings
from typing import Optional, Tuple

import torch

from . import registry
from .contract import KERNEL_DTYPES, FusedStepCall

_lock = threading.Lock()
_state = {"loaded": False, "reason": None, "module": None}
_warned = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _register_fakes() -> None:
    try:
        @torch.library.register_fake("fastint::fused_step")
        def _fused_step_fake(outs, inputs, coeffs, seeds, counter, num_noise):
            """The compiled op's tensor checks (ops.cpp: one device and one shape for every tensor, float32 /
            float16 / bfloat16), nothing computed: a meta or fake tensor among real ones is refused as there."""
            ref = inputs[0]
            for what, tensors in (("input", inputs), ("output", outs)):
                for k, t in enumerate(tensors):
                    if t.device != ref.device or t.shape != ref.shape or t.dtype not in KERNEL_DTYPES:
                        raise RuntimeError(f"fastint::fused_step: {what} {k} is {t.dtype} {tuple(t.shape)} on "
                                           f"{t.device}; input 0 is {tuple(ref.shape)} on {ref.device} (float32, "
                                           "float16 or bfloat16 tensors of one shape on one device)")
            return None

        @torch.library.register_fake("fastint::philox_words")
        def _philox_words_fake(seeds, counter, stream, n):
            return seeds.new_empty((seeds.shape[0], (n + 3) // 4, 4))
    except RuntimeError as exc:  # already registered (module re-imported)
        if "already" not in str(exc):
            raise


def _build_info():
    """``fastint/_build_info.py`` (written by every build), or None when the package was not built by setup.py."""
    try:
        from fastint import _build_info
    except ImportError:
        return None
    return _build_info


def _just_in_time(info) -> Tuple[Optional[object], Optional[str]]:
    """No ahead-of-time build: compile on first use (``jit_build``) unless disabled; (module, None) or (None, why)."""
    from .. import _build
    if _build.disabled_by_env():
        return None, "FASTINT_BUILD_EXT=0 is set: no compiled kernels, no just-in-time build"
    mode = getattr(info, "MODE", None)
    if mode == "disabled" and not _build.enabled_by_env():
        return None, ("installed with FASTINT_BUILD_EXT=0 (pure Python by request); set FASTINT_BUILD_EXT=1 to "
                      "compile on first use, or reinstall without it")
    from . import jit_build
    module, problem = jit_build.build_and_load()
    if module is not None:
        return module, None
    why_not_installed = getattr(info, "REASON", None) or "nothing was compiled at install time"
    reason = f"no compiled kernels: {why_not_installed}; on first use: {problem}"
    _warn_once("jit", f"fastint: {reason}. Using the pure-Python backends (eager; compile where a C++ compiler "
                      "works); see docs/build.md.")
    return None, reason


def _load() -> Optional[str]:
    """Import fastint._C once (built ahead of time, or just in time on first use); None on success, else the
    reason it is unusable."""
    if os.environ.get("FASTINT_DISABLE_EXT", "").strip().lower() in ("1", "true", "yes", "on"):
        return "disabled by FASTINT_DISABLE_EXT"
    info = _build_info()
    if importlib.util.find_spec("fastint._C") is None:
        module, reason = _just_in_time(info)
        if module is None:
            return reason
        sys.modules["fastint._C"] = module
    else:
        built_for = getattr(info, "TORCH_VERSION", None)
        if built_for is not None and built_for != torch.__version__:
            reason = (f"fastint._C was built against torch {built_for} but torch {torch.__version__} is running; "
                      "rebuild with `pip install --no-build-isolation -e .`")
            _warn_once("mismatch", f"fastint: {reason}. Falling back to the pure-PyTorch backends.")
            return reason
        try:
            module = importlib.import_module("fastint._C")
        except (ImportError, OSError) as exc:
            reason = f"fastint._C failed to load: {exc}"
            _warn_once("load", f"fastint: {reason}. Falling back to the pure-PyTorch backends.")
            return reason
    compiled_for = getattr(module, "TORCH_VERSION", None)
    if compiled_for != torch.__version__:
        reason = f"fastint._C was compiled against torch {compiled_for}, running torch {torch.__version__}"
        _warn_once("mismatch", f"fastint: {reason}. Falling back to the pure-PyTorch backends.")
        return reason
    if not hasattr(torch.ops.fastint, "fused_step"):
        return "fastint._C loaded but did not register torch.ops.fastint.fused_step"
    _register_fakes()
    _state["module"] = module
    return None


def load() -> Optional[str]:
    """Load the extension (once); None if usable, else why not."""
    with _lock:
        if not _state["loaded"]:
            try:
                _state["reason"] = _load()
            except Exception as exc:  # never let a broken build escape
                _state["reason"] = f"fastint._C failed to load: {exc!r}"
            _state["loaded"] = True
        return _state["reason"]


def module():
    """The loaded ``fastint._C`` module (raises with the reason when unavailable)."""
    reason = load()
    if reason:
        raise RuntimeError(reason)
    return _state["module"]


def has_cuda_kernels() -> bool:
    return load() is None and bool(getattr(_state["module"], "WITH_CUDA", 0))


def cpu_kernel_capability() -> str:
    """Which compiled CPU tile kernel runs on this machine: DEFAULT, AVX2 or AVX512."""
    module()
    return torch.ops.fastint.cpu_kernel_capability()


def philox_words(seeds: torch.Tensor, counter: int, stream: int, n: int) -> torch.Tensor:
    """Test hook: the C++ Philox words (int64 holding uint32), shape (S, ceil(n/4), 4)."""
    module()
    return torch.ops.fastint.philox_words(seeds, counter, stream, n)


def _probe_cpp() -> Optional[str]:
    return load()


def _probe_cuda() -> Optional[str]:
    reason = load()
    if reason:
        return reason
    if not has_cuda_kernels():
        if not torch.version.cuda:
            return f"this torch ({torch.__version__}) has no CUDA; the extension was built with CPU kernels only"
        return "the extension was built without CUDA kernels (no CUDA toolkit / CUDA_HOME at build time)"
    if not torch.cuda.is_available():  # does not initialise CUDA
        return "no CUDA device is available"
    return None


def _run(call: FusedStepCall) -> None:
    torch.ops.fastint.fused_step.default(call.outs, call.inputs, call.coeffs, call.seeds, call.counter,
                                         call.num_noise)


def _raw():
    """``fastint._C.fused_step``: the same op without the boxed argument path (``csrc/python_entry.cpp``)."""
    return module().fused_step


registry.register(registry.Backend(
    name="cpp", description="compiled C++ CPU kernel (at::parallel_for, AVX2 Philox + Box-Muller with fastint's own log/sincos polynomials)",
    devices=("cpu",), dtypes=KERNEL_DTYPES, probe=_probe_cpp, run=_run, raw=_raw, raw_checks=True))
registry.register(registry.Backend(
    name="cuda", description="compiled CUDA kernel (vectorised loads, grid-stride, in-kernel Philox)",
    devices=("cuda",), dtypes=KERNEL_DTYPES, probe=_probe_cuda, run=_run, raw=_raw, raw_checks=True))
