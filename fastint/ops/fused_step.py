"""``fused_step``: the one public entry to the fused op (validation, backend choice, call)."""

from typing import List, Optional, Sequence, Union

import torch

from . import registry
from .contract import validate


def fused_step(inputs: Sequence[torch.Tensor], coeffs, *, num_noise: int = 0, seeds: Optional[torch.Tensor] = None,
               counter: int = 0, out: Union[None, torch.Tensor, Sequence[torch.Tensor]] = None,
               backend: Optional[str] = None) -> List[torch.Tensor]:
    """Compute ``out[m] = sum_n C[m,n] inputs[n] + sum_k C[m,N+k] z_k`` in one pass and return the outputs.

    Args:
        inputs: 1 to 6 same-shaped tensors (float32/float16/bfloat16; float64 on the eager backend).
        coeffs: the (M, N + K) host matrix C, M <= 2 (nested lists, numpy or a CPU tensor).
        num_noise: K <= 4 in-kernel Philox noise streams (``docs/noise.md``).
        seeds: int64 tensor of per-sample seeds on the tensors' device (the leading dimension), needed when K > 0.
        counter: the noise counter (a solver's step / event index), 0 <= counter < 2**30.
        out: None (fresh outputs in input 0's dtype), a tensor or a list of M tensors; may alias inputs exactly.
        backend: a backend name; default: the one in force (``use_backend``, ``FASTINT_BACKEND``, ``auto``).
    """
    call = validate(inputs, coeffs, out, seeds, counter, num_noise)
    registry.select(call, backend).run(call)
    return call.outs
