"""Adams-Bashforth multistep methods on ``d = dx/dsigma = (x - D(x, sigma)) / sigma``: iPNDM, iPNDM_v and DEIS
(ComfyUI's ``sample_ipndm``, ``sample_ipndm_v``, ``sample_deis``; Zhang & Chen, *Fast Sampling of Diffusion Models
with Exponential Integrator*, arXiv 2204.13902, where iPNDM and tAB/rhoAB-DEIS come from).

Step n (sigma_n -> sigma_{n+1}) has order ``p = min(max_order, n + 1)`` (lower-order warm start, no extra model
evaluations) and computes

    x_{n+1} = x_n + sum_{j < p} C_j d_{n-j}                     (C_j: fastint/solvers/adams_coefficients.py)

with one model evaluation; a step to sigma = 0 returns D. In VE coordinates ``dx/dsigma = eps``, so the DEIS forms
(eps extrapolated by a polynomial in t, integrated exactly against the exponential-integrator kernel) are exactly
these weights. Each step is one fused-op call reading (x, D, d_{n-1}, ..., d_{n-p+1}) and writing x_{n+1} and, when
a later step reads it, d_n = (x_n - D) / sigma_n as a second output.
"""

import numbers

from .adams_coefficients import comfy_variable_step, fixed_step, lagrange_in_sigma, lagrange_in_vp_time
from .base import Option, Solver, one_of
from .program import Combine, Denoise, Report, combine


def _max_order(largest: int, default: int) -> Option:
    return Option(default, lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and 1 <= v <= largest,
                  f"an integer from 1 to {largest}")


class _Adams(Solver):
    """The shared multistep loop; subclasses give ``weights(sigmas, n, order)`` = [C_0, ..., C_{order-1}]."""

    nfe_per_step = "1"

    def weights(self, sigmas, n, order):
        raise NotImplementedError

    def program(self, sigmas, x):
        steps, max_order = len(sigmas) - 1, self.config["max_order"]
        history = []                      # d_{n-1}, d_{n-2}, ... (handles), newest first
        for n in range(steps):
            s, t = sigmas[n], sigmas[n + 1]
            denoised = yield Denoise(x, s)
            yield Report(n, x, s, s, denoised)
            if t == 0:
                x = yield combine([(1.0, denoised)])
                continue
            c = self.weights(sigmas, n, min(max_order, n + 1))
            row = ((1 + c[0] / s, x), (-c[0] / s, denoised)) + tuple(zip(c[1:], history))
            if max_order > 1 and n + 1 < steps and sigmas[n + 2] > 0:      # a later step reads d_n
                x, d = yield Combine((row, ((1 / s, x), (-1 / s, denoised))))
                history = ([d] + history)[:max_order - 1]
            else:
                x = yield combine(row)
        return x


class IPNDM(_Adams):
    name = "ipndm"
    order = 2
    order_note = "2 on Karras grids (uniform-step AB weights on a non-uniform grid)"
    summary = "iPNDM: Adams-Bashforth on dx/dsigma, fixed weights, warm start (ComfyUI sample_ipndm)"
    options = {"max_order": _max_order(4, 4)}

    def weights(self, sigmas, n, order):
        return fixed_step(sigmas, n, order)


class IPNDMVariable(_Adams):
    name = "ipndm_v"
    order = 2
    order_note = "2 (ComfyUI's order-4 weights; 3 with max_order=3); max_order with coefficients='exact'"
    summary = "iPNDM with variable-step weights (ComfyUI sample_ipndm_v); 'exact': variable-step AB"
    options = {"max_order": _max_order(4, 4),
               "coefficients": Option("peer", one_of("peer", "exact"),
                                      "'peer' (ComfyUI's weights) or 'exact' (variable-step Adams-Bashforth)")}

    def weights(self, sigmas, n, order):
        if self.config["coefficients"] == "exact":
            return lagrange_in_sigma(sigmas, n, order)
        return comfy_variable_step(sigmas, n, order)


class DEIS(_Adams):
    name = "deis"
    order = 3
    order_note = "3 (= max_order, 1 to 4; tab and rhoab)"
    summary = "DEIS multistep, tAB (Lagrange in VP time) or rhoAB (in sigma) (ComfyUI sample_deis)"
    options = {"max_order": _max_order(4, 3),
               "deis_mode": Option("tab", one_of("tab", "rhoab"), "'tab' or 'rhoab'")}

    def weights(self, sigmas, n, order):
        if self.config["deis_mode"] == "rhoab":
            return lagrange_in_sigma(sigmas, n, order)
        return lagrange_in_vp_time(sigmas, n, order)
