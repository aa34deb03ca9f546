"""``fastint.k_diffusion.sample_<solver>``: drop-ins for k-diffusion's / ComfyUI's samplers.

- Every solver has one; each equals ``fastint.sample`` bit for bit (seed from ``extra_args["seed"]`` as ComfyUI).
- Signatures: for each sampler k-diffusion 0.1.1 also has, k-diffusion's parameters (names, order, kinds, defaults)
  are a prefix of ours, so every call k-diffusion accepts (positional or keyword) is accepted.
- Code written against k-diffusion (``generate`` below, taking the sampler module) runs unchanged with
  ``fastint.k_diffusion`` in place of ``k_diffusion.sampling`` and gives k-diffusion's result (float64, injected
  noise for stochastic samplers, 1e-9 relative) and fastint.sample's result (bit for bit).
"""

import inspect

import pytest
import torch

import fastint
from fastint import k_diffusion as fk
from fastint.models import GaussianMixture
from fastint.schedules import karras
from fastint.solvers import SOLVERS

import peers

KD_MISSING = peers.k_diffusion_missing()
needs_kd = pytest.mark.skipif(KD_MISSING is not None, reason=f"k-diffusion not loadable: {KD_MISSING}")
COMMON = ["euler", "heun", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde"]


class CondModel:
    """A k-diffusion-style model wrapper: ``model(x, sigma, cond=..., seed=...)`` (ComfyUI passes seed through)."""

    def __init__(self, mixture):
        self.mixture, self.calls = mixture, 0

    def __call__(self, x, sigma, cond=0.0, seed=None):
        self.calls += 1
        return self.mixture(x, sigma) + cond


def generate(sampling_module, name, model, x, sigmas, seed, **opts):
    """Code written against k-diffusion: look the sampler up by name, call it k-diffusion's way."""
    steps = []
    fn = getattr(sampling_module, "sample_" + name)
    out = fn(model, x, sigmas, extra_args={"cond": 0.01, "seed": seed},
             callback=lambda d: steps.append((d["i"], float(d["sigma"]), d["denoised"].clone())), disable=True,
             **opts)
    return out, steps


def _mixture(seed):
    g = torch.Generator().manual_seed(seed)
    return GaussianMixture(torch.randn(3, 2, generator=g, dtype=torch.float64) * 2,
                           torch.rand(3, 2, generator=g, dtype=torch.float64) + 0.2)


def test_every_solver_has_a_dropin_equal_to_fastint_sample():
    seed = int(torch.randint(0, 2 ** 31, (1,)))
    mixture = _mixture(seed)
    sigmas = karras(6, 0.01, 20.0)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(seed)) * sigmas[0].item()
    assert set(fk.samplers()) == set(SOLVERS)
    for name in SOLVERS:
        # guided solvers (operator splitting) need a guidance gradient: a fixed linear one
        opts = {"guidance": lambda x, s: -0.1 * x} if "guidance" in SOLVERS[name].options else {}
        out, steps = generate(fk, name, CondModel(mixture), x, sigmas, seed, **opts)
        ref = fastint.sample(CondModel(mixture), x, sigmas, name, seed=seed, extra_args={"cond": 0.01, "seed": seed},
                             **opts)
        assert torch.equal(out, ref), name
        assert [i for i, _, _ in steps] == list(range(len(sigmas) - 1)), name
        if SOLVERS[name](**opts).uses_noise():
            other, _ = generate(fk, name, CondModel(mixture), x, sigmas, seed + 1, **opts)
            assert not torch.equal(other, out), name


@needs_kd
@pytest.mark.parametrize("name", COMMON)
def test_signatures_accept_every_k_diffusion_argument(name):
    theirs = list(inspect.signature(getattr(peers.k_sampling(), "sample_" + name)).parameters.values())
    ours = list(inspect.signature(getattr(fk, "sample_" + name)).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours[:len(theirs)]] == \
        [(p.name, p.kind, p.default) for p in theirs]


@needs_kd
@pytest.mark.parametrize("name", COMMON)
def test_swapped_into_k_diffusion_code(name):
    seed = int(torch.randint(0, 2 ** 31, (1,)))
    mixture = _mixture(seed)
    sigmas = peers.karras_sigmas(7, 0.02, 30.0)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 2, generator=g, dtype=torch.float64) * sigmas[0].item()
    opts = {}
    if name in ("euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde"):
        zs = [torch.randn(4, 2, generator=g, dtype=torch.float64) for _ in range(len(sigmas) - 1)]
        opts["noise_sampler"] = peers.StepNoise(sigmas.tolist(), zs)
        opts["eta"] = 0.8
    theirs, their_steps = generate(peers.k_sampling(), name, CondModel(mixture), x, sigmas, seed, **opts)
    ours, our_steps = generate(fk, name, CondModel(mixture), x, sigmas, seed, **opts)
    rel = ((ours - theirs).norm() / theirs.norm()).item()
    assert rel < 1e-9, rel
    assert [(i, s) for i, s, _ in our_steps] == [(i, s) for i, s, _ in their_steps]
    for (_, _, a), (_, _, b) in zip(our_steps, their_steps):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    # positional options as k-diffusion allows them
    if name in ("euler", "heun"):
        pos, _ = fk.__dict__["sample_" + name](CondModel(mixture), x, sigmas, None, None, True, 0.0, 0.0,
                                               float("inf"), 1.0), None
        assert torch.allclose(pos, fastint.sample(CondModel(mixture), x, sigmas, name), rtol=0, atol=0)


def test_seed_sources_and_bad_arguments():
    mixture = _mixture(0)
    sigmas = karras(4, 0.05, 10.0)
    x = torch.randn(3, 2) * 10.0
    model = CondModel(mixture)
    a = fk.sample_seeds_2(model, x, sigmas, extra_args={"seed": 5})
    b = fk.sample_seeds_2(model, x, sigmas, extra_args={"seed": 6}, seed=5)  # explicit seed wins
    c = fk.sample_seeds_2(model, x, sigmas, {"seed": 6})
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    d = fk.sample_euler_ancestral(mixture, x, sigmas)
    torch.manual_seed(3)
    assert torch.equal(d, fk.sample_euler_ancestral(mixture, x, sigmas))
    with pytest.raises(TypeError, match="unexpected keyword|got an unexpected"):
        fk.sample_dpmpp_2m(mixture, x, sigmas, eta=1.0)
    with pytest.raises(TypeError, match="extra_args"):
        fk.sample_euler(mixture, x, sigmas, extra_args=[1])
    with pytest.raises(ValueError, match="eta"):
        fk.sample_seeds_1(mixture, x, sigmas, eta=-1.0)
    with pytest.raises(AttributeError):
        fk.sample_nonexistent
