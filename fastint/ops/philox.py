"""Counter-based Philox4x32-10 noise in pure PyTorch, bit-identical to Triton's ``tl.randint4x``.

The generator is Random123's Philox4x32-10: a 128-bit counter ``(c0, c1, c2, c3)`` and a 64-bit key ``(k0, k1)``
go through ten rounds of

    hi0, lo0 = mulhilo(0xD2511F53, c0);  hi1, lo1 = mulhilo(0xCD9E8D57, c2)
    (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0);  k0 += 0x9E3779B9;  k1 += 0xBB67AE85

Uniforms and normals follow Triton's conversions exactly (see ``docs/noise.md``):

    U(w)  = float32(i) * 4.6566127342e-10  with i = int32(w), i <- ~i where i < 0      (in [0, 1))
    normal pair from (w_a, w_b): r = sqrt(-2 log(max(1e-7, U(w_a)))), th = 6.2831855 U(w_b): (r cos th, r sin th)

fastint addresses noise by (per-sample seed, counter, stream k, element e of the sample):

    key = (seed lo32, seed hi32),  counter words = (e // 4, 4 * counter + k, 0, 0),
    z[e] = randn4x(key, counter words)[e % 4]

so a sample's noise depends neither on the batch it is in nor on the backend. uint32 words are held in int64
tensors; every product is split in 16-bit halves so that nothing overflows int64.
"""

import torch

MASK32 = 0xFFFFFFFF
ROUND_A = 0xD2511F53
ROUND_B = 0xCD9E8D57
KEY_A = 0x9E3779B9
KEY_B = 0xBB67AE85
UNIFORM_SCALE = 4.6566127342e-10
TWO_PI_F32 = 6.283185307179586
MAX_STREAMS = 4
MAX_COUNTER = (1 << 30) - 1


def _mulhilo(a: int, x: torch.Tensor):
    """(high, low) 32-bit words of the 64-bit product of the constant ``a`` and the uint32 words ``x``."""
    p_low = a * (x & 0xFFFF)
    p_high = a * (x >> 16)
    lo = (((p_high & 0xFFFF) << 16) + p_low) & MASK32
    hi = (p_high + (p_low >> 16)) >> 16
    return hi, lo


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds on uint32 words stored in int64 tensors (broadcasting); returns the four output words."""
    for _ in range(10):
        hi0, lo0 = _mulhilo(ROUND_A, c0)
        hi1, lo1 = _mulhilo(ROUND_B, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + KEY_A) & MASK32
        k1 = (k1 + KEY_B) & MASK32
    return c0, c1, c2, c3


def uint32_to_uniform(w: torch.Tensor) -> torch.Tensor:
    """Triton's ``uint_to_uniform_float`` for 32-bit words: float32 values in [0, 1)."""
    signed = torch.where(w >= (1 << 31), w - (1 << 32), w)
    signed = torch.where(signed < 0, -signed - 1, signed)
    return signed.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32)


def box_muller(u_radius: torch.Tensor, u_angle: torch.Tensor):
    """Triton's ``pair_uniform_to_normal`` in float32: (r cos th, r sin th)."""
    u_radius = torch.clamp(u_radius, min=1.0e-7)
    theta = torch.tensor(TWO_PI_F32, dtype=torch.float32) * u_angle
    radius = torch.sqrt(-2.0 * torch.log(u_radius))
    return radius * torch.cos(theta), radius * torch.sin(theta)


def key_words(seeds: torch.Tensor):
    """(k0, k1) = (low, high) 32-bit words of int64 seeds (two's complement, i.e. the uint64 bit pattern)."""
    seeds = seeds.to(torch.int64)
    return seeds & MASK32, (seeds >> 32) & MASK32


def normals(seeds: torch.Tensor, counter: int, stream: int, per_sample: int) -> torch.Tensor:
    """Standard normals of shape (len(seeds), per_sample), float32, on the seeds' device.

    Element e of sample b is ``randn4x(seeds[b], offset=((4*counter + stream) << 32) | (e // 4))[e % 4]``.
    """
    groups = (per_sample + 3) // 4
    k0, k1 = key_words(seeds.reshape(-1, 1))
    c0 = torch.arange(groups, device=seeds.device, dtype=torch.int64).reshape(1, -1)
    c1 = torch.full_like(c0, (counter * MAX_STREAMS + stream) & MASK32)
    zero = torch.zeros_like(c0)
    w0, w1, w2, w3 = philox4x32_10(c0, c1, zero, zero, k0, k1)
    n0, n1 = box_muller(uint32_to_uniform(w0), uint32_to_uniform(w1))
    n2, n3 = box_muller(uint32_to_uniform(w2), uint32_to_uniform(w3))
    return torch.stack((n0, n1, n2, n3), dim=-1).reshape(seeds.numel(), groups * 4)[:, :per_sample]
