"""The fused step op's contract: argument validation shared by every backend.

    out[m] = sum_n C[m, n] * in[n]  +  sum_k C[m, N + k] * z_k        (m < M <= 2, n < N <= 6, k < K <= 4)

``z_k`` is stream k of the counter-based Philox noise (``fastint.ops.philox``) at ``counter`` for each sample's seed.
Samples are the leading dimension of the tensors; the element index of the noise is the flat index within a sample.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence

import math
import numbers

import torch

from .philox import MAX_COUNTER, MAX_STREAMS
from .seeds import seed_tensor

MAX_INPUTS = 6
MAX_OUTPUTS = 2
FLOAT32_MAX = 3.4028234663852886e38   # the kernels compute in float32: larger coefficients would overflow to inf
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the compiled, Triton and compile kernels read
FLOAT_DTYPES = KERNEL_DTYPES + (torch.float64,)                  # the eager reference also reads float64


@dataclass
class FusedStepCall:
    """A validated call: the tensors the kernel sees and the flattened row-major coefficient matrix."""

    outs: List[torch.Tensor]
    inputs: List[torch.Tensor]
    coeffs: List[float]
    seeds: Optional[torch.Tensor]
    counter: int
    num_noise: int

    @property
    def device(self) -> torch.device:
        return self.outs[0].device

    @property
    def dtypes(self):
        return {t.dtype for t in self.outs + self.inputs}


def _coefficient_rows(coeffs) -> List[List[float]]:
    if isinstance(coeffs, torch.Tensor):
        if coeffs.device.type != "cpu":
            raise ValueError("fused_step: coefficients must live on the host (a CPU tensor or a nested list), "
                             "reading them from the device would synchronise")
        coeffs = coeffs.tolist()
    if isinstance(coeffs, (str, bytes)) or not hasattr(coeffs, "__iter__"):
        raise TypeError(f"fused_step: coefficients must be an (M, N + K) matrix: a list of 1 or 2 rows of numbers "
                        f"(e.g. [[2.0]] for out = 2 in), got {coeffs!r}")
    coeffs = list(coeffs)
    if coeffs and not all(hasattr(row, "__iter__") and not isinstance(row, (str, bytes)) for row in coeffs):
        raise TypeError(f"fused_step: coefficients must be an (M, N + K) matrix: a list of 1 or 2 rows of numbers "
                        f"(e.g. [{coeffs!r}] for one output), got the flat list {coeffs!r}")
    try:
        rows = [list(map(float, row)) for row in coeffs]
    except (TypeError, ValueError) as exc:
        raise TypeError(f"fused_step: coefficients must be real numbers, got {coeffs!r} ({exc})") from None
    if not rows or any(len(row) != len(rows[0]) for row in rows):
        raise ValueError("fused_step: coefficients must be a non-empty (M, N + K) matrix")
    return rows


def check_coefficients(flat: Sequence[float]) -> None:
    """Every coefficient finite and representable in the kernels' float32 (|c| <= FLT_MAX); NaN refused."""
    if not all(math.isfinite(c) and abs(c) <= FLOAT32_MAX for c in flat):
        bad = next(c for c in flat if not (math.isfinite(c) and abs(c) <= FLOAT32_MAX))
        raise ValueError(f"fused_step: coefficient {bad!r} is not a finite float32 value (|c| <= {FLOAT32_MAX:.8g} "
                         "and not NaN); check the sigmas and solver options that produced it")


def _byte_range(t: torch.Tensor):
    lo = t.data_ptr()
    return lo, lo + t.numel() * t.element_size()


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.numel() == 0 or b.numel() == 0 or a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    a_lo, a_hi = _byte_range(a)
    b_lo, b_hi = _byte_range(b)
    return a_lo < b_hi and b_lo < a_hi


def exact_alias(out: torch.Tensor, t: torch.Tensor) -> bool:
    """Whether the contiguous output ``out`` and input ``t`` are the same elements (an in-place update)."""
    return t.data_ptr() == out.data_ptr() and t.element_size() == out.element_size() and t.is_contiguous()


def check_aliasing(outs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> None:
    """Outputs pairwise disjoint; an output and an input either disjoint or the same elements (in place)."""
    for m, o in enumerate(outs):
        for j, other in enumerate(outs[:m]):
            if _overlaps(o, other):
                raise ValueError(f"fused_step: outputs {j} and {m} overlap in memory (the same tensor, or views of "
                                 "one buffer); pass distinct output tensors")
        for i, t in enumerate(inputs):
            if _overlaps(o, t) and not exact_alias(o, t):
                raise ValueError(f"fused_step: output {m} partially overlaps input {i}; an output may only alias an "
                                 "input exactly (same memory, shape and dtype: an in-place update) or not at all")


def validate(inputs: Sequence[torch.Tensor], coeffs, outs: Optional[Sequence[torch.Tensor]], seeds, counter: int,
             num_noise: int) -> FusedStepCall:
    """Check every argument and return the normalised call; raise ValueError/TypeError naming the problem."""
    inputs = list(inputs)
    if not 1 <= len(inputs) <= MAX_INPUTS:
        raise ValueError(f"fused_step: takes 1 to {MAX_INPUTS} input tensors, got {len(inputs)}")
    for i, t in enumerate(inputs):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"fused_step: input {i} is a {type(t).__name__}, not a tensor")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"fused_step: input {i} has dtype {t.dtype}; supported: float32, float16, bfloat16, float64")
        if t.shape != inputs[0].shape:
            raise ValueError(f"fused_step: input {i} has shape {tuple(t.shape)}, input 0 has {tuple(inputs[0].shape)}")
        if t.device != inputs[0].device:
            raise ValueError(f"fused_step: input {i} is on {t.device}, input 0 on {inputs[0].device}")
    if not isinstance(num_noise, int) or not 0 <= num_noise <= MAX_STREAMS:
        raise ValueError(f"fused_step: num_noise must be an int in [0, {MAX_STREAMS}], got {num_noise!r}")
    rows = _coefficient_rows(coeffs)
    if not 1 <= len(rows) <= MAX_OUTPUTS:
        raise ValueError(f"fused_step: 1 to {MAX_OUTPUTS} coefficient rows (outputs), got {len(rows)}")
    if len(rows[0]) != len(inputs) + num_noise:
        raise ValueError(f"fused_step: coefficient rows need N + K = {len(inputs)} + {num_noise} entries, "
                         f"got {len(rows[0])}")
    flat = [c for row in rows for c in row]
    check_coefficients(flat)
    shape, device = inputs[0].shape, inputs[0].device
    if num_noise:
        if seeds is None:
            raise TypeError("fused_step: in-kernel noise needs seeds: one int per sample (the leading dimension) as "
                            "a list, an integer tensor or array, or one int s (sample b uses s + b)")
        seeds = seed_tensor(seeds, shape[0] if len(shape) else 1, device, "fused_step: seeds")
    else:
        seeds = None
    if isinstance(counter, bool) or not isinstance(counter, numbers.Integral) or not 0 <= counter <= MAX_COUNTER:
        raise ValueError(f"fused_step: counter must be an int in [0, 2**30 - 1 = {MAX_COUNTER}] (a step or event "
                         f"index), got {counter!r}")
    counter = int(counter)
    if outs is None:
        outs = [torch.empty_like(inputs[0], memory_format=torch.contiguous_format) for _ in rows]
    outs = [outs] if isinstance(outs, torch.Tensor) else list(outs)
    if len(outs) != len(rows):
        raise ValueError(f"fused_step: {len(rows)} coefficient rows but {len(outs)} output tensors")
    for m, o in enumerate(outs):
        if not isinstance(o, torch.Tensor) or o.dtype not in FLOAT_DTYPES:
            raise TypeError(f"fused_step: output {m} must be a floating-point tensor")
        if o.shape != shape or o.device != device:
            raise ValueError(f"fused_step: output {m} is {tuple(o.shape)} on {o.device}, "
                             f"inputs are {tuple(shape)} on {device}")
        if not o.is_contiguous():
            raise ValueError(f"fused_step: output {m} is not contiguous; pass a contiguous tensor")
    check_aliasing(outs, inputs)
    inputs = [t if t.is_contiguous() else t.contiguous() for t in inputs]
    return FusedStepCall(outs, inputs, flat, seeds, counter, num_noise)
