"""Autograd of the fused step: a functional form of the op with a registered backward (``torch.library``).

    forward:   out[m]     = sum_n C[m, n] in[n] + sum_k C[m, N + k] z_k          (m < M, n < N, k < K)
    backward:  grad_in[n] = sum_m C[m, n] grad_out[m]

The noise ``z_k`` depends on no input (only on the seeds, the counter and the stream), the coefficients are host
floats: the op is linear in its inputs and the backward needs nothing saved but C. It is itself fused steps with the
transposed matrix ``C[:, :N]^T`` (N rows of M coefficients, no noise), in ceil(N / 2) calls because one call writes
at most two outputs; those calls go through this same functional op, so the backward is differentiable again.

``fastint::fused_step_functional`` returns fresh outputs (in input 0's dtype) and runs the named backend; every
entry of the op (``fastint.ops.fused_step``, ``torch.ops.fastint.fused_step``, ``fastint._C.fused_step``) uses it
when grad mode is on and a tensor of the call requires grad, then writes the results into the requested outputs
with ``Tensor.copy_``, which gives in-place and ``out=`` calls torch's own autograd semantics. Being a registered
custom op with a fake implementation, it is one node for ``torch.compile`` (forward and backward).
"""

from typing import List, Optional, Sequence

import torch

from . import registry
from .contract import MAX_OUTPUTS, FusedStepCall, validate


@torch.library.custom_op("fastint::fused_step_functional", mutates_args=())
def fused_step_functional(inputs: List[torch.Tensor], coeffs: List[float], seeds: Optional[torch.Tensor],
                          counter: int, num_noise: int, num_outputs: int, backend: str) -> List[torch.Tensor]:
    """``num_outputs`` fresh tensors ``out[m] = sum_n C[m,n] in[n] + sum_k C[m,N+k] z_k`` (``coeffs``: the
    flattened (M, N + K) matrix) computed by ``backend`` ('auto': the automatic choice); checked as every entry."""
    if not 1 <= num_outputs <= MAX_OUTPUTS or len(coeffs) % num_outputs:
        raise ValueError(f"fused_step_functional: {len(coeffs)} coefficients do not make {num_outputs} rows "
                         f"(1 to {MAX_OUTPUTS} outputs)")
    width = len(coeffs) // num_outputs
    call = validate(inputs, [coeffs[m * width:(m + 1) * width] for m in range(num_outputs)], None, seeds, counter,
                    num_noise)
    registry.select(call, backend).run(call)
    return call.outs


@fused_step_functional.register_fake
def _(inputs, coeffs, seeds, counter, num_noise, num_outputs, backend):
    return [torch.empty_like(inputs[0], memory_format=torch.contiguous_format) for _ in range(num_outputs)]


def _setup_context(ctx, inputs, output) -> None:
    tensors, coeffs, _seeds, _counter, num_noise, num_outputs, backend = inputs
    ctx.num_inputs, ctx.num_outputs, ctx.num_noise = len(tensors), num_outputs, num_noise
    ctx.coeffs, ctx.backend = list(coeffs), backend
    ctx.input_dtypes = [t.dtype for t in tensors]


def transposed_rows(coeffs: Sequence[float], num_inputs: int, num_noise: int, rows: Sequence[int]) -> List[List[float]]:
    """Row n of ``C[rows, :N]^T``: the coefficients of input n in each output of ``rows``."""
    width = num_inputs + num_noise
    return [[coeffs[m * width + n] for m in rows] for n in range(num_inputs)]


def _backward(ctx, grads):
    present = [m for m in range(ctx.num_outputs) if grads[m] is not None]
    if not present:
        return None, None, None, None, None, None, None
    grad_outs = [grads[m] for m in present]
    rows = transposed_rows(ctx.coeffs, ctx.num_inputs, ctx.num_noise, present)
    grad_inputs = []
    for first in range(0, ctx.num_inputs, MAX_OUTPUTS):
        chunk = rows[first:first + MAX_OUTPUTS]
        flat = [c for row in chunk for c in row]
        grad_inputs += fused_step_functional(grad_outs, flat, None, 0, 0, len(chunk), ctx.backend)
    grad_inputs = [g.to(dtype) for g, dtype in zip(grad_inputs, ctx.input_dtypes)]
    return grad_inputs, None, None, None, None, None, None


fused_step_functional.register_autograd(_backward, setup_context=_setup_context)


def needs_grad(*groups: Sequence[torch.Tensor]) -> bool:
    """Whether a call on the tensors of ``groups`` (lists or tuples) is recorded by autograd: grad mode is on and
    one of them requires grad."""
    return torch.is_grad_enabled() and any(t.requires_grad for tensors in groups for t in tensors)


def refuse_leaf_outputs(outs: Sequence[torch.Tensor]) -> None:
    """torch's rule for in-place writes with grad mode on: a leaf that requires grad cannot be written."""
    for m, o in enumerate(outs):
        if o.is_leaf and o.requires_grad:
            raise RuntimeError(f"fused_step: output {m} is a leaf tensor that requires grad; writing into it would "
                               "lose its gradient (torch refuses in-place writes into such leaves). Pass out=None "
                               "(fresh outputs), a tensor that does not require grad, or call under torch.no_grad()")


def functional_results(call: FusedStepCall, backend: str) -> List[torch.Tensor]:
    """The call's results as fresh tensors from the differentiable functional op (``call.outs`` untouched)."""
    return fused_step_functional(call.inputs, call.coeffs, call.seeds, call.counter, call.num_noise,
                                 len(call.outs), backend)


def write_with_grad(call: FusedStepCall, backend: str) -> None:
    """Write the call's results into ``call.outs`` as autograd records it (``copy_``: torch's in-place semantics:
    version counters, history rebased onto the new values); a leaf that requires grad is refused first. Every
    backend's ``run`` comes here when ``needs_grad``."""
    refuse_leaf_outputs(call.outs)
    for o, r in zip(call.outs, functional_results(call, backend)):
        o.copy_(r)
