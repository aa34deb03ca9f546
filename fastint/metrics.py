"""Sample-quality metrics between two sample sets ``a (n, dim)`` and ``b (m, dim)``, computed in float64 on the CPU.

- ``sliced_wasserstein``: the sliced 2-Wasserstein distance

      SW_2(a, b) = sqrt( mean_theta W_2^2(theta . a, theta . b) ),   theta uniform on the unit sphere,

  estimated with ``projections`` random unit directions; each 1-D ``W_2`` is exact for the two empirical measures
  (sorted samples = quantile functions; unequal ``n`` and ``m`` are handled exactly by integrating the squared
  difference of the two step quantile functions over the merged breakpoints ``i/n`` and ``j/m``). Same units as the
  samples. A shift of ``a`` by a vector ``v`` gives ``SW_2^2 = |v|^2 / dim`` in expectation over the directions.
- ``frechet_distance``: the squared 2-Wasserstein (Frechet) distance between the Gaussians fitted to each set (the
  FID formula; squared units):

      |mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a^{1/2} C_b C_a^{1/2})^{1/2}),

  with unbiased covariances (``n - 1``, as ``numpy.cov``), and both matrix square roots taken by symmetric
  eigendecomposition with eigenvalues clamped at 0 (stable for singular or near-singular covariances, unlike a
  general ``sqrtm`` of the non-symmetric product ``C_a C_b``).

Inputs may be torch tensors or anything ``torch.as_tensor`` accepts (numpy arrays, nested lists); they must be 2-D
``(samples, dim)`` with the same ``dim``, at least 2 samples each and only finite values.
"""

import math
from typing import Optional, Tuple, Union

import numpy as np
import torch

__all__ = ["sliced_wasserstein", "frechet_distance", "random_directions"]

DEFAULT_SEED = 0
_BLOCK_ELEMENTS = 1 << 24  # projected values per set and block of directions (memory bound)


def _as_samples(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be a tensor or array of shape (samples, dim): {exc}") from None
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must be real-valued, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (samples, dim), got shape {tuple(x.shape)}; flatten each sample "
                         "first, e.g. x.reshape(len(x), -1)")
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples, got {x.shape[0]}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} has dim 0")
    x = x.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def _pair(a, b) -> Tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_samples("a", a), _as_samples("b", b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same dim, got {a.shape[1]} and {b.shape[1]}")
    return a, b


def random_directions(projections: int, dim: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``projections`` directions uniform on the unit sphere in ``dim`` dimensions, float64 (projections, dim).

    ``generator=None`` uses a fixed seed (``DEFAULT_SEED``), so repeated evaluations use the same directions and
    distances of different sample sets are comparable without extra Monte-Carlo noise between them.
    """
    if isinstance(projections, bool) or not isinstance(projections, int) or projections < 1:
        raise ValueError(f"projections must be an int >= 1, got {projections!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(DEFAULT_SEED)
    theta = torch.randn(projections, dim, generator=generator, dtype=torch.float64)
    norms = theta.norm(dim=1, keepdim=True)
    # a zero draw has probability 0; redraw deterministically rather than divide by zero
    while bool((norms == 0).any()):
        bad = (norms == 0).squeeze(1)
        theta[bad] = torch.randn(int(bad.sum()), dim, generator=generator, dtype=torch.float64)
        norms = theta.norm(dim=1, keepdim=True)
    return theta / norms


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    # numpy's row sort is ~3x faster than torch.sort on the CPU for this shape; the values are identical
    return torch.from_numpy(np.sort(x.numpy(), axis=1))


def _w2_squared_sorted(qa: torch.Tensor, qb: torch.Tensor) -> torch.Tensor:
    """Exact squared 1-D W_2 between empirical measures, row by row: ``qa (k, n)``, ``qb (k, m)`` sorted rows."""
    n, m = qa.shape[1], qb.shape[1]
    if n == m:
        return ((qa - qb) ** 2).mean(dim=1)
    # merged breakpoints of the two step quantile functions; on each piece both quantiles are constant
    g = math.gcd(n, m)
    lcm = n // g * m
    # breakpoints as integers on the grid 1/lcm (exact, no floating-point ties)
    cuts = torch.unique(torch.cat([torch.arange(0, n + 1, dtype=torch.int64) * (lcm // n),
                                   torch.arange(0, m + 1, dtype=torch.int64) * (lcm // m)]))
    left, right = cuts[:-1], cuts[1:]
    weights = (right - left).to(torch.float64) / lcm
    ia = left // (lcm // n)  # quantile index of a on [left, right)
    ib = left // (lcm // m)
    return (((qa[:, ia] - qb[:, ib]) ** 2) * weights).sum(dim=1)


def sliced_wasserstein(a, b, projections: Union[int, torch.Tensor] = 256,
                       generator: Optional[torch.Generator] = None) -> float:
    """Sliced 2-Wasserstein distance between the sample sets ``a (n, dim)`` and ``b (m, dim)`` (same units).

    Args:
        a, b: samples, 2-D, same ``dim``, at least 2 each, finite; converted to float64.
        projections: the number of random unit directions, or a ``(k, dim)`` tensor of directions to use (each is
            normalised; this makes the result deterministic and exact, e.g. for tests).
        generator: a ``torch.Generator`` for the directions; ``None`` uses a fixed seed (reproducible results).

    Returns:
        ``sqrt(mean_k W_2^2(theta_k . a, theta_k . b))`` as a Python float.
    """
    a, b = _pair(a, b)
    dim = a.shape[1]
    if isinstance(projections, torch.Tensor):
        theta = projections.detach().to("cpu", torch.float64)
        if theta.dim() != 2 or theta.shape[1] != dim or theta.shape[0] < 1:
            raise ValueError(f"projection directions must be (k, {dim}), got {tuple(theta.shape)}")
        norms = theta.norm(dim=1, keepdim=True)
        if not bool(torch.isfinite(theta).all()) or bool((norms == 0).any()):
            raise ValueError("projection directions must be finite and non-zero")
        theta = theta / norms
    else:
        theta = random_directions(projections, dim, generator)
    # directions in blocks so that memory stays bounded however many samples there are
    block = max(1, _BLOCK_ELEMENTS // (a.shape[0] + b.shape[0]))
    total = torch.zeros((), dtype=torch.float64)
    for start in range(0, theta.shape[0], block):
        t = theta[start:start + block]
        qa, qb = _sorted_rows(t @ a.T), _sorted_rows(t @ b.T)
        total += _w2_squared_sorted(qa, qb).sum()
    return math.sqrt(max(float(total) / theta.shape[0], 0.0))


def _moments(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    mu = x.mean(dim=0)
    centred = x - mu
    cov = centred.T @ centred / (x.shape[0] - 1)
    return mu, (cov + cov.T) / 2


def _psd_sqrt(c: torch.Tensor) -> torch.Tensor:
    """The symmetric PSD square root by eigendecomposition, negative rounding-error eigenvalues clamped to 0."""
    evals, evecs = torch.linalg.eigh(c)
    root = (evecs * evals.clamp(min=0).sqrt()) @ evecs.T
    return (root + root.T) / 2


def frechet_distance(a, b) -> float:
    """Squared Frechet (2-Wasserstein) distance between the Gaussians fitted to ``a (n, dim)`` and ``b (m, dim)``.

    ``|mu_a - mu_b|^2 + Tr(C_a) + Tr(C_b) - 2 Tr((C_a^{1/2} C_b C_a^{1/2})^{1/2})`` in float64 (the FID formula,
    squared units), unbiased covariances. Returns a Python float >= 0.
    """
    a, b = _pair(a, b)
    mu_a, cov_a = _moments(a)
    mu_b, cov_b = _moments(b)
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    middle = (middle + middle.T) / 2
    cross = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    value = float(((mu_a - mu_b) ** 2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * cross)
    return max(value, 0.0)
