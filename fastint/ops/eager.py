"""The ``eager`` backend: the reference math (``reference.fused_step_math``) as a registered custom op.

float64 capable; this is what every other backend is tested against.
"""

from typing import List, Optional

import torch

from . import registry
from .autograd import needs_grad, write_with_grad
from .contract import FusedStepCall
from .reference import fused_step_math


@torch.library.custom_op("fastint::fused_step_eager", mutates_args=("outs",))
def fused_step_eager(outs: List[torch.Tensor], inputs: List[torch.Tensor], coeffs: List[float],
                     seeds: Optional[torch.Tensor], counter: int, num_noise: int) -> None:
    fused_step_math(outs, inputs, coeffs, seeds, counter, num_noise)


@fused_step_eager.register_fake
def _(outs, inputs, coeffs, seeds, counter, num_noise) -> None:
    return None


def _run(call: FusedStepCall) -> None:
    if needs_grad(call.inputs, call.outs):
        return write_with_grad(call, "eager")
    fused_step_eager(call.outs, call.inputs, call.coeffs, call.seeds, call.counter, call.num_noise)


registry.register(registry.Backend(
    name="eager", description="plain PyTorch ops (reference, float64 capable)", devices=("cpu", "cuda", "meta"),
    dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64), probe=lambda: None, run=_run))
