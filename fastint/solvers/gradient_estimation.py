"""Gradient estimation (Permenter & Yuan 2024, "Interpreting and improving diffusion models from an optimization
perspective"; ComfyUI ``sample_gradient_estimation``).

Denoising read as gradient descent on the distance to the data manifold, with d = (x - D(x, s)) / s the gradient
estimate at noise level s: the step s -> t (dt = t - s) follows a momentum-like combination of the current and the
previous step's gradient,

    x_t = x + dt d                                             (first step)
    x_t = x + dt (d + (ge_gamma - 1) (d - d_1)) = x + dt (ge_gamma d - (ge_gamma - 1) d_1)     (later steps)

with d_1 = (x_1 - D_1) / s_1 from the previous step; a step to t = 0 returns D. ge_gamma = 1 is Euler; the
paper's ge_gamma = 2 extrapolates the gradient a whole previous step ahead (global order 1 on smooth grids, like
Euler, with a smaller error constant); ge_gamma = 1.5 is the second-order Adams-Bashforth extrapolation on uniform
grids (order 2 on smoothly varying grids). Each step is one fused-op call reading (x, D, x_1, D_1).

``cfg_pp`` is ComfyUI's parameter for the CFG++ form, which needs the unconditional output of ComfyUI's model
wrapper; fastint takes only ``cfg_pp=False``.
"""

import math

from .base import Option, Solver
from .program import Denoise, Report, combine


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class GradientEstimation(Solver):
    name = "gradient_estimation"
    order = 1
    order_note = "1 (ge_gamma = 2); 2 with ge_gamma = 1.5 on smooth grids"
    nfe_per_step = "1"
    stochastic = False
    summary = "gradient estimation sampler, Permenter & Yuan (ComfyUI sample_gradient_estimation)"
    options = {"ge_gamma": Option(2.0, _finite_number, "a finite number"),
               "cfg_pp": Option(False, lambda v: v is False,
                                "False (CFG++ needs ComfyUI's unconditional model output; not supported)")}

    def program(self, sigmas, x):
        gamma = self.config["ge_gamma"]
        previous = None   # (x_1, D_1, s_1)
        for i in range(len(sigmas) - 1):
            s, t = sigmas[i], sigmas[i + 1]
            denoised = yield Denoise(x, s, fuse=False)
            yield Report(i, x, s, s, denoised)
            if t == 0:
                new_x = yield combine([(1.0, denoised)])
            else:
                dt = t - s
                g = 1.0 if previous is None else gamma
                terms = [(1 + g * dt / s, x), (-g * dt / s, denoised)]
                if previous is not None:
                    x_1, d_1, s_1 = previous
                    terms += [(-(gamma - 1) * dt / s_1, x_1), ((gamma - 1) * dt / s_1, d_1)]
                new_x = yield combine(terms)
            previous = (x, denoised, s)
            x = new_x
        return x
