"""Shared random cases and tolerance rules for the fused-op parity tests of every backend.

The reference is the eager backend run in float64 on float64 copies of the same inputs (noise is generated in
float32 by every backend, then used at the output's precision).
"""

import torch

from fastint.ops import fused_step

SIZES = [(1,), (7,), (1023,), (65537,), (3, 1023), (2, 5, 7, 9)]
HALF_DTYPES = (torch.float16, torch.bfloat16)


def random_case(seed, shape, n_in, n_out, n_noise, dtype, device="cpu"):
    """Inputs, an (M, N + K) coefficient matrix and per-sample seeds, all drawn fresh from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for _ in range(n_in)]
    coeffs = (torch.rand(n_out, n_in + n_noise, generator=gen, dtype=torch.float64) * 4 - 2).tolist()
    samples = shape[0] if len(shape) else 1
    seeds = torch.randint(-2 ** 62, 2 ** 62, (samples,), generator=gen).to(device)
    return inputs, coeffs, seeds


def reference(inputs, coeffs, seeds, counter, n_noise):
    return fused_step([t.double() for t in inputs], coeffs, num_noise=n_noise, seeds=seeds, counter=counter,
                      backend="eager")


def magnitude(inputs, coeffs, n_noise):
    """Elementwise sum_n |C_mn| |in_n| + sum_k |C_mk| * 4: the scale the rounding error is relative to."""
    n_in = len(inputs)
    rows = []
    for row in coeffs:
        acc = sum(abs(c) * t.double().abs() for c, t in zip(row[:n_in], inputs))
        rows.append(acc + 4 * sum(abs(c) for c in row[n_in:]))
    return rows


def assert_matches_reference(got, inputs, coeffs, seeds, counter, n_noise, backend_same_dtype=None, rel=2e-6):
    """fp32/fp64 outputs: |got - ref| <= rel * magnitude. Half outputs: error ratio vs the eager backend in the
    same dtype (``backend_same_dtype``): max error <= 2 x eager's max error + one half-precision ulp at 1."""
    ref = reference(inputs, coeffs, seeds, counter, n_noise)
    scale = magnitude(inputs, coeffs, n_noise)
    for m, (g, r) in enumerate(zip(got, ref)):
        assert torch.isfinite(g).all(), f"output {m} has non-finite (unwritten?) elements"
        err = (g.double().cpu() - r.cpu()).abs()
        if g.dtype in HALF_DTYPES:
            eager_err = (backend_same_dtype[m].double().cpu() - r.cpu()).abs().max().item()
            eps = torch.finfo(g.dtype).eps
            assert err.max().item() <= 2 * eager_err + eps, (m, err.max().item(), eager_err)
        else:
            bound = rel * scale[m].cpu() + 1e-30
            assert (err <= bound).all(), f"output {m}: max error {err.max().item():.3e}, max ratio " \
                                         f"{(err / bound).max().item():.2f}"
