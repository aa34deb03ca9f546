"""Adapters: turn eps-, v-, x0- and flow-velocity-prediction models into the VE denoiser ``D(x~, sigma~) -> x0``.

fastint samples in VE coordinates (k-diffusion / EDM): ``x~ = x0 + sigma~ eps``. A model trained on the marginal
``x = alpha x0 + sigma eps`` (its own coordinates) sees the same point at ``x = alpha x~`` with ``sigma~ = sigma/alpha``.
Writing ``F`` for the model output at ``(alpha x~, t)``, the denoised estimate ``x0 = c_skip x~ + c_out F`` is

    prediction_type   model output F               c_skip                  c_out
    "epsilon"         eps                          1                       -sigma / alpha       (= -sigma~)
    "v_prediction"    v = alpha eps - sigma x0     alpha^2/(alpha^2+sigma^2)   -sigma/(alpha^2+sigma^2)
    "sample"          x0                           0                       1
    "flow"            v = eps - x0                 alpha/(alpha+sigma)     -sigma/(alpha+sigma)

(the rows solve ``x = alpha x0 + sigma eps`` for x0; for VP models ``alpha^2 + sigma^2 = 1``, for rectified flow
``alpha = 1 - t``, ``sigma = t``). Aliases "eps", "v" and "x0" are accepted.

Each adapter is a plain callable ``adapter(x, sigma, **extra_args)`` with ``x`` of shape (batch, ...) and ``sigma`` of
shape (batch,) (or a scalar tensor / number), as ``fastint.sample`` calls it. The sigma -> timestep mapping is done
with tensor ops on ``x``'s device: no ``.item()``, no host synchronisation, so a sampling loop stays capturable in a
CUDA graph. Coefficients are computed in float32 (float64 for float64 inputs), the result has ``x``'s dtype.

``adapter.denoise_at(x, sigma_float)`` is the path ``fastint.sample`` takes (one sigma for the whole batch, known on
the host): the coefficients and the timestep are computed in float64 Python from the host float, so a call costs the
network plus one or two elementwise ops (the conversion ``c_skip x + c_out F`` with host scalars) and a fill of the
timestep batch, instead of a dozen small tensor ops. It agrees with the tensor path to the rounding of the compute
dtype (the timestep of a quantized discrete model is the same integer). A model
may return a tensor, a tuple/list (first element is used) or an object with a ``.sample`` tensor (diffusers'
``UNet2DModel`` / ``UNet2DConditionModel``); its shape must equal ``x``'s.
"""

import bisect
import math
from typing import Callable, Optional, Sequence, Tuple

import torch

__all__ = ["DiscreteVPDenoiser", "ContinuousVPDenoiser", "VEDenoiser", "FlowDenoiser", "to_denoised", "skip_and_out",
           "PREDICTION_TYPES"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")
_ALIASES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
_PLAN_CACHE = 4096  # memoised host plans / cached CPU timestep batches per adapter (a schedule's worth, many times)


def _prediction_type(name: str, prediction_type: str, allowed=PREDICTION_TYPES) -> str:
    p = _ALIASES.get(prediction_type, prediction_type) if isinstance(prediction_type, str) else prediction_type
    if p not in allowed:
        raise ValueError(f"{name}: unknown prediction_type {prediction_type!r}; valid ones are "
                         f"{', '.join(map(repr, allowed))} (aliases: 'eps', 'v', 'x0')")
    return p


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def output_tensor(name: str, out) -> torch.Tensor:
    """The tensor a model returned: itself, the first element of a tuple/list, or ``out.sample`` (diffusers)."""
    if not isinstance(out, torch.Tensor):
        if isinstance(out, (tuple, list)) and out:
            out = out[0]
        elif hasattr(out, "sample"):
            out = out.sample
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name}: the model returned {type(out).__name__}, expected a tensor (or a tuple / an object "
                        f"with .sample holding one)")
    return out


def check_output_shape(name: str, out: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``out`` itself when it has the state's ``shape``; a clear error naming both shapes otherwise."""
    if out.shape != shape:
        raise ValueError(f"{name}: the model output has shape {tuple(out.shape)} but x has shape {tuple(shape)} "
                         f"(a model that also predicts variances returns 2x the channels: slice them off first)")
    return out


def _unwrap(name: str, out, x: torch.Tensor) -> torch.Tensor:
    """``output_tensor``, checked to have ``x``'s shape."""
    return check_output_shape(name, output_tensor(name, out), x.shape)


def to_denoised(output: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                prediction_type: str) -> torch.Tensor:
    """The denoised x0 from a model ``output`` made at the model input ``alpha * x`` (``x`` in VE coordinates).

    ``alpha``, ``sigma``: the model's own marginal coefficients, broadcastable against ``x`` (e.g. shape
    (batch, 1, ..., 1)). Implements the table of the module docstring; computed in the promoted dtype of the inputs.
    """
    p = _prediction_type("to_denoised", prediction_type)
    if p == "sample":
        return output
    c_skip, c_out = skip_and_out(p, alpha, sigma)
    return (x if p == "epsilon" else c_skip * x) + c_out * output


def skip_and_out(prediction_type: str, alpha, sigma):
    """``(c_skip, c_out)`` of ``x0 = c_skip x + c_out F`` (the module table) for the model's own ``alpha, sigma``:
    numbers or tensors; ``prediction_type`` is one of PREDICTION_TYPES."""
    if prediction_type == "sample":
        return 0.0, 1.0
    if prediction_type == "epsilon":
        return 1.0, -(sigma / alpha)
    if prediction_type == "v_prediction":
        norm = alpha * alpha + sigma * sigma
        return alpha * alpha / norm, -(sigma / norm)
    norm = alpha + sigma  # flow
    return alpha / norm, -(sigma / norm)


class _Adapter:
    """Common call path: sigma~ -> (alpha, sigma, t) in ``_coefficients``, call ``model(alpha x~, t)``, convert."""

    def __init__(self, model: Callable, prediction_type: str, allowed=PREDICTION_TYPES):
        if not callable(model):
            raise TypeError(f"{type(self).__name__}: model must be callable")
        self.inner_model = model
        self.prediction_type = _prediction_type(type(self).__name__, prediction_type, allowed)
        self._plans, self._timestep_cache, self.revision = {}, {}, 0

    def __setattr__(self, name, value):
        """Setting a public attribute after construction (``quantize``, ``prediction_type``, ...) drops the memoised
        host plans and timestep batches and bumps ``revision`` (the executor's memo key), so the change takes
        effect. (Schedules are read at construction: build a new adapter for new ``alphas_cumprod``.)"""
        super().__setattr__(name, value)
        if not name.startswith("_") and name != "revision" and "_plans" in self.__dict__:
            self._plans, self._timestep_cache = {}, {}
            super().__setattr__("revision", self.revision + 1)

    def _coefficients(self, sigma: torch.Tensor):  # -> alpha, sigma_model, model timestep; sigma is (batch,)
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, sigma, **extra_args) -> torch.Tensor:
        name = type(self).__name__
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
            raise TypeError(f"{name}: x must be a floating-point tensor of shape (batch, ...)")
        cd = _compute_dtype(x)
        s = torch.as_tensor(sigma, device=x.device).to(cd)
        if s.dim() == 0:
            s = s.expand(x.shape[0])
        if s.shape != (x.shape[0],):
            raise ValueError(f"{name}: sigma must be a scalar or have shape (batch,) = ({x.shape[0]},), "
                             f"got {tuple(s.shape)}")
        alpha, sig, t = self._coefficients(s)
        view = (-1,) + (1,) * (x.dim() - 1)
        alpha, sig = alpha.view(view), sig.view(view)
        out = _unwrap(name, self.inner_model(x * alpha.to(x.dtype), t, **extra_args), x)
        return to_denoised(out.to(cd), x.to(cd), alpha, sig, self.prediction_type).to(x.dtype)

    def _host_coefficients(self, sigma: float) -> Optional[Tuple[float, float, float]]:
        """alpha, sigma_model, model timestep from a host float sigma~ (float64 math), or None: no host path."""
        return None

    def _timestep_dtype(self, x: torch.Tensor) -> torch.dtype:
        return _compute_dtype(x)

    def host_plan(self, sigma: float) -> Optional[Tuple[float, float, float, float]]:
        """``(c_in, c_skip, c_out, t)`` at a host float sigma~ (float64, memoised per sigma), or None when this
        adapter has no host path: the network sees ``c_in x~`` at timestep ``t`` and ``D = c_skip x~ + c_out F``
        (``c_in`` = alpha; "sample": c_skip = 0, c_out = 1)."""
        plan = self._plans.get(sigma)
        if plan is None:
            coefficients = self._host_coefficients(sigma)
            if coefficients is None:
                return None
            alpha, sig, t = coefficients
            c_skip, c_out = skip_and_out(self.prediction_type, alpha, sig)
            plan = (alpha, float(c_skip), float(c_out), t)
            if len(self._plans) < _PLAN_CACHE:
                self._plans[sigma] = plan
        return plan

    def network_output(self, model_input: torch.Tensor, t: float, x: torch.Tensor, **extra_args) -> torch.Tensor:
        """``F``: the network at ``model_input`` (= c_in x~) and the timestep ``t`` of ``host_plan``, unwrapped and
        checked against ``x``'s shape."""
        return _unwrap(type(self).__name__, self.inner_model(model_input, self.timesteps(x, t), **extra_args), x)

    def timesteps(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """The timestep batch (a fill) for state ``x`` and the timestep ``t`` of ``host_plan``."""
        return self.timestep_batches(x, (t,))[0]

    def timestep_batches(self, x: torch.Tensor, ts: Sequence[float]) -> Sequence[torch.Tensor]:
        """``[timesteps(x, t) for t in ts]``: rows of one (len(ts), batch) tensor. On the CPU they are cached per
        (ts, dtype, batch): the same rows are handed to the network again as long as the version counter they share
        shows them unmodified (they are made outside inference mode so that they have one); a network that writes
        into one gets fresh rows next time."""
        dtype, batch = self._timestep_dtype(x), x.shape[0]
        if x.device.type != "cpu":
            return [torch.full((batch,), t, dtype=dtype, device=x.device) for t in ts]  # fills: capturable
        key = (tuple(ts), dtype, batch)
        hit = self._timestep_cache.get(key)
        if hit is None or hit[0]._version != hit[1]:
            with torch.inference_mode(False):
                block = torch.tensor(ts, dtype=dtype).repeat_interleave(batch).view(len(ts), batch)
                hit = (block, block._version, block.unbind(0))
            if len(self._timestep_cache) < _PLAN_CACHE or key in self._timestep_cache:
                self._timestep_cache[key] = hit
        return hit[2]

    def denoise_at(self, x: torch.Tensor, sigma: float, **extra_args) -> torch.Tensor:
        """``D(x, sigma)`` for one host float ``sigma`` shared by the batch (the sampling loop's call).

        ``x0 = c_skip x + c_out F`` with ``c_skip, c_out`` from the module table evaluated in float64 on the host;
        one fused ``add`` (epsilon) or a multiply and an add (v, flow: in float32 for 16-bit states)."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
            raise TypeError(f"{name}.denoise_at: x must be a floating-point tensor of shape (batch, ...)")
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"{name}.denoise_at: sigma must be a finite number >= 0 (a host float), got {sigma!r}")
        sigma = float(sigma)
        plan = self.host_plan(sigma)
        if plan is None:
            return self(x, torch.full((x.shape[0],), sigma, dtype=_compute_dtype(x), device=x.device), **extra_args)
        c_in, c_skip, c_out, t = plan
        out = self.network_output(x if c_in == 1.0 else x * c_in, t, x, **extra_args)
        return self.to_state(x, out, c_skip, c_out)

    def to_state(self, x: torch.Tensor, out: torch.Tensor, c_skip: float, c_out: float) -> torch.Tensor:
        """``c_skip x + c_out out`` in ``x``'s dtype (computed in float32 for 16-bit states unless c_skip is 0/1)."""
        if self.prediction_type == "sample":
            return out if out.dtype == x.dtype else out.to(x.dtype)
        if c_skip == 1.0:
            denoised = torch.add(x, out, alpha=c_out)
        elif x.element_size() < 4:
            denoised = torch.add(x.float() * c_skip, out.float(), alpha=c_out)
        else:
            denoised = torch.add(x * c_skip, out, alpha=c_out)
        return denoised if denoised.dtype == x.dtype else denoised.to(x.dtype)

    def __repr__(self):
        return f"{type(self).__name__}({self.inner_model!r}, prediction_type={self.prediction_type!r})"


class DiscreteVPDenoiser(_Adapter):
    """Discrete-time VP model ``model(x, t, **kw)`` (e.g. diffusers' ``UNet2DModel``) indexed by integer timestep.

    ``sigma_t = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t])`` (VE sigma of training step t). Given sigma~:

        alpha = 1 / sqrt(1 + sigma~^2),   sigma = sigma~ alpha,   x = alpha x~,
        t = argmin_t |log sigma~ - log sigma_t|                 (quantize=True: int64, k-diffusion's quantize)
        t = i + (log sigma~ - log sigma_i) / (log sigma_{i+1} - log sigma_i)   (quantize=False: float, clamped to
                                                                               [0, T-1]; k-diffusion's interpolation)

    and ``x0`` from the model output as in the module table, with the exact sigma~ (not the quantized one), as
    k-diffusion's ``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser`` do. ``model_sigmas`` / ``sigma_min`` /
    ``sigma_max`` give the training sigmas (float64, CPU) for building schedules.
    """

    def __init__(self, model: Callable, alphas_cumprod, prediction_type: str = "epsilon", quantize: bool = True):
        super().__init__(model, prediction_type, ("epsilon", "v_prediction", "sample"))
        from ..schedules import _alphas_cumprod
        ab = _alphas_cumprod(type(self).__name__, alphas_cumprod)
        self.alphas_cumprod = ab
        self.model_sigmas = ((1 - ab) / ab).sqrt()
        self.log_sigmas = self.model_sigmas.log()
        self.quantize = bool(quantize)
        self._cache = {}
        self._log_sigma_list = self.log_sigmas.tolist()

    @property
    def sigma_min(self) -> float:
        return float(self.model_sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.model_sigmas[-1])

    def _log_sigmas(self, device, dtype) -> torch.Tensor:
        key = (device, dtype)
        if key not in self._cache:
            self._cache[key] = self.log_sigmas.to(device=device, dtype=dtype)
        return self._cache[key]

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Training timestep of VE ``sigma`` (tensor): int64 nearest in log sigma, or float interpolated."""
        log_sigmas = self._log_sigmas(sigma.device, sigma.dtype)
        ls = sigma.log()
        low = (torch.searchsorted(log_sigmas, ls.contiguous()) - 1).clamp(0, log_sigmas.shape[0] - 2)
        lo, hi = log_sigmas[low], log_sigmas[low + 1]
        w = ((ls - lo) / (hi - lo)).clamp(0, 1)
        if self.quantize:
            return low + (w > 0.5).to(low.dtype)
        return low.to(sigma.dtype) + w

    def _coefficients(self, s):
        alpha = torch.rsqrt(1 + s * s)
        return alpha, s * alpha, self.sigma_to_t(s)

    def _host_timestep(self, sigma: float) -> float:
        """``sigma_to_t`` for a host float (bisection in the float64 log sigmas)."""
        log_sigmas = self._log_sigma_list
        ls = math.log(sigma) if sigma > 0 else -math.inf
        low = min(max(bisect.bisect_left(log_sigmas, ls) - 1, 0), len(log_sigmas) - 2)
        lo, hi = log_sigmas[low], log_sigmas[low + 1]
        w = min(max((ls - lo) / (hi - lo), 0.0), 1.0)
        if self.quantize:
            return low + (1 if w > 0.5 else 0)
        return low + w

    def _timestep_dtype(self, x):
        return torch.int64 if self.quantize else _compute_dtype(x)

    def _host_coefficients(self, sigma):
        alpha = 1.0 / math.sqrt(1.0 + sigma * sigma)
        return alpha, sigma * alpha, self._host_timestep(sigma)


class ContinuousVPDenoiser(_Adapter):
    """Continuous-time model ``model(x, t, **kw)`` trained on ``x = alpha(t) x0 + sigma(t) eps``.

    ``sigma_to_t(sigma~) -> t`` (tensor in, tensor out, on the device) inverts ``sigma~ = sigma(t) / alpha(t)``.
    With ``alpha_fn``/``sigma_fn`` given (both or neither) the model input is ``alpha(t) x~`` and the conversion
    uses ``alpha(t), sigma(t)``; without them the process is variance preserving and
    ``alpha = 1/sqrt(1 + sigma~^2)``, ``sigma = sigma~ alpha`` come from sigma~ directly.
    Example, the VP-SDE of Song et al. (beta_min=0.1, beta_d=19.9, t in [0, 1]):
    ``sigma_to_t = lambda s: ((0.1**2 + 2 * 19.9 * torch.log1p(s**2)).sqrt() - 0.1) / 19.9``.
    """

    def __init__(self, model: Callable, sigma_to_t: Callable, alpha_fn: Optional[Callable] = None,
                 sigma_fn: Optional[Callable] = None, prediction_type: str = "epsilon"):
        super().__init__(model, prediction_type)
        if not callable(sigma_to_t):
            raise TypeError("ContinuousVPDenoiser: sigma_to_t must be callable")
        if (alpha_fn is None) != (sigma_fn is None):
            raise ValueError("ContinuousVPDenoiser: give both alpha_fn and sigma_fn, or neither (VP)")
        if alpha_fn is not None and not (callable(alpha_fn) and callable(sigma_fn)):
            raise TypeError("ContinuousVPDenoiser: alpha_fn and sigma_fn must be callable")
        self.sigma_to_t, self.alpha_fn, self.sigma_fn = sigma_to_t, alpha_fn, sigma_fn

    def _coefficients(self, s):
        t = self.sigma_to_t(s)
        if self.alpha_fn is None:
            alpha = torch.rsqrt(1 + s * s)
            return alpha, s * alpha, t
        alpha = torch.as_tensor(self.alpha_fn(t), device=s.device).to(s.dtype).expand(s.shape)
        sig = torch.as_tensor(self.sigma_fn(t), device=s.device).to(s.dtype).expand(s.shape)
        return alpha, sig, t


class VEDenoiser(_Adapter):
    """VE model ``model(x~, sigma~, **kw)`` (EDM / NCSN-style: alpha = 1, sigma = sigma~) predicting x0
    (``"sample"``, default: ``D = F``) or eps (``"epsilon"``: ``D = x~ - sigma~ F``)."""

    def __init__(self, model: Callable, prediction_type: str = "sample"):
        super().__init__(model, prediction_type, ("sample", "epsilon"))

    def _coefficients(self, s):
        return torch.ones_like(s), s, s

    def _host_coefficients(self, sigma):
        return 1.0, sigma, sigma


class FlowDenoiser(_Adapter):
    """Rectified-flow model ``model(x_flow, timestep_scale * t, **kw)`` on ``x_flow = (1 - t) x0 + t eps``.

        t = sigma~ / (1 + sigma~),   x_flow = (1 - t) x~ = x~ / (1 + sigma~),
        "flow" (velocity v = eps - x0):  x0 = x_flow - t v;   "epsilon": x0 = x~ - sigma~ eps;   "sample": x0 = F.

    ``timestep_scale=1000`` is diffusers' convention (SD3, FLUX transformers get ``t * 1000``).
    """

    def __init__(self, model: Callable, timestep_scale: float = 1000.0, prediction_type: str = "flow"):
        super().__init__(model, prediction_type, ("flow", "epsilon", "sample"))
        if isinstance(timestep_scale, bool) or not isinstance(timestep_scale, (int, float)) \
                or not math.isfinite(timestep_scale) or timestep_scale <= 0:
            raise ValueError(f"FlowDenoiser: timestep_scale must be a finite number > 0, got {timestep_scale!r}")
        self.timestep_scale = float(timestep_scale)

    def _coefficients(self, s):
        alpha = 1 / (1 + s)  # = 1 - t, without the cancellation of 1 - t at large sigma~
        t = s * alpha
        return alpha, t, t * self.timestep_scale

    def _host_coefficients(self, sigma):
        alpha = 1.0 / (1.0 + sigma)
        return alpha, sigma * alpha, sigma * alpha * self.timestep_scale
