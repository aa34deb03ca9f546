"""Host-side float64 coefficient math shared by the solvers (never touches tensors).

VE coordinates throughout: alpha = 1, lambda = -log(sigma), a step s -> t has h = log(sigma_s / sigma_t) > 0.
"""

import math
from typing import List, Sequence, Tuple


def log_step(sigma_from: float, sigma_to: float) -> float:
    """h = lambda_t - lambda_s = log(sigma_s / sigma_t)."""
    return math.log(sigma_from / sigma_to)


def phi2(v: float) -> float:
    """phi2(v) = (expm1(v) - v) / v, with its Taylor series near 0 (v/2 + v^2/6 + v^3/24)."""
    if abs(v) < 1e-5:
        return v / 2 + v * v / 6 + v ** 3 / 24
    return (math.expm1(v) - v) / v


def ancestral_step(sigma_from: float, sigma_to: float, eta: float) -> Tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step (k-diffusion): sigma_up = min(sigma_t,
    eta sqrt(sigma_t^2 (sigma_s^2 - sigma_t^2) / sigma_s^2)), sigma_down = sqrt(sigma_t^2 - sigma_up^2)."""
    if eta == 0:
        return sigma_to, 0.0
    up = min(sigma_to, eta * math.sqrt(sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2))
    return math.sqrt(max(sigma_to ** 2 - up ** 2, 0.0)), up


def brownian_stage_noise(fractions: Sequence[float], eta_h: float) -> List[float]:
    """Coefficients of z_1..z_j in the normalised noise ``n_j`` at stage fraction ``fractions[-1]`` of a step.

    One Brownian path over the step, sampled at fractions r_1 < ... < r_j of h: with r_0 = 0,
    ``n_j = sum_i e^{-(r_j - r_i) eta h} sqrt(1 - e^{-2 (r_i - r_{i-1}) eta h}) z_i``, so that
    Var(n_j) = 1 - e^{-2 r_j eta h} (the exact variance of the linear part of the reverse SDE) and every later
    stage reuses the earlier stages' noise.
    """
    coeffs, previous = [], 0.0
    last = fractions[-1]
    for r in fractions:
        coeffs.append(math.exp(-(last - r) * eta_h) * math.sqrt(-math.expm1(-2 * (r - previous) * eta_h)))
        previous = r
    return coeffs
