"""k-diffusion's single-step second-order samplers: DPM-2 (and its ancestral form), DPM-Solver++(2S) ancestral and
DPM-Solver++ SDE (``sample_dpm_2``, ``sample_dpm_2_ancestral``, ``sample_dpmpp_2s_ancestral``, ``sample_dpmpp_sde``).

VE coordinates, step s -> t, ``d(x, sigma) = (x - D(x, sigma)) / sigma``, ancestral split
``(sigma_down, sigma_up) = coefficients.ancestral_step(s, t, eta)``.

DPM-2 (Karras et al. 2022's Algorithm 2 with the midpoint of DPM-Solver-2, Lu et al. 2022) with EDM churn (the one
copy in ``edm.churned``: s -> s_hat, one noise stream over (s_hat, s)); the geometric (log-) midpoint
``m = sqrt(s_hat t)``:

    x_2 = x + (m - s_hat) d(x, s_hat) = (m / s_hat) x + (1 - m / s_hat) D
    x_t = x + (t - s_hat) d(x_2, m)   = x + ((t - s_hat) / m) x_2 - ((t - s_hat) / m) D_2       (Euler to t = 0)

DPM-2 ancestral: the same midpoint step from s to sigma_down (m = sqrt(s sigma_down)), then ``+ s_noise sigma_up z``
with z over (s, t). When sigma_down = 0 the step is Euler (x_t = D) and, as in k-diffusion, adds no noise, also
when t > 0 (eta large enough that sigma_up = t).

DPM-Solver++(2S) ancestral, h = log(s / sigma_down), m = s e^{-h/2} (data prediction, Lu et al. 2022b):

    x_2 = (m / s) x - expm1(-h/2) D,    x_t = (sigma_down / s) x - expm1(-h) D(x_2, m) + s_noise sigma_up z
    (sigma_down = 0: x_t = D + s_noise sigma_up z; no noise on the step to t = 0)

DPM-Solver++ SDE (k-diffusion's ``sample_dpmpp_sde``), h = log(s / t), stage at s_mid = s e^{-r h}, fac = 1/(2r):

    (d_1, u_1) = ancestral_step(s, s_mid, eta):  x_2 = (d_1 / s) x + (1 - d_1 / s) D + s_noise u_1 n(s, s_mid)
    (d_2, u_2) = ancestral_step(s, t, eta):      x_t = (d_2 / s) x + (1 - d_2 / s) ((1 - fac) D + fac D_2)
                                                       + s_noise u_2 n(s, t)
    (t = 0: x_t = D)

The two noises are the normalised increments of one Brownian path in sigma over (s, s_mid) and (s, t), as
k-diffusion's default ``BrownianTreeNoiseSampler`` draws them: an injected ``noise_sampler`` is asked exactly those
two intervals; in-kernel, stream 0 is n(s, s_mid) and n(s, t) = a z_0 + b z_1 with a = sqrt((s - s_mid)/(s - t)),
b = sqrt((s_mid - t)/(s - t)) (``NoiseEvent.mixing``): the same joint law.

Every update above is one fused-op call (the noise inside it); D enters as ``c_skip x + c_out F`` with a fastint
adapter (``Denoise(fuse=True)``).
"""

import math

from .base import NOISE_OPTIONS, Option, Solver, unit_interval_open
from .coefficients import ancestral_step, log_step
from .edm import _ChurnedSolver, churned
from .program import Denoise, NoiseEvent, Report, combine


def midpoint_step(x, denoised, s: float, t: float, noise=None):
    """Program fragment: the DPM-2 step from ``(x, s)`` with ``denoised = D(x, s)`` to ``t`` through the log-midpoint
    (Euler when t = 0); ``noise`` is added by the final combination. Returns the new state."""
    if t == 0:
        return (yield combine([(0.0, x), (1.0, denoised)], noise))
    m = math.sqrt(s * t)
    x_2 = yield combine([(m / s, x), (1 - m / s, denoised)])
    denoised_2 = yield Denoise(x_2, m)
    c = (t - s) / m
    return (yield combine([(1.0, x), (c, x_2), (-c, denoised_2)], noise))


class DPM2(_ChurnedSolver):
    name = "dpm_2"
    order = 2
    order_note = "2"
    nfe_per_step = "2 (1 on the last step to 0)"
    summary = "DPM-2: EDM step through the log-midpoint (k-diffusion sample_dpm_2), optional churn"

    def program(self, sigmas, x):
        for i in range(len(sigmas) - 1):
            x, s_hat = yield from churned(x, sigmas[i], self.gamma(sigmas, i), self.config["s_noise"], i)
            denoised = yield Denoise(x, s_hat)
            yield Report(i, x, sigmas[i], s_hat, denoised)
            x = yield from midpoint_step(x, denoised, s_hat, sigmas[i + 1])
        return x


class _AncestralSingleStep(Solver):
    stochastic = True
    order = 2
    order_note = "2 (ODE, eta = 0); 1 strong (SDE)"
    nfe_per_step = "2 (1 on the last step to 0)"
    options = NOISE_OPTIONS


class DPM2Ancestral(_AncestralSingleStep):
    name = "dpm_2_ancestral"
    summary = "DPM-2 ancestral (k-diffusion sample_dpm_2_ancestral)"

    def program(self, sigmas, x):
        eta, s_noise = self.config["eta"], self.config["s_noise"]
        for i in range(len(sigmas) - 1):
            s, t = sigmas[i], sigmas[i + 1]
            denoised = yield Denoise(x, s)
            yield Report(i, x, s, s, denoised)
            down, up = ancestral_step(s, t, eta)
            noise = None
            if down > 0 and up > 0 and self.uses_noise():
                noise = (NoiseEvent(i, [(s, t)]), [s_noise * up])
            x = yield from midpoint_step(x, denoised, s, down, noise)
        return x


class DPMpp2SAncestral(_AncestralSingleStep):
    name = "dpmpp_2s_ancestral"
    summary = "DPM-Solver++(2S) ancestral (k-diffusion sample_dpmpp_2s_ancestral)"

    def program(self, sigmas, x):
        eta, s_noise = self.config["eta"], self.config["s_noise"]
        for i in range(len(sigmas) - 1):
            s, t = sigmas[i], sigmas[i + 1]
            denoised = yield Denoise(x, s)
            yield Report(i, x, s, s, denoised)
            down, up = ancestral_step(s, t, eta)
            noise = (NoiseEvent(i, [(s, t)]), [s_noise * up]) if t > 0 and up > 0 and self.uses_noise() else None
            if down == 0:
                x = yield combine([(0.0, x), (1.0, denoised)], noise)
                continue
            h = log_step(s, down)
            m = s * math.exp(-h / 2)
            x_2 = yield combine([(m / s, x), (-math.expm1(-h / 2), denoised)])
            denoised_2 = yield Denoise(x_2, m)
            x = yield combine([(down / s, x), (-math.expm1(-h), denoised_2)], noise)
        return x


class DPMppSDE(_AncestralSingleStep):
    name = "dpmpp_sde"
    summary = "DPM-Solver++ SDE, stage at r (k-diffusion sample_dpmpp_sde), Brownian noise over (s, s_mid), (s, t)"
    options = {**NOISE_OPTIONS, "r": Option(0.5, unit_interval_open, "a number in (0, 1)")}

    def program(self, sigmas, x):
        eta, s_noise, r = self.config["eta"], self.config["s_noise"], self.config["r"]
        fac = 1 / (2 * r)
        noisy = self.uses_noise()
        for i in range(len(sigmas) - 1):
            s, t = sigmas[i], sigmas[i + 1]
            denoised = yield Denoise(x, s)
            yield Report(i, x, s, s, denoised)
            if t == 0:
                x = yield combine([(0.0, x), (1.0, denoised)])
                continue
            s_mid = s * math.exp(-r * log_step(s, t))
            down_1, up_1 = ancestral_step(s, s_mid, eta)
            down_2, up_2 = ancestral_step(s, t, eta)
            event = None
            if noisy:
                a = math.sqrt((s - s_mid) / (s - t))
                event = NoiseEvent(i, [(s, s_mid), (s, t)], mixing=[[1.0], [a, math.sqrt(max(1 - a * a, 0.0))]])
            x_2 = yield combine([(down_1 / s, x), (1 - down_1 / s, denoised)],
                                (event, [s_noise * up_1]) if noisy and up_1 > 0 else None)
            denoised_2 = yield Denoise(x_2, s_mid)
            e_2 = 1 - down_2 / s
            x = yield combine([(down_2 / s, x), (e_2 * (1 - fac), denoised), (e_2 * fac, denoised_2)],
                              (event, [0.0, s_noise * up_2]) if noisy and up_2 > 0 else None)
        return x
