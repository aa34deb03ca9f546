"""Parity of the fused augmented samplers with float64 references that follow CLD-SGM and PSLD step by step."""

import os
import sys

import pytest
import torch

from fastint.augmented import (CLD, PSLD, AugmentedTarget, CLDMixedScore, ExactScore, PSLDEps, cld_mixed_net,
                               psld_eps_net, sample_augmented)
from fastint.models.gaussian_mixture import default_mixture

sys.path.insert(0, os.path.dirname(__file__))
from reference_augmented import CLDRef, PSLDRef  # noqa: E402
from seeding import stable_seed  # noqa: E402

CASES = [(CLD(), CLDRef()), (CLD(b0=0.5, b1=7.0), CLDRef(0.5, 7.0)), (PSLD(), PSLDRef()),
         (PSLD.from_config(1.0, 12.0), PSLDRef(1.0, 12.0))]


def _model(proc, tgt):
    if isinstance(proc, CLD):
        net = cld_mixed_net(lambda x, v, t: tgt.score(x, v, t)[1], proc)
        return net, CLDMixedScore(net, proc)
    net = psld_eps_net(lambda x, v, t: tgt.score(x, v, t), proc)
    return net, PSLDEps(net, proc)


def _parity_error(proc, ref, method, striding, seed, **options):
    gen = torch.Generator().manual_seed(seed)
    tgt = AugmentedTarget(default_mixture(), proc)
    net, model = _model(proc, tgt)
    n = 6
    x, v = tgt.prior(5, gen)
    noises = [torch.randn(5, 4, generator=gen, dtype=torch.float64) for _ in range(2 * n + 2)]
    halves = iter([c.contiguous() for z in noises for c in torch.chunk(z, 2, dim=1)])
    whole = iter(noises)
    out = sample_augmented(proc, model, x, v, steps=n, method=method, striding=striding, timing="reference",
                           noise_sampler=lambda a, b: next(halves), backend="eager", **options)
    expect = getattr(ref, method)(net, torch.cat((x, v), 1), n, lambda: next(whole), striding=striding)
    return (torch.cat(out, 1) - expect).abs().max().item()


@pytest.mark.parametrize("method", ["em", "sscs"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0].name}-b1={c[0].b1}")
@pytest.mark.parametrize("striding", ["linear", "quadratic"])
def test_parity_with_injected_noise(case, method, striding):
    """At the defaults: PSLD's SSCS adds PSLD's numerical epsilon 1e-9 to its half-step covariances as PSLD's code
    does (``variance_eps=None`` -> ``PSLD.sscs_variance_eps``), CLD's none (CLD-SGM's ``sscs_num_stab`` = 0).
    Measured: <= 4e-14 (with variance_eps = 0 PSLD's SSCS is 5e-8 to 1.6e-7 off)."""
    proc, ref = case
    err = _parity_error(proc, ref, method, striding, stable_seed("parity", proc.name, proc.b1, method, striding))
    assert err < 1e-10, err


def test_psld_sscs_epsilon_is_visible_to_the_parity_test():
    """Without PSLD's epsilon (``variance_eps=0``) the parity test's tolerance sees the difference; bad values are
    named."""
    proc, ref = CASES[2]
    assert PSLD.sscs_variance_eps == 1e-9 and CLD.sscs_variance_eps == 0.0
    assert _parity_error(proc, ref, "sscs", "linear", 20261126, variance_eps=0.0) > 1e-9
    assert _parity_error(proc, ref, "sscs", "linear", 20261126, variance_eps=1e-9) < 1e-10
    tgt = AugmentedTarget(default_mixture(), proc)
    x, v = tgt.prior(3)
    for bad in (-1e-9, float("nan"), "1e-9", True):
        with pytest.raises(ValueError, match="variance_eps must be None"):
            sample_augmented(proc, ExactScore(tgt), x, v, steps=2, method="sscs", variance_eps=bad)
    with pytest.raises(ValueError, match="variance_eps applies to method='sscs' only"):
        sample_augmented(proc, ExactScore(tgt), x, v, steps=2, method="em", variance_eps=1e-9)


def test_exact_score_matches_autograd_of_the_marginal_density():
    proc = PSLD.from_config(1.0, 12.0)
    mix = default_mixture()
    tgt = AugmentedTarget(mix, proc)
    t = float(torch.empty(()).uniform_(0.05, 1.0))
    x, v = tgt.sample(7, t)
    a, S, _, _ = tgt.statistics(t)
    a, S = torch.tensor(a), torch.tensor(S)
    u = torch.stack([x, v], -1).requires_grad_(True)  # (n, dim, 2)
    mu = mix.means[:, :, None] * a  # (C, dim, 2)
    cov = S + mix.scales[:, :, None, None] ** 2 * torch.outer(a, a)  # (C, dim, 2, 2)
    comp = torch.distributions.MultivariateNormal(mu, covariance_matrix=cov)
    logp = torch.logsumexp(torch.log(mix.weights)[None] + comp.log_prob(u[:, None]).sum(-1), dim=1)
    gx, gv = torch.autograd.grad(logp.sum(), u)[0].unbind(-1)
    sx, sv = tgt.score(x, v, t)
    assert torch.allclose(sx, gx, rtol=1e-9, atol=1e-9) and torch.allclose(sv, gv, rtol=1e-9, atol=1e-9)
    ex, ev = ExactScore(tgt).score(x, v, t, backend="eager")
    assert torch.allclose(ex, gx, rtol=1e-9, atol=1e-9) and torch.allclose(ev, gv, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", ["sscs", "em", "reduced_splitting", "conjugate_splitting"])
def test_in_kernel_noise_is_reproducible_and_batch_invariant(method):
    proc = PSLD()
    tgt = AugmentedTarget(default_mixture(), proc)
    model = ExactScore(tgt)
    x, v = tgt.prior(6, generator=torch.Generator().manual_seed(stable_seed("prior", method)), dtype=torch.float32)
    seed = stable_seed("in-kernel noise", method)
    a = sample_augmented(proc, model, x, v, steps=4, method=method, seed=seed)
    b = sample_augmented(proc, model, x, v, steps=4, method=method, seed=seed)
    c = sample_augmented(proc, model, x[2:], v[2:], steps=4, method=method, seed=seed + 2)
    d = sample_augmented(proc, model, x, v, steps=4, method=method, seed=seed + 1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.allclose(a[0][2:], c[0], atol=1e-5) and torch.allclose(a[1][2:], c[1], atol=1e-5)
    assert not torch.allclose(a[0], d[0])
