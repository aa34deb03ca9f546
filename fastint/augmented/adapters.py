"""Model adapters for the augmented samplers: every model is an *affine score*.

A model evaluation returns a few tensors ``o_1..o_k`` shaped like x, and the score is an affine combination

    [score_x; score_v] = C(t) @ [x, v, o_1, ..., o_k]        (C: a 2 x (2 + k) host float64 matrix)

so each sampler step folds the parametrisation into its fused-op coefficients (no separate conversion pass):

- ``ScoreFunction(fn)``: ``fn(x, v, t_batch) -> (score_x, score_v)``; C = [0 | I].
- ``CLDMixedScore(net, process)``: CLD-SGM's network with ``mixed_score = true`` (``models/utils.get_score_fn``):
  ``net(cat(x, v), t) -> out`` (x-shaped), ``score_v = -v / Sigma_vv(t) - out / L22(t)`` with the HSM kernel
  covariance (``var0x = 0, var0v = gamma M``, ``numerical_eps`` on the diagonal) and its Cholesky ``L22 =
  sqrt(det / Sigma_xx)`` (CLD-SGM's ``-noise_multiplier``). CLD has no x-score (``Q_xx = 0``): ``score_x = 0``.
- ``PSLDEps(net, process)``: PSLD's eps network (``PSLD.get_score`` with ``decomp_mode = lower``): ``net(cat(x, m),
  t) -> cat(eps_x, eps_m)``, ``score = -L_t^{-T} eps`` with L the lower Cholesky factor of the HSM covariance
  (``xx_0 = 0, mm_0 = kappa M``, ``numerical_eps`` on the diagonal).
- ``ExactScore(target)``: the analytic target's exact score through its VE denoiser (``target.py``): one output
  ``D(y, s_eff)``, ``C = [-S^{-1} | S^{-1} a]``; ``y`` is computed by one fused-op call.

``cld_mixed_net`` and ``psld_eps_net`` turn an exact score into networks of those parametrisations (tests, demos).
"""

from typing import Callable, List, Optional

import numpy as np
import torch

from ..ops import fused_step
from .processes import CLD, PSLD, AugmentedProcess, cholesky2
from .target import AugmentedTarget

__all__ = ["AugmentedModel", "ScoreFunction", "CLDMixedScore", "PSLDEps", "ExactScore", "cld_mixed_net",
           "psld_eps_net"]

NUMERICAL_EPS = 1e-9  # CLD-SGM's and PSLD's published numerical_eps


def _t_batch(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


def _check_output(name: str, out, like: torch.Tensor, channels: int = 1) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{name}: the network returned {type(out).__name__}, expected a tensor")
    shape = list(like.shape)
    if like.dim() > 1:
        shape[1] *= channels
    else:
        raise ValueError(f"{name}: the state needs a channel dimension (batch, channels, ...)")
    if list(out.shape) != shape or out.device != like.device or not out.is_floating_point():
        raise ValueError(f"{name}: the network returned {tuple(out.shape)} on {out.device}, expected {tuple(shape)} "
                         f"floating point on {like.device}")
    return out


class AugmentedModel:
    """Base class: ``evaluate(x, v, t) -> [o_1..o_k]`` (one NFE) and ``coefficients(t) -> (2, 2 + k)``."""

    num_outputs: int = 1
    process: Optional[AugmentedProcess] = None

    def evaluate(self, x: torch.Tensor, v: torch.Tensor, t: float, backend: Optional[str] = None) -> List[torch.Tensor]:
        raise NotImplementedError

    def coefficients(self, t: float) -> np.ndarray:
        raise NotImplementedError

    def score(self, x, v, t, backend=None):
        """The score itself (eager, for tests and diagnostics)."""
        outs = self.evaluate(x, v, t, backend)
        c = self.coefficients(t)
        terms = [x, v] + list(outs)
        return tuple(sum(float(c[m, j]) * terms[j] for j in range(len(terms))) for m in range(2))


class ScoreFunction(AugmentedModel):
    """``fn(x, v, t_batch) -> (score_x, score_v)``."""

    num_outputs = 2

    def __init__(self, fn: Callable, process: Optional[AugmentedProcess] = None):
        if not callable(fn):
            raise TypeError("ScoreFunction: fn must be callable as fn(x, v, t_batch) -> (score_x, score_v)")
        self.fn, self.process = fn, process

    def evaluate(self, x, v, t, backend=None):
        out = self.fn(x, v, _t_batch(x, t))
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise TypeError("ScoreFunction: fn must return a pair (score_x, score_v)")
        for o in out:
            if not isinstance(o, torch.Tensor) or o.shape != x.shape or o.device != x.device:
                raise ValueError(f"ScoreFunction: fn returned a score of shape {getattr(o, 'shape', None)}, "
                                 f"expected {tuple(x.shape)} on {x.device}")
        return list(out)

    def coefficients(self, t):
        return np.array([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


class CLDMixedScore(AugmentedModel):
    """CLD-SGM's mixed-score network (see the module docstring)."""

    num_outputs = 1

    def __init__(self, net: Callable, process: CLD, numerical_eps: float = NUMERICAL_EPS):
        if not isinstance(process, CLD):
            raise TypeError("CLDMixedScore needs a CLD process")
        self.net, self.process, self.eps = net, process, float(numerical_eps)

    def evaluate(self, x, v, t, backend=None):
        out = self.net(torch.cat((x, v), dim=1), _t_batch(x, t))
        return [_check_output("CLDMixedScore", out, x).contiguous()]

    def coefficients(self, t):
        _, cov = self.process.kernel(t, 0.0, self.process.init_aux_var, self.eps)
        l22 = cholesky2(cov)[1, 1]
        return np.array([[0.0, 0.0, 0.0], [0.0, -1.0 / cov[1, 1], -1.0 / l22]])


class PSLDEps(AugmentedModel):
    """PSLD's eps network (see the module docstring)."""

    num_outputs = 2

    def __init__(self, net: Callable, process: PSLD, numerical_eps: float = NUMERICAL_EPS):
        if not isinstance(process, PSLD):
            raise TypeError("PSLDEps needs a PSLD process")
        self.net, self.process, self.eps = net, process, float(numerical_eps)

    def evaluate(self, x, v, t, backend=None):
        out = _check_output("PSLDEps", self.net(torch.cat((x, v), dim=1), _t_batch(x, t)), x, channels=2)
        ex, em = torch.chunk(out, 2, dim=1)
        return [ex.contiguous(), em.contiguous()]

    def coefficients(self, t):
        _, cov = self.process.kernel(t, 0.0, self.process.init_aux_var, self.eps)
        lit = np.linalg.inv(cholesky2(cov)).T
        return np.concatenate([np.zeros((2, 2)), -lit], axis=1)


class ExactScore(AugmentedModel):
    """The exact score of an ``AugmentedTarget`` through a VE denoiser ``denoiser(x, sigma_batch)`` (default: the
    target's mixture; pass a counting wrapper to count NFE)."""

    num_outputs = 1

    def __init__(self, target: AugmentedTarget, denoiser: Optional[Callable] = None):
        if not isinstance(target, AugmentedTarget):
            raise TypeError("ExactScore needs an AugmentedTarget")
        self.target, self.process = target, target.process
        self.denoiser = target.mixture if denoiser is None else denoiser
        self._cache = {}

    def _stats(self, t):
        if t not in self._cache:
            self._cache = {t: self.target.statistics(t)}
        return self._cache[t]

    def evaluate(self, x, v, t, backend=None):
        _, _, yc, s_eff = self._stats(t)
        y = fused_step([x, v], [[float(yc[0]), float(yc[1])]], backend=backend)[0]
        d = self.denoiser(y, _t_batch(x, s_eff))
        if not isinstance(d, torch.Tensor) or d.shape != x.shape:
            raise ValueError("ExactScore: the denoiser must return a tensor shaped like x")
        return [d]

    def coefficients(self, t):
        a, cov, _, _ = self._stats(t)
        p = np.linalg.inv(cov)
        return np.concatenate([-p, (p @ a)[:, None]], axis=1)


def cld_mixed_net(score_v: Callable, process: CLD, numerical_eps: float = NUMERICAL_EPS) -> Callable:
    """A CLD-SGM mixed-score network from an exact v-score ``score_v(x, v, t_float)``: ``out = -L22 (score_v +
    v / Sigma_vv)`` (``t`` must be the same for the whole batch)."""
    def net(u, t_batch):
        x, v = torch.chunk(u, 2, dim=1)
        t = float(t_batch[0])
        _, cov = process.kernel(t, 0.0, process.init_aux_var, numerical_eps)
        l22 = cholesky2(cov)[1, 1]
        return -l22 * (score_v(x, v, t) + v / cov[1, 1])
    return net


def psld_eps_net(score: Callable, process: PSLD, numerical_eps: float = NUMERICAL_EPS) -> Callable:
    """A PSLD eps network from an exact score ``score(x, m, t_float) -> (s_x, s_m)``: ``eps = -L^T score``."""
    def net(u, t_batch):
        x, m = torch.chunk(u, 2, dim=1)
        t = float(t_batch[0])
        _, cov = process.kernel(t, 0.0, process.init_aux_var, numerical_eps)
        L = cholesky2(cov)
        sx, sm = score(x, m, t)
        return torch.cat((-(L[0, 0] * sx + L[1, 0] * sm), -(L[1, 1] * sm)), dim=1)
    return net
