"""RES multistep (Zhang et al. 2023, "Improved order analysis and design of exponential integrator for diffusion
models", the 2-step refined exponential solver) in data prediction, and its ancestral form (ComfyUI
``sample_res_multistep`` / ``sample_res_multistep_ancestral``).

VE coordinates, lambda = -log(sigma). A step s -> t first splits off the ancestral noise (k-diffusion's
``sigma_down, sigma_up`` with eta; eta = 0: sigma_down = t, sigma_up = 0), then integrates the probability-flow ODE
from s to sigma_down with h = log(s / sigma_down):

    first step, or sigma_down = 0:   x' = (sigma_down / s) x + (1 - sigma_down / s) D          (Euler)
    otherwise (exponential Adams-Bashforth with the previous data prediction D_1 as second node):
        c_2 = (lambda(sigma_{i-1}) - lambda(sigma_down,1)) / h  (< 0: D_1 lies behind the step),
        h b_2 = h phi_2(-h) / c_2,  h b_1 = h phi_1(-h) - h b_2,
        x' = e^{-h} x + h b_1 D + h b_2 D_1
    with h phi_1(-h) = -expm1(-h), h phi_2(-h) = (expm1(-h) + h) / h, and sigma_down,1 the previous step's
    sigma_down (= sigma_i when eta = 0, ComfyUI's convention for the ancestral form);
    x_t = x' + s_noise sigma_up z   (when t > 0; z over (s, t)).

eta = 0 is a second-order ODE solver (``res_multistep``, which still takes ComfyUI's ``s_noise``: it has no effect
there). Every step is one fused-op call reading (x, D, D_1) [+ one noise stream].
"""

import math

from .base import NOISE_OPTIONS, Solver
from .coefficients import ancestral_step
from .program import Denoise, NoiseEvent, Report, combine


def res_coefficients(h: float, c_2: float):
    """(h b_1, h b_2) of the RES 2-step update with node offset c_2 (see the module docstring)."""
    h_phi_1 = -math.expm1(-h)
    if h < 1e-4:   # (expm1(-h) + h) / h by its series: the direct form cancels
        h_phi_2 = h / 2 - h * h / 6 + h ** 3 / 24
    else:
        h_phi_2 = (math.expm1(-h) + h) / h
    h_b_2 = h_phi_2 / c_2
    return h_phi_1 - h_b_2, h_b_2


class _ResMultistep(Solver):

    def eta(self) -> float:
        return self.config.get("eta", 0.0)

    def program(self, sigmas, x):
        eta, s_noise = self.eta(), self.config["s_noise"]
        previous = None   # (D_1, sigma_down of that step)
        for i in range(len(sigmas) - 1):
            s, t = sigmas[i], sigmas[i + 1]
            denoised = yield Denoise(x, s)
            yield Report(i, x, s, s, denoised)
            down, up = ancestral_step(s, t, eta)
            if down == 0 or previous is None:
                terms = [(down / s, x), (1 - down / s, denoised)]
            else:
                old_denoised, old_down = previous
                h = math.log(s / down)
                c_2 = math.log(old_down / sigmas[i - 1]) / h
                h_b_1, h_b_2 = res_coefficients(h, c_2)
                terms = [(math.exp(-h), x), (h_b_1, denoised), (h_b_2, old_denoised)]
            noise = None
            if t > 0 and up > 0 and s_noise > 0:
                noise = (NoiseEvent(i, [(s, t)]), [s_noise * up])
            x = yield combine(terms, noise)
            previous = (denoised, down)
        return x


class ResMultistep(_ResMultistep):
    name = "res_multistep"
    order = 2
    order_note = "2"
    nfe_per_step = "1"
    stochastic = False
    summary = "RES 2-step exponential multistep (ComfyUI sample_res_multistep); s_noise has no effect"
    options = {"s_noise": NOISE_OPTIONS["s_noise"]}


class ResMultistepAncestral(_ResMultistep):
    name = "res_multistep_ancestral"
    order = 2
    order_note = "2 (ODE, eta = 0); 1 (ancestral)"
    nfe_per_step = "1"
    stochastic = True
    summary = "RES 2-step multistep with ancestral noise (ComfyUI sample_res_multistep_ancestral)"
    options = NOISE_OPTIONS
