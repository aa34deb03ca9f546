"""``sample_dpm_fast`` and ``sample_dpm_adaptive``: the k-diffusion drop-ins whose signatures take
``sigma_min, sigma_max[, n]`` instead of ``sigmas`` (re-exported by ``fastint.k_diffusion``).

- ``sample_dpm_fast`` builds its grid and orders from the budget (``solvers.dpm_solver.fast_sigmas`` /
  ``fast_orders``) and runs ``DPMSolverFast`` through ``fastint.sample`` (recorded, replayed, no host read per step).
- ``sample_dpm_adaptive`` runs ``fastint.dpm_adaptive`` (one device-to-host read per attempt: its error norm).

Both sample from sigma_max down to sigma_min (> 0; the result is the state at sigma_min, as k-diffusion's).
k-diffusion also integrates the ODE upwards when sigma_min > sigma_max (eta = 0); fastint refuses that (its solvers
sample downwards only). Callbacks get k-diffusion's keys: ``x, i, sigma, sigma_hat, t, t_up, denoised`` (and for
the adaptive sampler ``error, h, steps, nfe, n_accept, n_reject``), ``sigma``/``t`` as tensors.
"""

import math
import sys
from typing import Any, Callable, Dict

import torch

from .dpm_adaptive import dpm_adaptive
from .sampling import check_call, per_sample_seeds, sample
from .solvers.base import non_negative
from .solvers.dpm_solver import DPMSolverFast, fast_sigmas


def _level(name: str, value) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(f"{name} must be one real number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return value


def _levels(sigma_min, sigma_max):
    low, high = _level("sigma_min", sigma_min), _level("sigma_max", sigma_max)
    if not low < high:
        raise ValueError(f"sigma_min ({low!r}) must be below sigma_max ({high!r}): fastint samples downwards only "
                         "(k-diffusion's reverse-time integration is not offered)")
    return low, high


def _seed(seed, extra_args):
    if extra_args is not None and not isinstance(extra_args, dict):
        raise TypeError(f"extra_args must be a dict, got {type(extra_args).__name__}")
    return extra_args.get("seed") if seed is None and extra_args is not None else seed


def show_progress(disable) -> bool:
    """k-diffusion's ``disable``: the progress bar is shown unless it is true (None: only on a terminal)."""
    if disable is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return not disable


def _tensor_callback(callback: Callable, x: torch.Tensor) -> Callable:
    """k-diffusion's callback keys with sigma, sigma_hat, t, t_up as tensors (default dtype, on x's device)."""
    def report(info: Dict[str, Any]) -> None:
        sigma = torch.tensor(float(info["sigma"]), device=x.device)
        lam = torch.tensor(info.get("t", -math.log(float(info["sigma"]))), device=x.device)
        callback({**info, "sigma": sigma, "sigma_hat": sigma, "t": lam, "t_up": lam})
    return report


@torch.no_grad()
def sample_dpm_fast(model, x, sigma_min, sigma_max, n, extra_args=None, callback=None, disable=None, eta=0.,
                    s_noise=1., noise_sampler=None, *, seed=None, backend="auto"):
    """DPM-Solver-fast with a budget of ``n`` model evaluations from sigma_max to sigma_min (k-diffusion's
    ``sample_dpm_fast``; see ``fastint.solvers.dpm_solver``). Seeds and noise as ``fastint.k_diffusion``."""
    low, high = _levels(sigma_min, sigma_max)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (the number of model evaluations) must be an integer >= 1, got {n!r}")
    solver = DPMSolverFast(nfe=n, eta=eta, s_noise=s_noise)
    wrapped = _tensor_callback(callback, x) if callback is not None else None
    return sample(model, x, fast_sigmas(low, high, n), solver, seed=_seed(seed, extra_args),
                  noise_sampler=noise_sampler, extra_args=extra_args, callback=wrapped,
                  progress=show_progress(disable), backend=backend)


def _finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@torch.no_grad()
def sample_dpm_adaptive(model, x, sigma_min, sigma_max, extra_args=None, callback=None, disable=None, order=3,
                        rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0., icoeff=1., dcoeff=0., accept_safety=0.81,
                        eta=0., s_noise=1., noise_sampler=None, return_info=False, *, seed=None, backend="auto"):
    """DPM-Solver-12 (order 2) / 23 (order 3) with PID step-size control (k-diffusion's ``sample_dpm_adaptive``;
    see ``fastint.dpm_adaptive``: one device-to-host read per attempt). Returns x, or (x, info) with
    ``return_info``."""
    low, high = _levels(sigma_min, sigma_max)
    if order not in (2, 3) or isinstance(order, bool):
        raise ValueError(f"order must be 2 or 3, got {order!r}")
    rtol, atol = _finite("rtol", rtol), _finite("atol", atol)
    if rtol < 0 or atol < 0 or rtol == atol == 0:
        raise ValueError(f"rtol and atol must be >= 0 and not both 0, got rtol={rtol!r}, atol={atol!r}")
    h_init = _finite("h_init", h_init)
    if h_init == 0:
        raise ValueError("h_init (the first step in lambda = -log sigma) must not be 0")
    pcoeff, icoeff, dcoeff = (_finite(k, v) for k, v in (("pcoeff", pcoeff), ("icoeff", icoeff), ("dcoeff", dcoeff)))
    if pcoeff + icoeff + dcoeff <= 0:
        raise ValueError(f"pcoeff + icoeff + dcoeff must be > 0 (else the step never adapts), got "
                         f"{pcoeff + icoeff + dcoeff!r}")
    accept_safety = _finite("accept_safety", accept_safety)
    for name, value in (("eta", eta), ("s_noise", s_noise)):
        if not non_negative(value):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    check_call(model, x, noise_sampler)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or Inf")
    seed = _seed(seed, extra_args)
    seeds = per_sample_seeds(seed, x.shape[0], x.device) if eta > 0 and s_noise > 0 and noise_sampler is None \
        else None
    bar = None
    if show_progress(disable):
        from tqdm.auto import tqdm
        bar = tqdm(desc="fastint dpm_adaptive")
    try:
        out, info = dpm_adaptive(model, x, low, high, extra_args=dict(extra_args or {}), order=order, rtol=rtol,
                                 atol=atol, h_init=h_init, pcoeff=pcoeff, icoeff=icoeff, dcoeff=dcoeff,
                                 accept_safety=accept_safety, eta=float(eta), s_noise=float(s_noise),
                                 noise_sampler=noise_sampler, seeds=seeds, backend=backend,
                                 callback=_tensor_callback(callback, x) if callback is not None else None,
                                 progress_bar=bar)
    finally:
        if bar is not None:
            bar.close()
    if out is x:
        out = x.clone()
    return (out, info) if return_info else out
