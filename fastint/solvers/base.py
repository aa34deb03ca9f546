"""Solver base class and the sampling context that every solver drives.

Solvers are host-side orchestration only: they compute float64 coefficients from the CPU-resident sigmas and call
``SamplingContext.combine`` (one fused-op call per state update) and ``SamplingContext.denoise`` (one model call).
Nothing here reads device values, so a sampling loop never synchronises with the device.
"""

import functools
import math
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..ops import extension, registry
from ..ops.autograd import needs_grad
from ..ops.contract import validate

Term = Tuple[float, torch.Tensor]


def scaled(coef: float, terms: Sequence[Term]) -> List[Term]:
    """``coef * sum(c t)`` as terms."""
    return [(coef * c, t) for c, t in terms]


@dataclass(frozen=True)
class Option:
    """A solver option: its default, a validity check and the message naming the valid values."""

    default: Any
    check: Callable[[Any], bool]
    valid: str


def non_negative(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def unit_interval_open(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1


def one_of(*values):
    return lambda v: v in values


class Solver:
    """A sampling method. Subclasses set the class attributes and implement ``run(ctx, x) -> x``."""

    name: str = ""
    order: str = ""
    nfe_per_step: str = ""
    stochastic: bool = False
    summary: str = ""
    options: Dict[str, Option] = {}

    def __init__(self, **options):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(sorted(self.options)) or "none"
            raise TypeError(f"solver {self.name!r}: unknown option(s) {', '.join(unknown)}; valid options: {valid}")
        self.config = {k: opt.default for k, opt in self.options.items()}
        for key, value in options.items():
            if not self.options[key].check(value):
                raise ValueError(f"solver {self.name!r}: option {key}={value!r} is invalid: {self.options[key].valid}")
            self.config[key] = value

    def key(self) -> tuple:
        """The solver and its options, hashable (memo keys)."""
        return (type(self),) + tuple(sorted(self.config.items()))

    def uses_noise(self) -> bool:
        """Whether this configured solver draws noise (stochastic solvers with eta = 0 or s_noise = 0 do not)."""
        return self.stochastic and self.config.get("eta", 1) != 0 and self.config.get("s_noise", 1) != 0

    def run(self, ctx: "SamplingContext", x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class NoiseEvent:
    """The noise of one state update: streams 0..K-1 at one counter, or the caller's injected tensors.

    In-kernel noise is addressed by (per-sample seed, counter, stream, element); an injected ``noise_sampler`` is
    called once per stream with that stream's sub-interval ``(sigma_a, sigma_b)`` and its tensor is reused by every
    op call of the event (so stage noises are consistent with one Brownian path).
    """

    def __init__(self, ctx: "SamplingContext", counter: int, intervals: Sequence[Tuple[float, float]]):
        self.ctx, self.counter, self.intervals = ctx, counter, list(intervals)
        self._injected: Dict[int, torch.Tensor] = {}

    def injected(self, stream: int) -> torch.Tensor:
        if stream not in self._injected:
            self._injected[stream] = self.ctx.draw_injected_noise(*self.intervals[stream])
        return self._injected[stream]


@functools.lru_cache(maxsize=None)
def _compiled_all_finite() -> Optional[Callable[[torch.Tensor], bool]]:
    """The compiled extension's ``all_finite``, or None when the extension is not usable (or predates it)."""
    return None if extension.load() else getattr(extension.module(), "all_finite", None)


def all_finite(t: torch.Tensor) -> bool:
    """Whether every element of ``t`` is finite. With the compiled extension, a plain tensor is checked by
    ``fastint._C.all_finite`` (a contiguous CPU float tensor: one scan of its exponent bits, ~3 instead of ~30 us
    between network calls on a CPU). Otherwise a finite sum proves it (a NaN or an infinity makes the sum NaN or
    infinite): one reduction instead of ``isfinite`` + ``all``; only a non-finite sum, which finite values can also
    give by overflow, is settled element by element."""
    compiled = _compiled_all_finite()
    if compiled is not None and type(t) is torch.Tensor:
        return compiled(t)
    return math.isfinite(t.sum().item()) or bool(torch.isfinite(t).all())


def may_record_grad(model, x: torch.Tensor, extra_args: Dict[str, Any]) -> bool:
    """Whether autograd may record a sampling run: grad mode is on and x, a tensor in extra_args or a parameter of
    the model (an ``nn.Module``, or a fastint adapter's ``inner_model``) requires grad. Such a run takes the general
    loop with fresh op outputs (``combine``), never the planned loop's in-place buffer rotation."""
    if not torch.is_grad_enabled():
        return False
    if x.requires_grad or any(isinstance(v, torch.Tensor) and v.requires_grad for v in extra_args.values()):
        return True
    modules = (model, getattr(model, "inner_model", None))
    return any(isinstance(m, torch.nn.Module) and any(p.requires_grad for p in m.parameters()) for m in modules)


class SamplingContext:
    """What a solver needs: the model, the sigmas as floats, the noise source and the fused op."""

    def __init__(self, model, x: torch.Tensor, sigmas: List[float], extra_args: Dict[str, Any],
                 seeds: Optional[torch.Tensor], noise_sampler, backend: Optional[str], callback,
                 check_finite: str, progress_bar=None):
        self.model, self.sigmas, self.extra_args = model, sigmas, extra_args
        self.seeds, self.noise_sampler, self.backend = seeds, noise_sampler, backend
        self.callback, self.check_finite, self.progress_bar = callback, check_finite, progress_bar
        self.shape, self.dtype, self.device = x.shape, x.dtype, x.device
        self.nfe = 0
        self._denoise_at = getattr(model, "denoise_at", None)
        self._host_plan = getattr(model, "host_plan", None) if self._denoise_at is not None else None
        self._staged: Optional[Tuple[torch.Tensor, float, torch.Tensor]] = None
        self._owned: Dict[int, weakref.ref] = {}
        self._backends: Dict[Tuple, Tuple[registry.Backend, Callable]] = {}
        self.records_grad = may_record_grad(model, x, extra_args)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    # -- model -------------------------------------------------------------------------------------------------
    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """One model evaluation D(x, sigma) with sigma broadcast over the batch (a device fill, no host copy).
        A fastint adapter (``denoise_at``) gets the host float itself and computes its coefficients on the host."""
        if self._denoise_at is not None:
            out = self._denoise_at(x, sigma, **self.extra_args)
        else:
            sigma_batch = torch.full((self.shape[0],), sigma, dtype=self.dtype, device=self.device)
            out = self.model(x, sigma_batch, **self.extra_args)
        return self._checked(out, sigma)

    def denoise_terms(self, x: torch.Tensor, sigma: float) -> List[Term]:
        """D(x, sigma) as terms for ``combine``, so that the model-output -> x0 conversion costs no op of its own.

        A fastint adapter with a host path (``host_plan``) gives ``D = c_skip x + c_out F`` with F the network output
        at ``c_in x``: the terms ``[(c_skip, x), (c_out, F)]`` (F in x's dtype; otherwise D is converted as by
        ``denoise``). When the fused step that made ``x`` was told ``next_sigma=sigma``, its second output already
        holds ``c_in x``. Any other model: ``[(1.0, D)]``. The terms reference ``x``: a solver that keeps them must
        not overwrite ``x`` in place (see ``reusable``).
        """
        plan = self._host_plan(sigma) if self._host_plan is not None else None
        if plan is None:
            return [(1.0, self.denoise(x, sigma))]
        c_in, c_skip, c_out, t = plan
        staged, self._staged = self._staged, None
        if staged is not None and staged[0] is x and staged[1] == sigma:
            model_input = staged[2]
        else:
            model_input = x if c_in == 1.0 else x * c_in
        out = self._checked(self.model.network_output(model_input, t, x, **self.extra_args), sigma)
        if out.dtype != x.dtype:
            return [(1.0, self.model.to_state(x, out, c_skip, c_out))]
        return [(c_skip, x), (c_out, out)]

    def _checked(self, out, sigma: float) -> torch.Tensor:
        self.nfe += 1
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model returned {type(out).__name__}, expected a tensor shaped like x")
        if out.shape != self.shape or not out.is_floating_point() or out.device != self.device:
            raise ValueError(f"the model returned {tuple(out.shape)} {out.dtype} on {out.device}; expected "
                             f"{tuple(self.shape)} floating point on {self.device}")
        if self.check_finite == "step" and not all_finite(out):
            raise FloatingPointError(f"the model output at sigma={sigma:.6g} (evaluation {self.nfe}) "
                                     "contains NaN or Inf")
        return out

    def materialize(self, terms: Sequence[Term]) -> torch.Tensor:
        """The tensor ``sum c t`` of ``terms`` (the tensor itself for ``[(1.0, t)]``)."""
        if len(terms) == 1 and terms[0][0] == 1.0:
            return terms[0][1]
        return self.combine(terms)

    def report(self, i: int, x: torch.Tensor, sigma: float, sigma_hat: float, denoised) -> None:
        """k-diffusion-style callback and progress bar, once per step (``denoised``: a tensor or terms)."""
        if self.callback is not None:
            if not isinstance(denoised, torch.Tensor):
                denoised = self.materialize(denoised)
            self.callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})
        if self.progress_bar is not None:
            self.progress_bar.update(1)

    # -- noise -------------------------------------------------------------------------------------------------
    def noise_event(self, counter: int, intervals: Sequence[Tuple[float, float]]) -> NoiseEvent:
        """The noise of one update at ``counter`` (solvers use the step index; extra events use higher counters)."""
        return NoiseEvent(self, counter, intervals)

    def draw_injected_noise(self, sigma_a: float, sigma_b: float) -> torch.Tensor:
        z = self.noise_sampler(sigma_a, sigma_b)
        if not isinstance(z, torch.Tensor) or z.shape != self.shape or z.device != self.device:
            raise ValueError(f"noise_sampler returned {getattr(z, 'shape', type(z))} on "
                             f"{getattr(z, 'device', '?')}; expected a tensor of shape {tuple(self.shape)} on "
                             f"{self.device}")
        return z

    def owns(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is a state buffer this run allocated (weak references: ids are never confused)."""
        ref = self._owned.get(id(tensor))
        return ref is not None and ref() is tensor

    # -- the fused op ------------------------------------------------------------------------------------------
    def reusable(self, candidates: Sequence[torch.Tensor], keep: Sequence[Sequence[Term]]) -> Optional[torch.Tensor]:
        """The first of ``candidates`` that no term list in ``keep`` references (a buffer ``combine`` may overwrite
        in place once the step has read it), or None."""
        live = {id(t) for terms in keep for _, t in terms}
        return next((c for c in candidates if id(c) not in live), None)

    def combine(self, terms: Sequence[Term], noise: Optional[Tuple[NoiseEvent, Sequence[float]]] = None,
                inplace: Optional[torch.Tensor] = None, next_sigma: Optional[float] = None) -> torch.Tensor:
        """``sum c_i t_i + sum_k c_k z_k`` in one fused-op call.

        ``noise`` is ``(event, [c_0, ..., c_{K-1}])`` for streams 0..K-1 of the event. ``inplace`` names a state
        buffer to overwrite; it is only overwritten when this sampling run allocated it (the caller's tensors and
        model outputs are never written), else a new buffer is returned. ``next_sigma``: the model is evaluated at
        the result and that sigma next; with a fastint adapter whose input scale there is ``c_in != 1`` the same
        call also writes ``c_in * result`` (a second coefficient row ``c_in C``), which ``denoise_terms`` then
        hands to the network instead of computing it.
        """
        self._staged = None
        merged: Dict[int, List] = {}
        for coef, tensor in terms:
            entry = merged.setdefault(id(tensor), [0.0, tensor])
            entry[0] += float(coef)
        kept = [(c, t) for c, t in merged.values() if c != 0.0] or [list(merged.values())[0]]
        coeffs = [c for c, _ in kept]
        inputs = [t for _, t in kept]
        num_noise, seeds, counter = 0, None, 0
        if noise is not None and any(c != 0.0 for c in noise[1]):
            event, noise_coeffs = noise
            if self.noise_sampler is not None:
                inputs += [event.injected(k) for k in range(len(noise_coeffs))]
                coeffs += list(noise_coeffs)
            else:
                num_noise, seeds, counter = len(noise_coeffs), self.seeds, event.counter
                coeffs += list(noise_coeffs)
        recorded = needs_grad(inputs)  # autograd may need every earlier state: fresh outputs, never owned buffers
        out = inplace if inplace is not None and self.owns(inplace) and not recorded else None
        if out is None:
            out = torch.empty(self.shape, dtype=self.dtype, device=self.device)
            if not recorded:
                self._owned[id(out)] = weakref.ref(out)
        outs = [out]
        plan = self._host_plan(next_sigma) if next_sigma is not None and self._host_plan is not None else None
        if plan is not None and plan[0] != 1.0:
            outs.append(self._input_buffer())
            coeffs += [plan[0] * c for c in coeffs]
        self._fused_step(inputs, coeffs, num_noise, seeds, counter, outs)
        if len(outs) == 2:
            self._staged = (out, next_sigma, outs[1])
        return out

    def _input_buffer(self) -> torch.Tensor:
        """A fresh buffer for the next network input (never one the network may still hold, or a view of)."""
        return torch.empty(self.shape, dtype=self.dtype, device=self.device)

    def _fused_step(self, inputs, coeffs, num_noise, seeds, counter,
                    outs) -> Tuple[registry.Backend, Callable[..., None]]:
        """The op call with the per-call Python cost kept small: the first call of each kind (inputs, outputs, noise
        streams, dtypes, device type, backend request) in the process is fully validated and picks the backend
        (``registry.remember_choice``); later calls of that kind reuse the choice and go straight to the backend's
        op (``Backend.raw``). Every input is state-shaped on the state's device
        (``denoise`` and ``draw_injected_noise`` check model outputs and injected noise) and ``outs`` are buffers
        of this run, so only contiguity and the coefficients need checking again. ``coeffs``: the flattened
        (len(outs), N + K) matrix. Returns ``(backend, raw op)`` that calls of this kind run on
        (``linear.run_linear`` calls the op directly for later calls of the kind)."""
        key = (len(inputs), len(outs), num_noise, tuple([t.dtype for t in inputs]))
        chosen = self._backends.get(key)
        if chosen is None:
            process_key = registry.choice_key(key + (self.dtype, self.device.type), self.backend)
            chosen = registry.remembered_choice(process_key)
            if chosen is None:
                width = len(coeffs) // len(outs)
                call = validate(inputs, [coeffs[m * width:(m + 1) * width] for m in range(len(outs))], outs, seeds,
                                counter, num_noise)
                backend = registry.select(call, self.backend)
                chosen = self._backends[key] = registry.remember_choice(process_key, backend)
                backend.run(call)
                return chosen
            self._backends[key] = chosen
        if not math.isfinite(sum(coeffs)) and not all(math.isfinite(c) for c in coeffs):  # sum: the cheap test
            raise ValueError(f"non-finite step coefficients {coeffs}: check the sigmas and solver options")
        for t in inputs:
            if not t.is_contiguous():
                inputs = [t if t.is_contiguous() else t.contiguous() for t in inputs]
                break
        chosen[1](outs, inputs, coeffs, seeds, counter, num_noise)
        return chosen
