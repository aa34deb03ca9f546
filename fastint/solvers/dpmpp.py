"""DPM-Solver++ multistep in data prediction: 2M, 3M and their SDE forms (k-diffusion / diffusers).

VE coordinates (alpha = 1), step s -> t, ``h = log(s / t)``, ``h_eta = (1 + eta) h``, previous steps' sizes
h_1, h_2 and data predictions D_1, D_2. The first-order part of every method is

    x_t = (t / s) e^{-eta h} x - expm1(-h_eta) D + t sqrt(-expm1(-2 eta h)) s_noise z        (eta = 0: ODE)

2M:      + (-expm1(-h) / (2 r)) (D - D_1),  r = h_1 / h                                  (k-diffusion)
2M SDE:  midpoint + 0.5 (-expm1(-h_eta)) (D - D_1) / r;  heun + (-expm1(-h_eta) / (-h_eta) + 1) (D - D_1) / r
3M (SDE): with r0 = h_1/h, r1 = h_2/h, d1_0 = (D - D_1)/r0, d1_1 = (D_1 - D_2)/r1,
         d1 = d1_0 + (d1_0 - d1_1) r0/(r0 + r1), d2 = (d1_0 - d1_1)/(r0 + r1),
         phi_2 = expm1(-h_eta)/h_eta + 1, phi_3 = phi_2/h_eta - 0.5:   + phi_2 d1 - c3 phi_3 d2
         with c3 = 1 (the peers' coefficient; global order 2) or c3 = 2 (Taylor-exact; order 3).
         The second step uses + phi_2 (D - D_1)/r0. The first step is first order.
A step to sigma = 0 returns D. Each step is one fused-op call reading (x, D, D_1[, D_2]) [+ one noise stream]; with
a fastint adapter each D enters as its parts ``c_skip x + c_out F`` (``Denoise(fuse=True)``: the inputs are x, F,
x_1, F_1[, x_2, F_2]) and the same call writes the next network input ``c_in x_t``.
"""

import math

from .base import NOISE_OPTIONS, Option, Solver, one_of
from .coefficients import log_step
from .program import Denoise, NoiseEvent, Report, combine

THIRD_ORDER = Option("peer", one_of("peer", "exact"), "'peer' (k-diffusion/diffusers coefficient) or 'exact'")


class _Multistep(Solver):
    """Shared loop: the history of data predictions and step sizes; subclasses give the correction terms."""

    order_of_history = 1

    def eta(self) -> float:
        return self.config.get("eta", 0.0)

    def correction(self, h, h_eta, history, denoised):
        """[(coef, D)] added to the first-order step, from ``history`` = [(h_1, D_1), (h_2, D_2), ...] (handles)."""
        raise NotImplementedError

    def program(self, sigmas, x):
        eta = self.eta()
        s_noise = self.config.get("s_noise", 1.0)
        noisy = eta > 0 and s_noise > 0
        history = []
        for i in range(len(sigmas) - 1):
            s, t = sigmas[i], sigmas[i + 1]
            denoised = yield Denoise(x, s)
            yield Report(i, x, s, s, denoised)
            if t == 0:
                x = yield combine([(1.0, denoised)])
                continue
            h = log_step(s, t)
            h_eta = (1 + eta) * h
            terms = [((t / s) * math.exp(-eta * h), x), (-math.expm1(-h_eta), denoised)]
            terms += self.correction(h, h_eta, history, denoised)
            noise = None
            if noisy:
                noise = (NoiseEvent(i, [(s, t)]), [t * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise])
            x = yield combine(terms, noise)
            history = ([(h, denoised)] + history)[:self.order_of_history]
        return x


class DPMpp2M(_Multistep):
    name = "dpmpp_2m"
    order = 2
    order_note = "2"
    nfe_per_step = "1"
    summary = "DPM-Solver++(2M) (k-diffusion sample_dpmpp_2m)"
    options = {}

    def correction(self, h, h_eta, history, denoised):
        if not history:
            return []
        h_1, d_1 = history[0]
        c = -math.expm1(-h) / (2 * (h_1 / h))
        return [(c, denoised), (-c, d_1)]


class DPMpp2MSDE(_Multistep):
    name = "dpmpp_2m_sde"
    order = 2
    order_note = "2 (ODE, eta = 0); 1 strong (SDE)"
    nfe_per_step = "1"
    stochastic = True
    summary = "DPM-Solver++(2M) SDE, midpoint or heun (k-diffusion sample_dpmpp_2m_sde)"
    options = {**NOISE_OPTIONS, "solver_type": Option("midpoint", one_of("midpoint", "heun"), "'midpoint' or 'heun'")}

    def correction(self, h, h_eta, history, denoised):
        if not history:
            return []
        h_1, d_1 = history[0]
        r = h_1 / h
        if self.config["solver_type"] == "heun":
            c = (-math.expm1(-h_eta) / (-h_eta) + 1) / r
        else:
            c = 0.5 * -math.expm1(-h_eta) / r
        return [(c, denoised), (-c, d_1)]


class _ThirdOrderMultistep(_Multistep):
    order_of_history = 2

    def correction(self, h, h_eta, history, denoised):
        if not history:
            return []
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        if len(history) == 1:
            h_1, d_1 = history[0]
            c = phi_2 / (h_1 / h)
            return [(c, denoised), (-c, d_1)]
        (h_1, d_1), (h_2, d_2) = history
        r0, r1 = h_1 / h, h_2 / h
        phi_3 = phi_2 / h_eta - 0.5
        c3 = (2.0 if self.config["third_order"] == "exact" else 1.0) * phi_3
        a, b = r0 / (r0 + r1), 1 / (r0 + r1)
        p = phi_2 * (1 + a) - c3 * b          # coefficient of d1_0
        q = -phi_2 * a + c3 * b               # coefficient of d1_1
        return [(p / r0, denoised), (-p / r0 + q / r1, d_1), (-q / r1, d_2)]


class DPMpp3M(_ThirdOrderMultistep):
    name = "dpmpp_3m"
    order = 2
    order_note = "2 (peer coefficient); 3 (third_order='exact')"
    nfe_per_step = "1"
    summary = "DPM-Solver++(3M), deterministic (k-diffusion 3M SDE with eta = 0)"
    options = {"third_order": THIRD_ORDER}


class DPMpp3MSDE(_ThirdOrderMultistep):
    name = "dpmpp_3m_sde"
    order = 2
    order_note = "2 or 3 (ODE, eta = 0, as dpmpp_3m); 1 strong (SDE)"
    nfe_per_step = "1"
    stochastic = True
    summary = "DPM-Solver++(3M) SDE (k-diffusion sample_dpmpp_3m_sde)"
    options = {**NOISE_OPTIONS, "third_order": THIRD_ORDER}
