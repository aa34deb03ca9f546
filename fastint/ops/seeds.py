"""Per-sample seeds of the in-kernel noise: every accepted form turned into one int64 tensor, or a named error.

Accepted: one int ``s`` (Python or numpy; sample b gets ``s + b``), a sequence of ints (list, tuple, range, numpy
array; one per sample), or an integer tensor (one per sample). Each seed must fit in int64: the Philox key is the
seed's 64-bit two's complement pattern (``fastint.ops.philox.key_words``).
"""

import numbers

import torch

INT64_MIN, INT64_MAX = -2 ** 63, 2 ** 63 - 1
ACCEPTED = "an int (sample b uses seed + b), a sequence of integers (one per sample) or an integer tensor"


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def seed_tensor(seed, batch: int, device, what: str = "seed") -> torch.Tensor:
    """``batch`` int64 seeds on ``device`` from ``seed`` (see the module docstring); ``what`` names the argument in
    errors."""
    if isinstance(seed, bool) or isinstance(seed, (str, bytes, float)):
        raise TypeError(f"{what} must be {ACCEPTED}; got {type(seed).__name__} {seed!r}")
    if _is_int(seed):
        seed = int(seed)
        if not INT64_MIN <= seed <= INT64_MAX - max(batch - 1, 0):
            raise ValueError(f"{what} = {seed}: every seed + b (b < {batch}) must fit in int64 "
                             f"[-2**63, 2**63 - 1]")
        return torch.arange(seed, seed + batch, dtype=torch.int64, device=device)
    if isinstance(seed, torch.Tensor):
        if seed.dtype.is_floating_point or seed.dtype.is_complex or seed.dtype == torch.bool or seed.dim() != 1:
            raise TypeError(f"{what} must be {ACCEPTED}; got a {seed.dim()}-D {seed.dtype} tensor")
        if seed.numel() != batch:
            raise ValueError(f"{what}: {seed.numel()} seeds for a batch of {batch} (one per sample, the leading "
                             "dimension)")
        return seed.to(device=device, dtype=torch.int64)
    if not hasattr(seed, "__len__") or not hasattr(seed, "__iter__"):
        raise TypeError(f"{what} must be {ACCEPTED}; got {type(seed).__name__}")
    values = list(seed.tolist() if hasattr(seed, "tolist") else seed)  # numpy arrays give Python ints
    for i, value in enumerate(values):
        if not _is_int(value):
            raise TypeError(f"{what}[{i}] is {type(value).__name__} {value!r}; seeds must be integers ({ACCEPTED})")
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"{what}[{i}] = {value} does not fit in int64 [-2**63, 2**63 - 1]")
    if len(values) != batch:
        raise ValueError(f"{what}: {len(values)} seeds for a batch of {batch} (one per sample, the leading dimension)")
    return torch.tensor(values, dtype=torch.int64, device=device)
