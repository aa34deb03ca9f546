"""``fused_step``: the one public entry to the fused op (validation, backend choice, call; autograd when needed)."""

from typing import List, Optional, Sequence, Union

import torch

from . import registry
from .autograd import functional_results, needs_grad
from .contract import validate


def fused_step(inputs: Sequence[torch.Tensor], coeffs, *, num_noise: int = 0, seeds=None,
               counter: int = 0, out: Union[None, torch.Tensor, Sequence[torch.Tensor]] = None,
               backend: Optional[str] = None) -> List[torch.Tensor]:
    """Compute ``out[m] = sum_n C[m,n] inputs[n] + sum_k C[m,N+k] z_k`` in one pass and return the outputs.

    Args:
        inputs: 1 to 6 same-shaped tensors (float32/float16/bfloat16; float64 on the eager backend).
        coeffs: the (M, N + K) host matrix C, M <= 2 (nested lists, numpy or a CPU tensor); finite float32 values.
        num_noise: K <= 4 in-kernel Philox noise streams (``docs/noise.md``).
        seeds: per-sample seeds (the leading dimension), needed when K > 0: an int64 tensor on the tensors'
            device, a list of ints, or one int s (sample b uses s + b).
        counter: the noise counter (a solver's step / event index), 0 <= counter < 2**30.
        out: None (fresh outputs in input 0's dtype), a tensor or a list of M tensors; may alias inputs exactly.
        backend: a backend name; default: the one in force (``use_backend``, ``FASTINT_BACKEND``, ``auto``).

    Differentiable on every backend (``docs/gradients.md``): with grad mode on and an input or output requiring
    grad, ``grad_in[n] = sum_m C[m,n] grad_out[m]`` (the noise is fixed by the seeds); ``out=`` and in-place calls
    follow torch's rules (a leaf that requires grad is refused as an output).
    """
    call = validate(inputs, coeffs, out, seeds, counter, num_noise)
    chosen = registry.select(call, backend)
    if out is None and needs_grad(call.inputs):
        return functional_results(call, chosen.name)  # fresh outputs: no copy
    chosen.run(call)  # records the call for autograd when needed (autograd.write_with_grad)
    return call.outs
