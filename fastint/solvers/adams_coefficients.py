"""Host-side float64 weights of the Adams-Bashforth family on ``d = dx/dsigma = (x - D) / sigma`` (iPNDM, DEIS).

A step sigma_n -> sigma_{n+1} of order p is ``x_{n+1} = x_n + sum_j C_j d_{n-j}``, j = 0..p-1, d_{n-j} the
derivative at sigma_{n-j}. Each function returns ``[C_0, ..., C_{p-1}]`` for step n of ``sigmas``:

- ``fixed_step``: ``C_j = (sigma_{n+1} - sigma_n) b_j`` with the uniform-step Adams-Bashforth weights b
  (1), (3, -1)/2, (23, -16, 5)/12, (55, -59, 37, -9)/24 (iPNDM);
- ``lagrange_in_sigma``: ``C_j = int_{sigma_n}^{sigma_{n+1}} L_j(s) ds``, L_j the Lagrange basis polynomial through
  sigma_n, ..., sigma_{n-p+1} that is 1 at sigma_{n-j} (the exact variable-step Adams-Bashforth method; rhoAB-DEIS
  with rho = sigma);
- ``lagrange_in_vp_time``: ``C_j = int_{sigma_n}^{sigma_{n+1}} L_j(tau(s)) ds``, the Lagrange basis in the VP time
  tau of the schedule ``sigma(tau)^2 = exp(beta_d tau^2 / 2 + beta_min tau) - 1`` that passes through
  sigma(1e-3) = 0.002 and sigma(1) = 80 (tAB-DEIS: d = eps is extrapolated in tau; the integral is the exponential
  integrator of the eps-ODE, which in VE coordinates is ``dx/dsigma = eps``), integrated by Gauss-Legendre
  quadrature on panels of sigma ratio <= 2 (rounding-level accurate);
- ``comfy_variable_step``: ComfyUI's ``sample_ipndm_v`` weights (from zju-pi/diff-sampler). With
  ``h = sigma_{n+1} - sigma_n``, ``h_k = sigma_{n-k+1} - sigma_{n-k}``, ``a = h_1 / h_2``,
  ``b = h_1 (h_1 + h_2) / (h_2 (h_2 + h_3))``, ``c = h_2 / h_3``, ``u = h / (h + h_1)``, ``v = h / (h + h_1 + h_2)``:

      order 2:  C / h = [1 + r/2, -r/2],  r = h / h_1                         (the exact variable-step AB2)
      order 3:  + T1 [1, -(1 + a), a],    T1 = (1 - h^2 / (3 h_1 (h_1 + h_2))) / 2
      order 4:  + T1 [1, -(1 + a), a, 0] + T2 [1, -(1 + a + b), a + b (1 + c), -a b],
                T2 = ((1 - u/3) / 2 + (1 - u/2) v / 6) h (h + h_1) (h + h_1 + h_2) / (h_1 (h_1 + h_2) (h_1 + h_2 + h_3))

  Order 3 equals the exact AB3 only on uniform grids; order 4 is not AB4 even there ((57, -65, 43, -11)/24) and
  its weights do not sum to h on non-uniform grids (docs/solvers.md has the measured orders).
"""

import functools
import math
from typing import List, Sequence, Tuple

FIXED_STEP_WEIGHTS = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
                      4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}

# the VP schedule of DEIS/EDM's sigma <-> t conversion: sigma(EPS_S) = SIGMA_MIN, sigma(1) = SIGMA_MAX
EPS_S, SIGMA_MIN, SIGMA_MAX = 1e-3, 0.002, 80.0
_Q_MIN, _Q_MAX = math.log1p(SIGMA_MIN ** 2), math.log1p(SIGMA_MAX ** 2)
BETA_D = 2 * (_Q_MIN / EPS_S - _Q_MAX) / (EPS_S - 1)
BETA_MIN = _Q_MAX - BETA_D / 2

GAUSS_NODES = 16


def fixed_step(sigmas: Sequence[float], n: int, order: int) -> List[float]:
    h = sigmas[n + 1] - sigmas[n]
    return [h * b for b in FIXED_STEP_WEIGHTS[order]]


def _lagrange_integrals(nodes: Sequence[float], start: float, end: float) -> List[float]:
    """``int_start^end L_j(y) dy`` for the Lagrange basis on ``nodes``, exactly: the basis polynomials are expanded
    in ``y - start`` and their monomials integrated in closed form."""
    shifted = [p - start for p in nodes]
    span = end - start
    out = []
    for j, pj in enumerate(shifted):
        poly, denominator = [1.0], 1.0          # coefficients of prod_{k != j} (y - p_k), lowest degree first
        for k, pk in enumerate(shifted):
            if k == j:
                continue
            poly = [(poly[m - 1] if m > 0 else 0.0) - (pk * poly[m] if m < len(poly) else 0.0)
                    for m in range(len(poly) + 1)]
            denominator *= pj - pk
        out.append(sum(c * span ** (m + 1) / (m + 1) for m, c in enumerate(poly)) / denominator)
    return out


def lagrange_in_sigma(sigmas: Sequence[float], n: int, order: int) -> List[float]:
    return _lagrange_integrals([sigmas[n - k] for k in range(order)], sigmas[n], sigmas[n + 1])


def vp_time(sigma: float) -> float:
    """tau(sigma): the positive root of ``beta_d tau^2 / 2 + beta_min tau = log(1 + sigma^2)``."""
    return (math.sqrt(BETA_MIN ** 2 + 2 * BETA_D * math.log1p(sigma * sigma)) - BETA_MIN) / BETA_D


@functools.lru_cache(maxsize=None)
def gauss_legendre(count: int) -> Tuple[Tuple[float, float], ...]:
    """(node, weight) pairs of the ``count``-point Gauss-Legendre rule on [-1, 1] (Newton on P_count)."""
    rule = []
    for i in range(1, count + 1):
        y = math.cos(math.pi * (i - 0.25) / (count + 0.5))
        for _ in range(100):
            p0, p1 = 1.0, y
            for k in range(2, count + 1):
                p0, p1 = p1, ((2 * k - 1) * y * p1 - (k - 1) * p0) / k
            dp = count * (y * p1 - p0) / (y * y - 1)
            step = p1 / dp
            y -= step
            if abs(step) < 1e-16:
                break
        rule.append((y, 2 / ((1 - y * y) * dp * dp)))
    return tuple(rule)


def lagrange_in_vp_time(sigmas: Sequence[float], n: int, order: int) -> List[float]:
    start, end = sigmas[n], sigmas[n + 1]          # end > 0: a step to sigma = 0 is first order
    if order == 1:
        return [end - start]
    taus = [vp_time(sigmas[n - k]) for k in range(order)]
    panels = max(1, math.ceil(math.log2(start / end)))
    edges = [start * (end / start) ** (k / panels) for k in range(panels)] + [end]
    out = [0.0] * order
    for a, b in zip(edges[:-1], edges[1:]):
        mid, half = (a + b) / 2, (b - a) / 2
        for y, w in gauss_legendre(GAUSS_NODES):
            tau = vp_time(mid + half * y)
            for j in range(order):
                basis = 1.0
                for k in range(order):
                    if k != j:
                        basis *= (tau - taus[k]) / (taus[j] - taus[k])
                out[j] += half * w * basis
    return out


def comfy_variable_step(sigmas: Sequence[float], n: int, order: int) -> List[float]:
    h = sigmas[n + 1] - sigmas[n]
    if order == 1:
        return [h]
    h1 = sigmas[n] - sigmas[n - 1]
    r = h / h1
    weights = [1 + r / 2, -r / 2, 0.0, 0.0][:order]
    if order >= 3:
        h2 = sigmas[n - 1] - sigmas[n - 2]
        a = h1 / h2
        t1 = (1 - h * h / (3 * h1 * (h1 + h2))) / 2
        for j, e in enumerate((1.0, -(1 + a), a)):
            weights[j] += t1 * e
    if order == 4:
        h3 = sigmas[n - 2] - sigmas[n - 3]
        b, c = h1 * (h1 + h2) / (h2 * (h2 + h3)), h2 / h3
        u, v = h / (h + h1), h / (h + h1 + h2)
        t2 = ((1 - u / 3) / 2 + (1 - u / 2) * v / 6) * h * (h + h1) * (h + h1 + h2) / (h1 * (h1 + h2) * (h1 + h2 + h3))
        for j, e in enumerate((1.0, -(1 + a + b), a + b * (1 + c), -a * b)):
            weights[j] += t2 * e
    return [h * w for w in weights]
