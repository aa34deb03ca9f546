"""DPM-Solver-1/2/3 (Lu et al. 2022, arXiv 2206.00927; noise prediction) as in k-diffusion's ``DPMSolver``, and
DPM-Solver-fast (``sample_dpm_fast``): uniform steps in lambda = -log sigma with a fixed schedule of orders.

With ``eps_k = (u_k - D(u_k, sigma_k)) / sigma_k`` (u_0 = x at sigma s), a step s -> t, h = log(s / t),
stages at ``s_k = s e^{-r_k h}``:

    DPM-Solver-1:  x_t = x - t expm1(h) eps_0
    DPM-Solver-2:  u_1 = x - s_1 expm1(r_1 h) eps_0                                                  (r_1 = 1/2)
                   x_t = x - t expm1(h) eps_0 - (t / (2 r_1)) expm1(h) (eps_1 - eps_0)
    DPM-Solver-3:  u_1 as above (r_1 = 1/3);  u_2 = x - s_2 expm1(r_2 h) eps_0
                       - s_2 (r_2 / r_1) (expm1(r_2 h) / (r_2 h) - 1) (eps_1 - eps_0)               (r_2 = 2/3)
                   x_t = x - t expm1(h) eps_0 - (t / r_2) (expm1(h) / h - 1) (eps_2 - eps_0)

Each stage and the final combination is one fused-op call (eps_k expands to its two inputs u_k and D_k).

DPM-Solver-fast with NFE budget n: m = floor(n / 3) + 1 uniform lambda steps from sigma_max to sigma_min, orders
``[3] * (m - 2) + [2, 1]`` when 3 divides n, else ``[3] * (m - 1) + [n % 3]`` (n evaluations in all). With
eta > 0 each step goes to ``sigma_down' = max(sigma_down, sigma_min)`` (ancestral split of the step) and adds
``s_noise sqrt(t^2 - sigma_down'^2) z``, z over the step (s, t).
"""

import math
from typing import Dict, List, Sequence, Tuple

from .base import NOISE_OPTIONS, Option, Solver
from .coefficients import ancestral_step, log_step
from .program import Combine, Denoise, NoiseEvent, Report


def _eps(coef: float, state, denoised, sigma: float) -> List[Tuple[float, object]]:
    """``coef * eps`` with eps = (state - denoised) / sigma, as terms."""
    return [(coef / sigma, state), (-coef / sigma, denoised)]


def dpm_solver_stages(x, denoised, s: float, t: float, order: int, r_1: float):
    """Program fragment: the stages of DPM-Solver-``order`` from ``(x, s)`` (``denoised = D(x, s)``) towards ``t``.

    Returns ``{name: terms}`` for the final combinations it may end with: ``"x_1"`` (DPM-Solver-1),
    ``"x_2"`` (DPM-Solver-2 with r_1; order >= 2) and ``"x_3"`` (order 3, r_2 = 2/3): the caller writes the ones it
    needs in one fused call (dpm_adaptive writes two)."""
    h = log_step(s, t)
    first = [(1.0, x)] + _eps(-t * math.expm1(h), x, denoised, s)
    rows: Dict[str, list] = {"x_1": first}
    if order == 1:
        return rows
    s_1 = s * math.exp(-r_1 * h)
    u_1 = yield Combine(((((1.0, x),) + tuple(_eps(-s_1 * math.expm1(r_1 * h), x, denoised, s))),))
    d_1 = yield Denoise(u_1, s_1)
    c = t / (2 * r_1) * math.expm1(h)
    rows["x_2"] = first + _eps(-c, u_1, d_1, s_1) + _eps(c, x, denoised, s)
    if order == 2:
        return rows
    r_2 = 2 / 3
    s_2 = s * math.exp(-r_2 * h)
    c_u = s_2 * (r_2 / r_1) * (math.expm1(r_2 * h) / (r_2 * h) - 1)
    u_2 = yield Combine(((((1.0, x),) + tuple(_eps(-s_2 * math.expm1(r_2 * h), x, denoised, s))
                          + tuple(_eps(-c_u, u_1, d_1, s_1)) + tuple(_eps(c_u, x, denoised, s))),))
    d_2 = yield Denoise(u_2, s_2)
    c = t / r_2 * (math.expm1(h) / h - 1)
    rows["x_3"] = first + _eps(-c, u_2, d_2, s_2) + _eps(c, x, denoised, s)
    return rows


def fast_orders(nfe: int) -> List[int]:
    """DPM-Solver-fast's orders for a budget of ``nfe`` model evaluations (their sum is ``nfe``)."""
    m = nfe // 3 + 1
    return [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]


def fast_sigmas(sigma_min: float, sigma_max: float, nfe: int) -> List[float]:
    """The noise levels of DPM-Solver-fast: uniform in lambda = -log sigma, ``len(fast_orders(nfe)) + 1`` of them
    (float64; the end points exactly sigma_max and sigma_min)."""
    steps = len(fast_orders(nfe))
    lam_0, lam_1 = -math.log(sigma_max), -math.log(sigma_min)
    lams = [lam_0 + (lam_1 - lam_0) * k / steps for k in range(steps)] + [lam_1]
    return [sigma_max] + [math.exp(-v) for v in lams[1:-1]] + [sigma_min]


def _nfe(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


class DPMSolverFast(Solver):
    """DPM-Solver-fast on ``fast_sigmas(sigma_min, sigma_max, nfe)`` (not a general solver: its grid and orders
    come from the budget; ``fastint.k_diffusion.sample_dpm_fast`` runs it)."""

    name = "dpm_fast"
    order = 3
    order_note = "3 (ODE, eta = 0) in the NFE budget"
    nfe_per_step = "3 (the last one or two steps 1 or 2: n in all)"
    stochastic = True
    summary = "DPM-Solver-fast (k-diffusion sample_dpm_fast): orders 3, ..., 3, then 2, 1 or the rest, uniform lambda"
    options = {"nfe": Option(1, _nfe, "an integer >= 1"), "eta": Option(0.0, NOISE_OPTIONS["eta"].check,
                                                                      NOISE_OPTIONS["eta"].valid),
               "s_noise": NOISE_OPTIONS["s_noise"]}

    def program(self, sigmas: Sequence[float], x):
        orders = fast_orders(self.config["nfe"])
        if len(sigmas) != len(orders) + 1:
            raise ValueError(f"dpm_fast: a budget of {self.config['nfe']} evaluations takes {len(orders)} steps "
                             f"({len(orders) + 1} sigmas, fast_sigmas), got {len(sigmas)} sigmas")
        eta, s_noise = self.config["eta"], self.config["s_noise"]
        sigma_end = sigmas[-1]
        for i, order in enumerate(orders):
            s, t = sigmas[i], sigmas[i + 1]
            target, up = t, 0.0
            if eta:
                down, _ = ancestral_step(s, t, eta)
                target = max(down, sigma_end)
                up = math.sqrt(max(t * t - target * target, 0.0))
            denoised = yield Denoise(x, s)
            yield Report(i, x, s, s, denoised)
            rows = yield from dpm_solver_stages(x, denoised, s, target, order, 1 / 3 if order == 3 else 1 / 2)
            noise = None
            if up > 0 and s_noise > 0:
                noise = (NoiseEvent(i, [(s, t)]), (s_noise * up,))
            x = yield Combine((tuple(rows[f"x_{order}"]),), noise)
        return x

    def uses_noise(self) -> bool:
        return self.config["eta"] > 0 and self.config["s_noise"] > 0 and len(fast_orders(self.config["nfe"])) > 1

    def nfe(self, steps: int) -> int:
        return self.config["nfe"]
