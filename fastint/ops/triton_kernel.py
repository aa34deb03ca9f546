"""The ``triton`` backend: the fused step as one Triton kernel.

Each program handles ``BLOCK_GROUPS`` Philox groups (4 consecutive elements each) of one sample, as a
``[BLOCK_GROUPS, 4]`` tile: one ``tl.randn4x`` per group and stream yields the group's four normals, with the
offset ``((4 * counter + k) << 32) | (e // 4)`` (int64), i.e. counter words ``(e // 4, 4 counter + k, 0, 0)`` and key
``(seed lo32, seed hi32)``: the same noise as every other backend (``fastint.ops.philox``, ``csrc/philox.h``).
M, N, K are ``tl.constexpr`` (one compiled kernel per step kind); coefficients are scalar kernel arguments (no
device tensor: CUDA-graph capturable once tuned). On a GPU the block size and warps are autotuned per
(per-sample size, M, N, K, dtypes); under ``TRITON_INTERPRET=1`` a fixed small configuration runs on CPU tensors.

The launch is the registered op ``torch.ops.fastint.fused_step_triton`` (``torch.library.triton_op``, the kernel
launched through ``wrap_triton``; registered when the backend first runs): ``torch.compile`` sees one op, whose
Triton kernel Inductor can schedule itself.

Triton is imported lazily (first use), never by ``import fastint``.
"""

import importlib.util
import os
from typing import List, Optional

import torch

from . import registry
from .autograd import needs_grad, write_with_grad
from .contract import KERNEL_DTYPES, FusedStepCall

MAX_IN, MAX_NOISE = 6, 4
ROW = MAX_IN + MAX_NOISE  # coefficient slots per output row in the kernel's argument list


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip() == "1"


_kernels = {}


def _build_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def fused_step_kernel(out0, out1, in0, in1, in2, in3, in4, in5, seeds_ptr,
                          a0, a1, a2, a3, a4, a5, a6, a7, a8, a9,
                          b0, b1, b2, b3, b4, b5, b6, b7, b8, b9,
                          per_sample, counter4,
                          N: tl.constexpr, M: tl.constexpr, K: tl.constexpr, BLOCK_GROUPS: tl.constexpr):
        pid = tl.program_id(0)
        sample = tl.program_id(1).to(tl.int64)
        groups = pid.to(tl.int64) * BLOCK_GROUPS + tl.arange(0, BLOCK_GROUPS).to(tl.int64)
        elem = groups[:, None] * 4 + tl.arange(0, 4).to(tl.int64)[None, :]          # [BLOCK_GROUPS, 4]
        mask = elem < per_sample
        offs = sample * per_sample + elem
        acc0 = tl.zeros((BLOCK_GROUPS, 4), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_GROUPS, 4), dtype=tl.float32)
        # inputs, in the reference's order: acc = c0 x0; acc += c1 x1; ...
        x = tl.load(in0 + offs, mask=mask, other=0.0).to(tl.float32)
        acc0 = x * a0
        if M > 1:
            acc1 = x * b0
        if N > 1:
            x = tl.load(in1 + offs, mask=mask, other=0.0).to(tl.float32)
            acc0 = acc0 + x * a1
            if M > 1:
                acc1 = acc1 + x * b1
        if N > 2:
            x = tl.load(in2 + offs, mask=mask, other=0.0).to(tl.float32)
            acc0 = acc0 + x * a2
            if M > 1:
                acc1 = acc1 + x * b2
        if N > 3:
            x = tl.load(in3 + offs, mask=mask, other=0.0).to(tl.float32)
            acc0 = acc0 + x * a3
            if M > 1:
                acc1 = acc1 + x * b3
        if N > 4:
            x = tl.load(in4 + offs, mask=mask, other=0.0).to(tl.float32)
            acc0 = acc0 + x * a4
            if M > 1:
                acc1 = acc1 + x * b4
        if N > 5:
            x = tl.load(in5 + offs, mask=mask, other=0.0).to(tl.float32)
            acc0 = acc0 + x * a5
            if M > 1:
                acc1 = acc1 + x * b5
        if K > 0:
            seed = tl.load(seeds_ptr + sample)
            lane = tl.arange(0, 4)[None, :]
            for k in tl.static_range(K):
                offset = ((counter4 + k).to(tl.int64) << 32) | groups
                n0, n1, n2, n3 = tl.randn4x(seed, offset)
                z = tl.where(lane == 0, n0[:, None],
                             tl.where(lane == 1, n1[:, None], tl.where(lane == 2, n2[:, None], n3[:, None])))
                if k == 0:
                    ca = a6
                    cb = b6
                elif k == 1:
                    ca = a7
                    cb = b7
                elif k == 2:
                    ca = a8
                    cb = b8
                else:
                    ca = a9
                    cb = b9
                acc0 = acc0 + z * ca
                if M > 1:
                    acc1 = acc1 + z * cb
        # every input of the tile is read before any output is written: outputs may alias inputs
        # bfloat16 outputs are rounded to nearest-even explicitly (the interpreter's cast truncates; on GPUs this
        # equals the native cast), so every backend writes the same bf16 values.
        if out0.dtype.element_ty == tl.bfloat16:
            u0 = acc0.to(tl.uint32, bitcast=True)
            r0 = tl.where(acc0 != acc0, (u0 >> 16) | 0x40, (u0 + 0x7FFF + ((u0 >> 16) & 1)) >> 16)
            tl.store(out0 + offs, r0.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
        else:
            tl.store(out0 + offs, acc0.to(out0.dtype.element_ty), mask=mask)
        if M > 1:
            if out1.dtype.element_ty == tl.bfloat16:
                u1 = acc1.to(tl.uint32, bitcast=True)
                r1 = tl.where(acc1 != acc1, (u1 >> 16) | 0x40, (u1 + 0x7FFF + ((u1 >> 16) & 1)) >> 16)
                tl.store(out1 + offs, r1.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
            else:
                tl.store(out1 + offs, acc1.to(out1.dtype.element_ty), mask=mask)

    from torch.library import wrap_triton

    if interpreting():
        def launch(grid_groups, samples, *args, **meta):
            block = 64
            wrap_triton(fused_step_kernel)[(triton.cdiv(grid_groups, block), samples)](
                *args, **meta, BLOCK_GROUPS=block, num_warps=4)
        return launch

    configs = [triton.Config({"BLOCK_GROUPS": bg}, num_warps=w)
               for bg, w in ((128, 4), (256, 4), (256, 8), (512, 8), (1024, 8))]
    tuned = triton.autotune(configs=configs, key=["per_sample", "N", "M", "K"],
                            restore_value=["out0", "out1"])(fused_step_kernel)

    def launch(grid_groups, samples, *args, **meta):
        wrap_triton(tuned)[lambda m: (triton.cdiv(grid_groups, m["BLOCK_GROUPS"]), samples)](*args, **meta)
    launch.jit_fn = fused_step_kernel  # the @triton.jit kernel itself (tests/kernels/test_cuda_static.py)
    launch.configs = configs
    return launch


def _kernel():
    key = "interpreted" if interpreting() else "compiled"
    if key not in _kernels:
        _kernels[key] = _build_kernel()
    return _kernels[key]


def _launch(outs: List[torch.Tensor], inputs: List[torch.Tensor], coeffs: List[float],
            seeds: Optional[torch.Tensor], counter: int, num_noise: int) -> None:
    """A validated call (``contract.validate``) as one Triton launch; also the op's fake implementation."""
    n_in, m_out, k = len(inputs), len(outs), num_noise
    shape = inputs[0].shape
    samples = shape[0] if len(shape) else 1
    numel = inputs[0].numel()
    if numel == 0:
        return
    per_sample = numel // samples
    width = n_in + k
    rows = []
    for m in range(2):
        slots = [0.0] * ROW
        if m < m_out:
            row = coeffs[m * width:(m + 1) * width]
            slots[:n_in] = row[:n_in]
            slots[MAX_IN:MAX_IN + k] = row[n_in:]
        rows.append(slots)
    ins = list(inputs) + [inputs[0]] * (MAX_IN - n_in)
    out_list = list(outs) + [outs[0]] * (2 - m_out)
    seeds = seeds if seeds is not None else torch.zeros(1, dtype=torch.int64, device=inputs[0].device)
    groups = (per_sample + 3) // 4
    _kernel()(groups, samples, out_list[0], out_list[1], *ins, seeds, *rows[0], *rows[1], per_sample,
              4 * counter, N=n_in, M=m_out, K=k)


_ops = []


def registered_op():
    """``torch.ops.fastint.fused_step_triton``, registered on first use (``triton_op`` imports triton, which
    ``import fastint`` must not)."""
    if not _ops:
        op = torch.library.triton_op("fastint::fused_step_triton", _launch, mutates_args={"outs"})
        if interpreting():  # an interpreted kernel cannot run on fake tensors: the fake only checks nothing
            op.register_fake(lambda outs, inputs, coeffs, seeds, counter, num_noise: None)
        _ops.append(op)
    return _ops[0]


def _run(call: FusedStepCall) -> None:
    if needs_grad(call.inputs, call.outs):
        return write_with_grad(call, "triton")
    registered_op()(call.outs, call.inputs, call.coeffs, call.seeds, call.counter, call.num_noise)


def _probe() -> Optional[str]:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    if interpreting():
        return None
    if not torch.version.cuda:
        return (f"this torch ({torch.__version__}) has no CUDA and TRITON_INTERPRET is not set "
                "(set TRITON_INTERPRET=1 to run the kernel in Triton's interpreter on CPU tensors)")
    if not torch.cuda.is_available():  # does not initialise CUDA
        return "no CUDA device is available and TRITON_INTERPRET is not set"
    return None


class TritonBackend(registry.Backend):
    """The probe depends on ``TRITON_INTERPRET`` at call time (not cached), so tests can switch it on late."""

    def unavailable_reason(self) -> Optional[str]:
        try:
            return self.probe()
        except Exception as exc:  # a probe must never break import or dispatch
            return f"probe failed: {exc!r}"

    def cannot_run(self, call: FusedStepCall) -> Optional[str]:
        reason = self.unavailable_reason()
        if reason:
            return reason
        device = call.device.type
        if device != "cuda" and not (device == "cpu" and interpreting()):
            return f"runs on cuda (and on cpu under TRITON_INTERPRET=1), not {device}"
        unsupported = sorted(str(d) for d in call.dtypes if d not in self.dtypes)
        if unsupported:
            return f"does not support {', '.join(unsupported)}"
        return None


registry.register(TritonBackend(
    name="triton", description="Triton kernel (tl.randn4x noise, autotuned; CPU tensors under TRITON_INTERPRET=1)",
    devices=("cuda", "cpu"), dtypes=KERNEL_DTYPES, probe=_probe, run=_run))
