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
a fastint adapter each D enters as its parts ``c_skip x + c_out F`` (``SamplingContext.denoise_terms``: the inputs
are x, F, x_1, F_1[, x_2, F_2]) and the same call writes the next network input ``c_in x_t``; without a callback,
progress bar or injected noise the whole loop is planned before it starts (``linear.run_linear``).
"""

import math

from ..ops.contract import MAX_INPUTS
from .base import Option, Solver, non_negative, one_of, scaled
from .coefficients import log_step
from .linear import LinearStep, plannable, run_linear

NOISE_OPTIONS = {"eta": Option(1.0, non_negative, "a finite number >= 0"),
                 "s_noise": Option(1.0, non_negative, "a finite number >= 0")}
THIRD_ORDER = Option("peer", one_of("peer", "exact"), "'peer' (k-diffusion/diffusers coefficient) or 'exact'")


class _Multistep(Solver):
    """Shared loop: the history of data predictions and step sizes; subclasses give the correction terms."""

    order_of_history = 1

    def eta(self) -> float:
        return self.config.get("eta", 0.0)

    def correction(self, h, h_eta, history, denoised):
        """[(coef, terms)] added to the first-order step, from ``history`` = [(h_1, D_1), (h_2, D_2), ...]; each D
        is a term list (``SamplingContext.denoise_terms``)."""
        raise NotImplementedError

    def linear_steps(self, ctx):
        """The steps as ``LinearStep``s (``run_linear``): the same coefficients as ``run``, D_{i-j} by index j."""
        eta, s_noise = self.eta(), self.config.get("s_noise", 1.0)
        width = self.order_of_history + 1
        steps, history = [], []          # history: [(h_k, index of D_k)], newest first
        for i in range(ctx.steps):
            s, t = ctx.sigmas[i], ctx.sigmas[i + 1]
            d = [0.0] * width
            if t == 0:
                d[0] = 1.0
                steps.append(LinearStep(0.0, d, 0.0))
                continue
            h = log_step(s, t)
            h_eta = (1 + eta) * h
            d[0] = -math.expm1(-h_eta)
            for coef, j in self.correction(h, h_eta, history, 0):
                d[j] += coef
            noise = t * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise if eta > 0 and s_noise > 0 else 0.0
            steps.append(LinearStep((t / s) * math.exp(-eta * h), d, noise))
            history = ([(h, 0)] + history)[:self.order_of_history]
            history = [(h_k, j + 1) for h_k, j in history]
        return steps

    def run(self, ctx, x):
        if plannable(ctx):
            return run_linear(ctx, x, self.key(), lambda: self.linear_steps(ctx))
        eta = self.eta()
        s_noise = self.config.get("s_noise", 1.0)
        noisy = eta > 0 and s_noise > 0
        # D as parts (x, F) when every D of a step fits the op's inputs beside x and any injected noise tensor
        deferred = 2 * (self.order_of_history + 1) + (noisy and ctx.noise_sampler is not None) <= MAX_INPUTS
        history = []
        for i in range(ctx.steps):
            s, t = ctx.sigmas[i], ctx.sigmas[i + 1]
            denoised = ctx.denoise_terms(x, s) if deferred else [(1.0, ctx.denoise(x, s))]
            ctx.report(i, x, s, s, denoised)
            if t == 0:
                x = ctx.combine(denoised, inplace=x)
                continue
            h = log_step(s, t)
            h_eta = (1 + eta) * h
            terms = [((t / s) * math.exp(-eta * h), x)] + scaled(-math.expm1(-h_eta), denoised)
            for coef, d in self.correction(h, h_eta, history, denoised):
                terms += scaled(coef, d)
            noise = None
            if noisy:
                noise = (ctx.noise_event(i, [(s, t)]), [t * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise])
            kept = ([(h, denoised)] + history)[:self.order_of_history]
            dropped = [tensor for _, d in history[self.order_of_history - 1:] for _, tensor in d]
            buffer = ctx.reusable([x] + dropped, [d for _, d in kept])
            x = ctx.combine(terms, noise=noise, inplace=buffer, next_sigma=t if i + 1 < ctx.steps else None)
            history = kept
        return x


class DPMpp2M(_Multistep):
    name = "dpmpp_2m"
    order = "2"
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
    order = "2 (ODE, eta = 0); 1 strong (SDE)"
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
    order = "2 (peer coefficient); 3 (third_order='exact')"
    nfe_per_step = "1"
    summary = "DPM-Solver++(3M), deterministic (k-diffusion 3M SDE with eta = 0)"
    options = {"third_order": THIRD_ORDER}


class DPMpp3MSDE(_ThirdOrderMultistep):
    name = "dpmpp_3m_sde"
    order = "2 or 3 (ODE, eta = 0, as dpmpp_3m); 1 strong (SDE)"
    nfe_per_step = "1"
    stochastic = True
    summary = "DPM-Solver++(3M) SDE (k-diffusion sample_dpmpp_3m_sde)"
    options = {**NOISE_OPTIONS, "third_order": THIRD_ORDER}
