"""CLD / PSLD processes: closed-form kernels vs expm and quadrature, the codes' formulas, sampled half steps, bad input."""

import math
import sys
import os

import numpy as np
import pytest
import scipy.integrate as si
import scipy.linalg as sl
import torch

from fastint.augmented import CLD, PSLD, AugmentedTarget, ExactScore, ScoreFunction, cholesky2, sample_augmented
from fastint.models.gaussian_mixture import default_mixture
from fastint.ops import fused_step

sys.path.insert(0, os.path.dirname(__file__))
from reference_augmented import CLDRef, PSLDRef  # noqa: E402
from seeding import stable_seed  # noqa: E402

PROCESSES = [CLD(), CLD(b0=0.1, b1=19.9, m_inv=2.5), PSLD(), PSLD.from_config(0.1, 20.0, nu=3.0, Gamma=0.5)]


@pytest.mark.parametrize("proc", PROCESSES, ids=lambda p: f"{p.name}-b1={p.b1}")
def test_transition_matches_expm_and_quadrature(proc):
    rng = np.random.default_rng()
    for _ in range(3):
        s, t = sorted(rng.uniform(0.0, 1.0, 2))
        phi, sig = proc.transition(proc.rate(s, t))
        Bt = proc.beta_int(t)
        e = sl.expm(proc.rate(s, t) * proc.F)
        assert np.abs(phi - e).max() <= 1e-12 * np.abs(e).max()

        # the covariance integral in the original time variable (checks the time change for linear beta too)
        def f(r, i, j):
            a = sl.expm((Bt - proc.beta_int(r)) * proc.F)
            return ((a @ proc.Q @ a.T) * proc.beta(r))[i, j]
        quad = np.array([[si.quad(f, s, t, args=(i, j), epsabs=1e-15, epsrel=1e-13, limit=200)[0]
                          for j in range(2)] for i in range(2)])
        assert np.abs(sig - quad).max() <= 1e-12 * np.abs(quad).max()
        # reverse half step: S Phi S, S Sigma S
        rphi, rsig = proc.reverse_transition(proc.rate(s, t))
        assert np.allclose(rphi, np.diag([1, -1]) @ e @ np.diag([1, -1]), rtol=0, atol=1e-12)


def test_small_rates_are_accurate():
    for proc in (CLD(), PSLD()):
        for b in (1e-8, 1e-5, 1e-3):
            _, sig = proc.transition(b)
            f = lambda u, i, j: (sl.expm(u * proc.F) @ proc.Q @ sl.expm(u * proc.F).T)[i, j]  # noqa: E731
            quad = np.array([[si.quad(f, 0, b, args=(i, j), epsabs=0, epsrel=1e-13)[0] for j in range(2)]
                             for i in range(2)])
            nz = np.abs(quad) > 0
            assert np.all(np.abs(sig - quad)[nz] <= 1e-12 * np.abs(quad)[nz])


def test_kernels_match_the_published_formulas():
    t = float(np.random.default_rng().uniform(0.01, 1.0))
    for proc, ref in ((CLD(), CLDRef()), (CLD(b0=0.5, b1=7.0), CLDRef(0.5, 7.0))):
        phi, cov = proc.kernel(t, 0.0, proc.init_aux_var, 1e-9)
        xx, xv, vv = ref.var(t)
        assert np.allclose(cov, [[xx, xv], [xv, vv]], rtol=1e-11, atol=1e-13)
        u = torch.eye(2, dtype=torch.float64)  # columns: x = 1, v = 1
        m = ref.mean(torch.stack([u[0], u[1]], 1), t)  # rows (x0, v0) = (1,0), (0,1)
        assert np.allclose(phi, m.numpy().T, rtol=1e-12, atol=1e-14)
    for proc, ref in ((PSLD(), PSLDRef()), (PSLD.from_config(1.0, 12.0), PSLDRef(1.0, 12.0))):
        _, cov = proc.kernel(t, 0.0, proc.init_aux_var, 1e-9)
        xx, xm, mm = ref._cov(0.0, ref.mm_0, t)
        assert np.allclose(cov, [[xx, xm], [xm, mm]], rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("proc", [CLD(), PSLD.from_config(1.0, 12.0)], ids=lambda p: p.name)
def test_sampled_half_step_has_the_kernel_covariance(proc):
    n = 200_000
    b = proc.rate(0.6, 0.7)
    phi, cov = proc.reverse_transition(b)
    L = cholesky2(cov)
    x0, v0 = torch.full((n, 1), 0.7, dtype=torch.float64), torch.full((n, 1), -0.3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(stable_seed("reverse transition moments", proc.name, proc.b1))
    seeds = torch.randint(0, 2 ** 62, (n,), dtype=torch.int64, generator=gen)
    coeffs = np.concatenate([phi, L], axis=1).tolist()
    x, v = fused_step([x0, v0], coeffs, num_noise=2, seeds=seeds, counter=3)
    u = torch.cat([x, v], 1)
    mean = torch.tensor(phi @ [0.7, -0.3])
    emp = torch.cov(u.T).numpy()
    for i in range(2):
        se = math.sqrt(cov[i, i] / n)
        assert abs(float(u[:, i].mean()) - mean[i]) < 5 * se
        for j in range(2):
            se = math.sqrt((cov[i, i] * cov[j, j] + cov[i, j] ** 2) / n)
            assert abs(emp[i, j] - cov[i, j]) < 5 * se, (i, j, emp, cov)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="critical damping"):
        CLD(Gamma=2.0)
    with pytest.raises(ValueError, match="critical damping"):
        PSLD(m_inv=1.0)
    with pytest.raises(ValueError, match="must differ"):
        PSLD(nu=1.0, Gamma=1.0)
    with pytest.raises(ValueError, match="positive"):
        CLD(b0=1.0, b1=-2.0)
    with pytest.raises(ValueError, match="m_inv"):
        CLD(m_inv=-1.0)
    proc = CLD()
    model = ExactScore(AugmentedTarget(default_mixture(), proc))
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="same shape"):
        sample_augmented(proc, model, x, torch.zeros(4, 3), steps=2)
    with pytest.raises(ValueError, match="same shape"):
        sample_augmented(proc, model, x, torch.zeros(4, 2, dtype=torch.float64), steps=2)
    with pytest.raises(ValueError, match="unknown augmented method"):
        sample_augmented(proc, model, x, x, steps=2, method="rk4")
    with pytest.raises(ValueError, match="different process"):
        sample_augmented(PSLD(), model, x, x, steps=2)
    with pytest.raises(ValueError, match="decreasing"):
        sample_augmented(proc, model, x, x, ts=[0.5, 0.9])
    with pytest.raises(ValueError, match="timing"):
        sample_augmented(proc, model, x, x, steps=2, timing="late")
    with pytest.raises(TypeError, match="AugmentedModel"):
        sample_augmented(proc, lambda *a: a, x, x, steps=2)
    for eta in (-0.1, float("nan"), "1", True):
        with pytest.raises(ValueError, match="eta must be"):
            sample_augmented(proc, model, x, x, steps=2, method="reduced_splitting", eta=eta)
    with pytest.raises(ValueError, match="eta applies to the splitting methods"):
        sample_augmented(proc, model, x, x, steps=2, method="em", eta=0.5)
    with pytest.raises(ValueError, match="lam_matrix must be"):
        sample_augmented(proc, model, x, x, steps=2, method="conjugate", lam_matrix="diag")
    with pytest.raises(ValueError, match="apply to method='conjugate' only"):
        sample_augmented(proc, model, x, x, steps=2, method="sscs", lam=0.5)
    with pytest.raises(ValueError, match="apply to method='conjugate' only"):
        sample_augmented(proc, model, x, x, steps=2, method="conjugate_residual", lam_matrix="ones")
    bad = ScoreFunction(lambda x, v, t: (x, v[:, :1]))
    with pytest.raises(ValueError, match="shape"):
        sample_augmented(proc, bad, x, x, steps=2, method="pf_euler")
