"""The peers for value-for-value parity tests: k-diffusion's samplers and a diffusers-style discrete VP model.

k-diffusion (0.1.1.post1) is installed with ``--no-deps`` (its metadata pulls torchvision and a CUDA torch). Its
package ``__init__`` imports the training stack, so only ``k_diffusion/sampling.py`` (and the ``utils.py`` it
imports) is loaded, under a package module made by hand (``benchmarks.bench_suite.load_k_diffusion_sampling``, which
the end-to-end benchmark uses too). Two module-level imports of those files are not needed by the samplers and may
be absent; each gets a stub only while the two files are imported, and only if the real module is missing (the
stubs are removed from ``sys.modules`` afterwards, so nothing else ever sees them):

- ``utils.py``: ``from torchvision.transforms import functional as TF`` (PIL conversion helpers only);
- ``sampling.py``: ``from torchdiffeq import odeint`` (used by ``log_likelihood`` only).

``utils.py`` also imports PIL and safetensors at module level (both in the ``dev`` extra); ``sampling.py`` imports
scipy, torchsde and tqdm.
"""

import functools
import math
import types
from typing import List, Optional, Sequence

import torch

from benchmarks.bench_suite import load_k_diffusion_sampling


def k_diffusion_missing() -> Optional[str]:
    """None when k-diffusion's sampling module can be loaded, else the reason."""
    try:
        k_sampling()
    except Exception as exc:  # noqa: BLE001 - the reason is reported to the test
        return f"{type(exc).__name__}: {exc}"
    return None


@functools.lru_cache(maxsize=None)
def k_sampling() -> types.ModuleType:
    """``k_diffusion.sampling``, loaded without the package ``__init__`` (``load_k_diffusion_sampling``, cached)."""
    return load_k_diffusion_sampling()


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """k-diffusion's ``get_sigmas_karras`` computed in float64 (its own uses a float32 ramp), ending in 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])


class StepNoise:
    """``noise_sampler(sigma, sigma_next)`` returning the pre-drawn ``zs[i]`` of the step ``sigmas[i] -> sigmas[i+1]``.

    The step is found from the sigma values (relative tolerance 1e-9, so a stage sigma recomputed as
    ``s * exp(-h)`` still matches), so every caller gets the same tensor for the same step whatever order it asks in;
    an interval that is no step of ``sigmas`` raises. ``calls`` records the step index of every call.
    """

    def __init__(self, sigmas: Sequence[float], zs: Sequence[torch.Tensor]):
        self.sigmas = [float(s) for s in sigmas]
        self.zs = list(zs)
        self.calls: List[int] = []

    @staticmethod
    def _close(a: float, b: float) -> bool:
        return abs(a - b) <= 1e-9 * max(abs(a), abs(b))

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        a, b = float(sigma), float(sigma_next)
        for i in range(len(self.sigmas) - 1):
            if self._close(self.sigmas[i], a) and self._close(self.sigmas[i + 1], b):
                self.calls.append(i)
                return self.zs[i]
        raise AssertionError(f"noise requested for ({a!r}, {b!r}), which is no step of {self.sigmas}")


# -- a diffusers-style discrete VP model with an exact eps network ----------------------------------------------------

SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def scaled_linear_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                                 beta_end: float = 0.012) -> torch.Tensor:
    """diffusers' ``scaled_linear`` alphas_cumprod, computed as diffusers does (float32), returned as float64."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float64)


class DiscreteVPEpsModel:
    """``eps(x_vp, t)``: the eps-prediction network of a discrete VP diffusion whose data is ``mixture``, exact.

    With ``ab = alphas_cumprod[t]``, ``alpha = sqrt(ab)``, ``sigma~ = sqrt((1 - ab) / ab)``, ``x~ = x_vp / alpha``:
    ``eps = (x~ - D(x~, sigma~)) / sigma~`` with D the mixture's exact VE denoiser.
    """

    def __init__(self, mixture, alphas_cumprod: torch.Tensor):
        self.mixture = mixture
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
        self.calls: List[int] = []

    def __call__(self, x_vp: torch.Tensor, t) -> torch.Tensor:
        values = torch.as_tensor(t).reshape(-1).tolist()  # an int, a 0-d tensor or one timestep per sample
        if any(v != values[0] or v != int(v) for v in values):
            raise ValueError(f"one integer timestep per batch expected, got {values}")
        t = int(values[0])
        self.calls.append(t)
        ab = self.alphas_cumprod[t].item()
        sigma = self.sigmas[t].item()
        x_ve = x_vp / math.sqrt(ab)
        return (x_ve - self.mixture.denoise(x_ve, sigma)) / sigma


class VEDenoiserFromDiscreteEps:
    """The VE denoiser ``D(x~, sigma~)`` of a discrete eps network: ``t`` = the training timestep whose sigma~ is
    ``sigma~`` (relative tolerance ``rtol``; anything else raises: a discrete model has no other noise levels),
    ``x_vp = sqrt(ab_t) x~``, ``D = x~ - sigma~_t eps(x_vp, t)``."""

    def __init__(self, eps_model: DiscreteVPEpsModel, rtol: float = 1e-6):
        self.eps_model, self.rtol = eps_model, rtol
        self.log_sigmas = eps_model.sigmas.log()

    def timestep(self, sigma: float) -> int:
        t = int((self.log_sigmas - math.log(sigma)).abs().argmin())
        found = self.eps_model.sigmas[t].item()
        if abs(found - sigma) > self.rtol * sigma:
            raise AssertionError(f"sigma {sigma!r} is no training noise level (nearest: t={t}, sigma={found!r})")
        return t

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        values = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).tolist()
        if any(v != values[0] for v in values):
            raise ValueError("one noise level per batch expected")
        t = self.timestep(values[0])
        ab = self.eps_model.alphas_cumprod[t].item()
        eps = self.eps_model(x * math.sqrt(ab), t)
        return x - self.eps_model.sigmas[t].item() * eps
