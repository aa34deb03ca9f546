"""``fastint.sample`` backpropagates: the gradient of a loss on its result with respect to x, a small network's
parameters and a tensor in extra_args equals the same sampling loop written in plain torch ops (float64, relative
1e-8), with the same noise (the in-kernel Philox noise is a function of (seed, counter, stream, element): the loops
below draw it with fastint's pure-PyTorch reference ``fastint.ops.philox.normals``).

The loops are written from the formulas of the solver specifications (VE coordinates, alpha = 1), not from
fastint's solvers: DPM-Solver++(2M), DPM-Solver++(2M) SDE (midpoint, eta = 1), SEEDS-2 (phi_1, r = 1/2, eta = 1)
and Restart (Heun main pass, Euler to 0, forward jumps, churned inner Heun steps).
"""

import math
import zlib

import pytest
import torch

import fastint
import fastint.models.adapters
from fastint.ops.philox import normals

BATCH, DIM = 3, 6
SIGMAS = [8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.0]


def _generator(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


class TinyDenoiser(torch.nn.Module):
    """D(x, sigma) = c_skip g x + c_out F(c_in x, log sigma, cond), F a two-layer MLP (EDM preconditioning) and g a
    learned gain per dimension (its product saves x for backward: an in-place overwrite of x would be caught)."""

    def __init__(self, gen: torch.Generator):
        super().__init__()
        self.hidden = torch.nn.Linear(DIM + 1, 16, dtype=torch.float64)
        self.out = torch.nn.Linear(16, DIM, dtype=torch.float64)
        self.gain = torch.nn.Parameter(torch.ones(DIM, dtype=torch.float64))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
            self.gain.copy_(1 + 0.1 * torch.randn(DIM, generator=gen, dtype=torch.float64))

    def forward(self, x, sigma, cond=None):
        s = sigma.reshape(-1, 1)
        c_in, c_skip, c_out = 1 / (s ** 2 + 1).sqrt(), 1 / (s ** 2 + 1), s / (s ** 2 + 1).sqrt()
        h = torch.tanh(self.hidden(torch.cat([x * c_in, s.log() / 4], dim=1)))
        f = self.out(h) if cond is None else self.out(h) * cond
        return c_skip * (x * self.gain) + c_out * f


def _noise(counter: int, stream: int) -> torch.Tensor:
    """The op's noise for seed=0 (sample b: seed b) at ``counter``, ``stream``."""
    return normals(torch.arange(BATCH), counter, stream, DIM).double()


def _denoise(model, x, sigma, extra):
    return model(x, torch.full((BATCH,), sigma, dtype=torch.float64), **extra)


def plain_dpmpp_2m(model, x, sigmas, extra):
    old, h_last = None, None
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        d = _denoise(model, x, s, extra)
        if t == 0:
            x = d
        else:
            h = math.log(s / t)
            if old is not None:
                r = h_last / h
                d_eff = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * old
            else:
                d_eff = d
            x = (t / s) * x - math.expm1(-h) * d_eff
            h_last = h
        old = d
    return x


def plain_dpmpp_2m_sde(model, x, sigmas, extra, eta=1.0):
    old, h_last = None, None
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        d = _denoise(model, x, s, extra)
        if t == 0:
            x = d
        else:
            h = math.log(s / t)
            gain = -math.expm1(-(1 + eta) * h)
            x = (t / s) * math.exp(-eta * h) * x + gain * d
            if old is not None:
                x = x + 0.5 * gain * (h / h_last) * (d - old)
            x = x + t * math.sqrt(-math.expm1(-2 * eta * h)) * _noise(i, 0)
            h_last = h
        old = d
    return x


def plain_seeds_2(model, x, sigmas, extra, r=0.5, eta=1.0):
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        d = _denoise(model, x, s, extra)
        if t == 0:
            x = d
            continue
        h = math.log(s / t)
        h_eta = (1 + eta) * h
        s2 = s * math.exp(-r * h)
        n1 = math.sqrt(1 - math.exp(-2 * r * eta * h)) * _noise(i, 0)
        x2 = (s2 / s) * math.exp(-r * eta * h) * x - math.expm1(-r * h_eta) * d + s2 * n1
        d2 = _denoise(model, x2, s2, extra)
        n = math.exp((r - 1) * eta * h) * n1 + math.sqrt(1 - math.exp(2 * (r - 1) * eta * h)) * _noise(i, 1)
        x = ((t / s) * math.exp(-eta * h) * x - math.expm1(-h_eta) * ((1 - 1 / (2 * r)) * d + (1 / (2 * r)) * d2)
             + t * n)
    return x


def _heun(model, x, s, t, extra):
    d = (x - _denoise(model, x, s, extra)) / s
    x_next = x + (t - s) * d
    if t == 0:
        return x_next
    d2 = (x_next - _denoise(model, x_next, t, extra)) / t
    return x + (t - s) * (d + d2) / 2


RESTART = {"index": 2, "n_restart": 3, "times": 2, "t_max": 3.0, "gamma": 0.05}  # t_min = SIGMAS[2] = 2.0


def plain_restart(model, x, sigmas, extra):
    """Heun main pass (Euler to 0); after landing on sigmas[index]: `times` x (jump to t_max, n_restart - 1
    churned Heun steps down the rho = 7 grid back to sigmas[index]). Restart events e use counter len(sigmas) + e."""
    event = len(sigmas)
    for i in range(len(sigmas) - 1):
        x = _heun(model, x, sigmas[i], sigmas[i + 1], extra)
        if i + 1 != RESTART["index"]:
            continue
        t_min, t_max, n = sigmas[i + 1], RESTART["t_max"], RESTART["n_restart"]
        grid = [(t_max ** (1 / 7) + j / (n - 1) * (t_min ** (1 / 7) - t_max ** (1 / 7))) ** 7 for j in range(n)]
        for _ in range(RESTART["times"]):
            x = x + math.sqrt(t_max ** 2 - t_min ** 2) * _noise(event, 0)
            event += 1
            for j in range(n - 1):
                s_hat = grid[j] * (1 + RESTART["gamma"])
                x = x + math.sqrt(s_hat ** 2 - grid[j] ** 2) * _noise(event, 0)
                event += 1
                x = _heun(model, x, s_hat, grid[j + 1], extra)
    return x


RESTART_INFO = {"0": [RESTART["n_restart"], RESTART["times"], SIGMAS[RESTART["index"]], RESTART["t_max"]]}
CASES = {
    "dpmpp_2m": (plain_dpmpp_2m, {}),
    "dpmpp_2m_sde": (plain_dpmpp_2m_sde, {}),
    "seeds_2": (plain_seeds_2, {}),
    "restart": (plain_restart, {"restart_info": RESTART_INFO}),
}


def _loss(result, weights):
    return (result * weights).sum() + 0.25 * (result ** 2).sum()


def _gradients(run, model, x0, cond, weights):
    """The result and the loss's gradients w.r.t. x, cond (an extra_args tensor; None: not passed) and the model's
    parameters."""
    x = x0.clone().requires_grad_()
    c = [] if cond is None else [cond.clone().requires_grad_()]
    result = run(model, x, {"cond": c[0]} if c else {})
    return result, torch.autograd.grad(_loss(result, weights), [x] + c + list(model.parameters()))


def _assert_relative(got, want, rel):
    scale = want.abs().max().item()
    assert scale > 0
    err = (got - want).abs().max().item()
    assert err <= rel * scale, f"max error {err:.3e} > {rel:.0e} x {scale:.3e}"


@pytest.mark.parametrize("adapter", [False, True], ids=["callable", "VEDenoiser"])
@pytest.mark.parametrize("solver", sorted(CASES))
def test_gradients_equal_the_plain_torch_loop(solver, adapter):
    """``adapter``: the network behind fastint's VEDenoiser adapter (D = F), whose sampling loop is the planned one
    when nothing requires grad."""
    plain, options = CASES[solver]
    gen = _generator(f"sample-gradients-{solver}")
    model = TinyDenoiser(gen)
    x0 = torch.randn(BATCH, DIM, generator=gen, dtype=torch.float64) * SIGMAS[0]
    cond = 1 + 0.1 * torch.randn(BATCH, DIM, generator=gen, dtype=torch.float64)
    weights = torch.randn(BATCH, DIM, generator=gen, dtype=torch.float64)

    def fastint_run(model, x, extra):
        wrapped = fastint.models.adapters.VEDenoiser(model) if adapter else model
        return fastint.sample(wrapped, x, SIGMAS, solver, seed=0, extra_args=extra, **options)

    got_result, got = _gradients(fastint_run, model, x0, cond, weights)
    want_result, want = _gradients(lambda m, x, e: plain(m, x, SIGMAS, e), model, x0, cond, weights)
    _assert_relative(got_result.detach(), want_result.detach(), 1e-10)
    assert len(got) == len(want) == 2 + len(list(model.parameters()))
    for g, w in zip(got, want):
        _assert_relative(g, w, 1e-8)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_2m_sde"])
def test_gradients_in_float32_on_the_automatic_backend(solver):
    """float32 runs on the compiled op when it is built (its Autograd kernel), else compile / eager: the gradient
    matches the float64 plain loop within float32 rounding."""
    plain, options = CASES[solver]
    gen = _generator(f"sample-gradients-f32-{solver}")
    model = TinyDenoiser(gen)
    x0 = torch.randn(BATCH, DIM, generator=gen, dtype=torch.float64) * SIGMAS[0]
    weights = torch.randn(BATCH, DIM, generator=gen, dtype=torch.float64)
    x = x0.float().requires_grad_()
    model32 = TinyDenoiser(gen).float()
    model32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    result = fastint.sample(model32, x, SIGMAS, solver, seed=0, **options)
    got = torch.autograd.grad(_loss(result.double(), weights), [x] + list(model32.parameters()))
    _, want = _gradients(lambda m, x, e: plain(m, x, SIGMAS, e), model, x0, None, weights)
    for g, w in zip(got, want):
        _assert_relative(g.double(), w, 1e-4)


def test_no_graph_without_grad():
    gen = _generator("sample-no-grad")
    model = TinyDenoiser(gen)
    x = torch.randn(BATCH, DIM, generator=gen, dtype=torch.float64).requires_grad_()
    with torch.no_grad():
        assert not fastint.sample(model, x, SIGMAS, "dpmpp_2m_sde", seed=0).requires_grad
    assert fastint.sample(model, x.detach(), SIGMAS, "dpmpp_2m", seed=0).grad_fn is not None  # parameters
