"""Sampling on a GPU: every solver through ``fastint.sample`` (both GPU backends), a model adapter's fused
(x, F) path, and the fast op entry ``fastint._C.fused_step`` on CUDA tensors. Skipped without CUDA; part of the
GPU selection of benchmarks/gpu_check.sh.

References: the same run on the CPU in float64 through the eager backend (same seeds: the noise is addressed by
seed, counter, stream and element, not by device), so the GPU run may differ only by float32 rounding and the
kernels' transcendental approximations.
"""

import pytest
import torch

import fastint
from fastint.models import DiscreteVPDenoiser, default_mixture
from fastint.ops import extension, registry
from fastint.schedules import alphas_cumprod_from_betas, betas_linear, karras, vp_discrete
from seeding import stable_seed

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

GUIDED = {"lie_trotter", "strang"}  # need a guidance function: tests/test_splitting.py
SOLVERS = [s["name"] for s in fastint.list_solvers() if s["name"] not in GUIDED]
GPU_BACKENDS = ["cuda", "triton"]


def require(name):
    reason = registry.get(name).unavailable_reason()
    if reason is not None:
        pytest.fail(f"{name} must be available on a GPU machine: {reason}")


def relative_error(got, want):
    return ((got.double().cpu() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("solver", SOLVERS)
def test_every_solver_on_the_gpu_matches_the_float64_cpu_run(solver, backend):
    require(backend)
    gen = torch.Generator().manual_seed(stable_seed("every_solver", solver))
    gm = default_mixture()
    sigmas = karras(8, 0.05, 20.0)
    x = torch.randn(64, 2, generator=gen, dtype=torch.float64) * 20
    want = fastint.sample(gm, x, sigmas, solver, seed=11, backend="eager")
    got = fastint.sample(gm, x.float().cuda(), sigmas, solver, seed=11, backend=backend)
    assert got.device.type == "cuda" and got.dtype == torch.float32
    assert torch.isfinite(got).all()
    assert relative_error(got, want) < 1e-4, f"{solver} on {backend}"


class TinyEpsNet(torch.nn.Module):
    """A small convolutional eps-prediction network with a timestep input (deterministic weights)."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(stable_seed("TinyEpsNet"))
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen) * 0.2)
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=gen) * 0.1)

    def forward(self, x, t):
        return torch.tanh(self.conv(x)) + 1e-3 * t.view(-1, 1, 1, 1).to(x.dtype)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m", "dpmpp_3m_sde", "seeds_2", "restart"])
def test_adapter_loop_on_the_gpu_matches_the_float64_cpu_run(solver, backend):
    """DiscreteVPDenoiser(eps-net): the loop that fuses D = c_skip x + c_out F into the step, on CUDA."""
    require(backend)
    ab = alphas_cumprod_from_betas(betas_linear())
    sigmas = vp_discrete(ab, 10, spacing="linspace").sigmas
    gen = torch.Generator().manual_seed(stable_seed("adapter", solver))
    x = torch.randn(3, 2, 8, 8, generator=gen, dtype=torch.float64) * float((1 + sigmas[0] ** 2) ** 0.5)
    net = TinyEpsNet()
    want = fastint.sample(DiscreteVPDenoiser(net.double(), ab), x, sigmas, solver, seed=5, backend="eager")
    with torch.no_grad():
        got = fastint.sample(DiscreteVPDenoiser(net.float().cuda(), ab), x.float().cuda(), sigmas, solver, seed=5,
                             backend=backend)
    assert torch.isfinite(got).all()
    assert relative_error(got, want) < 1e-4, f"{solver} on {backend}"


def test_cuda_and_triton_agree_on_a_stochastic_run():
    require("cuda")
    require("triton")
    gen = torch.Generator().manual_seed(stable_seed("cuda_vs_triton"))
    x = (torch.randn(16, 4, 33, generator=gen) * 10).cuda()
    sigmas = karras(12, 0.02, 10.0)
    runs = [fastint.sample(lambda u, s: u / (1 + s.view(-1, 1, 1) ** 2), x, sigmas, "dpmpp_2m_sde", seed=3,
                           backend=b) for b in GPU_BACKENDS]
    assert (runs[0] - runs[1]).abs().max().item() < 1e-4 * runs[0].abs().max().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n_in,n_out,k", [(1, 1, 0), (3, 1, 1), (6, 2, 4)])
def test_fast_entry_on_cuda_is_bit_identical_to_the_dispatcher(dtype, n_in, n_out, k):
    if extension.load() is not None:
        pytest.fail(f"the compiled extension must be built on a GPU machine: {extension.load()}")
    gen = torch.Generator().manual_seed(stable_seed("fast_entry", str(dtype), n_in, n_out, k))
    inputs = [torch.randn(3, 1029, generator=gen).to("cuda", dtype) for _ in range(n_in)]
    coeffs = torch.randn(n_out * (n_in + k), generator=gen, dtype=torch.float64).tolist()
    seeds = torch.tensor([5, -9, 2 ** 40], dtype=torch.int64, device="cuda") if k else None
    want = [torch.full_like(inputs[0], float("nan")) for _ in range(n_out)]
    got = [torch.full_like(inputs[0], float("nan")) for _ in range(n_out)]
    torch.ops.fastint.fused_step(want, inputs, coeffs, seeds, 11, k)
    assert extension.module().fused_step(got, tuple(inputs), coeffs, seeds, 11, k) is None
    for a, b in zip(got, want):
        assert torch.isfinite(a).all() and torch.equal(a, b)


def test_fast_entry_refuses_mixed_devices():
    if extension.load() is not None:
        pytest.fail(f"the compiled extension must be built on a GPU machine: {extension.load()}")
    x = torch.randn(2, 64, device="cuda")
    out = torch.full_like(x, 7.0)
    with pytest.raises(RuntimeError, match="device|cuda|cpu"):
        extension.module().fused_step([out], (x, torch.randn(2, 64)), [1.0, 1.0], None, 0, 0)
    assert torch.equal(out, torch.full_like(x, 7.0))
