"""Linear multistep (k-diffusion's ``sample_lms``): Adams-Bashforth in sigma on the probability-flow ODE.

With ``d_k = (x_k - D(x_k, sigma_k)) / sigma_k`` and p = min(i + 1, order) (lower orders while the history fills):

    x_{i+1} = x_i + sum_{j<p} c_j d_{i-j},   c_j = int_{sigma_i}^{sigma_{i+1}} l_j(tau) dtau,
    l_j(tau) = prod_{k<p, k != j} (tau - sigma_{i-k}) / (sigma_{i-j} - sigma_{i-k})   (Lagrange basis)

k-diffusion integrates l_j with ``scipy.integrate.quad``; l_j is a polynomial of degree p - 1, integrated here
exactly (expanded in u = tau - sigma_i, float64, no scipy). A step is one fused-op call with two rows: the new
state and d_i (kept for the next steps) from (x_i, D_i, d_{i-1}, ...), so order <= 5 fits the op's 6 inputs
(order 4 is the default; the last step writes only the state).
"""

from typing import List, Sequence

from .base import Option, Solver
from .program import Combine, Denoise, Report, combine

MAX_ORDER = 5   # the fused op reads at most 6 tensors: x_i, D_i and order - 1 earlier derivatives


def lagrange_integrals(nodes: Sequence[float], a: float, b: float) -> List[float]:
    """``[int_a^b l_j(tau) dtau for j]`` for the Lagrange basis on ``nodes``, exactly (float64): each l_j is
    expanded as a polynomial in u = tau - a and integrated term by term over [0, b - a]."""
    span = b - a
    shifted = [n - a for n in nodes]
    out = []
    for j, node_j in enumerate(shifted):
        poly = [1.0]                      # coefficients of u^0, u^1, ...
        for k, node_k in enumerate(shifted):
            if k == j:
                continue
            scale = 1.0 / (node_j - node_k)
            poly = [((poly[m - 1] if m > 0 else 0.0) - node_k * (poly[m] if m < len(poly) else 0.0)) * scale
                    for m in range(len(poly) + 1)]
        out.append(sum(c * span ** (m + 1) / (m + 1) for m, c in enumerate(poly)))
    return out


def lms_coefficients(sigmas: Sequence[float], i: int, order: int) -> List[float]:
    """c_0..c_{p-1} of step i (p = min(i + 1, order)): the weights of d_i, d_{i-1}, ..."""
    p = min(i + 1, order)
    return lagrange_integrals([sigmas[i - k] for k in range(p)], sigmas[i], sigmas[i + 1])


def _order(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_ORDER


class LMS(Solver):
    name = "lms"
    order = 4
    order_note = "4 on the analytic target's Karras grids (Adams-Bashforth; its lower-order start-up steps bound it " \
                 "by 2 on grids where they dominate)"
    nfe_per_step = "1"
    summary = "linear multistep in sigma (k-diffusion sample_lms), exact Lagrange integrals"
    options = {"order": Option(4, _order, f"an integer from 1 to {MAX_ORDER} (the fused op reads at most 6 tensors)")}

    def program(self, sigmas, x):
        order = self.config["order"]
        history = []          # d_{i-1}, d_{i-2}, ... (handles), most recent first
        last = len(sigmas) - 2
        for i in range(len(sigmas) - 1):
            s = sigmas[i]
            denoised = yield Denoise(x, s)
            yield Report(i, x, s, s, denoised)
            c = lms_coefficients(sigmas, i, order)
            terms = [(1.0 + c[0] / s, x), (-c[0] / s, denoised)] + list(zip(c[1:], history))
            if i == last or order == 1:
                x = yield combine(terms)
            else:
                x, d = yield Combine((tuple(terms), ((1.0 / s, x), (-1.0 / s, denoised))))
                history = ([d] + history)[:order - 1]
        return x
