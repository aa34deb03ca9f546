"""The ``compile`` backend: ``torch.compile`` of the reference math, one compiled function per signature.

The signature is (M, N, K, device type, input dtypes, output dtypes); sizes, coefficients and the counter are
dynamic, so a sampling loop compiles each step kind once. Same math and same Philox noise as ``eager``.
Each signature gets its own copy of the function's code object: Dynamo caches graphs per code object, so one shared
code object would make every signature count against a single recompile limit.
"""

import types
from typing import Dict, List, Optional, Tuple

import torch

from . import registry
from .autograd import needs_grad, write_with_grad
from .contract import KERNEL_DTYPES, FusedStepCall
from .reference import fused_step_math

_compiled: Dict[Tuple, object] = {}


def _function_for(outs, inputs, num_noise):
    key = (len(outs), len(inputs), num_noise, inputs[0].device.type,
           tuple(t.dtype for t in inputs), tuple(t.dtype for t in outs))
    if key not in _compiled:
        code = fused_step_math.__code__.replace(co_name=f"fused_step_math_{len(_compiled)}")
        function = types.FunctionType(code, fused_step_math.__globals__, code.co_name)
        _compiled[key] = torch.compile(function, dynamic=True, fullgraph=True)
    return _compiled[key]


@torch.library.custom_op("fastint::fused_step_compile", mutates_args=("outs",))
def fused_step_compile(outs: List[torch.Tensor], inputs: List[torch.Tensor], coeffs: List[float],
                       seeds: Optional[torch.Tensor], counter: int, num_noise: int) -> None:
    _function_for(outs, inputs, num_noise)(outs, inputs, coeffs, seeds, counter, num_noise)


@fused_step_compile.register_fake
def _(outs, inputs, coeffs, seeds, counter, num_noise) -> None:
    return None


def _probe() -> Optional[str]:
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    from torch._inductor import cpp_builder  # noqa: F401  (inductor importable)
    from .._build import compiler_problem  # the compiler Inductor would use too ($CXX, else c++)
    problem = compiler_problem()
    if problem:
        return f"torch.compile (Inductor) needs a C++ compiler: {problem}"
    return None


def _run(call: FusedStepCall) -> None:
    if needs_grad(call.inputs, call.outs):
        return write_with_grad(call, "compile")
    fused_step_compile(call.outs, call.inputs, call.coeffs, call.seeds, call.counter, call.num_noise)


registry.register(registry.Backend(
    name="compile", description="torch.compile (Inductor) of the reference math", devices=("cpu", "cuda"),
    dtypes=KERNEL_DTYPES, probe=_probe, run=_run))
