"""k-diffusion / ComfyUI drop-in samplers: ``fastint.k_diffusion.sample_<solver>`` for every fastint solver, and
every ``sample_*`` of k-diffusion 0.1.1 (euler, euler_ancestral, heun, dpm_2, dpm_2_ancestral, lms, dpm_fast,
dpm_adaptive, dpmpp_2s_ancestral, dpmpp_sde, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m_sde).

Each function has k-diffusion's sampler signature,

    sample_<name>(model, x, sigmas, extra_args=None, callback=None, disable=None, <options>, *, seed=None,
                  backend="auto")

where ``<options>`` are the solver's options (``fastint.list_solvers()``) in k-diffusion's order and with its
defaults; stochastic solvers take ``noise_sampler=None`` right after ``s_noise`` as k-diffusion and ComfyUI do
(``euler``/``heun``/``dpm_2`` take it last, for their churn noise; ``lms`` last, unused).

``sample_dpm_fast(model, x, sigma_min, sigma_max, n, ...)`` and ``sample_dpm_adaptive(model, x, sigma_min,
sigma_max, ...)`` keep k-diffusion's own signatures (``fastint.k_diffusion_dpm``); dpm_adaptive reads its error
estimate to the host once per attempt, every other sampler here runs without a device-to-host read per step.

So code written against ``k_diffusion.sampling`` (or ComfyUI's copy of it) can swap the module:
``getattr(fastint.k_diffusion, "sample_" + name)(model, x, sigmas, extra_args, callback, disable, ...)``. The
arguments mean what they mean there:

- ``model(x, sigma_batch, **extra_args)`` returns the denoised x0; ``extra_args`` is passed to it unchanged
  (ComfyUI's own samplers pass their ``extra_args``, ``seed`` included, the same way).
- The noise seed is read from ``extra_args["seed"]``, as ComfyUI's samplers read it (``seed=`` overrides it);
  fastint's noise is per sample: sample b uses ``seed + b`` (``docs/noise.md``). Without a seed the base seed is
  drawn from torch's default generator (as k-diffusion draws ``torch.randn``), so ``torch.manual_seed`` repeats a
  run. ``noise_sampler(sigma, sigma_next)`` injects noise instead (e.g. a ``BrownianTreeNoiseSampler``).
- ``callback`` receives ``{"x", "i", "sigma", "sigma_hat", "denoised"}`` once per step, ``sigma`` being
  ``sigmas[i]`` (a tensor, as k-diffusion passes it) and ``sigma_hat`` a tensor alike.
- ``disable``: the progress bar is shown unless ``disable`` is true (``None``: shown only on a terminal, tqdm's rule).

The result is ``fastint.sample(model, x, sigmas, <name>, seed=..., noise_sampler=..., extra_args=extra_args,
...)`` exactly. Functions exist for the solvers registered when this module is imported; solvers registered later
are found on attribute access. ComfyUI's other names for these samplers (``sample_dpmpp_2m_sde_heun`` and the
``_gpu`` variants) are aliases (``_ALIASES`` below); ComfyUI's CFG++ samplers are not offered (they need the
unconditional output that only ComfyUI's model wrapper exposes).
"""

import functools
import inspect
import sys
from typing import Callable, Dict, List

import torch

from .k_diffusion_dpm import sample_dpm_adaptive, sample_dpm_fast, show_progress as _show_progress
from .sampling import sample as _sample
from .solvers import SOLVERS

_P = inspect.Parameter
_HEAD = [_P("model", _P.POSITIONAL_OR_KEYWORD), _P("x", _P.POSITIONAL_OR_KEYWORD),
         _P("sigmas", _P.POSITIONAL_OR_KEYWORD), _P("extra_args", _P.POSITIONAL_OR_KEYWORD, default=None),
         _P("callback", _P.POSITIONAL_OR_KEYWORD, default=None), _P("disable", _P.POSITIONAL_OR_KEYWORD, default=None)]
_TAIL = [_P("seed", _P.KEYWORD_ONLY, default=None), _P("backend", _P.KEYWORD_ONLY, default="auto")]


def _parameter_order(solver_cls) -> List[str]:
    """The options and ``noise_sampler`` in the peer's order: the solver's ``dropin_parameters`` when it sets them,
    else its options with ``noise_sampler`` right after ``s_noise`` (stochastic solvers) or last."""
    if solver_cls.dropin_parameters is not None:
        names = list(solver_cls.dropin_parameters)
        if sorted(names) != sorted(list(solver_cls.options) + ["noise_sampler"]):
            raise TypeError(f"solver {solver_cls.name!r}: dropin_parameters must name every option and "
                            f"noise_sampler once, got {names}")
        return names
    names = list(solver_cls.options)
    if solver_cls.stochastic and "s_noise" in names:
        names.insert(names.index("s_noise") + 1, "noise_sampler")
    else:
        names.append("noise_sampler")
    return names


def _signature(solver_cls) -> inspect.Signature:
    params: List[inspect.Parameter] = list(_HEAD)
    # the peer's default of ``disable`` where it is not None (ComfyUI's sa_solver: False)
    params[-1] = params[-1].replace(default=getattr(solver_cls, "dropin_disable", None))
    names = _parameter_order(solver_cls)
    for name in names:
        default = None if name == "noise_sampler" else solver_cls.options[name].default
        params.append(_P(name, _P.POSITIONAL_OR_KEYWORD, default=default))
    return inspect.Signature(params + _TAIL)


def _k_callback(callback: Callable, sigmas) -> Callable:
    def report(info: Dict) -> None:
        i = info["i"]
        if isinstance(sigmas, torch.Tensor):
            sigma = sigmas[i]
            sigma_hat = sigma if info["sigma_hat"] == info["sigma"] else \
                torch.tensor(info["sigma_hat"], dtype=sigmas.dtype, device=sigmas.device)
        else:
            sigma, sigma_hat = info["sigma"], info["sigma_hat"]
        callback({**info, "sigma": sigma, "sigma_hat": sigma_hat})
    return report


def _make(name: str) -> Callable:
    solver_cls = SOLVERS[name]
    signature = _signature(solver_cls)
    option_names = list(solver_cls.options)

    @torch.no_grad()
    def sampler(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        extra_args = a["extra_args"]
        if extra_args is not None and not isinstance(extra_args, dict):
            raise TypeError(f"sample_{name}: extra_args must be a dict, got {type(extra_args).__name__}")
        seed = a["seed"]
        if seed is None and extra_args is not None:
            seed = extra_args.get("seed")
        options = {k: a[k] for k in option_names}
        callback = _k_callback(a["callback"], a["sigmas"]) if a["callback"] is not None else None
        return _sample(a["model"], a["x"], a["sigmas"], name, seed=seed, noise_sampler=a["noise_sampler"],
                       extra_args=extra_args, callback=callback, progress=_show_progress(a["disable"]),
                       backend=a["backend"], **options)

    sampler.__name__ = sampler.__qualname__ = f"sample_{name}"
    sampler.__signature__ = signature
    sampler.__doc__ = (f"k-diffusion-compatible sampler running fastint's {name!r} ({solver_cls.summary}); "
                       f"see the module docstring of fastint.k_diffusion.")
    sampler.__module__ = __name__
    return sampler


def _build() -> Dict[str, Callable]:
    return {f"sample_{name}": _make(name) for name in SOLVERS}


globals().update(_build())
__all__ = sorted([f"sample_{name}" for name in SOLVERS] + ["sample_dpm_fast", "sample_dpm_adaptive"]) + ["samplers"]


def samplers() -> Dict[str, Callable]:
    """``{solver name: sample_<name>}`` for every registered solver."""
    return {name: getattr(sys.modules[__name__], f"sample_{name}") for name in SOLVERS}


@functools.lru_cache(maxsize=None)
def _late(name: str) -> Callable:
    return _make(name)


def __getattr__(attr: str):  # solvers registered after this module was imported
    if attr.startswith("sample_") and attr[len("sample_"):] in SOLVERS:
        return _late(attr[len("sample_"):])
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def __dir__():
    return sorted(set(globals()) | {f"sample_{n}" for n in SOLVERS})


# -- ComfyUI's other names for these samplers ----------------------------------------------------------------------
# alias -> (the drop-in it runs, the defaults that differ from that drop-in's). ComfyUI's ``_gpu`` variants differ
# from their base samplers only in building the default Brownian-tree noise on the GPU; fastint's noise is generated
# on x's device by every sampler, so each is its base function. Resolved on first access (an alias of a sampler
# registered later works); an alias whose sampler this fastint lacks raises AttributeError saying so.
_ALIASES: Dict[str, tuple] = {
    "sample_dpmpp_2m_sde_heun": ("sample_dpmpp_2m_sde", {"solver_type": "heun"}),
    "sample_dpmpp_2m_sde_gpu": ("sample_dpmpp_2m_sde", {}),
    "sample_dpmpp_2m_sde_heun_gpu": ("sample_dpmpp_2m_sde", {"solver_type": "heun"}),
    "sample_dpmpp_3m_sde_gpu": ("sample_dpmpp_3m_sde", {}),
    "sample_dpmpp_sde_gpu": ("sample_dpmpp_sde", {}),
}


@functools.lru_cache(maxsize=None)
def _alias(name: str) -> Callable:
    target_name, defaults = _ALIASES[name]
    try:
        target = getattr(sys.modules[__name__], target_name)
    except AttributeError:
        raise AttributeError(f"{name} is ComfyUI's name for {target_name}, which fastint does not have") from None
    if not defaults:
        return target
    signature = inspect.signature(target)
    signature = signature.replace(parameters=[p.replace(default=defaults.get(p.name, p.default))
                                              for p in signature.parameters.values()])

    def sampler(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return target(*bound.args, **bound.kwargs)

    sampler.__name__ = sampler.__qualname__ = name
    sampler.__signature__ = signature
    sampler.__doc__ = f"ComfyUI's {name}: {target_name} with {defaults} by default."
    sampler.__module__ = __name__
    return sampler


def _has_alias_target(name: str) -> bool:
    target = _ALIASES[name][0]
    return target in globals() or target[len("sample_"):] in SOLVERS


__all__ = sorted(set(__all__) | {name for name in _ALIASES if _has_alias_target(name)})
_solver_getattr, _solver_dir = __getattr__, __dir__


def __getattr__(attr: str):  # noqa: F811 (extends the solver lookup above with the aliases)
    if attr in _ALIASES:
        return _alias(attr)
    return _solver_getattr(attr)


def __dir__():  # noqa: F811
    return sorted(set(_solver_dir()) | {name for name in _ALIASES if _has_alias_target(name)})
