"""What a diffusers scheduler's config means for fastint's schedulers: the schedulers whose grid is followed
(``PEERS``), the options that shape a grid or describe DPM-Solver's steps, reading a source config with its class's
defaults, and the transforms of the data prediction (dynamic thresholding). Host-side helpers of
``fastint.integrations.diffusers``; no solver or run state here."""

import inspect
import math

import numpy as np
import torch

import diffusers
from diffusers.schedulers.scheduling_utils import SchedulerMixin

# the diffusers schedulers whose grid (and, Euler / Heun, VE state coordinates) a config of theirs brings along
PEERS = {"DPMSolverMultistepScheduler": diffusers.DPMSolverMultistepScheduler,
         "EulerDiscreteScheduler": diffusers.EulerDiscreteScheduler,
         "HeunDiscreteScheduler": diffusers.HeunDiscreteScheduler}
VE_PEERS = ("EulerDiscreteScheduler", "HeunDiscreteScheduler")
# options that shape the noise-level grid: a peer's grid implements them; fastint's own grid only their defaults
GRID_OPTIONS = {"use_beta_sigmas": False, "use_lu_lambdas": False, "use_flow_sigmas": False, "final_sigmas_type": "zero",
                "lambda_min_clipped": -math.inf, "interpolation_type": "linear", "timestep_type": "discrete",
                "sigma_min": None, "sigma_max": None, "flow_shift": 1.0, "time_shift_type": "exponential"}
# how DPMSolverMultistepScheduler steps: followed by dpmpp_2m / dpmpp_3m on its grid, refused with any other solver
DPM_OPTIONS = {"solver_order": 2, "algorithm_type": "dpmsolver++", "solver_type": "midpoint", "lower_order_final": True,
               "euler_at_final": False}
DPM_SOLVERS = {1: "ddim", 2: "dpmpp_2m", 3: "dpmpp_3m"}
DPM_SDE_SOLVERS = {2: "dpmpp_2m_sde", 3: "dpmpp_3m_sde"}


def source_defaults(config: dict, kwargs: dict, accepted, compatibles) -> dict:
    """A diffusers scheduler's config with the entries its class left at their defaults filled in (diffusers'
    ``from_config`` would replace them by the target's defaults: Heun's betas, DPM's "linspace" spacing), ``peer``
    set to its class when fastint follows that class's grid, and a clear error for an option set to something else
    than its default that fastint's schedulers have no counterpart of."""
    source = _source_class(config, compatibles)
    if source is None:
        return config
    name = source.__name__
    defaults = init_defaults(source)
    config = dict(config)
    config.pop("_use_default_values", None)
    for key, value in defaults.items():
        config.setdefault(key, value)
    foreign = sorted(k for k, v in config.items() if not k.startswith("_") and k not in accepted and k not in kwargs
                     and k in defaults and not same(v, defaults[k]))
    if foreign:
        raise ValueError(f"fastint's diffusers schedulers do not implement the {name} option(s) "
                         f"{', '.join(f'{k}={config[k]!r}' for k in foreign)}; use a config without them")
    if name in PEERS and "peer" not in kwargs:
        config["peer"] = name
    return config


def init_defaults(cls) -> dict:
    """The options of a scheduler class's ``__init__`` and their defaults."""
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if k != "self" and p.default is not inspect.Parameter.empty}


def _source_class(config: dict, compatibles):
    """The diffusers scheduler class a config comes from: its ``_class_name`` (saved configs), else the scheduler
    class whose ``__init__`` takes exactly the config's keys (``scheduler.config`` has no class name; when several
    do, one of them if they have the same defaults); None for fastint's own configs and unknown ones."""
    name = config.get("_class_name")
    if isinstance(name, str):
        source = getattr(diffusers, name, None)
        known = isinstance(source, type) and issubclass(source, SchedulerMixin)
        return source if known and not source.__module__.startswith("fastint.") else None
    keys = {k for k in config if not k.startswith("_")}
    matches = []
    for candidate in compatibles:
        cls = getattr(diffusers, candidate, None)
        if isinstance(cls, type) and set(init_defaults(cls)) == keys:
            matches.append(cls)
    if len(matches) > 1 and any(m.__name__ in PEERS for m in matches):
        return None
    # classes with the same options and defaults (KDPM2 and its ancestral form, ...) mean the same defaults
    agree = all(init_defaults(m).keys() == init_defaults(matches[0]).keys() and
                all(same(v, init_defaults(m)[k]) for k, v in init_defaults(matches[0]).items()) for m in matches)
    return matches[0] if matches and agree else None


def decreasing(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``alphas_cumprod`` made strictly decreasing for the adapter's sigma -> timestep map (diffusers' zero-terminal-
    SNR schedules set the last entry to 2**-24, above the one before it)."""
    a = alphas_cumprod.to(torch.float64).numpy().copy()
    for i in range(1, len(a)):
        if not a[i] < a[i - 1]:
            a[i] = a[i - 1] * (1 - 1e-9)
    return torch.from_numpy(a)


def same(a, b) -> bool:
    """Whether two config values are equal (lists / arrays by their items; incomparable values are not)."""
    try:
        return bool(a == b) if not isinstance(a, (list, tuple, np.ndarray)) else list(a) == list(b)
    except (TypeError, ValueError):
        return False


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (as diffusers' schedulers apply it to the data prediction): per sample, s =
    the ``ratio`` quantile of |x0| clamped to [1, max_value]; x0 -> clamp(x0, -s, s) / s."""
    flat = x0.reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape)
