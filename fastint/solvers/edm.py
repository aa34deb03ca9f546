"""EDM Euler and Heun (Karras et al. 2022, Algorithm 2), with optional churn; the one copy of the churn and of the
Heun step (Restart and the splitting solvers use them too).

With ``d = (x - D(x, s)) / s`` the probability-flow ODE is ``dx/dsigma = d``. A step s -> t:

    churn:  gamma = min(s_churn / steps, sqrt(2) - 1) if s_tmin <= s <= s_tmax else 0,  s_hat = s (1 + gamma),
            x_hat = x + s_noise sqrt(s_hat^2 - s^2) z
    Euler:  x_t = x_hat + (t - s_hat) d(x_hat, s_hat) = (t / s_hat) x_hat + (1 - t / s_hat) D
    Heun:   x_2 = Euler; x_t = x_hat + (t - s_hat) (d(x_hat, s_hat) + d(x_2, t)) / 2   (Euler when t = 0)

Every line above is one fused-op call; Heun's correction reads (x_hat, D, x_2, D_2). Euler takes D as the parts
``c_skip x + c_out F`` of a fastint adapter (``Denoise(fuse=True)``).
"""

import math

from .base import Option, Solver, non_negative
from .program import Denoise, NoiseEvent, Report, combine

CHURN_OPTIONS = {
    "s_churn": Option(0.0, non_negative, "a finite number >= 0"),
    "s_tmin": Option(0.0, non_negative, "a number >= 0"),
    "s_tmax": Option(float("inf"), lambda v: isinstance(v, (int, float)) and v >= 0, "a number >= 0 (inf allowed)"),
    "s_noise": Option(1.0, non_negative, "a finite number >= 0"),
}


def churned(x, s: float, gamma: float, s_noise: float, counter: int):
    """Program fragment: ``(x_hat, s_hat)``, the state and noise level after EDM churn ``gamma`` (x itself when
    gamma = 0); the noise is stream 0 at ``counter`` over ``(s_hat, s)``."""
    if gamma <= 0:
        return x, s
    s_hat = s * (gamma + 1)
    if s_noise > 0:
        x = yield combine([(1.0, x)], (NoiseEvent(counter, [(s_hat, s)]), [s_noise * math.sqrt(s_hat ** 2 - s ** 2)]))
    return x, s_hat


def heun_step(x, denoised, s: float, t: float, second_order: bool = True):
    """Program fragment: the EDM Heun step from ``(x, s)`` with ``denoised = D(x, s)`` to ``t`` (the Euler step when
    ``t = 0`` or ``second_order`` is False); returns the new state."""
    x_2 = yield combine([(t / s, x), (1 - t / s, denoised)])
    if t == 0 or not second_order:
        return x_2
    denoised_2 = yield Denoise(x_2, t, fuse=False)
    half_dt = (t - s) / 2
    return (yield combine([(1 + half_dt / s, x), (-half_dt / s, denoised), (half_dt / t, x_2),
                           (-half_dt / t, denoised_2)]))


class _ChurnedSolver(Solver):
    options = CHURN_OPTIONS

    def uses_noise(self) -> bool:
        return self.config["s_churn"] > 0 and self.config["s_noise"] > 0

    def gamma(self, sigmas, i) -> float:
        """The churn of step i (0: none)."""
        s, cfg = sigmas[i], self.config
        return min(cfg["s_churn"] / (len(sigmas) - 1), math.sqrt(2) - 1) if cfg["s_tmin"] <= s <= cfg["s_tmax"] \
            else 0.0

    def program(self, sigmas, x):
        for i in range(len(sigmas) - 1):
            x, s_hat = yield from churned(x, sigmas[i], self.gamma(sigmas, i), self.config["s_noise"], i)
            denoised = yield Denoise(x, s_hat, fuse=self.fuse)
            yield Report(i, x, sigmas[i], s_hat, denoised)
            x = yield from heun_step(x, denoised, s_hat, sigmas[i + 1], self.second_order)
        return x


class Euler(_ChurnedSolver):
    name = "euler"
    order = 1
    order_note = "1"
    nfe_per_step = "1"
    stochastic = False
    summary = "EDM Euler on the probability-flow ODE (= DDIM), optional churn"
    fuse, second_order = True, False


class Heun(_ChurnedSolver):
    name = "heun"
    order = 2
    order_note = "2"
    nfe_per_step = "2 (1 on the last step to 0)"
    stochastic = False
    summary = "EDM Heun (2nd order), optional churn (EDM Algorithm 2)"
    fuse, second_order = False, True
