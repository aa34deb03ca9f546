"""The counter-based Philox noise: known answers, Triton equality, distribution, addressing."""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from scipy import stats

import fastint
from fastint.models import default_mixture
from fastint.ops import fused_step
from fastint.ops.philox import box_muller, normals, philox4x32_10, uint32_to_uniform

# Random123's published known-answer vectors for philox4x32-10: (counter words, key words) -> output words.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_random123_known_answers(counter, key, expected):
    words = [torch.tensor([c], dtype=torch.int64) for c in counter + key]
    assert tuple(int(w) for w in philox4x32_10(*words)) == expected


def test_uniform_conversion_is_tritons():
    words = torch.tensor([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x12345678], dtype=torch.int64)
    u = uint32_to_uniform(words)
    expected = torch.tensor([0, 1, 0x7FFFFFFF, 0x7FFFFFFF, 0, 0x12345678], dtype=torch.float32) * \
        torch.tensor(4.6566127342e-10, dtype=torch.float32)
    assert torch.equal(u, expected)
    assert (u >= 0).all() and (u < 1).all()


TRITON_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    os.environ["TRITON_INTERPRET"] = "1"
    import triton, triton.language as tl
    from fastint.ops import philox as P

    @triton.jit
    def kernel(seed_ptr, off_ptr, w0, w1, w2, w3, u_ptr, n_ptr, n4_ptr, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        seed = tl.load(seed_ptr + i)
        off = tl.load(off_ptr + i)
        a, b, c, d = tl.randint4x(seed, off)
        tl.store(w0 + i, a); tl.store(w1 + i, b); tl.store(w2 + i, c); tl.store(w3 + i, d)
        tl.store(u_ptr + i, tl.rand(seed, off))
        tl.store(n_ptr + i, tl.randn(seed, off))
        n0, n1, n2, n3 = tl.randn4x(seed, off)
        tl.store(n4_ptr + 4 * i, n0); tl.store(n4_ptr + 4 * i + 1, n1)
        tl.store(n4_ptr + 4 * i + 2, n2); tl.store(n4_ptr + 4 * i + 3, n3)

    n = 2048
    gen = torch.Generator().manual_seed(int(sys.argv[1]))
    seeds = torch.randint(-2 ** 62, 2 ** 62, (n,), generator=gen)
    offsets = torch.randint(0, 2 ** 62, (n,), generator=gen)
    words = [torch.empty(n, dtype=torch.int32) for _ in range(4)]
    u, z, z4 = torch.empty(n), torch.empty(n), torch.empty(4 * n)
    kernel[(1,)](seeds, offsets, *words, u, z, z4, BLOCK=n)
    k0, k1 = P.key_words(seeds)
    zero = torch.zeros_like(offsets)
    ours = P.philox4x32_10(offsets & P.MASK32, (offsets >> 32) & P.MASK32, zero, zero, k0, k1)
    assert all(torch.equal(t.to(torch.int64) & P.MASK32, o) for t, o in zip(words, ours)), "randint4x differs"
    assert torch.equal(u, P.uint32_to_uniform(ours[0])), "rand differs"
    m0, m1 = P.box_muller(P.uint32_to_uniform(ours[0]), P.uint32_to_uniform(ours[1]))
    m2, m3 = P.box_muller(P.uint32_to_uniform(ours[2]), P.uint32_to_uniform(ours[3]))
    mine = torch.stack([m0, m1, m2, m3], dim=1).reshape(-1)
    for name, theirs, ref in (("randn", z, m0), ("randn4x", z4, mine)):
        err = (theirs - ref).abs()
        assert (err <= 4 * torch.finfo(torch.float32).eps * ref.abs().clamp(min=1)).all(), (name, err.max())

    # Bit for bit once both use the same elementary functions: the interpreter evaluates tl.log / tl.sqrt /
    # tl.cos / tl.sin with numpy's float32 routines; run our box_muller with torch's replaced by those.
    import numpy as np
    from torch.overrides import TorchFunctionMode

    class NumpyElementary(TorchFunctionMode):
        FUNCS = {torch.log: np.log, torch.sqrt: np.sqrt, torch.cos: np.cos, torch.sin: np.sin}

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in self.FUNCS:
                return torch.from_numpy(self.FUNCS[func](args[0].numpy()))
            return func(*args, **(kwargs or {}))

    with NumpyElementary():
        b0, _ = P.box_muller(P.uint32_to_uniform(ours[0]), P.uint32_to_uniform(ours[1]))
        b2, b3 = P.box_muller(P.uint32_to_uniform(ours[2]), P.uint32_to_uniform(ours[3]))
        _, b1 = P.box_muller(P.uint32_to_uniform(ours[0]), P.uint32_to_uniform(ours[1]))
    assert torch.equal(z, b0), "randn differs bit-wise with the same elementary functions"
    assert torch.equal(z4, torch.stack([b0, b1, b2, b3], dim=1).reshape(-1)), "randn4x differs bit-wise"
    print("max |randn difference|", (z - m0).abs().max().item(), "bit-equal fraction",
          (z == m0).float().mean().item())

    # The Box-Muller of tl.randn4x (the Triton backend's noise) at the edge u = 0: clamped to 1e-7, finite.
    from triton.language.random import pair_uniform_to_normal

    @triton.jit
    def box_muller_kernel(ua_ptr, ub_ptr, c_ptr, s_ptr, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        c, s = pair_uniform_to_normal(tl.load(ua_ptr + i), tl.load(ub_ptr + i))
        tl.store(c_ptr + i, c); tl.store(s_ptr + i, s)

    ua = torch.tensor([0.0, 1e-12, 5e-8, 1e-7, 0.5, 0.0, 0.0, 0.0])
    ub = torch.tensor([0.0, 0.125, 0.25, 0.6, 0.9, 0.3, 0.55, 0.999])
    c, s = torch.empty(8), torch.empty(8)
    box_muller_kernel[(1,)](ua, ub, c, s, BLOCK=8)
    assert torch.isfinite(c).all() and torch.isfinite(s).all(), (c, s)
    want_c, want_s = P.box_muller(ua, ub)
    assert torch.allclose(c, want_c, atol=1e-6) and torch.allclose(s, want_s, atol=1e-6), (c, want_c, s, want_s)
""")


def test_pure_pytorch_philox_equals_tritons_under_the_interpreter(tmp_path):
    pytest.importorskip("triton")
    script = tmp_path / "triton_philox.py"
    script.write_text(TRITON_SCRIPT)
    package_root = os.path.dirname(os.path.dirname(fastint.__file__))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": package_root}
    result = subprocess.run([sys.executable, str(script), "5"], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_box_muller_clamps_tiny_uniforms():
    """The words 0 and 0xFFFFFFFF give the uniform 0 exactly; Box-Muller clamps it (and anything below 1e-7) to 1e-7
    before the log: radius sqrt(-2 ln 1e-7), never inf or NaN."""
    assert uint32_to_uniform(torch.tensor([0, 0xFFFFFFFF], dtype=torch.int64)).tolist() == [0.0, 0.0]
    ua = torch.tensor([0.0, 1e-12, 5e-8, 1e-7, 0.5])
    ub = torch.tensor([0.0, 0.125, 0.25, 0.6, 0.9])
    n_cos, n_sin = box_muller(ua, ub)
    radius = torch.sqrt(-2 * torch.log(ua.double().clamp(min=1e-7)))
    theta = 2 * math.pi * ub.double()
    assert torch.isfinite(n_cos).all() and torch.isfinite(n_sin).all(), (n_cos, n_sin)
    assert torch.allclose(n_cos.double(), radius * torch.cos(theta), rtol=1e-6, atol=1e-6)
    assert torch.allclose(n_sin.double(), radius * torch.sin(theta), rtol=1e-6, atol=1e-6)


def test_noise_moments_and_kolmogorov_smirnov():
    seeds = torch.tensor([123456789, -42], dtype=torch.int64)
    z = normals(seeds, counter=3, stream=1, per_sample=250_000).double().reshape(-1)
    n = z.numel()
    assert abs(z.mean().item()) < 5 / n ** 0.5
    assert abs(z.var().item() - 1) < 5 * (2 / n) ** 0.5
    assert abs(stats.skew(z.numpy())) < 5 * (6 / n) ** 0.5
    assert abs(stats.kurtosis(z.numpy())) < 5 * (24 / n) ** 0.5
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3


def test_streams_counters_and_seeds_give_uncorrelated_noise():
    seeds = torch.tensor([7], dtype=torch.int64)
    base = normals(seeds, 0, 0, 100_000).double().reshape(-1)
    others = [normals(seeds, 0, 1, 100_000), normals(seeds, 1, 0, 100_000),
              normals(seeds + 1, 0, 0, 100_000)]
    for other in others:
        corr = torch.corrcoef(torch.stack([base, other.double().reshape(-1)]))[0, 1].item()
        assert abs(corr) < 0.02


def test_a_samples_noise_does_not_depend_on_its_batch():
    gen = torch.Generator().manual_seed(3)
    seeds = torch.randint(0, 2 ** 40, (5,), generator=gen)
    x = torch.randn(5, 3, 17, generator=gen)
    batched = fused_step([x], [[0.0, 1.0]], num_noise=1, seeds=seeds, counter=9, backend="eager")[0]
    alone = fused_step([x[2:3]], [[0.0, 1.0]], num_noise=1, seeds=seeds[2:3], counter=9, backend="eager")[0]
    assert torch.equal(batched[2:3], alone)


def test_a_samples_trajectory_does_not_depend_on_its_batch():
    gm = default_mixture()
    gen = torch.Generator().manual_seed(4)
    sigmas = fastint.schedules.karras(8, 0.05, 20.0)
    x = torch.randn(6, 2, generator=gen) * 20
    seeds = torch.arange(100, 106)
    full = fastint.sample(gm, x, sigmas, "seeds_3", seed=seeds, backend="eager")
    part = fastint.sample(gm, x[3:5], sigmas, "seeds_3", seed=seeds[3:5], backend="eager")
    assert torch.equal(full[3:5], part)
    again = fastint.sample(gm, x, sigmas, "seeds_3", seed=100, backend="eager")
    assert torch.equal(full, again)
    other = fastint.sample(gm, x, sigmas, "seeds_3", seed=200, backend="eager")
    assert not torch.allclose(full, other)
