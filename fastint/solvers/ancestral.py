"""Ancestral sampling: k-diffusion's Euler ancestral and DDIM with eta (the same step in VE coordinates).

    sigma_up = min(t, eta sqrt(t^2 (s^2 - t^2) / s^2)),   sigma_down = sqrt(t^2 - sigma_up^2)
    x_t = D + (sigma_down / s) (x - D) + s_noise sigma_up z

DDIM (diffusers ``DDIMScheduler``) with ``var = (1-ab_prev)/(1-ab_t) (1 - ab_t/ab_prev)``, ``sig = eta sqrt(var)``,
``x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sig^2) eps + sig z`` is exactly this step after dividing by
sqrt(ab_prev): sig / sqrt(ab_prev) = sigma_up in VE sigmas. eta = 0 is deterministic DDIM (= Euler).
"""

from .base import NOISE_OPTIONS, Option, Solver, non_negative
from .coefficients import ancestral_step
from .program import Denoise, NoiseEvent, Report, combine


class _AncestralSolver(Solver):
    stochastic = True
    order = 1
    order_note = "1"
    nfe_per_step = "1"

    def program(self, sigmas, x):
        eta, s_noise = self.config["eta"], self.config["s_noise"]
        for i in range(len(sigmas) - 1):
            s, t = sigmas[i], sigmas[i + 1]
            denoised = yield Denoise(x, s, fuse=False)
            yield Report(i, x, s, s, denoised)
            down, up = ancestral_step(s, t, eta)
            noise = (NoiseEvent(i, [(s, t)]), [s_noise * up]) if t > 0 and self.uses_noise() else None
            x = yield combine([(down / s, x), (1 - down / s, denoised)], noise)
        return x


class EulerAncestral(_AncestralSolver):
    name = "euler_ancestral"
    summary = "Euler ancestral (k-diffusion), eta scales the noise"
    options = NOISE_OPTIONS


class DDIM(_AncestralSolver):
    name = "ddim"
    summary = "DDIM with eta (diffusers DDIMScheduler); eta = 0 is deterministic"
    options = {"eta": Option(0.0, lambda v: non_negative(v) and v <= 1, "a number in [0, 1]"),
               "s_noise": NOISE_OPTIONS["s_noise"]}
