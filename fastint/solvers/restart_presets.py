"""The published Restart configurations (Xu et al., NeurIPS 2023; Newbeeer/diffusion_restart_sampling).

A preset bundles the main grid the configuration was published with (EDM/Karras, rho = 7), the restart intervals
and the churn settings of the official commands. Use all of it::

    from fastint.solvers.restart_presets import PRESETS
    p = PRESETS["cifar10_edm"]
    x = torch.randn(n, 3, 32, 32) * p.sigma_max
    out = fastint.sample(model, x, p.sigmas(), "restart", seed=0, **p.options())

or pass only the intervals with ``fastint.sample(..., "restart", preset="cifar10_edm")`` on your own grid.

Two forms of interval are in use (both accepted by the ``restart`` solver, see ``fastint.solvers.restart``):

- the official ``restart_info`` form ``{key: [N_restart, K, t_min, t_max]}`` (EDM presets; only t_min is snapped to
  the nearest main-grid sigma);
- A1111's ``restart_list`` form ``{min_sigma: [N_restart, K, max_sigma]}`` (the Stable Diffusion presets, keyed by
  the classifier-free guidance scale w; both ends snapped to the main grid).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .. import schedules


@dataclass(frozen=True)
class RestartPreset:
    name: str
    description: str
    steps: Optional[int]                 # main-grid steps (EDM num_steps); None: the caller's grid
    restart_info: Optional[Dict[str, List[float]]] = None   # official form
    restart_list: Optional[Dict[float, List[float]]] = None  # A1111 form
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    churn: Dict[str, float] = field(default_factory=dict)   # s_noise, s_min, s_max, restart_gamma
    nfe: Optional[int] = None            # NFE of the published setting (2N - 1 + sum K 2 (N_restart - 1))

    def sigmas(self, steps: Optional[int] = None) -> "torch.Tensor":  # noqa: F821 (schedules' float64 tensor)
        """The main grid: Karras (rho 7) from sigma_max to sigma_min with ``steps`` steps, then 0."""
        steps = steps or self.steps
        if steps is None:
            raise ValueError(f"restart preset {self.name!r} has no main grid of its own: pass steps")
        return schedules.karras(steps, self.sigma_min, self.sigma_max, self.rho)

    def options(self) -> Dict[str, object]:
        """The ``fastint.sample(..., "restart", **options)`` keyword arguments of this preset."""
        opts: Dict[str, object] = dict(self.churn)
        if self.restart_info is not None:
            opts["restart_info"] = {k: list(v) for k, v in self.restart_info.items()}
        if self.restart_list is not None:
            opts["restart_list"] = {k: list(v) for k, v in self.restart_list.items()}
        return opts


# The official EDM commands use --S_min 0.01 --S_max 1 --S_noise 1.003 and restart_gamma 0.05.
_EDM_CHURN = {"s_noise": 1.003, "s_min": 0.01, "s_max": 1.0, "restart_gamma": 0.05}

PRESETS: Dict[str, RestartPreset] = {p.name: p for p in (
    RestartPreset("cifar10_edm", "CIFAR-10, EDM (VP/VE) checkpoint, 18 steps: NFE 43", 18,
                  restart_info={"0": [3, 2, 0.14, 0.30]}, churn=_EDM_CHURN, nfe=43),
    RestartPreset("imagenet64_edm", "ImageNet 64x64, EDM checkpoint, 36 steps: NFE 203", 36,
                  restart_info={"0": [4, 1, 19.35, 40.79], "1": [4, 1, 1.09, 1.92], "2": [4, 5, 0.59, 1.09],
                                "3": [4, 5, 0.30, 0.59], "4": [6, 6, 0.06, 0.30]}, churn=_EDM_CHURN, nfe=203),
    RestartPreset("sd_w2", "Stable Diffusion, classifier-free guidance scale 2 (A1111 form)", None,
                  restart_list={1.0: [5, 2, 9.0], 5.0: [5, 2, 10.0]}, sigma_min=0.0292, sigma_max=14.6146),
    RestartPreset("sd_w3", "Stable Diffusion, guidance scale 3 (A1111 form)", None,
                  restart_list={0.1: [10, 2, 3.0]}, sigma_min=0.0292, sigma_max=14.6146),
    RestartPreset("sd_w5", "Stable Diffusion, guidance scale 5 (A1111 form)", None,
                  restart_list={0.1: [10, 2, 2.0]}, sigma_min=0.0292, sigma_max=14.6146),
    RestartPreset("sd_w8", "Stable Diffusion, guidance scale 8 (A1111 form)", None,
                  restart_list={0.1: [10, 2, 2.0]}, sigma_min=0.0292, sigma_max=14.6146),
)}


def stable_diffusion_preset(guidance_scale: float) -> RestartPreset:
    """The published Stable Diffusion preset for a classifier-free guidance scale: w <= 2.5 -> w=2, w <= 4 -> w=3,
    above -> w=5/8 (the same intervals)."""
    if not isinstance(guidance_scale, (int, float)) or guidance_scale <= 0:
        raise ValueError(f"guidance_scale must be a number > 0, got {guidance_scale!r}")
    if guidance_scale <= 2.5:
        return PRESETS["sd_w2"]
    if guidance_scale <= 4:
        return PRESETS["sd_w3"]
    return PRESETS["sd_w5"] if guidance_scale <= 6.5 else PRESETS["sd_w8"]


def get_preset(name: str) -> RestartPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown restart preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]
