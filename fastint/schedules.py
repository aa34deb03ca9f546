"""Noise schedules: float64 CPU 1-D tensors of VE sigmas, strictly decreasing, ending in an appended 0.

VE sigma (k-diffusion / EDM convention): for a marginal ``x_t = alpha_t x0 + sigma_t eps`` the VE level is
``sigma~ = sigma_t / alpha_t``. Then

- VP / DDPM models:      ``sigma~ = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t])``;
- rectified flow models: ``alpha = 1 - t``, ``sigma = t``, so ``sigma~ = t / (1 - t)`` and ``t = sigma~ / (1 + sigma~)``.

Every schedule ends in 0 (alpha = 1: the clean data). Pass these sigmas to ``fastint.sample`` together with a
denoiser from ``fastint.models`` (``DiscreteVPDenoiser``, ``FlowDenoiser``, ...).
"""

import functools
import math
import weakref
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["karras", "exponential", "vp_discrete", "DiscreteSchedule", "flow", "betas_linear",
           "betas_scaled_linear", "alphas_cumprod_from_betas", "SPACINGS", "CONVENTIONS"]

SPACINGS = ("leading", "linspace", "trailing")
CONVENTIONS = ("dpmsolver", "ddim")


class DiscreteSchedule(NamedTuple):
    """``sigmas``: float64 (n + 1,) VE sigmas ending in 0; ``timesteps``: int64 (n,) training timesteps they sit at."""
    sigmas: torch.Tensor
    timesteps: torch.Tensor


# ----------------------------------------------------------------------------------------------------- validation
def _check_n(name: str, n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name}: n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"{name}: n must be >= 1, got {n}")
    return int(n)


def _check_float(name: str, what: str, v) -> float:
    if isinstance(v, bool) or isinstance(v, torch.Tensor) and v.numel() != 1:
        raise TypeError(f"{name}: {what} must be a real number, got {v!r}")
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: {what} must be a real number, got {v!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name}: {what} must be finite, got {v}")
    return v


def _check_range(name: str, sigma_min, sigma_max):
    sigma_min = _check_float(name, "sigma_min", sigma_min)
    sigma_max = _check_float(name, "sigma_max", sigma_max)
    if not 0.0 < sigma_min < sigma_max:
        raise ValueError(f"{name}: need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    return sigma_min, sigma_max


def _pin(s: torch.Tensor, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Make the end points exactly ``sigma_max`` and (for n > 1) ``sigma_min`` (the formulas miss them by an ulp)."""
    s[-1] = sigma_min
    s[0] = sigma_max
    return s


def _append_zero(s: torch.Tensor) -> torch.Tensor:
    return torch.cat([s, s.new_zeros(1)])


_VALID_ALPHAS = {}  # id(tensor) -> (weak reference, version counter) of the tensors that passed _alphas_cumprod
_VP_SCHEDULES = {}  # vp_discrete's arguments (alphas by id and version) -> (weak reference, sigmas, timesteps)
_VP_SCHEDULES_SIZE = 256


def _alphas_cumprod(name: str, alphas_cumprod) -> torch.Tensor:
    """Validate and return ``alphas_cumprod`` as float64 CPU: 1-D, finite, in (0, 1], strictly decreasing.

    A float64 CPU tensor that passed is remembered with its version counter and not checked again while it is
    unmodified (schedules are rebuilt per sampling call from the same ``alphas_cumprod``)."""
    if isinstance(alphas_cumprod, torch.Tensor):
        known = _VALID_ALPHAS.get(id(alphas_cumprod))
        if known is not None and known[0]() is alphas_cumprod and known[1] == _version(alphas_cumprod):
            return alphas_cumprod.detach()
        ab = alphas_cumprod.detach().to("cpu", torch.float64)
    else:
        try:
            ab = torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float64))
        except (TypeError, ValueError):
            raise TypeError(f"{name}: alphas_cumprod must be a 1-D sequence of numbers") from None
    if ab.dim() != 1 or ab.numel() < 2:
        raise ValueError(f"{name}: alphas_cumprod must be 1-D with at least 2 entries, got shape {tuple(ab.shape)}")
    a = ab.numpy()  # the checks in numpy: a few microseconds instead of a dozen small tensor ops
    if not (np.isfinite(a).all() and (a > 0).all() and (a <= 1).all()):
        raise ValueError(f"{name}: alphas_cumprod must be finite and in (0, 1] (a zero-terminal-SNR schedule has an "
                         f"infinite VE sigma: clip its last entry)")
    if not (a[1:] < a[:-1]).all():
        raise ValueError(f"{name}: alphas_cumprod must be strictly decreasing")
    if isinstance(alphas_cumprod, torch.Tensor) and ab.data_ptr() == alphas_cumprod.data_ptr() \
            and _version(alphas_cumprod) is not None:
        key = id(alphas_cumprod)
        _VALID_ALPHAS[key] = (weakref.ref(alphas_cumprod, lambda _: _VALID_ALPHAS.pop(key, None)),
                              _version(alphas_cumprod))
    return ab


def _version(t: torch.Tensor):
    """The tensor's version counter (bumped by every in-place write), None for an inference tensor (it has none)."""
    return None if t.is_inference() else t._version


# ------------------------------------------------------------------------------------------- continuous schedules
def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) schedule, k-diffusion's ``get_sigmas_karras`` in float64:

        sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,  i = 0..n-1,  then 0,

    with the end points set to exactly sigma_max and sigma_min (n = 1: just sigma_max).
    """
    n = _check_n("karras", n)
    sigma_min, sigma_max = _check_range("karras", sigma_min, sigma_max)
    rho = _check_float("karras", "rho", rho)
    if rho <= 0:
        raise ValueError(f"karras: rho must be > 0, got {rho}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero(_pin((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho, sigma_min, sigma_max))


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Log-uniform schedule, k-diffusion's ``get_sigmas_exponential`` in float64:

        sigma_i = exp(log sigma_max + i/(n-1) (log sigma_min - log sigma_max)),  i = 0..n-1,  then 0,

    with the end points set to exactly sigma_max and sigma_min (n = 1: just sigma_max).
    """
    n = _check_n("exponential", n)
    sigma_min, sigma_max = _check_range("exponential", sigma_min, sigma_max)
    s = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()
    return _append_zero(_pin(s, sigma_min, sigma_max))


# --------------------------------------------------------------------------------------------- discrete VP models
@functools.lru_cache(maxsize=256)
def _valid_timesteps(n: int, T: int, spacing: str, steps_offset: int, convention: str,
                     last_timestep: int) -> np.ndarray:
    """``_timesteps`` checked (distinct, decreasing, in [0, T)) and memoised; read-only (callers copy)."""
    t = _timesteps(n, T, spacing, steps_offset, convention, last_timestep)
    if len(t) < 1 or (np.diff(t) >= 0).any() or t.min() < 0 or t.max() >= T:
        raise ValueError(f"vp_discrete: spacing {spacing!r} ({convention} convention) with n={n}, T={T}, "
                         f"steps_offset={steps_offset} gives invalid timesteps {t.tolist()} (they must be distinct, "
                         f"decreasing and in [0, {T})): use fewer steps or another spacing")
    t.flags.writeable = False
    return t


def _timesteps(n: int, T: int, spacing: str, steps_offset: int, convention: str, last_timestep: int) -> np.ndarray:
    """The integer timesteps of diffusers' ``set_timesteps`` (numpy code kept as diffusers writes it)."""
    if convention == "dpmsolver":  # DPMSolverMultistepScheduler: n + 1 grid points, the t = 0 end dropped
        if spacing == "linspace":
            return np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        if spacing == "leading":
            step_ratio = last_timestep // (n + 1)
            return (np.arange(0, n + 1) * step_ratio).round()[::-1][:-1].copy().astype(np.int64) + steps_offset
        step_ratio = T / n
        return np.arange(last_timestep, 0, -step_ratio).round().copy().astype(np.int64) - 1
    # DDIMScheduler (also PNDM/Euler-style): n grid points including t = 0 (linspace / leading)
    if spacing == "linspace":
        return np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        step_ratio = T // n
        return (np.arange(0, n) * step_ratio).round()[::-1].copy().astype(np.int64) + steps_offset
    step_ratio = T / n
    return np.round(np.arange(T, 0, -step_ratio)).astype(np.int64) - 1


def vp_discrete(alphas_cumprod, n: int, spacing: str = "leading", steps_offset: int = 0, *,
                convention: str = "dpmsolver", lambda_min_clipped: float = -math.inf) -> DiscreteSchedule:
    """Sigmas of a discrete-time VP model at diffusers' inference timesteps.

    ``sigma_i = sqrt((1 - alphas_cumprod[t_i]) / alphas_cumprod[t_i])`` at the ``n`` integer timesteps ``t_i`` that
    diffusers' ``set_timesteps(n)`` picks (``timestep_spacing`` = ``spacing``, ``steps_offset``), then a final 0
    (alpha = 1, i.e. DDIM's ``set_alpha_to_one=True`` / DPM-Solver's ``final_sigmas_type="zero"``).

    ``convention="dpmsolver"`` (default) reproduces ``DPMSolverMultistepScheduler`` (with T = len(alphas_cumprod)):
      linspace: ``linspace(0, last-1, n+1).round()[::-1][:-1]``; leading: ``arange(n+1) * (last // (n+1))`` reversed,
      first dropped, ``+ steps_offset``; trailing: ``arange(last, 0, -T/n).round() - 1``; where ``last = T`` unless
      ``lambda_min_clipped`` clips the low-SNR end (as diffusers does for the cosine schedule).
    ``convention="ddim"`` reproduces ``DDIMScheduler``: linspace: ``linspace(0, T-1, n).round()[::-1]``;
      leading: ``arange(n) * (T // n)`` reversed ``+ steps_offset``; trailing: as above with ``last = T``.

    Returns ``DiscreteSchedule(sigmas float64 (n+1,), timesteps int64 (n,))``. Raises ValueError when the spacing
    gives repeated timesteps (n too large for it) or timesteps outside ``[0, T)``.
    """
    name = "vp_discrete"
    memo_key = _vp_memo_key(alphas_cumprod, n, spacing, steps_offset, convention, lambda_min_clipped)
    hit = _VP_SCHEDULES.get(memo_key) if memo_key is not None else None
    if hit is not None and hit[0]() is alphas_cumprod:
        return DiscreteSchedule(hit[1].clone(), hit[2].clone())
    ab = _alphas_cumprod(name, alphas_cumprod)
    n = _check_n(name, n)
    if spacing not in SPACINGS:
        raise ValueError(f"{name}: unknown spacing {spacing!r}; valid spacings are {', '.join(map(repr, SPACINGS))}")
    if convention not in CONVENTIONS:
        raise ValueError(f"{name}: unknown convention {convention!r}; valid conventions are "
                         f"{', '.join(map(repr, CONVENTIONS))}")
    if isinstance(steps_offset, bool) or not isinstance(steps_offset, (int, np.integer)) or steps_offset < 0:
        raise ValueError(f"{name}: steps_offset must be an int >= 0, got {steps_offset!r}")
    if isinstance(lambda_min_clipped, bool) or not isinstance(lambda_min_clipped, (int, float)) \
            or math.isnan(lambda_min_clipped):
        raise ValueError(f"{name}: lambda_min_clipped must be a number, got {lambda_min_clipped!r}")
    T = ab.numel()
    if n > T:
        raise ValueError(f"{name}: n={n} steps exceed the {T} training timesteps")
    last_timestep = T
    if convention == "dpmsolver" and lambda_min_clipped > -math.inf:
        lam = 0.5 * torch.log(ab) - 0.5 * torch.log1p(-ab)  # log(alpha_t / sigma_t), decreasing in t
        last_timestep = T - int(torch.searchsorted(torch.flip(lam, [0]), lambda_min_clipped))
    t = _valid_timesteps(n, T, spacing, int(steps_offset), convention, last_timestep)
    abt = ab.numpy()[t]
    sigmas = np.append(np.sqrt((1 - abt) / abt), 0.0)  # IEEE float64 ops: the same bits as the torch ops
    schedule = DiscreteSchedule(torch.from_numpy(sigmas), torch.from_numpy(t.copy()))
    if memo_key is not None:
        if len(_VP_SCHEDULES) >= _VP_SCHEDULES_SIZE:
            del _VP_SCHEDULES[next(iter(_VP_SCHEDULES))]
        _VP_SCHEDULES[memo_key] = (weakref.ref(alphas_cumprod), schedule.sigmas.clone(), schedule.timesteps.clone())
    return schedule


def _vp_memo_key(alphas_cumprod, *options):
    """The memo key of a ``vp_discrete`` call, or None when it has none: the alphas (a tensor with a version counter)
    by identity and version, every option with its type (so that ``n=True`` or ``n=20.0`` is still refused). A call
    is remembered once it passed every check (with a weak reference to the alphas) and is answered with copies:
    rebuilding the schedule per sampling call then costs two small copies instead of the numpy work (~100 us with
    cold caches)."""
    if not isinstance(alphas_cumprod, torch.Tensor) or _version(alphas_cumprod) is None:
        return None
    key = (id(alphas_cumprod), _version(alphas_cumprod)) + tuple((type(v), v) for v in options)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def betas_linear(n_train: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """diffusers' ``beta_schedule="linear"``: ``linspace(beta_start, beta_end, n_train)`` computed in ``dtype``
    (float32, as diffusers does, reproduces its values bit for bit). Defaults are DDPM's / DDIMScheduler's."""
    n_train = _check_n("betas_linear", n_train)
    return torch.linspace(*_betas_range("betas_linear", beta_start, beta_end), n_train, dtype=dtype)


def betas_scaled_linear(n_train: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """diffusers' ``beta_schedule="scaled_linear"`` (Stable Diffusion):
    ``linspace(sqrt(beta_start), sqrt(beta_end), n_train) ** 2`` computed in ``dtype``."""
    n_train = _check_n("betas_scaled_linear", n_train)
    b0, b1 = _betas_range("betas_scaled_linear", beta_start, beta_end)
    return torch.linspace(b0 ** 0.5, b1 ** 0.5, n_train, dtype=dtype) ** 2


def _betas_range(name, beta_start, beta_end):
    b0, b1 = _check_float(name, "beta_start", beta_start), _check_float(name, "beta_end", beta_end)
    if not 0 < b0 <= b1 < 1:
        raise ValueError(f"{name}: need 0 < beta_start <= beta_end < 1, got {b0}, {b1}")
    return b0, b1


def alphas_cumprod_from_betas(betas) -> torch.Tensor:
    """``alphas_cumprod = cumprod(1 - betas)`` in the dtype of ``betas`` (as diffusers computes it)."""
    b = betas if isinstance(betas, torch.Tensor) else torch.as_tensor(np.asarray(betas, dtype=np.float64))
    if b.dim() != 1 or b.numel() < 1 or not b.is_floating_point():
        raise ValueError(f"alphas_cumprod_from_betas: betas must be a 1-D float sequence, got shape {tuple(b.shape)}")
    if not torch.isfinite(b).all() or (b <= 0).any() or (b >= 1).any():
        raise ValueError("alphas_cumprod_from_betas: betas must be finite and in (0, 1)")
    return torch.cumprod(1.0 - b, dim=0)


# ------------------------------------------------------------------------------------------ rectified flow models
def flow(n: int, shift: float = 1.0, *, num_train_timesteps: int = 1000, dynamic_shifting: bool = False,
         t_max: float = None) -> torch.Tensor:
    """Rectified-flow schedule (``alpha = 1 - t``, ``sigma = t``) as VE sigmas ``sigma~ = t / (1 - t)``.

    The flow times are those of diffusers' ``FlowMatchEulerDiscreteScheduler.set_timesteps(n)`` (SD3 / FLUX):

        u_i = linspace(1, u_min, n),   t_i = shift u_i / (1 + (shift - 1) u_i),   then t = 0,

    with ``T = num_train_timesteps`` and ``u_min = shift/T / (1 + (shift-1)/T)`` (diffusers shifts its ``sigma_min``
    at construction, so the last time is shifted twice) or ``u_min = 1/T`` when ``dynamic_shifting`` (diffusers'
    ``use_dynamic_shifting=True``, exponential time shift with ``mu = log(shift)``). In VE coordinates the shift is
    a plain scaling: ``sigma~(t_i) = shift * u_i / (1 - u_i)``.

    diffusers starts at ``t = 1`` (pure noise; its Euler step from there is exact for any velocity model), where
    ``sigma~`` is infinite. fastint replaces that first time by ``t_max < 1``, default the first training time below
    1 after the shift, ``t_max = shift (1 - 1/T) / (1 + (shift - 1)(1 - 1/T))`` (``sigma~ = shift (T - 1)``, i.e. 999
    for T=1000, shift=1). Starting from ``x = sigma~_0 * noise`` then differs from diffusers' start by the data's
    share ``1 - t_max`` of ``x_flow``. ``t_max`` must exceed the next time ``t_1``.
    """
    n = _check_n("flow", n)
    shift = _check_float("flow", "shift", shift)
    if shift <= 0:
        raise ValueError(f"flow: shift must be > 0, got {shift}")
    T = _check_n("flow", num_train_timesteps)
    if T < 2:
        raise ValueError(f"flow: num_train_timesteps must be >= 2, got {T}")
    shifted = lambda u: shift * u / (1 + (shift - 1) * u)  # noqa: E731
    u_min = 1.0 / T if dynamic_shifting else shifted(1.0 / T)
    t = shifted(np.linspace(1.0, u_min, n))
    default_max = t_max is None
    t_max = shifted(1.0 - 1.0 / T) if default_max else _check_float("flow", "t_max", t_max)
    if not 0 < t_max < 1:
        raise ValueError(f"flow: t_max must be in (0, 1), got {t_max}")
    if n > 1 and not t_max > t[1]:
        raise ValueError(f"flow: t_max={t_max} must exceed the second time t_1={t[1]}"
                         + (" (n is too large for the default t_max: pass t_max explicitly)" if default_max else ""))
    t[0] = t_max
    t = torch.from_numpy(t)
    return _append_zero(t / (1 - t))
