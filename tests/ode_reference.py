"""The reference of the convergence-order tests: the probability-flow ODE of the embedded 2-D mixture,
dx/du = x - D(x, e^u) (u = log sigma), integrated by scipy's DOP853 at rtol = atol = 1e-13 from sigma_max down to
sigma_min, from float64 noise."""

import math
from typing import Tuple

import torch
from scipy.integrate import solve_ivp

from fastint.models import GaussianMixture, default_mixture


def probability_flow_end(batch: int, seed: int, sigma_max: float, sigma_min: float
                         ) -> Tuple[GaussianMixture, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(model, x0, x(sigma_min), D(x(sigma_min), sigma_min))`` for ``batch`` samples, ``x0 = sigma_max z`` with z
    drawn from ``torch.Generator().manual_seed(seed)``; the last is what a solver's final step to sigma = 0 computes."""
    gm = default_mixture(dim=2)
    x0 = torch.randn(batch, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * sigma_max

    def rhs(u, y):
        x = torch.from_numpy(y).reshape(x0.shape)
        return (x - gm.denoise(x, math.exp(u))).reshape(-1).numpy()

    sol = solve_ivp(rhs, (math.log(sigma_max), math.log(sigma_min)), x0.reshape(-1).numpy(), method="DOP853",
                    rtol=1e-13, atol=1e-13)
    assert sol.success, sol.message
    x_end = torch.from_numpy(sol.y[:, -1]).reshape(x0.shape)
    return gm, x0, x_end, gm.denoise(x_end, sigma_min)
