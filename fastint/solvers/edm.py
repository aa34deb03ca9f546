"""EDM Euler and Heun (Karras et al. 2022, Algorithm 2), with optional churn.

With ``d = (x - D(x, s)) / s`` the probability-flow ODE is ``dx/dsigma = d``. A step s -> t:

    churn:  gamma = min(s_churn / steps, sqrt(2) - 1) if s_tmin <= s <= s_tmax else 0,  s_hat = s (1 + gamma),
            x_hat = x + s_noise sqrt(s_hat^2 - s^2) z
    Euler:  x_t = x_hat + (t - s_hat) d(x_hat, s_hat) = (t / s_hat) x_hat + (1 - t / s_hat) D
    Heun:   x_2 = Euler; x_t = x_hat + (t - s_hat) (d(x_hat, s_hat) + d(x_2, t)) / 2   (Euler when t = 0)

Every line above is one fused-op call; Heun's correction reads (x_hat, D, x_2, D_2). Euler takes D as the parts
``c_skip x + c_out F`` of a fastint adapter (``SamplingContext.denoise_terms``) and its step also writes the next
network input ``c_in x_t`` when the next step has no churn; without churn, callback, progress bar or injected noise
the whole loop is planned before it starts (``linear.run_linear``).
"""

import math

from .base import Option, Solver, non_negative, scaled
from .linear import LinearStep, plannable, run_linear

CHURN_OPTIONS = {
    "s_churn": Option(0.0, non_negative, "a finite number >= 0"),
    "s_tmin": Option(0.0, non_negative, "a number >= 0"),
    "s_tmax": Option(float("inf"), lambda v: isinstance(v, (int, float)) and v >= 0, "a number >= 0 (inf allowed)"),
    "s_noise": Option(1.0, non_negative, "a finite number >= 0"),
}


class _ChurnedSolver(Solver):
    options = CHURN_OPTIONS

    def uses_noise(self) -> bool:
        return self.config["s_churn"] > 0 and self.config["s_noise"] > 0

    def gamma(self, ctx, i) -> float:
        """The churn of step i (0: none)."""
        s, cfg = ctx.sigmas[i], self.config
        return min(cfg["s_churn"] / ctx.steps, math.sqrt(2) - 1) if cfg["s_tmin"] <= s <= cfg["s_tmax"] else 0.0

    def churn(self, ctx, x, i):
        """(x_hat, s_hat): the churned state and noise level of step i (x itself when gamma = 0)."""
        s = ctx.sigmas[i]
        cfg = self.config
        gamma = self.gamma(ctx, i)
        if gamma <= 0:
            return x, s
        s_hat = s * (gamma + 1)
        event = ctx.noise_event(i, [(s_hat, s)])
        x_hat = ctx.combine([(1.0, x)], noise=(event, [cfg["s_noise"] * math.sqrt(s_hat ** 2 - s ** 2)]),
                            inplace=x)
        return x_hat, s_hat


class Euler(_ChurnedSolver):
    name = "euler"
    order = "1"
    nfe_per_step = "1"
    stochastic = False
    summary = "EDM Euler on the probability-flow ODE (= DDIM), optional churn"

    def run(self, ctx, x):
        unchurned = self.config["s_churn"] == 0 or all(self.gamma(ctx, i) <= 0 for i in range(ctx.steps))
        if unchurned and plannable(ctx):
            return run_linear(ctx, x, self.key(), lambda: [LinearStep(t / s, (1 - t / s,), 0.0)
                                                           for s, t in zip(ctx.sigmas[:-1], ctx.sigmas[1:])])
        for i in range(ctx.steps):
            x, s_hat = self.churn(ctx, x, i)
            denoised = ctx.denoise_terms(x, s_hat)
            ctx.report(i, x, ctx.sigmas[i], s_hat, denoised)
            t = ctx.sigmas[i + 1]
            unchurned_next = i + 1 < ctx.steps and self.gamma(ctx, i + 1) <= 0
            x = ctx.combine([(t / s_hat, x)] + scaled(1 - t / s_hat, denoised), inplace=x,
                            next_sigma=t if unchurned_next else None)
        return x


class Heun(_ChurnedSolver):
    name = "heun"
    order = "2"
    nfe_per_step = "2 (1 on the last step to 0)"
    stochastic = False
    summary = "EDM Heun (2nd order), optional churn (EDM Algorithm 2)"

    def run(self, ctx, x):
        for i in range(ctx.steps):
            x, s_hat = self.churn(ctx, x, i)
            denoised = ctx.denoise(x, s_hat)
            ctx.report(i, x, ctx.sigmas[i], s_hat, denoised)
            t = ctx.sigmas[i + 1]
            if t == 0:
                x = ctx.combine([(1.0, denoised)], inplace=x)
                continue
            x_2 = ctx.combine([(t / s_hat, x), (1 - t / s_hat, denoised)])
            denoised_2 = ctx.denoise(x_2, t)
            half_dt = (t - s_hat) / 2
            x = ctx.combine([(1 + half_dt / s_hat, x), (-half_dt / s_hat, denoised),
                             (half_dt / t, x_2), (-half_dt / t, denoised_2)], inplace=x)
        return x
