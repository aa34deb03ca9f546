"""An analytic diffusion target: a Gaussian mixture with diagonal covariances and its exact VE denoiser.

Data ``x0 ~ sum_c w_c N(mu_c, diag(s_c^2))``; at VE noise level sigma, ``x = x0 + sigma z`` has the marginal
``sum_c w_c N(mu_c, diag(s_c^2 + sigma^2))`` and the exact denoiser (posterior mean)

    D(x, sigma) = E[x0 | x] = sum_c p(c | x) (mu_c + s_c^2 / (s_c^2 + sigma^2) (x - mu_c)),
    p(c | x) = softmax_c(log w_c + log N(x; mu_c, s_c^2 + sigma^2)).

Tensors of any shape ``(batch, *event)`` with ``prod(event) == dim`` are accepted; sigma is a scalar or one value
per sample. Computation happens in the input's dtype (float64 for the exact references of the tests).
"""

import math
from typing import Optional, Sequence

import torch


class GaussianMixture:
    """Mixture of ``C`` diagonal Gaussians in ``dim`` dimensions: ``means (C, dim)``, ``scales (C, dim)`` (standard
    deviations, > 0), ``weights (C,)`` (positive, normalised here). Calling it is the VE denoiser ``D(x, sigma)``."""

    def __init__(self, means, scales, weights=None):
        means = torch.as_tensor(means, dtype=torch.float64)
        scales = torch.as_tensor(scales, dtype=torch.float64)
        if means.dim() != 2:
            raise ValueError(f"GaussianMixture: means must be (components, dim), got shape {tuple(means.shape)}")
        if scales.dim() == 1 and scales.numel() == means.shape[0]:
            scales = scales[:, None].expand_as(means)
        if scales.shape != means.shape:
            raise ValueError(f"GaussianMixture: scales {tuple(scales.shape)} must match means {tuple(means.shape)}")
        if not (torch.isfinite(means).all() and torch.isfinite(scales).all()) or (scales <= 0).any():
            raise ValueError("GaussianMixture: means must be finite and scales finite and positive")
        weights = torch.full((means.shape[0],), 1.0, dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (means.shape[0],) or not torch.isfinite(weights).all() or (weights <= 0).any():
            raise ValueError("GaussianMixture: weights must be positive and one per component")
        self.means = means
        self.scales = scales.contiguous()
        self.weights = weights / weights.sum()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def components(self) -> int:
        return self.means.shape[0]

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError("GaussianMixture: x must be a floating-point tensor")
        if x.dim() >= 1 and x.shape[0] == 0:
            raise ValueError(f"GaussianMixture: x of shape {tuple(x.shape)} is an empty batch; pass at least one "
                             f"sample, shaped (batch, *event) with {self.dim} elements per sample")
        if x.dim() < 1 or x[0].numel() != self.dim:
            raise ValueError(f"GaussianMixture: x of shape {tuple(x.shape)} is not (batch, *event) with "
                             f"{self.dim} elements per sample")
        return x.reshape(x.shape[0], self.dim)

    def _sigma_column(self, sigma, x: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        if sigma.shape != (x.shape[0],):
            raise ValueError(f"GaussianMixture: sigma must be a scalar or one value per sample, got {tuple(sigma.shape)}")
        return sigma.reshape(-1, 1, 1)

    def _parameters_like(self, x: torch.Tensor):
        return (self.means.to(x.device, x.dtype), self.scales.to(x.device, x.dtype),
                self.weights.to(x.device, x.dtype))

    def component_log_posterior(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """``log p(c | x)`` at noise level sigma, shape (batch, components)."""
        flat = self._flat(x)
        mu, s, w = self._parameters_like(flat)
        var = s[None] ** 2 + self._sigma_column(sigma, flat) ** 2
        diff = flat[:, None, :] - mu[None]
        log_n = -0.5 * (diff ** 2 / var + torch.log(2 * math.pi * var)).sum(-1)
        logits = torch.log(w)[None] + log_n
        return logits - torch.logsumexp(logits, dim=1, keepdim=True)

    def denoise(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The exact posterior mean E[x0 | x] at VE noise level sigma."""
        flat = self._flat(x)
        mu, s, _ = self._parameters_like(flat)
        sigma_col = self._sigma_column(sigma, flat)
        shrink = s[None] ** 2 / (s[None] ** 2 + sigma_col ** 2)
        means = mu[None] + shrink * (flat[:, None, :] - mu[None])
        post = self.component_log_posterior(x, sigma).exp()
        return (post[:, :, None] * means).sum(1).reshape(x.shape)

    def __call__(self, x: torch.Tensor, sigma, **_: object) -> torch.Tensor:
        return self.denoise(x, sigma)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma^2."""
        sigma_b = self._sigma_column(sigma, self._flat(x)).reshape(-1, *([1] * (x.dim() - 1)))
        return (self.denoise(x, sigma) - x) / sigma_b ** 2

    def sample(self, n: int, sigma: float = 0.0, generator: Optional[torch.Generator] = None,
               dtype=torch.float64, event_shape: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Exact samples of the marginal at VE noise level sigma (sigma = 0: the data distribution)."""
        if n < 1 or sigma < 0 or not math.isfinite(sigma):
            raise ValueError("GaussianMixture.sample: n must be >= 1 and sigma finite and >= 0")
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        std = torch.sqrt(self.scales[comp] ** 2 + sigma ** 2)
        x = self.means[comp] + std * torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return x.to(dtype).reshape(n, *(event_shape or (self.dim,)))


def default_mixture(dim: int = 2) -> GaussianMixture:
    """The embedded default model: 8 components on a ring of radius 4 (first two coordinates), unequal weights
    and anisotropic scales from 0.15 to 0.6, so that few-step solvers show visible errors."""
    if dim < 2:
        raise ValueError("default_mixture: dim must be >= 2")
    gen = torch.Generator().manual_seed(1234)
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = torch.zeros(8, dim, dtype=torch.float64)
    means[:, 0], means[:, 1] = 4 * torch.cos(angles), 4 * torch.sin(angles)
    if dim > 2:
        means[:, 2:] = torch.randn(8, dim - 2, generator=gen, dtype=torch.float64)
    scales = 0.15 + 0.45 * torch.rand(8, dim, generator=gen, dtype=torch.float64)
    weights = 1.0 + torch.arange(8, dtype=torch.float64) / 4
    return GaussianMixture(means, scales, weights)
