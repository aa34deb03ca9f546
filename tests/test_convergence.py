"""Measured global order of every deterministic solver (SDE solvers with the noise off, eta = 0).

Reference: the probability-flow ODE dx/du = x - D(x, e^u) (u = log sigma) integrated by scipy's DOP853 at
rtol = atol = 1e-13 from sigma_max to sigma_min, then x = D(x, sigma_min), which is what every solver's last step to
sigma = 0 computes. Grids: Karras (rho = 7) with n and 2n steps; order = log2(err(n) / err(2n)).
"""

import numpy as np
import pytest

import fastint
from fastint.schedules import karras

from ode_reference import probability_flow_end

SIGMA_MIN, SIGMA_MAX = 0.2, 80.0
STEPS = (128, 256, 512)

EXPECTED = [
    ("euler", {}, 1), ("ddim", {}, 1), ("euler_ancestral", {"eta": 0.0}, 1), ("seeds_1", {"eta": 0.0}, 1),
    ("heun", {}, 2), ("dpmpp_2m", {}, 2), ("dpmpp_2m_sde", {"eta": 0.0}, 2),
    ("dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}, 2),
    ("dpmpp_3m", {}, 2), ("dpmpp_3m", {"third_order": "exact"}, 3),
    ("dpmpp_3m_sde", {"eta": 0.0, "third_order": "exact"}, 3),
    ("seeds_2", {"eta": 0.0}, 2), ("seeds_2", {"eta": 0.0, "solver_type": "phi_2", "r": 0.4}, 2),
    ("seeds_3", {"eta": 0.0}, 3),
]


@pytest.fixture(scope="module")
def problem():
    gm, x0, _, reference = probability_flow_end(32, 2024, SIGMA_MAX, SIGMA_MIN)
    return gm, x0, reference


def _error(gm, x0, reference, solver, options, steps):
    sigmas = karras(steps, SIGMA_MIN, SIGMA_MAX)
    out = fastint.sample(gm, x0, sigmas, solver, backend="eager", **options)
    return (out - reference).abs().mean().item()


@pytest.mark.parametrize("solver,options,order", EXPECTED, ids=[f"{s}-{o}" for s, o, _ in EXPECTED])
def test_measured_order(problem, solver, options, order):
    gm, x0, reference = problem
    errors = [_error(gm, x0, reference, solver, options, n) for n in STEPS]
    measured = -np.polyfit(np.log(STEPS), np.log(errors), 1)[0]
    assert abs(measured - order) < 0.2, f"{solver} {options}: measured order {measured:.3f}, expected {order}"
