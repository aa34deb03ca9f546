"""Model outputs whose storage can change under the solver: a network that returns the same tensor on every call
(CUDA-graph and ``torch.compile(mode="reduce-overhead")`` models), one that returns a view of its input, and one
that writes its output in place into a buffer it keeps. Each gives exactly the samples of the same network
returning fresh tensors, for every solver, through ``fastint.sample`` (plain models and fastint adapters), the
k-diffusion drop-ins and ``FastintScheduler`` in a real diffusers ``DDPMPipeline``."""

import zlib

import pytest
import torch

import fastint
from fastint import k_diffusion as fk
from fastint.models import DiscreteVPDenoiser, VEDenoiser, default_mixture
from fastint.schedules import alphas_cumprod_from_betas, betas_linear, karras, vp_discrete
from fastint.solvers import SOLVERS

GUIDED = {"lie_trotter", "strang"}
ALL = list(SOLVERS)


def _options(solver):
    return {"guidance": lambda x, s: -0.1 * x} if solver in GUIDED else {}


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


def _state(seed: int, scale: float, shape=(3, 2)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


class Reusing:
    """``fn`` with its output handed back as ``kind`` says: 'fresh' (fn's own tensor), 'same' (copied into one
    tensor returned on every call), 'inplace' (written into a kept buffer, a new view of it returned each call)."""

    def __init__(self, fn, kind):
        self.fn, self.kind, self.buffer = fn, kind, None

    def __call__(self, x, sigma, **kw):
        out = self.fn(x, sigma, **kw)
        if self.kind == "fresh":
            return out
        if self.buffer is None:
            self.buffer = torch.empty_like(out)
        if self.kind == "same":
            return self.buffer.copy_(out)
        torch.mul(out, 1.0, out=self.buffer)
        return self.buffer.view(out.shape)


def _identity_view(x, sigma, **kw):
    return x[:]              # an output that IS a view of the input


def _identity_fresh(x, sigma, **kw):
    return x.clone()


class Net:
    """A small deterministic eps network over (batch, 2) states."""

    def __init__(self):
        g = torch.Generator().manual_seed(5)
        self.w = torch.randn(2, 2, generator=g)

    def __call__(self, u, t):
        return torch.tanh(u @ self.w) * (1 + t.to(u.dtype)[:, None] / 1000)


@pytest.mark.parametrize("solver", ALL)
@pytest.mark.parametrize("kind", ["same", "inplace"])
def test_plain_model_reusing_its_output(solver, kind):
    gm = default_mixture()
    x, sigmas = _state(_seed(solver + kind), 10.0), karras(6, 0.05, 10.0)
    want = fastint.sample(gm, x, sigmas, solver, seed=3, **_options(solver))
    got = fastint.sample(Reusing(gm, kind), x, sigmas, solver, seed=3, **_options(solver))
    assert torch.equal(got, want)


@pytest.mark.parametrize("solver", ALL)
def test_plain_model_returning_a_view_of_its_input(solver):
    x, sigmas = _state(_seed(solver + "view"), 10.0), karras(6, 0.05, 10.0)
    want = fastint.sample(_identity_fresh, x, sigmas, solver, seed=3, **_options(solver))
    got = fastint.sample(_identity_view, x, sigmas, solver, seed=3, **_options(solver))
    assert torch.equal(got, want)


@pytest.mark.parametrize("solver", ALL)
@pytest.mark.parametrize("kind", ["same", "inplace", "view"])
def test_adapter_network_reusing_its_output(solver, kind):
    ab = alphas_cumprod_from_betas(betas_linear(1000, 1e-4, 0.02))
    sigmas = vp_discrete(ab, 6, spacing="linspace").sigmas
    x = _state(_seed(solver + kind + "vp"), float(sigmas[0]))
    if kind == "view":
        fresh, reusing = (lambda u, t: u.clone()), (lambda u, t: u[:])
    else:
        fresh, reusing = Net(), Reusing(Net(), kind)
    for adapter in (lambda net: DiscreteVPDenoiser(net, ab), lambda net: DiscreteVPDenoiser(net, ab, "v_prediction")):
        want = fastint.sample(adapter(fresh), x, sigmas, solver, seed=4, **_options(solver))
        got = fastint.sample(adapter(reusing), x, sigmas, solver, seed=4, **_options(solver))
        assert torch.equal(got, want)
    # a VE model (c_in = 1: the network sees the state itself)
    gm = default_mixture()
    want = fastint.sample(VEDenoiser(lambda u, s: gm(u, s)), x, sigmas, solver, seed=4, **_options(solver))
    got = fastint.sample(VEDenoiser(Reusing(lambda u, s: gm(u, s), "same" if kind == "view" else kind)), x, sigmas,
                         solver, seed=4, **_options(solver))
    assert torch.equal(got, want)


@pytest.mark.parametrize("solver", ALL)
def test_k_diffusion_dropins_with_a_reusing_model(solver):
    gm = default_mixture()
    x, sigmas = _state(_seed(solver + "kd"), 10.0), karras(6, 0.05, 10.0)
    sampler = getattr(fk, "sample_" + solver)
    opts = _options(solver)
    want = sampler(gm, x, sigmas, {"seed": 2}, disable=True, **opts)
    for kind in ("same", "inplace"):
        assert torch.equal(sampler(Reusing(gm, kind), x, sigmas, {"seed": 2}, disable=True, **opts), want), kind
    assert torch.equal(sampler(_identity_view, x, sigmas, {"seed": 2}, disable=True, **opts),
                       sampler(_identity_fresh, x, sigmas, {"seed": 2}, disable=True, **opts))
