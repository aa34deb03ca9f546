"""A deterministic ``noise_sampler(sigma_a, sigma_b)`` keyed by the interval, shared by fastint and a reference.

The same interval always returns the same standard-normal tensor, whatever order the callers ask in, so two
implementations of a stochastic solver can be compared value for value.
"""

import hashlib

import torch


class KeyedNoise:
    def __init__(self, shape, seed: int, dtype=torch.float64):
        self.shape, self.seed, self.dtype = tuple(shape), seed, dtype
        self.calls = 0
        self._cache = {}

    def __call__(self, sigma_a, sigma_b) -> torch.Tensor:
        self.calls += 1
        key = (round(float(sigma_a), 10), round(float(sigma_b), 10))
        if key not in self._cache:
            digest = hashlib.sha256(repr((self.seed, key)).encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
            self._cache[key] = torch.randn(self.shape, generator=gen, dtype=torch.float64).to(self.dtype)
        return self._cache[key]
