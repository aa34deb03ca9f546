"""Backend registry of the fused step op: what each backend supports, why it is unavailable, which one runs.

``auto`` chooses per device: CUDA tensors -> ``cuda`` (compiled extension), ``triton``, ``compile``, ``eager``;
CPU tensors -> ``cpp`` (compiled extension), ``compile``, ``eager``. The first available backend that supports the
call's dtypes wins. ``use_backend(name)`` or ``FASTINT_BACKEND`` override the choice; a backend requested
explicitly that cannot run raises (the environment variable only warns once and falls back to ``auto``).
"""

import contextlib
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

from .contract import FusedStepCall

AUTO_ORDER = {"cuda": ("cuda", "triton", "compile", "eager"), "cpu": ("cpp", "compile", "eager")}


@dataclass
class Backend:
    """One implementation of the fused op.

    ``probe`` returns None when the backend can run in this process, else the reason it cannot (called once).
    ``run`` executes a validated call. ``dtypes`` and ``devices`` declare what it supports. ``raw``, when given,
    returns the op itself as ``f(outs, inputs, coeffs, seeds, counter, num_noise)`` (used once the backend is
    available), so that a caller repeating an already validated kind of call skips building a ``FusedStepCall``.
    ``raw_checks``: that op checks every tensor's dtype, device, shape and contiguity itself, before it writes
    anything, and raises RuntimeError for a call it cannot run (a caller may leave those checks to it).
    """

    name: str
    description: str
    devices: Tuple[str, ...]
    dtypes: Tuple[torch.dtype, ...]
    probe: Callable[[], Optional[str]]
    run: Callable[[FusedStepCall], None]
    raw: Optional[Callable[[], Callable[..., None]]] = None
    raw_checks: bool = False
    _reason: Optional[str] = field(default=None, init=False)
    _probed: bool = field(default=False, init=False)

    def unavailable_reason(self) -> Optional[str]:
        if not self._probed:
            try:
                self._reason = self.probe()
            except Exception as exc:  # a probe must never break import or dispatch
                self._reason = f"probe failed: {exc!r}"
            self._probed = True
        return self._reason

    def raw_op(self) -> Callable[..., None]:
        """``f(outs, inputs, coeffs, seeds, counter, num_noise)`` running a call of a kind already validated."""
        if self.raw is not None:
            return self.raw()
        return lambda *args: self.run(FusedStepCall(*args))

    def cannot_run(self, call: FusedStepCall) -> Optional[str]:
        """None if this backend can execute ``call``, else why not."""
        reason = self.unavailable_reason()
        if reason:
            return reason
        if call.device.type not in self.devices:
            return f"runs on {'/'.join(self.devices)}, not {call.device.type}"
        unsupported = sorted(str(d) for d in call.dtypes if d not in self.dtypes)
        if unsupported:
            return f"does not support {', '.join(unsupported)}"
        return None


_BACKENDS: Dict[str, Backend] = {}
_state = threading.local()
_env_warned = set()
_CHOICES: Dict[tuple, Tuple[Backend, Callable[..., None]]] = {}  # see remember_choice
_OP_MEMOS: Dict[tuple, Dict[tuple, Tuple[Backend, Callable[..., None]]]] = {}  # see op_memo


def register(backend: Backend) -> Backend:
    _BACKENDS[backend.name] = backend
    _CHOICES.clear()
    _OP_MEMOS.clear()
    return backend


def choice_key(kind: tuple, requested: Optional[str]) -> tuple:
    """The key under which ``remember_choice`` stores the backend for a kind of call: the caller's description of
    the call (tensor counts, dtypes, device type, ...), the requested backend and, when none is requested (None or
    'auto'), the one in force (``select`` reads it only then)."""
    requested = None if requested == "auto" else requested
    return kind, requested, None if requested else current_backend()


def remembered_choice(key: tuple) -> Optional[Tuple[Backend, Callable[..., None]]]:
    """``(backend, raw op)`` chosen earlier in this process for ``key``, or None."""
    return _CHOICES.get(key)


def remember_choice(key: tuple, backend: Backend) -> Tuple[Backend, Callable[..., None]]:
    """Record that calls described by ``key`` (one of them validated and ``select``-ed) run on ``backend``, so that
    later sampling runs skip the validation and the selection for that kind (``register`` forgets every choice)."""
    choice = _CHOICES[key] = (backend, backend.raw_op())
    return choice


def op_memo(key: tuple) -> Dict[tuple, Tuple[Backend, Callable[..., None]]]:
    """A dict, the same for every call with this ``key`` (a ``choice_key``), in which a caller that runs many calls
    of a few kinds keeps the ``(backend, raw op)`` of each kind once a call of that kind went through
    ``remember_choice`` (the executor's replay: no per-run lookup of the choice); emptied with the choices by
    ``register``."""
    memo = _OP_MEMOS.get(key)
    if memo is None:
        memo = _OP_MEMOS[key] = {}
    return memo


def get(name: str) -> Backend:
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(sorted(_BACKENDS))} or 'auto'")
    return _BACKENDS[name]


def list_backends() -> List[dict]:
    """Every registered backend with its devices, dtypes and, when unavailable, the reason."""
    rows = []
    for b in _BACKENDS.values():
        reason = b.unavailable_reason()
        rows.append({"name": b.name, "available": reason is None, "reason": reason, "devices": b.devices,
                     "dtypes": tuple(str(d).replace("torch.", "") for d in b.dtypes),
                     "description": b.description})
    return rows


def current_backend() -> str:
    """The backend name in force: ``use_backend``'s, else ``FASTINT_BACKEND``'s, else ``auto``."""
    override = getattr(_state, "name", None)
    if override is not None:
        return override
    return os.environ.get("FASTINT_BACKEND", "auto") or "auto"


@contextlib.contextmanager
def _restore(previous: Optional[str]) -> Iterator[None]:
    try:
        yield
    finally:
        _state.name = previous


def use_backend(name: str):
    """Select the backend now; as a context manager, restore the previous choice on exit.

    Raises if ``name`` is unknown or unavailable in this process (with the reason).
    """
    if name != "auto":
        reason = get(name).unavailable_reason()
        if reason:
            raise RuntimeError(f"backend {name!r} is unavailable: {reason}")
    previous = getattr(_state, "name", None)
    _state.name = name
    return _restore(previous)


def select(call: FusedStepCall, requested: Optional[str] = None) -> Backend:
    """The backend that runs ``call``: the requested one (raising if it cannot), or, with None or 'auto', the one in
    force (``use_backend``, ``FASTINT_BACKEND``), which may itself be 'auto': the first suitable one."""
    requested = None if requested == "auto" else requested
    from_env = requested is None and getattr(_state, "name", None) is None and "FASTINT_BACKEND" in os.environ
    name = requested or current_backend()
    if name != "auto":
        backend = get(name)
        reason = backend.cannot_run(call)
        if reason is None:
            return backend
        if not from_env:
            raise RuntimeError(f"backend {name!r} cannot run this call: {reason}")
        if name not in _env_warned:
            _env_warned.add(name)
            warnings.warn(f"FASTINT_BACKEND={name} cannot run: {reason}; falling back to 'auto'", RuntimeWarning)
    reasons = []
    for candidate in AUTO_ORDER.get(call.device.type, ("eager",)):
        if candidate not in _BACKENDS:
            continue
        reason = _BACKENDS[candidate].cannot_run(call)
        if reason is None:
            return _BACKENDS[candidate]
        reasons.append(f"{candidate}: {reason}")
    raise RuntimeError(f"no fused-step backend can run on {call.device} with {sorted(map(str, call.dtypes))}: "
                       + "; ".join(reasons))
