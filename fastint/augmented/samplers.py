"""Samplers for the augmented processes (CLD, PSLD): every state update is ONE fused-op call with outputs (x, v).

The state is ``u = (x, v)`` per coordinate; ``model`` is an affine score (``adapters.py``): score = C(t) [x, v, o].
Times are forward times, decreasing: ``ts[0] = 1 > ... > ts[-1] = eps`` (``time_grid``), then an optional final
denoising step to 0 (the mean of an Euler-Maruyama step, as CLD-SGM and PSLD do). Reverse-time step ``i`` goes from
``t = ts[i]`` to ``ts[i+1]``, ``h = ts[i] - ts[i+1] > 0``; ``b = int beta`` over it. Reverse SDE:
``du = beta (-F u + Q score) dh + sqrt(beta Q) dW``; probability flow: ``du = beta (-F u + Q score / 2) dh``.

Methods (NFE per step):

- ``em`` (1): Euler-Maruyama, CLD-SGM's ``get_em_sampler`` / PSLD's ``EulerMaruyamaSampler``.
- ``sscs`` (1): symmetric splitting (CLD paper; PSLD's ``SSCSSampler``): exact reverse linear half step
  (``S Phi S``, covariance ``S Sigma S``, processes.py), Euler step of the score part ``u += h beta Q (score +
  Sigma_inf^{-1} u)``, exact half step. The score step and the second half step are fused into one call.
  ``timing='reference'`` (default): as CLD-SGM and PSLD do, both halves use the integrated rate of the *first* half
  interval and the score/beta are taken at the step's start time (exact halves for constant beta);
  ``timing='midpoint'``: the halves cover their own sub-intervals and the score is evaluated at the midpoint time
  (Strang splitting of the time-dependent problem). On the analytic target the published timing is the better one
  at low NFE (CLD, NFE 6: 0.53 against 3.9; docs/augmented.md).
- ``pf_euler`` (1), ``pf_heun`` (2): Euler / Heun on the probability-flow ODE.
- ``conjugate`` (1): the conjugate (lambda-DDIM) integrator of arXiv 2310.07894 on the probability-flow ODE in its
  eps form ``du/dt = beta F u + beta Q L_t^{-T} eps / 2`` (``eps = -L_t^T score``, L the HSM kernel covariance's
  Cholesky factor), with a constant ``B = lam K``, ``K = I`` (``lam_matrix='identity'``, B_t = lambda I) or the
  matrix of ones ``K = 1`` (``'ones'``, B_t = lambda 1): ``ubar = A_t u`` with ``A_t = e^{B t} exp(-int_0^t beta F)``
  solves ``dA/dt = B A - beta A F`` and hence ``dubar/dt = B ubar + dPhi/dt eps`` exactly, ``Phi(t) = int_0^t
  beta_s A_s Q L_s^{-T} / 2 ds``; one step is ``ubar_{n+1} = (I + B (t_{n+1} - t_n)) ubar_n + (Phi(t_{n+1}) -
  Phi(t_n)) eps_n`` (lambda = 0: the DDIM-type exponential integrator, exact for constant eps). ``e^{B t}`` in
  closed form (``1^2 = 2 * 1``); Phi by Gauss-Legendre quadrature in log t on the host. Order 1 for every lambda.
  SPECS gives only the B_t = lambda I form; where B does not commute with F (the ones matrix) the product form of
  ``A_t`` above is our choice, the one for which the transformed ODE is exact.
Splitting and conjugate-splitting samplers (arXiv 2310.07894, Pandey, Rudolph, Mandt; companion 2402.07211). Only
the abstracts and third-party reviews of these papers could be read in this project (the full texts were not
retrievable), so the formulas below are ours, built on what those sources state: splitting = alternating updates of
partitions of the drift and diffusion ("naive": every sub-update evaluates the score; "reduced": one score
evaluation per step, reused); conjugate = integrate a linear part exactly in transformed coordinates ``A_t u`` and
freeze the network term (lambda-DDIM above); the hybrid uses the conjugate update inside the splitting. They are
NOT claimed to be the papers' equations (no equation numbers can be cited). With ``h = t - t_n``, ``b = int beta``
over the step, ``P = Sigma_inf^{-1}`` the prior precision and ``s = score(u, t)``:

- ``reduced_splitting`` (1), ``naive_splitting`` (2): reverse SDE = probability-flow part + Langevin remainder
  (drift ``beta Q score / 2`` plus noise). PF part by Euler: ``u1 = u + h beta (-F u + Q s / 2)``; remainder split
  into a score kick ``u2 = u1 + h beta Q (s' + P u1) / 2`` and the exact Ornstein-Uhlenbeck flow ``du = -beta Q P u /
  2 dh + sqrt(beta Q) dW`` (per coordinate: ``u' = exp(-q p b / 2) u2 + sqrt((1 - exp(-q p b)) / p) z``).
  "reduced": ``s' = s`` (reused); "naive": ``s' = score(u1, t_n)``, a second evaluation. Kick and OU: one fused call.
  ``eta`` (the noise regulation the reduced integrators of 2402.07211 are described as having): the reverse SDEs
  ``du = beta (-F u + (1 + eta^2) Q score / 2) dh + eta sqrt(beta Q) dW`` share the marginals for every eta; the
  splitting methods take their Langevin part (kick and OU flow) at rate ``eta^2`` (``b -> eta^2 b``, ``h beta ->
  eta^2 h beta``). ``eta = 1`` (default): the reverse SDE; ``eta = 0``: the PF part alone.
- ``conjugate_splitting`` (1, stochastic; the hybrid): the splitting of ``reduced_splitting`` (PF part, then
  Langevin part, one score evaluation reused by both) with BOTH sub-steps taken by a conjugate (exponential) step in
  which the linear prior part of the score is exact and the residual score ``r = s + P u`` is frozen at the step
  start. PF part: the exactly-integrated drift is the PF drift of the *prior* score, ``G = -F - Q P / 2`` (a
  constant matrix: the process is time-changed by ``b``): ``u1 = e^{b G} u + (int_0^b e^{s G} ds) Q r / 2`` (one
  4x4 matrix exponential on the host). Langevin part ``du = (-Q P u + Q r) / 2 db + sqrt(Q) dW`` with r frozen: the
  exact forced OU flow, per coordinate ``u' = e^{-q p b / 2} u1 + (1 - e^{-q p b / 2}) / (q p / 2) q r_j / 2 +
  sqrt((1 - e^{-q p b}) / p) z``. This is the conjugate-integrator idea with the transform absorbing the stiff prior
  part, instead of lambda-DDIM's ``A_t = e^{lambda t} exp(-int beta F)`` with eps frozen (explicit in the stiff
  ``Q P`` part of the score; ``conjugate`` diverges at NFE 6). The whole step is ONE fused call. (An earlier version
  took the Langevin part as ``reduced_splitting`` does, an Euler kick then the unforced OU flow; the forced flow is
  better at every budget measured, docs/augmented.md.)
- ``conjugate_residual`` (1, deterministic): the conjugate PF step above alone (``u' = u1``).

Noise (docs/noise.md addressing): step ``i`` uses counter ``2 i`` for its first noise event and ``2 i + 1`` for its
second (SSCS: first half step = counter 2i streams 0 (x), 1 (v); second half step = counter 2i + 1 streams 0, 1);
EM and the splitting methods use counter 2i, streams 0 (x) and 1 (v). With ``noise_sampler(t_a, t_b)`` the noise
is injected instead: called for stream 0 then stream 1 of each event, with the event's (forward) time interval.
"""

import math
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..ops import fused_step
from ..sampling import per_sample_seeds
from .adapters import AugmentedModel, NUMERICAL_EPS
from .processes import CLD, PSLD, AugmentedProcess, cholesky2

__all__ = ["sample_augmented", "time_grid", "METHODS", "nfe_per_step"]

METHODS = {  # name: (nfe per step, stochastic)
    "em": (1, True), "sscs": (1, True), "pf_euler": (1, False), "pf_heun": (2, False),
    "conjugate": (1, False), "reduced_splitting": (1, True), "naive_splitting": (2, True),
    "conjugate_splitting": (1, True), "conjugate_residual": (1, False),
}
_ETA_METHODS = ("reduced_splitting", "naive_splitting", "conjugate_splitting")


def nfe_per_step(method: str) -> int:
    return METHODS[method][0]


def time_grid(steps: int, eps: float = 1e-3, striding: str = "linear") -> List[float]:
    """Forward times ``1 = ts[0] > ... > ts[steps] = eps`` as CLD-SGM / PSLD build them (reverse times
    ``linspace(0, 1 - eps)``; ``quadratic``: ``t_final * flip(1 - (t / t_final)^2)``)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not (isinstance(eps, (int, float)) and 0 < eps < 1):
        raise ValueError(f"eps must be in (0, 1), got {eps!r}")
    t_final = 1.0 - eps
    rev = torch.linspace(0.0, t_final, steps + 1, dtype=torch.float64)
    if striding == "quadratic":
        rev = t_final * torch.flip(1 - (rev / t_final) ** 2.0, dims=[0])
    elif striding != "linear":
        raise ValueError(f"striding must be 'linear' or 'quadratic', got {striding!r}")
    return [1.0 - float(r) for r in rev]


class _Run:
    """The state buffers, the noise source and the fused op for one sampling run."""

    def __init__(self, x, v, seeds, noise_sampler, backend):
        self.x, self.v = x.clone(memory_format=torch.contiguous_format), v.clone(memory_format=torch.contiguous_format)
        self.seeds, self.noise_sampler, self.backend = seeds, noise_sampler, backend

    def _noise(self, t_a, t_b):
        out = []
        for _ in range(2):
            z = self.noise_sampler(t_a, t_b)
            if not isinstance(z, torch.Tensor) or z.shape != self.x.shape or z.device != self.x.device:
                raise ValueError(f"noise_sampler returned {getattr(z, 'shape', type(z))}; expected a tensor of "
                                 f"shape {tuple(self.x.shape)} on {self.x.device}")
            out.append(z)
        return out

    def apply(self, coeffs: np.ndarray, outs: Sequence[torch.Tensor] = (), noise: Optional[np.ndarray] = None,
              counter: int = 0, interval: Tuple[float, float] = (0.0, 0.0), target=None):
        """``(x, v) <- coeffs @ [x, v, outs] + noise @ [z_x, z_v]`` in one fused call (in place unless ``target``
        names two other buffers)."""
        inputs = [self.x, self.v] + list(outs)
        rows = np.asarray(coeffs, dtype=np.float64)
        kwargs = {}
        if noise is not None:
            if self.noise_sampler is not None:
                inputs += self._noise(*interval)
                rows = np.concatenate([rows, noise], axis=1)
            else:
                rows = np.concatenate([rows, noise], axis=1)
                kwargs = dict(num_noise=2, seeds=self.seeds, counter=counter)
        dst = [self.x, self.v] if target is None else target
        keep = [m for m in range(2) if not (target is None and noise is None and _is_identity_row(rows[m], m))]
        if not keep:
            return dst
        fused_step(inputs, rows[keep].tolist(), out=[dst[m] for m in keep], backend=self.backend, **kwargs)
        return dst


def _is_identity_row(row, m):
    e = np.zeros_like(row)
    e[m] = 1.0
    return bool(np.array_equal(row, e))


def _pad(mat: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((2, width))
    out[:, :mat.shape[1]] = mat
    return out


def _expm_pair(G):
    """``(e^G, int_0^1 e^{sG} ds)`` for a 2x2 G (float64, one 4x4 matrix exponential)."""
    blk = torch.zeros(4, 4, dtype=torch.float64)
    blk[:2, :2] = torch.as_tensor(G, dtype=torch.float64)
    blk[:2, 2:] = torch.eye(2, dtype=torch.float64)
    e = torch.linalg.matrix_exp(blk).numpy()
    return e[:2, :2], e[:2, 2:]


def _gl_nodes(n=48):
    return np.polynomial.legendre.leggauss(n)


class _Conjugate:
    """Host-side pieces of the conjugate integrator for ``B = lam K`` (``K = I`` or the matrix of ones ``1``): the
    transform ``A_t = e^{B t} exp(-int_0^t beta F)``, the ``Phi`` increments and the kernel Cholesky factor ``L_t``."""

    def __init__(self, process: AugmentedProcess, lam: float, lam_matrix: str, numerical_eps: float):
        self.p, self.lam, self.eps = process, float(lam), numerical_eps
        self.K = np.eye(2) if lam_matrix == "identity" else np.ones((2, 2))
        self.B = self.lam * self.K
        self.nodes, self.weights = _gl_nodes()

    def expB(self, t: float) -> np.ndarray:
        """``e^{B t}`` in closed form: ``e^{lam t} I``, or ``I + (e^{2 lam t} - 1) / 2 * 1`` (as ``1^2 = 2 * 1``)."""
        if self.K[0, 1] == 0.0:
            return math.exp(self.lam * t) * np.eye(2)
        return np.eye(2) + 0.5 * math.expm1(2.0 * self.lam * t) * self.K

    def A(self, t: float) -> np.ndarray:
        phi, _ = self.p.transition(self.p.beta_int(t))  # exp(int beta F)
        return self.expB(t) @ np.linalg.inv(phi)

    def L(self, t: float) -> np.ndarray:
        return cholesky2(self.p.kernel(t, 0.0, self.p.init_aux_var, self.eps)[1])

    def dphi(self, t_a: float, t_b: float) -> np.ndarray:
        """``Phi(t_b) - Phi(t_a)`` (Gauss-Legendre in log t)."""
        p = self.p
        la, lb = math.log(t_a), math.log(t_b)
        total = np.zeros((2, 2))
        for x, w in zip(self.nodes, self.weights):
            s = math.exp(0.5 * (la + lb) + 0.5 * (lb - la) * x)
            integrand = 0.5 * p.beta(s) * self.A(s) @ p.Q @ np.linalg.inv(self.L(s)).T
            total += w * 0.5 * (lb - la) * s * integrand
        return total


def sample_augmented(process: AugmentedProcess, model: AugmentedModel, x: torch.Tensor, v: torch.Tensor,
                     ts: Optional[Sequence[float]] = None, method: str = "sscs", *, steps: Optional[int] = None,
                     eps: float = 1e-3, striding: str = "linear", denoise: bool = True, timing: str = "reference",
                     lam: float = 0.0, lam_matrix: str = "identity", eta: float = 1.0, seed=None,
                     noise_sampler: Optional[Callable] = None, backend: Optional[str] = None,
                     numerical_eps: float = NUMERICAL_EPS, variance_eps: Optional[float] = None,
                     callback: Optional[Callable] = None
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sample the reverse process of ``process`` from ``(x, v)`` at ``ts[0]`` down to ``ts[-1]`` (then denoise to 0).

    Args:
        process: a ``CLD`` or ``PSLD``.
        model: an affine score (``ScoreFunction``, ``CLDMixedScore``, ``PSLDEps``, ``ExactScore``).
        x, v: the initial state (same shape ``(batch, ...)``, dtype and device), e.g. prior samples.
        ts: forward times, strictly decreasing in (0, 1]; or ``steps`` (+ ``eps``, ``striding``) for ``time_grid``.
        method: one of ``METHODS`` (module docstring).
        denoise: a final noise-free Euler-Maruyama step from ``ts[-1]`` to 0 (one more NFE), as the references.
        timing: SSCS only: 'reference' (the published codes') or 'midpoint' (module docstring).
        lam, lam_matrix: the conjugate integrator's ``B_t = lam I`` ('identity') or ``B_t = lam 1`` ('ones', the
            matrix of ones); ``method='conjugate'`` only.
        eta: the noise scale of the splitting methods (``reduced_splitting``, ``naive_splitting``,
            ``conjugate_splitting``): their Langevin part (score kick and OU flow) runs at rate ``eta^2``; 1 is the
            reverse SDE, 0 the probability-flow ODE (module docstring).
        seed / noise_sampler: in-kernel Philox noise seeds (int: sample b uses seed + b) or injected noise.
        numerical_eps: the diagonal regulariser of the conjugate methods' kernel covariance (as the adapters).
        variance_eps: added to the diagonal of SSCS half-step covariances; None (default): the process's published
            code's value, ``process.sscs_variance_eps`` (PSLD 1e-9, its ``numerical_eps``; CLD 0, CLD-SGM's default
            ``sscs_num_stab``). With 0 PSLD's SSCS differs from PSLD's code by up to 1.8e-7 relative.
        callback: ``callback({'i', 't', 'x', 'v'})`` after each step.
    Returns: the final ``(x, v)`` (new tensors).
    """
    if not isinstance(process, AugmentedProcess):
        raise TypeError("process must be a fastint.augmented CLD or PSLD process")
    if not isinstance(model, AugmentedModel):
        raise TypeError("model must be an AugmentedModel (ScoreFunction, CLDMixedScore, PSLDEps, ExactScore)")
    if model.process is not None and model.process != process:
        raise ValueError("the model was built for a different process than the one sampled")
    if method not in METHODS:
        raise ValueError(f"unknown augmented method {method!r}; available: {', '.join(METHODS)}")
    for name, t in (("x", x), ("v", v)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() < 2:
            raise TypeError(f"{name} must be a floating-point tensor (batch, channels, ...)")
    if x.shape != v.shape or x.dtype != v.dtype or x.device != v.device:
        raise ValueError(f"x and {process.second} must have the same shape, dtype and device: got "
                         f"{tuple(x.shape)} {x.dtype} {x.device} and {tuple(v.shape)} {v.dtype} {v.device}")
    if variance_eps is not None and method != "sscs":
        raise ValueError(f"variance_eps applies to method='sscs' only (its half-step covariances), not to {method!r}")
    if variance_eps is None:
        variance_eps = process.sscs_variance_eps
    elif not (isinstance(variance_eps, (int, float)) and not isinstance(variance_eps, bool)
              and math.isfinite(variance_eps) and variance_eps >= 0):
        raise ValueError(f"variance_eps must be None (the process's published value) or a finite number >= 0, "
                         f"got {variance_eps!r}")
    if timing not in ("midpoint", "reference"):
        raise ValueError(f"timing must be 'midpoint' or 'reference', got {timing!r}")
    if not (isinstance(lam, (int, float)) and math.isfinite(lam)):
        raise ValueError(f"lam must be a finite number, got {lam!r}")
    if lam_matrix not in ("identity", "ones"):
        raise ValueError(f"lam_matrix must be 'identity' (B_t = lam I) or 'ones' (B_t = lam 1), got {lam_matrix!r}")
    if not (isinstance(eta, (int, float)) and not isinstance(eta, bool) and math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    if eta != 1.0 and method not in _ETA_METHODS:
        raise ValueError(f"eta applies to the splitting methods ({', '.join(_ETA_METHODS)}), not to {method!r}")
    if (lam != 0.0 or lam_matrix != "identity") and method != "conjugate":
        raise ValueError(f"lam and lam_matrix apply to method='conjugate' only, not to {method!r}")
    if ts is None:
        if steps is None:
            raise ValueError("give ts (forward times) or steps")
        ts = time_grid(steps, eps, striding)
    ts = [float(t) for t in (ts.tolist() if isinstance(ts, torch.Tensor) else ts)]
    if len(ts) < 2 or not all(0 < b < a <= 1 for a, b in zip(ts, ts[1:])):
        raise ValueError("ts must be >= 2 strictly decreasing forward times in (0, 1]")
    nfe, stochastic = METHODS[method]
    if noise_sampler is not None and not callable(noise_sampler):
        raise TypeError("noise_sampler must be callable as noise_sampler(t_a, t_b)")
    seeds = per_sample_seeds(seed, x.shape[0], x.device) if stochastic and noise_sampler is None else None
    run = _Run(x, v, seeds, noise_sampler, backend)
    p = process
    Q, P = p.Q, p.prior_precision
    k = model.num_outputs
    I2 = np.eye(2)
    G0 = -p.F - 0.5 * Q @ P
    conj = _Conjugate(p, lam, lam_matrix, numerical_eps) if method == "conjugate" else None

    def score_mat(t):  # score = C [u, o]
        c = np.asarray(model.coefficients(t), dtype=np.float64)
        if c.shape != (2, 2 + k):
            raise ValueError(f"model.coefficients returned shape {c.shape}, expected (2, {2 + k})")
        return c

    def drift_mat(t, pf):  # reverse drift over [u, o]: beta(-F u + w Q score)
        w = 0.5 if pf else 1.0
        beta = p.beta(t)
        c = score_mat(t)
        d = w * beta * Q @ c
        d[:, :2] += -beta * p.F
        return d

    def kick(t, h, scale=1.0):  # u + scale h beta Q (score + P u) over [u, o]
        c = score_mat(t)
        m = scale * h * p.beta(t) * Q @ c
        m[:, :2] += I2 + scale * h * p.beta(t) * Q @ P
        return m

    def half(b):
        if b <= 0:
            return I2, np.zeros((2, 2))
        phi, cov = p.reverse_transition(b)
        return phi, cholesky2(cov + variance_eps * I2)

    def ou(t_a, t_b):
        """The exact OU flow ``du = eta^2 beta (-Q P u + Q r) / 2 dh + eta sqrt(beta Q) dW`` over forward [t_b, t_a]
        with a constant forcing r, per coordinate: ``u' = decay u + gain q r / 2 + std z`` (diagonal matrices)."""
        b = eta * eta * p.rate(t_b, t_a)
        qp = np.diag(Q @ P)
        decay = np.exp(-0.5 * qp * b)
        gain = [-math.expm1(-0.5 * a * b) / (0.5 * a) if a > 0 else b for a in qp]
        var = np.array([-math.expm1(-qp[j] * b) / P[j, j] for j in range(2)])
        return np.diag(decay), np.diag(gain), np.diag(np.sqrt(np.maximum(var, 0.0)))

    def conj_step(t_a, t_b):  # u_b = R [u, o] (deterministic conjugate step), over [u, o]
        c = score_mat(t_a)
        LT = conj.L(t_a).T
        epsm = -LT @ c  # eps = -L^T score
        Aa, Ab = conj.A(t_a), conj.A(t_b)
        m = conj.dphi(t_a, t_b) @ epsm
        m[:, :2] += (I2 + conj.B * (t_b - t_a)) @ Aa
        return np.linalg.solve(Ab, m)

    for i in range(len(ts) - 1):
        t, tn = ts[i], ts[i + 1]
        h = t - tn
        ca, cb = 2 * i, 2 * i + 1
        if method == "em":
            outs = model.evaluate(run.x, run.v, t, backend)
            m = _pad(np.eye(2), 2 + k) + h * drift_mat(t, False)
            run.apply(m, outs, np.sqrt(h * p.beta(t) * Q), ca, (t, tn))
        elif method == "pf_euler":
            outs = model.evaluate(run.x, run.v, t, backend)
            run.apply(_pad(np.eye(2), 2 + k) + h * drift_mat(t, True), outs)
        elif method == "pf_heun":
            o1 = model.evaluate(run.x, run.v, t, backend)
            d1 = drift_mat(t, True)
            pred = _pad(np.eye(2), 2 + k) + h * d1
            xp, vp = torch.empty_like(run.x), torch.empty_like(run.v)
            run.apply(pred, o1, target=[xp, vp])
            o2 = model.evaluate(xp, vp, tn, backend)
            d2 = drift_mat(tn, True)  # over [u_p, o2]
            # u + h/2 (d1 [u, o1] + d2u (pred [u, o1]) + d2o o2), over [u, o1, o2]
            m = np.zeros((2, 2 + 2 * k))
            m[:, :2 + k] = _pad(np.eye(2), 2 + k) + 0.5 * h * (d1 + d2[:, :2] @ pred)
            m[:, 2 + k:] = 0.5 * h * d2[:, 2:]
            run.apply(m, list(o1) + list(o2))
        elif method == "sscs":
            if timing == "midpoint":
                tm = 0.5 * (t + tn)
                b1, b2, ts_score = p.rate(tm, t), p.rate(tn, tm), tm
            else:
                b1 = b2 = p.rate(t - 0.5 * h, t)
                ts_score = t
            r1, l1 = half(b1)
            run.apply(r1, (), l1, ca, (t, t - 0.5 * h))
            outs = model.evaluate(run.x, run.v, ts_score, backend)
            r2, l2 = half(b2)
            run.apply(r2 @ kick(ts_score, h), outs, l2, cb, (t - 0.5 * h, tn))
        elif method == "conjugate":
            outs = model.evaluate(run.x, run.v, t, backend)
            run.apply(conj_step(t, tn), outs)
        elif method in ("conjugate_splitting", "conjugate_residual"):
            outs = model.evaluate(run.x, run.v, t, backend)
            # exact flow of the prior part of the PF drift, residual score r = score + P u frozen at (u, t)
            r = score_mat(t)
            r[:, :2] += P
            b = p.rate(tn, t)
            E, W = _expm_pair(G0 * b)
            det = W @ (0.5 * b * Q) @ r
            det[:, :2] += E
            if method == "conjugate_residual":
                run.apply(det, outs)
            else:
                # then the Langevin part's conjugate step: the exact OU flow forced by the same frozen residual
                decay, gain, std = ou(t, tn)
                run.apply(decay @ det + gain @ (0.5 * Q) @ r, outs, std, ca, (t, tn))
        elif method in ("reduced_splitting", "naive_splitting"):
            outs = model.evaluate(run.x, run.v, t, backend)
            det = _pad(np.eye(2), 2 + k) + h * drift_mat(t, True)
            if method == "reduced_splitting":
                # the kick reuses the score at (u, t): score(u) = c [u, o], applied to the PF result
                kk = 0.5 * eta * eta * h * p.beta(t) * Q
                m = det + kk @ P @ det + kk @ score_mat(t)
            else:
                xp, vp = torch.empty_like(run.x), torch.empty_like(run.v)
                run.apply(det, outs, target=[xp, vp])
                outs = model.evaluate(xp, vp, tn, backend)
                run.x, run.v = xp, vp
                m = kick(tn, h, 0.5 * eta * eta)
            decay, _, std = ou(t, tn)
            run.apply(decay @ m, outs, std, ca, (t, tn))
        if callback is not None:
            callback({"i": i, "t": tn, "x": run.x, "v": run.v})
    if denoise:
        te = ts[-1]
        outs = model.evaluate(run.x, run.v, te, backend)
        run.apply(_pad(np.eye(2), 2 + k) + te * drift_mat(te, False), outs)
    return run.x, run.v
