"""ER-SDE-Solver (Cui et al. 2023, "Elucidating the solution space of extended reverse-time SDEs for diffusion
models"), the VP data-prediction solver with up to 3 stages (ComfyUI ``sample_er_sde``).

VE coordinates (alpha = 1): the ER-SDE time is lambda = sigma, and the noise scale function ``noise_scaler``
phi(lambda) > 0 picks the member of the family (phi(x) = x: the probability-flow ODE; phi(x) = x^2: the reverse-time
SDE; the default phi(x) = x (e^{x^0.3} + 10) is the authors' ER-SDE). A step s -> t (r = phi(t) / phi(s)):

    x_t = r x + (1 - r) D                                                          (stage 1)
        + (dt + phi(t) S_1) D'          if stage >= 2,  dt = t - s, S_1 = int_t^s dl / phi(l)
        + (dt^2 / 2 + phi(t) S_2) D''   if stage >= 3,  S_2 = int_t^s (l - s) / phi(l) dl
        + s_noise sqrt(t^2 - s^2 r^2) z                  (0 where t^2 < s^2 r^2, as ComfyUI's nan_to_num)

with the divided differences D' = (D - D_1) / (s - s_1), D'' = (D' - D'_1) / ((s - s_2) / 2) of the data
predictions of this and the previous steps (the stage of step i is min(max_stage, i + 1)); a step to t = 0 returns
D. The integrals use the authors' quadrature: the left Riemann sum on 200 equal sub-intervals of [t, s] (ComfyUI's
``num_integration_points``). Orders (the ODE form phi(x) = x, measured): max_stage 1 is first order; stages 2 and
3 are second order, since the backward difference D' is a first-order estimate of dD/dsigma (the third stage lowers
the error constant), until the quadrature error, of relative size 1/200 in the stage-2 coefficient, dominates at
small steps (measured 1.9 at 16-64 steps, 1.6 at 128-256). Each step is one fused-op call reading (x, D, D_1, D_2)
[+ one noise stream].

``noise_scaler`` is a host callable float -> float: fastint calls it on Python floats (202 points per step, once
per recording: it must be a pure function), where ComfyUI calls it on tensors; a tensor-style scaler such as
``lambda x: x * ((x ** 0.3).exp() + 10)`` is written ``lambda x: x * (math.exp(x ** 0.3) + 10)``.
"""

import math

from .base import NOISE_OPTIONS, Option, Solver
from .program import Denoise, NoiseEvent, Report, combine

INTEGRATION_POINTS = 200


def default_noise_scaler(x: float) -> float:
    """The authors' (and ComfyUI's) ER-SDE noise scale function phi(x) = x (e^{x^0.3} + 10)."""
    return x * (math.exp(x ** 0.3) + 10.0)


def _scaled(noise_scaler, value: float) -> float:
    try:
        out = noise_scaler(value)
    except Exception as error:
        raise TypeError(f"solver 'er_sde': noise_scaler must map a Python float to a float (fastint calls it on "
                        f"floats, not tensors); noise_scaler({value!r}) raised {error!r}") from error
    if isinstance(out, bool) or not isinstance(out, (int, float)) or not math.isfinite(out) or out <= 0:
        raise ValueError(f"solver 'er_sde': noise_scaler({value!r}) returned {out!r}; it must return a finite "
                         "float > 0 for every float > 0")
    return float(out)


def stage_integrals(noise_scaler, s: float, t: float):
    """(S_1, S_2) by the left Riemann sum on INTEGRATION_POINTS sub-intervals of [t, s] (module docstring)."""
    width = (s - t) / INTEGRATION_POINTS
    int_1 = int_2 = 0.0
    for k in range(INTEGRATION_POINTS):
        position = t + k * width
        inverse = 1.0 / _scaled(noise_scaler, position)
        int_1 += inverse
        int_2 += (position - s) * inverse
    return int_1 * width, int_2 * width


class ErSDE(Solver):
    name = "er_sde"
    order = 2
    order_note = "2 (ODE form noise_scaler=lambda x: x, s_noise=0; lower at small steps: 200-point quadrature); " \
                 "1 with max_stage=1"
    nfe_per_step = "1"
    stochastic = True
    summary = "ER-SDE-Solver-3, extended reverse-time SDE (ComfyUI sample_er_sde)"
    options = {"s_noise": NOISE_OPTIONS["s_noise"],
               "noise_scaler": Option(None, lambda v: v is None or callable(v),
                                      "None (the authors' x (e^{x^0.3} + 10)) or a callable float -> float > 0"),
               "max_stage": Option(3, lambda v: type(v) is int and 1 <= v <= 3, "1, 2 or 3")}
    dropin_parameters = ("s_noise", "noise_sampler", "noise_scaler", "max_stage")

    def program(self, sigmas, x):
        scaler = self.config["noise_scaler"] or default_noise_scaler
        s_noise, max_stage = self.config["s_noise"], self.config["max_stage"]
        history = []   # data predictions of the previous steps, newest first
        for i in range(len(sigmas) - 1):
            s, t = sigmas[i], sigmas[i + 1]
            denoised = yield Denoise(x, s)
            yield Report(i, x, s, s, denoised)
            if t == 0:
                x = yield combine([(1.0, denoised)])
            else:
                stage = min(max_stage, i + 1)
                r = _scaled(scaler, t) / _scaled(scaler, s)
                c_d, c_d1, c_d2 = 1 - r, 0.0, 0.0       # coefficients of D, D_1, D_2
                if stage >= 2:
                    dt = t - s
                    int_1, int_2 = stage_integrals(scaler, s, t)
                    phi_t = _scaled(scaler, t)
                    c2 = (dt + phi_t * int_1) / (s - sigmas[i - 1])               # D' = (D - D_1) / (s - s_1)
                    c_d, c_d1 = c_d + c2, c_d1 - c2
                    if stage >= 3:   # D'' = (D' - D'_1) / ((s - s_2) / 2), D'_1 = (D_1 - D_2) / (s_1 - s_2)
                        c3 = (dt * dt / 2 + phi_t * int_2) / ((s - sigmas[i - 2]) / 2)
                        a, b = c3 / (s - sigmas[i - 1]), c3 / (sigmas[i - 1] - sigmas[i - 2])
                        c_d, c_d1, c_d2 = c_d + a, c_d1 - a - b, c_d2 + b
                terms = [(r, x), (c_d, denoised)] + [(c, d) for c, d in zip((c_d1, c_d2), history) if c != 0.0]
                noise = None
                variance = t * t - s * s * r * r
                if s_noise > 0 and variance > 0:
                    noise = (NoiseEvent(i, [(s, t)]), [s_noise * math.sqrt(variance)])
                x = yield combine(terms, noise)
            history = [denoised] + history[:1]
        return x
