"""``fastint.sample``: validate the call, set up noise, and run the solver's program on the executor."""

import math
import operator
from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch

from . import executor
from .executor import all_finite, remember
from .ops.seeds import seed_tensor
from .solvers import Solver, get_solver

SeedLike = Union[None, int, Sequence[int], torch.Tensor]
CHECK_FINITE = ("end", "step", "off")


def _sigma_list(sigmas) -> list:
    if isinstance(sigmas, torch.Tensor):
        if sigmas.is_meta:
            raise ValueError("sigmas is a tensor on the meta device (shapes only, no values); pass a CPU tensor, a "
                             "list of floats or a tensor on the device of x")
        if sigmas.dim() != 1:
            raise ValueError(f"sigmas must be 1-D, got shape {tuple(sigmas.shape)}")
        if sigmas.is_complex() or sigmas.dtype == torch.bool:
            raise TypeError(f"sigmas must be real numbers, got a {sigmas.dtype} tensor")
        values = sigmas.tolist()  # Python floats hold every float dtype's values exactly
        if not sigmas.is_floating_point():
            values = [float(v) for v in values]
    else:
        values = [float(v) for v in sigmas]
    if len(values) < 2:
        raise ValueError("sigmas needs at least two values (one step)")
    if not all(map(math.isfinite, values)):
        raise ValueError("sigmas must be finite")
    if not all(map(operator.gt, values, values[1:])):
        raise ValueError(f"sigmas must be strictly decreasing, got {values}")
    if values[-1] < 0 or values[-2] <= 0:
        raise ValueError("sigmas must be positive, with only the last one allowed to be 0")
    return values


def check_call(model, x, noise_sampler) -> None:
    """The checks every sampling entry makes of its model, state and noise sampler, naming what is wrong."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError("x must be a floating-point tensor with a leading batch dimension")
    if not callable(model):
        raise TypeError("model must be callable as model(x, sigma_batch, **extra_args)")
    if noise_sampler is not None and not callable(noise_sampler):
        raise TypeError("noise_sampler must be callable as noise_sampler(sigma, sigma_next)")


def per_sample_seeds(seed: SeedLike, batch: int, device: torch.device) -> torch.Tensor:
    """int64 seeds, one per sample: ``seed + b`` for an int (Python or numpy), the given ones for a sequence or an
    integer tensor (``fastint.ops.seeds``), and a random base drawn from torch's default CPU generator when None (so
    ``torch.manual_seed`` makes runs repeatable)."""
    if seed is None:
        seed = int(torch.randint(0, 2 ** 62, (1,)).item())
    return seed_tensor(seed, batch, device, "seed")


_CONFIGURED: Dict[tuple, Solver] = {}      # (name, (option, type, value), ...) -> configured solver
_SEEDS: Dict[tuple, torch.Tensor] = {}     # (int seed, batch, device) -> int64 seeds
_PLAIN_OPTION_TYPES = (bool, int, float, str, type(None))


def configured_solver(name, options: Dict[str, Any]) -> Solver:
    """``get_solver(name, **options)``, memoised when the name is a string and every option a plain number, string
    or None (keyed with their types, so that a memo hit never skips an option's check: ``True`` is not ``1`` here):
    a configured solver is a host program with no state of its own, so runs share it."""
    if type(name) is not str or not all(type(v) in _PLAIN_OPTION_TYPES for v in options.values()):
        return get_solver(name, **options)
    key = (name,) + tuple(sorted((k, type(v), v) for k, v in options.items()))
    solver = _CONFIGURED.get(key)
    return solver if solver is not None else remember(_CONFIGURED, key, get_solver(name, **options))


def run_seeds(seed: SeedLike, batch: int, device: torch.device) -> torch.Tensor:
    """``per_sample_seeds`` for a run, memoised for an int seed: the tensor is only ever read by the fused op (never
    handed to the caller), so runs with the same seed, batch and device share it."""
    if type(seed) is not int:
        return per_sample_seeds(seed, batch, device)
    key = (seed, batch, device)
    seeds = _SEEDS.get(key)
    return seeds if seeds is not None else remember(_SEEDS, key, per_sample_seeds(seed, batch, device))


def sample(model: Callable, x: torch.Tensor, sigmas, solver: str = "dpmpp_2m", *, seed: SeedLike = None,
           noise_sampler: Optional[Callable] = None, extra_args: Optional[Dict[str, Any]] = None,
           callback: Optional[Callable] = None, progress: bool = False, backend: str = "auto",
           check_finite: str = "end", **options) -> torch.Tensor:
    """Sample with ``solver`` from ``x`` (already scaled by sigmas[0]) down the decreasing ``sigmas``.

    Args:
        model: ``model(x, sigma_batch, **extra_args) -> denoised x0`` in VE coordinates (see ``fastint.models``).
        x: the initial state, (batch, ...), float32/float16/bfloat16/float64; never modified.
        sigmas: 1-D strictly decreasing VE noise levels, ending in 0 (or at a positive level for partial sampling).
        solver: a name from ``fastint.list_solvers()``; ``options`` are that solver's (eta, s_noise, ...). Or a
            configured ``fastint.solvers.base.Solver`` instance (e.g. ``dpm_solver.DPMSolverFast``), no options.
        seed: per-sample seeds for the in-kernel counter-based noise (int: sample b uses seed + b).
        noise_sampler: ``noise_sampler(sigma, sigma_next) -> tensor`` (k-diffusion convention) to inject noise
            instead; used for value-for-value parity with the peers.
        callback: called once per step with ``{'x', 'i', 'sigma', 'sigma_hat', 'denoised'}``.
        progress: show a tqdm progress bar.
        backend: fused-op backend ('cpp', 'cuda', 'triton', 'compile', 'eager'), or 'auto': the one in force
            (``fastint.use_backend``, env ``FASTINT_BACKEND``), else the automatic choice.
        check_finite: 'end' (default: one check of the result after the loop, no sync inside it), 'step' (check
            every model output, synchronising, to name the first bad step) or 'off'.
    """
    if isinstance(solver, Solver):
        if options:
            raise TypeError(f"options {sorted(options)} given with a configured solver instance: configure it instead")
        method = solver
    else:
        method = configured_solver(solver, options)
    check_call(model, x, noise_sampler)
    if check_finite not in CHECK_FINITE:
        raise ValueError(f"check_finite must be one of {CHECK_FINITE}, got {check_finite!r}")
    if extra_args is not None and not isinstance(extra_args, dict):
        raise TypeError("extra_args must be a dict of keyword arguments for the model")
    sigma_values = _sigma_list(sigmas)
    if x.is_meta and check_finite != "off":
        raise ValueError(f"x is a tensor on the meta device (shapes only, no values), which check_finite="
                         f"{check_finite!r} cannot read: pass x on the CPU or a GPU, or check_finite='off' (a loop "
                         "traced on meta tensors)")
    if check_finite != "off" and not all_finite(x):
        raise ValueError("x contains NaN or Inf")
    seeds = None
    if method.uses_noise() and noise_sampler is None:
        seeds = run_seeds(seed, x.shape[0], x.device)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(sigma_values) - 1, desc=f"fastint {method.name}")
    plan = executor.lowered(method, sigma_values, model, noise_sampler is not None)
    run = executor.Run(model, x, dict(extra_args or {}), seeds, noise_sampler, backend, callback, check_finite, bar)
    try:
        result = executor.run(plan, run, x)
    finally:
        if bar is not None:
            bar.close()
    if result is x:  # no update ran (cannot happen with >= 1 step), never hand the caller's tensor back aliased
        result = x.clone()
    if check_finite == "end" and not all_finite(result):
        raise FloatingPointError("sampling produced NaN or Inf: a model output contained non-finite values "
                                 "(run with check_finite='step' to find the first one)")
    return result
