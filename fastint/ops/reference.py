"""The reference math of the fused step, in plain PyTorch (the ``eager`` backend, also traced by ``compile``).

    out[m] = sum_n C[m, n] * in[n] + sum_k C[m, N + k] * z_k

Arithmetic is float32 (float64 when an output or input is float64, which makes this the float64 reference the
parity tests compare every backend with); outputs are written in their own dtype. The noise ``z_k`` is
``philox.normals(seeds, counter, k, per_sample)``, generated in float32 as every backend does.
"""

from typing import List, Optional

import torch

from .philox import normals


def compute_dtype(tensors) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def fused_step_math(outs: List[torch.Tensor], inputs: List[torch.Tensor], coeffs: List[float],
                    seeds: Optional[torch.Tensor], counter: int, num_noise: int) -> None:
    """Write ``out[m] = sum_n C[m,n] in[n] + sum_k C[m,N+k] z_k`` into ``outs`` (which may alias inputs)."""
    n_in = len(inputs)
    width = n_in + num_noise
    dtype = compute_dtype(outs + inputs)
    shape = inputs[0].shape
    samples = shape[0] if len(shape) else 1
    per_sample = inputs[0].numel() // max(samples, 1)
    terms = [t.to(dtype) for t in inputs]
    for k in range(num_noise):
        terms.append(normals(seeds, counter, k, per_sample).reshape(shape).to(dtype))
    results = []
    for m in range(len(outs)):
        row = coeffs[m * width:(m + 1) * width]
        acc = terms[0] * row[0]
        for c, t in zip(row[1:], terms[1:]):
            acc = acc + t * c
        results.append(acc)
    for o, r in zip(outs, results):
        o.copy_(r)
