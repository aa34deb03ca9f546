"""The augmented forward processes: critically-damped Langevin diffusion (CLD) and phase-space Langevin diffusion
(PSLD), with their exact linear-Gaussian perturbation kernels.

Both are, per data coordinate, a 2-D linear SDE in ``u = (x, v)`` (PSLD calls the second coordinate ``m``) with a
time-scaled constant drift matrix ``F`` and constant diffusion ``Q = diag(q_x, q_v)``:

    du = beta(t) F u dt + sqrt(beta(t) Q) dW,       beta(t) = b0 + b1 t > 0 on [0, 1].

- CLD (Dockhorn et al. 2022, CLD-SGM's ``sde_lib.CLD``): ``F = [[0, m_inv], [-1, -Gamma m_inv]]``, ``Q = diag(0,
  2 Gamma)``, critical damping ``Gamma = 2 sqrt(M)`` (``M = 1/m_inv``). Published CIFAR-10 config: beta = 4 constant,
  m_inv = 4, gamma = 0.04 (initial velocity variance gamma M, the HSM objective).
- PSLD (Pandey & Mandt 2023, mandt-lab/PSLD's ``models/sde/psld.py``): ``F = 1/2 [[-Gamma, m_inv], [-1, -nu]]``,
  ``Q = diag(Gamma, M nu)``, critical damping ``m_inv = (Gamma - nu)^2 / 4``. Published CIFAR-10 config: beta = 8
  constant (``beta_min = beta_max = 8``), nu = 4.01, Gamma = 0.01, kappa = 0.04 (initial momentum variance kappa M).

Both have the stationary law ``N(0, diag(1, M))`` (the prior) and a drift matrix with one double eigenvalue ``-l``
(that is what critical damping means), so ``N = F + l I`` is nilpotent and everything has a closed form in the
integrated rate ``b = int beta`` over the interval (derived here, verified in the tests against ``scipy.linalg.expm``
and a quadrature of the covariance integral in the original time variable):

    Phi(b)   = exp(b F) = e^{-l b} (I + b N)
    Sigma(b) = int_0^b e^{-2 l u} (I + u N) Q (I + u N)^T du = I0 Q + I1 (N Q + Q N^T) + I2 N Q N^T,
    Ik(b)    = int_0^b u^k e^{-2 l u} du   (a series for small 2 l b, the closed form otherwise: no cancellation).

The time change ``u = int_r^t beta`` turns the covariance integral of a time-varying beta into this one, so constant
and linear beta are both exact. The reverse-time linear part used by the splitting samplers (the reverse drift minus
the ``Q (score - prior score)`` term) is the forward dynamics with the second coordinate's sign flipped: since
``F Sigma_inf + Sigma_inf F^T + Q = 0``, ``-F - Q Sigma_inf^{-1} = S F S`` with ``S = diag(1, -1)``; its transition
over integrated rate ``b`` is ``S Phi(b) S`` with covariance ``S Sigma(b) S`` (CLD-SGM's and PSLD's SSCS formulas,
which evaluate the forward formulas at negative ``b``, are this).
"""

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

__all__ = ["AugmentedProcess", "CLD", "PSLD", "cholesky2", "FLIP"]

FLIP = np.diag([1.0, -1.0])


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ik(k: int, c: float, b: float) -> float:
    """``int_0^b u^k e^{-c u} du`` for k in (0, 1, 2), c >= 0, b >= 0, accurate to a few ulp."""
    x = c * b
    if x < 1.0:
        # b^{k+1} sum_j (-x)^j / (j! (k + 1 + j))
        total, term, j = 0.0, 1.0, 0
        while True:
            add = term / (k + 1 + j)
            total += add
            if abs(add) < 1e-18 * abs(total):
                break
            j += 1
            term *= -x / j
        return b ** (k + 1) * total
    e = math.exp(-x)
    if k == 0:
        return -math.expm1(-x) / c
    if k == 1:
        return (1.0 - e * (1.0 + x)) / c ** 2
    return (2.0 - e * (2.0 + 2.0 * x + x * x)) / c ** 3


def cholesky2(cov: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of a 2x2 covariance (``[[L11, 0], [L21, L22]]``), as CLD-SGM and PSLD compute it."""
    a, b, c = float(cov[0, 0]), float(cov[1, 0]), float(cov[1, 1])
    if not a > 0:
        raise ValueError(f"2x2 covariance with non-positive x variance {a!r}")
    l11 = math.sqrt(a)
    l21 = b / l11
    d = c - l21 * l21
    if d < 0:
        if d > -1e-14 * max(c, 1e-300):
            d = 0.0
        else:
            raise ValueError(f"2x2 covariance is not positive semi-definite: {cov.tolist()}")
    return np.array([[l11, 0.0], [l21, math.sqrt(d)]])


@dataclass(frozen=True)
class AugmentedProcess:
    """A critically-damped linear augmented process (see the module docstring). Subclasses set ``F``, ``Q``."""

    b0: float
    b1: float

    name = "augmented"
    second = "v"  # the name of the auxiliary coordinate
    sscs_variance_eps = 0.0  # added to the diagonal of SSCS half-step covariances by the process's published code

    # -- the schedule -------------------------------------------------------------------------------------------
    def _check_schedule(self):
        for key in ("b0", "b1"):
            if not _is_number(getattr(self, key)):
                raise ValueError(f"{self.name}: {key} must be a finite number, got {getattr(self, key)!r}")
        if not (self.b0 > 0 and self.b0 + self.b1 > 0):
            raise ValueError(f"{self.name}: beta(t) = {self.b0} + {self.b1} t must be positive on [0, 1]")

    def beta(self, t: float) -> float:
        return self.b0 + self.b1 * t

    def beta_int(self, t: float) -> float:
        """``int_0^t beta``."""
        return self.b0 * t + 0.5 * self.b1 * t * t

    def rate(self, s: float, t: float) -> float:
        """``int_s^t beta`` (positive for s < t)."""
        return self.b0 * (t - s) + 0.5 * self.b1 * (t - s) * (t + s)

    # -- the linear SDE -----------------------------------------------------------------------------------------
    @property
    def F(self) -> np.ndarray:
        raise NotImplementedError

    @property
    def Q(self) -> np.ndarray:
        raise NotImplementedError

    @property
    def M(self) -> float:
        raise NotImplementedError

    @property
    def decay(self) -> float:
        """``l``: minus the double eigenvalue of F."""
        return -0.5 * float(np.trace(self.F))

    @property
    def prior_var(self) -> Tuple[float, float]:
        """The stationary (prior) variances of x and of the auxiliary coordinate: ``(1, M)``."""
        return 1.0, self.M

    @property
    def prior_precision(self) -> np.ndarray:
        return np.diag([1.0 / self.prior_var[0], 1.0 / self.prior_var[1]])

    @property
    def init_aux_var(self) -> float:
        """The initial variance of the auxiliary coordinate (HSM): CLD ``gamma M``, PSLD ``kappa M``."""
        raise NotImplementedError

    def transition(self, b: float) -> Tuple[np.ndarray, np.ndarray]:
        """``(Phi, Sigma)`` of the forward process over integrated rate ``b >= 0``: u_t = Phi u_s + N(0, Sigma)."""
        if not (_is_number(b) and b >= 0):
            raise ValueError(f"{self.name}: integrated rate b must be finite and >= 0, got {b!r}")
        ell = self.decay
        N = self.F + ell * np.eye(2)
        phi = math.exp(-ell * b) * (np.eye(2) + b * N)
        Q = self.Q
        c = 2.0 * ell
        sigma = _ik(0, c, b) * Q + _ik(1, c, b) * (N @ Q + Q @ N.T) + _ik(2, c, b) * (N @ Q @ N.T)
        return phi, 0.5 * (sigma + sigma.T)

    def reverse_transition(self, b: float) -> Tuple[np.ndarray, np.ndarray]:
        """``(S Phi S, S Sigma S)``: the reverse-time linear part over integrated rate ``b >= 0``."""
        phi, sigma = self.transition(b)
        return FLIP @ phi @ FLIP, FLIP @ sigma @ FLIP

    def kernel(self, t: float, var0x: float = 0.0, var0v: Optional[float] = None,
               eps: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
        """Mean map and covariance of ``p(u_t | x_0)`` from ``u_0 ~ N((x0, 0), diag(var0x, var0v))`` (``var0v``
        defaults to the HSM initial variance); ``eps`` is added to the diagonal (the codes' ``numerical_eps``)."""
        if var0v is None:
            var0v = self.init_aux_var
        phi, sigma = self.transition(self.beta_int(t))
        cov = phi @ np.diag([var0x, var0v]) @ phi.T + sigma + eps * np.eye(2)
        return phi, 0.5 * (cov + cov.T)

    def reverse_drift(self, t: float) -> np.ndarray:
        """``-beta F`` (the reverse-time linear drift without the score term)."""
        return -self.beta(t) * self.F


@dataclass(frozen=True)
class CLD(AugmentedProcess):
    """Critically-damped Langevin diffusion. ``b0, b1``: beta(t) = b0 + b1 t (CLD-SGM's beta0, beta1); ``m_inv``;
    ``gamma``: initial velocity variance gamma M; ``Gamma``: the friction, only accepted at critical damping
    ``2 sqrt(M)`` (every closed form here and in CLD-SGM assumes it)."""

    b0: float = 4.0
    b1: float = 0.0
    m_inv: float = 4.0
    gamma: float = 0.04
    Gamma: Optional[float] = None

    name = "CLD"
    second = "v"
    sscs_variance_eps = 0.0  # CLD-SGM's SSCS: sscs_num_stab, 0 by default

    def __post_init__(self):
        self._check_schedule()
        if not (_is_number(self.m_inv) and self.m_inv > 0):
            raise ValueError(f"CLD: m_inv must be finite and > 0, got {self.m_inv!r}")
        if not (_is_number(self.gamma) and self.gamma >= 0):
            raise ValueError(f"CLD: gamma (initial velocity variance factor) must be >= 0, got {self.gamma!r}")
        critical = 2.0 / math.sqrt(self.m_inv)
        if self.Gamma is None:
            object.__setattr__(self, "Gamma", critical)
        elif not _is_number(self.Gamma) or abs(self.Gamma - critical) > 1e-12 * critical:
            raise ValueError(f"CLD: Gamma={self.Gamma!r} violates critical damping Gamma = 2 sqrt(M) = "
                             f"2 / sqrt(m_inv) = {critical!r}; the CLD kernels and SSCS need critical damping")

    @property
    def M(self) -> float:
        return 1.0 / self.m_inv

    @property
    def F(self) -> np.ndarray:
        return np.array([[0.0, self.m_inv], [-1.0, -self.Gamma * self.m_inv]])

    @property
    def Q(self) -> np.ndarray:
        return np.diag([0.0, 2.0 * self.Gamma])

    @property
    def init_aux_var(self) -> float:
        return self.gamma * self.M


@dataclass(frozen=True)
class PSLD(AugmentedProcess):
    """Phase-space Langevin diffusion. ``b0, b1``: beta(t) = b0 + b1 t (PSLD's ``beta_min``, ``beta_max - beta_min``;
    ``PSLD.from_config(beta_min, beta_max, ...)`` takes the repository's names); ``nu``, ``Gamma`` (>= 0, not both
    0); ``kappa``: initial momentum variance kappa M; ``m_inv``: only accepted at critical damping
    ``(Gamma - nu)^2 / 4`` (the default)."""

    b0: float = 8.0
    b1: float = 0.0
    nu: float = 4.01
    Gamma: float = 0.01
    kappa: float = 0.04
    m_inv: Optional[float] = None

    name = "PSLD"
    second = "m"
    sscs_variance_eps = 1e-9  # PSLD's SSCSSampler adds its numerical_eps (1e-9 in every published config)

    def __post_init__(self):
        self._check_schedule()
        for key in ("nu", "Gamma", "kappa"):
            v = getattr(self, key)
            if not (_is_number(v) and v >= 0):
                raise ValueError(f"PSLD: {key} must be finite and >= 0, got {v!r}")
        critical = (self.Gamma - self.nu) ** 2 / 4
        if critical <= 0:
            raise ValueError(f"PSLD: nu={self.nu} and Gamma={self.Gamma} give m_inv = (Gamma - nu)^2/4 = 0; "
                             "they must differ")
        if self.m_inv is None:
            object.__setattr__(self, "m_inv", critical)
        elif not _is_number(self.m_inv) or abs(self.m_inv - critical) > 1e-12 * critical:
            raise ValueError(f"PSLD: m_inv={self.m_inv!r} violates critical damping m_inv = (Gamma - nu)^2 / 4 = "
                             f"{critical!r}; the PSLD kernels need critical damping")

    @classmethod
    def from_config(cls, beta_min: float = 8.0, beta_max: float = 8.0, **kwargs) -> "PSLD":
        return cls(b0=beta_min, b1=beta_max - beta_min, **kwargs)

    @property
    def M(self) -> float:
        return 1.0 / self.m_inv

    @property
    def F(self) -> np.ndarray:
        return 0.5 * np.array([[-self.Gamma, self.m_inv], [-1.0, -self.nu]])

    @property
    def Q(self) -> np.ndarray:
        return np.diag([self.Gamma, self.M * self.nu])

    @property
    def init_aux_var(self) -> float:
        return self.kappa * self.M
