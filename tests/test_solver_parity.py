"""Every solver against its independent float64 reference (tests/reference_solvers.py, written from docs/solvers.md).

float64 state: 1e-10 relative; float32 state: 1e-5 relative to the float64 reference. Stochastic solvers run
with injected noise (the same keyed noise sampler drives both), and also with fastint's in-kernel Philox noise,
which the reference reproduces from the documented addressing (counter = step index, stream k = k-th noise of the
step).
"""

import math

import pytest
import torch

import fastint
from fastint.models import default_mixture
from fastint.ops.philox import normals
from fastint.schedules import karras

from injected_noise import KeyedNoise
from reference_solvers import REFERENCES

CASES = [
    ("euler", {}), ("euler", {"s_churn": 2.0, "s_tmin": 0.05, "s_tmax": 10.0}),
    ("heun", {}), ("heun", {"s_churn": 3.0, "s_noise": 1.003}),
    ("ddim", {}), ("ddim", {"eta": 0.5}), ("ddim", {"eta": 1.0}),
    ("euler_ancestral", {}), ("euler_ancestral", {"eta": 0.7, "s_noise": 0.9}),
    ("euler_ancestral", {"eta": 2.5}),  # eta > 1: sigma_up = min(t, ...) clamps on these steps
    ("dpmpp_2m", {}),
    ("dpmpp_3m", {}), ("dpmpp_3m", {"third_order": "exact"}),
    ("dpmpp_2m_sde", {}), ("dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.5}),
    ("dpmpp_3m_sde", {}), ("dpmpp_3m_sde", {"eta": 0.3, "third_order": "exact"}),
    ("seeds_1", {}), ("seeds_1", {"eta": 0.5, "s_noise": 1.1}),
    ("seeds_2", {}), ("seeds_2", {"solver_type": "phi_2", "r": 0.4, "eta": 0.8}),
    ("seeds_3", {}), ("seeds_3", {"r_1": 0.25, "r_2": 0.6, "eta": 0.5}),
]


def _relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def _setup(seed, shape=(5, 2)):
    gen = torch.Generator().manual_seed(seed)
    gm = default_mixture(dim=math.prod(shape[1:]))
    sigmas = karras(9, 0.02, 40.0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * sigmas[0]
    return gm, sigmas, x


@pytest.mark.parametrize("solver,options", CASES, ids=[f"{s}-{o}" for s, o in CASES])
def test_float64_matches_reference(solver, options):
    gm, sigmas, x = _setup(101 + len(options))
    noise = KeyedNoise(x.shape, seed=7)
    expected = REFERENCES[solver](gm, x.clone(), sigmas.tolist(), noise, **options)
    got = fastint.sample(gm, x, sigmas, solver, noise_sampler=noise, backend="eager", **options)
    assert _relative_error(got, expected) < 1e-10


@pytest.mark.parametrize("solver,options", CASES, ids=[f"{s}-{o}" for s, o in CASES])
def test_float32_state_matches_float64_reference(solver, options):
    gm, sigmas, x64 = _setup(202 + len(options), shape=(4, 2, 3))
    noise64 = KeyedNoise(x64.shape, seed=9)
    expected = REFERENCES[solver](gm, x64.clone(), sigmas.tolist(), noise64, **options)
    noise32 = KeyedNoise(x64.shape, seed=9, dtype=torch.float32)
    got = fastint.sample(gm, x64.float(), sigmas, solver, noise_sampler=noise32, backend="eager", **options)
    assert got.dtype == torch.float32
    assert _relative_error(got.double(), expected) < 1e-5


class PhiloxAddressedNoise:
    """Reproduces fastint's in-kernel noise from docs/noise.md: step i is counter i, its k-th noise stream is
    stream k, streams numbered in the order the step's noise intervals are first requested. A step's intervals
    start at its sigma (or inside the step), except EDM churn, whose interval (s_hat, s) ends at the step's sigma."""

    def __init__(self, seeds, shape, sigmas, churn):
        self.seeds, self.shape, self.sigmas, self.churn = seeds, shape, sigmas, churn
        self.streams = {}

    def _step(self, sigma_a, sigma_b):
        if self.churn:
            return min(range(len(self.sigmas)), key=lambda i: abs(self.sigmas[i] - sigma_b))
        return max(i for i, s in enumerate(self.sigmas[:-1]) if s >= sigma_a * (1 - 1e-12))

    def __call__(self, sigma_a, sigma_b):
        step = self._step(sigma_a, sigma_b)
        per_step = self.streams.setdefault(step, {})
        key = (round(sigma_a, 12), round(sigma_b, 12))
        if key not in per_step:
            per_step[key] = len(per_step)
        z = normals(self.seeds, step, per_step[key], math.prod(self.shape[1:]))
        return z.reshape(self.shape).double()


STOCHASTIC_CASES = [c for c in CASES if c[0] not in ("euler", "heun", "ddim", "dpmpp_2m", "dpmpp_3m")] + [
    ("heun", {"s_churn": 3.0, "s_noise": 1.003}), ("ddim", {"eta": 0.5})]


@pytest.mark.parametrize("solver,options", STOCHASTIC_CASES, ids=[f"{s}-{o}" for s, o in STOCHASTIC_CASES])
def test_in_kernel_noise_follows_the_documented_addressing(solver, options):
    gm, sigmas, x = _setup(303, shape=(3, 2))
    seeds = torch.tensor([11, -5, 2 ** 40 + 3], dtype=torch.int64)
    noise = PhiloxAddressedNoise(seeds, x.shape, sigmas.tolist(), churn="s_churn" in options)
    expected = REFERENCES[solver](gm, x.clone(), sigmas.tolist(), noise, **options)
    got = fastint.sample(gm, x, sigmas, solver, seed=seeds, backend="eager", **options)
    assert _relative_error(got, expected) < 1e-10
