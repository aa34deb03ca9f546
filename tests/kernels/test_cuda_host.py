"""The CUDA kernel's own source (csrc/cuda/fused_step_kernel.cuh) executed on the CPU, against the float64 eager
reference: compiled by the host compiler with a shim of the CUDA language (cuda_host/shim/cuda_shim.h), launched
through the launcher's own plan and M/K dispatch, every block and thread run serially with a block cap of a few
blocks, so the grid-stride loop wraps. Covers every N = 1..6, M = 1..2, K = 0..4; float32, float16, bfloat16 and
mixed dtypes; per-sample sizes that are and are not multiples of 4; views at an element offset (the scalar path,
chosen by the same alignment rule as on the GPU; a vector access through a misaligned pointer aborts under
-fsanitize=alignment); in place (with the threads run in reverse order) and poisoned outputs; the Philox known
answers, the words, the normals and the Box-Muller clamp of the device code path (__CUDA_ARCH__ defined).
"""

import itertools
import math
import os
import sys
import zlib

import pytest
import torch

from fastint.ops import fused_step, philox

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: shared case helpers
from op_cases import assert_matches_reference  # noqa: E402
from test_philox import KNOWN_ANSWERS  # noqa: E402

from cuda_host import cuda_host  # noqa: E402

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DTYPES = {"fp32": ((F32,), (F32,)), "fp16": ((F16,), (F16,)), "bf16": ((BF16,), (BF16,)),
          "mixed": ((F16, F32, BF16), (F32, BF16))}
SIZES = [(1, 1), (1, 7), (3, 1023), (2, 4096), (2, 3, 5, 7)]
CONFIGS = [(1, 1, 0), (3, 1, 1), (2, 2, 2), (6, 2, 4)]


@pytest.fixture(scope="module", autouse=True)
def harness():
    if cuda_host.compiler() is None:
        pytest.skip("no host C++ compiler")
    return cuda_host.load()


def stable_seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


def _tensors(gen, shape, dtypes, count, offset):
    """``count`` random tensors of ``shape``; with ``offset``, each a view starting one element into its buffer."""
    numel = math.prod(shape)
    out = []
    for i in range(count):
        buf = torch.randn(numel + offset, generator=gen, dtype=torch.float64).to(dtypes[i % len(dtypes)])
        out.append(buf[offset:].view(shape))
    return out


def _empty(shape, dtype, offset):
    buf = torch.full((math.prod(shape) + offset,), float("nan"), dtype=dtype)  # poisoned
    return buf[offset:].view(shape)


def _run_case(seed, shape, n_in, n_out, n_noise, dtypes, layout, block_cap=2):
    gen = torch.Generator().manual_seed(seed)
    in_dtypes, out_dtypes = DTYPES[dtypes]
    offset = 1 if layout == "offset" else 0
    inputs = _tensors(gen, shape, in_dtypes, n_in, offset)
    coeffs = (torch.rand(n_out, n_in + n_noise, generator=gen, dtype=torch.float64) * 4 - 2).tolist()
    samples = shape[0]
    seeds = torch.randint(-2 ** 63, 2 ** 63 - 1, (samples,), generator=gen, dtype=torch.int64)
    counter = int(torch.randint(0, 2 ** 30, (1,), generator=gen))
    originals = [t.clone() for t in inputs]
    if layout == "inplace":
        outs = [inputs[m] for m in range(n_out)]
    else:
        outs = [_empty(shape, out_dtypes[m % len(out_dtypes)], offset) for m in range(n_out)]
    got, vectorized, blocks = cuda_host.fused_step(inputs, coeffs, n_noise, seeds if n_noise else None, counter,
                                                   out=outs, block_cap=block_cap, reverse=layout == "inplace")
    per_sample = math.prod(shape[1:])
    aligned = per_sample % 4 == 0 and all(t.data_ptr() % 16 == 0 for t in inputs + outs)
    assert vectorized == aligned, f"the plan chose the {'vector' if vectorized else 'scalar'} path"
    assert blocks == min(block_cap, -(-samples * (-(-per_sample // 4)) // cuda_host.BLOCK_THREADS))
    same_dtype = fused_step([t.clone() for t in originals], coeffs, num_noise=n_noise,
                            seeds=seeds if n_noise else None, counter=counter,
                            out=[torch.empty(shape, dtype=o.dtype) for o in outs], backend="eager")
    assert_matches_reference(got, originals, coeffs, seeds if n_noise else None, counter, n_noise,
                             backend_same_dtype=same_dtype)
    return vectorized


@pytest.mark.parametrize("n_in,n_out,n_noise", list(itertools.product(range(1, 7), (1, 2), range(0, 5))),
                         ids=lambda v: str(v))
def test_every_kernel_variant(n_in, n_out, n_noise):
    """All 60 (N, M, K): two samples of 1027 float32 elements, one block of 256 threads for 514 groups."""
    _run_case(stable_seed("variant", n_in, n_out, n_noise), (2, 1027), n_in, n_out, n_noise, "fp32", "poisoned",
              block_cap=1)


@pytest.mark.parametrize("layout", ["poisoned", "inplace", "offset"])
@pytest.mark.parametrize("dtypes", list(DTYPES))
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "N%dM%dK%d" % c)
@pytest.mark.parametrize("shape", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_parity(shape, config, dtypes, layout):
    vectorized = _run_case(stable_seed("parity", shape, config, dtypes, layout), shape, *config, dtypes, layout)
    if shape == (2, 4096) and layout != "offset":
        assert vectorized, "aligned tensors with a per-sample size divisible by 4 must take the vector path"


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_philox_known_answers(counter, key, expected):
    assert cuda_host.philox(counter, key) == expected


def test_philox_words_match_eager():
    gen = torch.Generator().manual_seed(stable_seed("words"))
    c = torch.randint(0, 2 ** 32, (64, 4), generator=gen, dtype=torch.int64)
    k = torch.randint(0, 2 ** 32, (64, 2), generator=gen, dtype=torch.int64)
    want = torch.stack(philox.philox4x32_10(*c.unbind(1), *k.unbind(1)), dim=1)
    got = torch.tensor([cuda_host.philox(c[i].tolist(), k[i].tolist()) for i in range(64)], dtype=torch.int64)
    assert torch.equal(got, want)


def test_normals_match_eager():
    """Noise-only steps (out = z_k) against fastint.ops.philox.normals: within 1e-6 everywhere; in units of
    u = float32 eps * max(|z|, 1), at most 2% beyond 1 u, 1 in 1000 beyond 2 u, none beyond 4 u (the rule of
    test_kernels.py; host libm vs torch differ by an ulp or two)."""
    seeds = torch.tensor([0, 12345, -(2 ** 63)], dtype=torch.int64)
    per_sample = 4099
    zero = torch.zeros(3, per_sample)
    units = []
    for counter, k in ((0, 0), (1, 3), (2 ** 30 - 1, 2)):
        coeffs = [[0.0] + [1.0 if j == k else 0.0 for j in range(k + 1)]]
        got = cuda_host.fused_step([zero], coeffs, k + 1, seeds, counter, block_cap=5)[0][0]
        want = philox.normals(seeds, counter, k, per_sample).double()
        err = (got.double() - want).abs()
        assert err.max().item() <= 1e-6, f"normals differ by {err.max().item():.3e}"
        units.append((err / (torch.finfo(torch.float32).eps * want.abs().clamp(min=1.0))).reshape(-1))
    u = torch.cat(units)
    assert (u > 1).double().mean().item() <= 0.02 and (u > 2).double().mean().item() <= 1e-3 and u.max() <= 4


def test_box_muller_clamps_tiny_uniforms():
    """u = 0 (and anything below 1e-7) is clamped to 1e-7 before the log: radius sqrt(-2 ln 1e-7), never inf."""
    ua = torch.tensor([0.0, 1e-12, 5e-8, 1e-7, 0.5])
    ub = torch.tensor([0.0, 0.125, 0.25, 0.6, 0.9])
    n_cos, n_sin = cuda_host.box_muller(ua, ub)
    u = ua.double().clamp(min=1e-7)
    theta = 2 * math.pi * ub.double()
    radius = torch.sqrt(-2 * torch.log(u))
    assert torch.isfinite(n_cos).all() and torch.isfinite(n_sin).all()
    assert torch.allclose(n_cos.double(), radius * torch.cos(theta), rtol=1e-6, atol=1e-6)
    assert torch.allclose(n_sin.double(), radius * torch.sin(theta), rtol=1e-6, atol=1e-6)
