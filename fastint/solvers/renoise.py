"""Samplers that denoise and then noise back to the next level: DDPM's ancestral step and LCM (ComfyUI's
``sample_ddpm`` and ``sample_lcm``).

**DDPM** (Ho et al. 2020, Algorithm 2, with the posterior variance ``beta~``), as ComfyUI's ``DDPMSampler_step``
runs it in sigma coordinates: with ``ab = 1 / (1 + sigma^2)`` the VP state is ``x / sqrt(1 + s^2)``, the step from
ab_s to ab_t (alpha = ab_s / ab_t) takes the posterior mean and adds ``sqrt(beta~) z``, and the result is scaled
back by sqrt(1 + t^2). In VE coordinates this is exactly the ancestral step with eta = 1:

    x_t = (t^2 / s^2) x + (1 - t^2 / s^2) D + t sqrt(1 - t^2 / s^2) z        (t = 0: x_t = D)

**LCM** (Luo et al. 2023, multistep consistency sampling): ``x_t = D(x, s) + t z`` (t = 0: D). ComfyUI adds the
noise with the model's ``noise_scaling``, ``D + t z`` for eps/v models; for flow models (``t z + (1 - t) D`` in their
coordinates) it is the same step after fastint's mapping to VE coordinates.

Each step is one fused-op call with one noise stream (counter = step index).
"""

import math

from .base import Solver
from .program import Denoise, NoiseEvent, Report, combine


class DDPM(Solver):
    name = "ddpm"
    order = 1
    order_note = "1 (weak; no ODE form: it is the ancestral step with eta = 1)"
    nfe_per_step = "1"
    stochastic = True
    summary = "DDPM ancestral sampling with the posterior variance (ComfyUI sample_ddpm)"
    options = {}

    def program(self, sigmas, x):
        for i in range(len(sigmas) - 1):
            s, t = sigmas[i], sigmas[i + 1]
            denoised = yield Denoise(x, s)
            yield Report(i, x, s, s, denoised)
            if t == 0:
                x = yield combine([(1.0, denoised)])
                continue
            kept = (t / s) ** 2
            noise = (NoiseEvent(i, [(s, t)]), [t * math.sqrt((s - t) * (s + t)) / s])
            x = yield combine([(kept, x), (1 - kept, denoised)], noise)
        return x


class LCM(Solver):
    name = "lcm"
    order = 0
    order_note = "none (consistency-model sampler, not a discretisation)"
    nfe_per_step = "1"
    stochastic = True
    summary = "LCM: denoise, then add noise of the next level (ComfyUI sample_lcm)"
    options = {}

    def program(self, sigmas, x):
        for i in range(len(sigmas) - 1):
            s, t = sigmas[i], sigmas[i + 1]
            denoised = yield Denoise(x, s)
            yield Report(i, x, s, s, denoised)
            noise = (NoiseEvent(i, [(s, t)]), [t]) if t > 0 else None
            x = yield combine([(1.0, denoised)], noise)
        return x
