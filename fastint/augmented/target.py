"""The analytic augmented-space target: a GaussianMixture pushed through the CLD / PSLD forward process.

Data ``x0 ~ GaussianMixture`` (diagonal components), auxiliary ``v0 ~ N(0, var0v I)`` independent (the HSM setting:
``gamma M`` for CLD, ``kappa M`` for PSLD). Per coordinate, ``u_t = (x_t, v_t) = a x0 + w`` with ``a = Phi_t[:, 0]``
and ``w ~ N(0, S_t)``, ``S_t = Phi_t diag(0, var0v) Phi_t^T + Sigma_t`` (the same 2x2 block for every coordinate).
So the marginal is a Gaussian mixture whose component c has, per coordinate, mean ``a mu_c`` and covariance
``a a^T s_c^2 + S_t``, and the score has an exact closed form through the ordinary VE denoiser (derived here):

    log N(u; a x0, S) = -(x0 - y)^2 / (2 s_eff^2) + (terms without x0),
    y = a^T S^{-1} u / (a^T S^{-1} a),   s_eff^2 = 1 / (a^T S^{-1} a),

i.e. ``y`` is a sufficient statistic, ``y = x0 + s_eff z``, and

    E[x0 | u] = D(y, s_eff)   (the mixture's VE denoiser),     grad_u log p_t(u) = -S^{-1} (u - a D(y, s_eff)).

One score evaluation is one denoiser call (the NFE is counted as the VE demo counts it), and the score is affine in
``(x, v, D)``: that is how ``ExactScore`` (``fastint.augmented.adapters``) feeds the samplers' fused steps.
"""

import math
from typing import Optional, Tuple

import numpy as np
import torch

from ..models.gaussian_mixture import GaussianMixture
from .processes import AugmentedProcess, cholesky2

__all__ = ["AugmentedTarget"]


class AugmentedTarget:
    """The marginals of ``process`` started from ``mixture`` (x) and ``N(0, var0v)`` (auxiliary coordinate)."""

    def __init__(self, mixture: GaussianMixture, process: AugmentedProcess, var0v: Optional[float] = None):
        if not isinstance(mixture, GaussianMixture):
            raise TypeError("AugmentedTarget: mixture must be a fastint.models.GaussianMixture")
        if not isinstance(process, AugmentedProcess):
            raise TypeError("AugmentedTarget: process must be a CLD or PSLD process")
        self.mixture, self.process = mixture, process
        self.var0v = process.init_aux_var if var0v is None else float(var0v)
        if not self.var0v >= 0:
            raise ValueError("AugmentedTarget: var0v must be >= 0")

    @property
    def dim(self) -> int:
        return self.mixture.dim

    def statistics(self, t: float):
        """``(a, S, y_coeffs, s_eff)`` at forward time t > 0 (host float64): the observation of x0 in u_t."""
        if not (0 < t <= 1):
            raise ValueError(f"AugmentedTarget: t must be in (0, 1], got {t!r}")
        phi, cov = self.process.kernel(t, 0.0, self.var0v)
        a = phi[:, 0]
        prec = np.linalg.inv(cov)
        info = float(a @ prec @ a)
        y = (prec @ a) / info
        return a, cov, y, 1.0 / math.sqrt(info)

    def score(self, x: torch.Tensor, v: torch.Tensor, t: float, denoiser=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The exact score ``(grad_x, grad_v) log p_t(x, v)`` (computed in x's dtype; ``denoiser`` defaults to the
        mixture's VE denoiser)."""
        a, cov, yc, s_eff = self.statistics(t)
        denoiser = self.mixture if denoiser is None else denoiser
        d = denoiser(yc[0] * x + yc[1] * v, torch.full((x.shape[0],), s_eff, dtype=x.dtype, device=x.device))
        p = np.linalg.inv(cov)
        rx, rv = x - a[0] * d, v - a[1] * d
        return -(p[0, 0] * rx + p[0, 1] * rv), -(p[1, 0] * rx + p[1, 1] * rv)

    def sample(self, n: int, t: float, generator: Optional[torch.Generator] = None,
               dtype=torch.float64) -> Tuple[torch.Tensor, torch.Tensor]:
        """Exact samples ``(x_t, v_t)`` of the marginal at forward time t (t = 0: data and initial velocity)."""
        x0 = self.mixture.sample(n, generator=generator)
        v0 = math.sqrt(self.var0v) * torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        if t == 0:
            return x0.to(dtype), v0.to(dtype)
        phi, sigma = self.process.transition(self.process.beta_int(t))
        L = cholesky2(sigma)
        z = torch.randn(2, n, self.dim, generator=generator, dtype=torch.float64)
        x = phi[0, 0] * x0 + phi[0, 1] * v0 + L[0, 0] * z[0]
        v = phi[1, 0] * x0 + phi[1, 1] * v0 + L[1, 0] * z[0] + L[1, 1] * z[1]
        return x.to(dtype), v.to(dtype)

    def prior(self, n: int, generator: Optional[torch.Generator] = None, dtype=torch.float64):
        """Samples of the process's prior ``N(0, I) x N(0, M I)`` (what CLD-SGM and PSLD start from)."""
        vx, vv = self.process.prior_var
        z = torch.randn(2, n, self.dim, generator=generator, dtype=torch.float64)
        return (math.sqrt(vx) * z[0]).to(dtype), (math.sqrt(vv) * z[1]).to(dtype)
