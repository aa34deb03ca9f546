"""Independent float64 references for fastint's splitting, conjugate-splitting and conjugate augmented samplers.

Written from the formulas in docs/augmented.md with plain numpy/scipy (``scipy.linalg.expm`` for the exponentials,
the closed-form Ornstein-Uhlenbeck flow, Van Loan's block exponential for the kernel covariance, adaptive
``scipy.integrate.quad`` for the conjugate integrator's Phi), one sample row at a time, no fastint code. State ``u =
(x, v)`` per coordinate; ``score(x, v, t) -> (s_x, s_v)`` (float64 tensors); forward times ``ts`` decreasing;
``noise(t_a, t_b)`` is called for stream 0 (x) then stream 1 (v) of each step's noise event, as fastint's
``noise_sampler``. Process: ``du = beta(t) F u dt + sqrt(beta Q) dW``, prior precision ``P = diag(1, 1/M)``.
"""

import numpy as np
import scipy.integrate as si
import scipy.linalg as sl
import torch


class SplittingRef:
    def __init__(self, kind, b0, b1, **kw):
        self.b0, self.b1 = b0, b1
        if kind == "PSLD":
            nu, Gam = kw.get("nu", 4.01), kw.get("Gamma", 0.01)
            m_inv = (Gam - nu) ** 2 / 4
            M = 1 / m_inv
            self.F = 0.5 * np.array([[-Gam, m_inv], [-1.0, -nu]])
            self.Q = np.diag([Gam, M * nu])
            self.var0v = kw.get("kappa", 0.04) * M
        else:  # CLD
            m_inv = kw.get("m_inv", 4.0)
            M = 1 / m_inv
            Gam = 2 * np.sqrt(M)
            self.F = np.array([[0.0, m_inv], [-1.0, -Gam * m_inv]])
            self.Q = np.diag([0.0, 2 * Gam])
            self.var0v = kw.get("gamma", 0.04) * M
        self.P = np.diag([1.0, m_inv])

    def beta(self, t):
        return self.b0 + self.b1 * t

    def B(self, s, t):  # int_s^t beta
        return self.b0 * (t - s) + 0.5 * self.b1 * (t * t - s * s)

    def _score(self, score, u, t):
        sx, sv = score(torch.from_numpy(u[:, :1].copy()), torch.from_numpy(u[:, 1:].copy()), t)
        return np.concatenate([sx.numpy(), sv.numpy()], 1)

    def _ou(self, u, t, tn, noise, eta=1.0):
        b = eta ** 2 * self.B(tn, t)
        zx, zv = noise(t, tn), noise(t, tn)
        z = np.concatenate([zx.numpy(), zv.numpy()], 1)
        out = np.empty_like(u)
        for j in range(2):
            q, p = self.Q[j, j], self.P[j, j]
            out[:, j] = np.exp(-0.5 * q * p * b) * u[:, j] + np.sqrt((1 - np.exp(-q * p * b)) / p) * z[:, j]
        return out

    def _pf_euler(self, u, s, t, h):  # u + h beta (-F u + Q s / 2), row vectors
        return u + h * self.beta(t) * (-u @ self.F.T + 0.5 * s @ self.Q.T)

    def _forced_ou(self, u, r, t, tn, noise, eta):
        """Exact flow of du = eta^2 (-Q P u + Q r) / 2 db + eta sqrt(Q) dW with r constant: the mean by the
        exponential of the affine system's 3x3 block matrix [[A, c], [0, 0]], plus the OU noise."""
        b = eta ** 2 * self.B(tn, t)
        out = self._ou(np.zeros_like(u), t, tn, noise, eta)
        for row in range(u.shape[0]):
            blk = np.zeros((3, 3))
            blk[:2, :2], blk[:2, 2] = -0.5 * self.Q @ self.P, 0.5 * self.Q @ r[row]
            out[row] += (sl.expm(b * blk) @ np.append(u[row], 1.0))[:2]
        return out

    def _kick(self, u, s, t, h, eta=1.0):  # u + eta^2 h beta Q (s + P u) / 2
        return u + 0.5 * eta ** 2 * h * self.beta(t) * (s + u @ self.P.T) @ self.Q.T

    def _kernel_chol(self, t, numerical_eps):  # Cholesky of Cov(u_t | x0), u_0 ~ N((x0, 0), diag(0, var0v))
        b = self.B(0.0, t)
        vl = np.zeros((4, 4))  # Van Loan: expm([[F, Q], [0, -F^T]] b) = [[e^{bF}, S e^{-bF^T}], [0, e^{-bF^T}]]
        vl[:2, :2], vl[:2, 2:], vl[2:, 2:] = self.F, self.Q, -self.F.T
        e = sl.expm(b * vl)
        phi = e[:2, :2]
        sigma = e[:2, 2:] @ phi.T
        cov = phi @ np.diag([0.0, self.var0v]) @ phi.T + sigma + numerical_eps * np.eye(2)
        return np.linalg.cholesky(0.5 * (cov + cov.T))

    def _transform(self, t, lam, ones):  # A_t = e^{B t} e^{-F int_0^t beta}
        K = np.ones((2, 2)) if ones else np.eye(2)
        return sl.expm(lam * t * K) @ sl.expm(-self.B(0.0, t) * self.F)

    def _conjugate(self, u, s, t, tn, lam, ones, numerical_eps):
        """u_n -> A_{n+1}^{-1} ((I + B (t_{n+1} - t_n)) A_n u_n + (Phi_{n+1} - Phi_n) eps_n), eps = -L_t^T s."""
        K = np.ones((2, 2)) if ones else np.eye(2)

        def dphi(i, j):
            def f(r):
                L = self._kernel_chol(r, numerical_eps)
                return (0.5 * self.beta(r) * self._transform(r, lam, ones) @ self.Q @ np.linalg.inv(L).T)[i, j]
            return si.quad(f, t, tn, epsabs=1e-14, epsrel=1e-12, limit=200)[0]

        D = np.array([[dphi(i, j) for j in range(2)] for i in range(2)])
        eps = -s @ self._kernel_chol(t, numerical_eps)  # rows: eps^T = -s^T L
        ubar = u @ ((np.eye(2) + lam * (tn - t) * K) @ self._transform(t, lam, ones)).T + eps @ D.T
        return np.linalg.solve(self._transform(tn, lam, ones), ubar.T).T

    def _prior_flow(self, u, s, t, tn):  # exact flow of du/db = G u + Q (s + P u_start) / 2 over b = int beta
        G = -self.F - 0.5 * self.Q @ self.P
        b = self.B(tn, t)
        E = sl.expm(b * G)
        W = np.linalg.solve(G, E - np.eye(2))  # int_0^b e^{sG} ds
        r = s + u @ self.P.T
        return u @ E.T + (0.5 * r @ self.Q.T) @ W.T

    def sample(self, method, score, x, v, ts, noise, denoise=True, eta=1.0, lam=0.0, ones=False,
               numerical_eps=1e-9):
        u = np.concatenate([x.numpy(), v.numpy()], 1).astype(np.float64)
        for t, tn in zip(ts[:-1], ts[1:]):
            h = t - tn
            s = self._score(score, u, t)
            if method == "reduced_splitting":
                u = self._ou(self._kick(self._pf_euler(u, s, t, h), s, t, h, eta), t, tn, noise, eta)
            elif method == "naive_splitting":
                up = self._pf_euler(u, s, t, h)
                u = self._ou(self._kick(up, self._score(score, up, tn), tn, h, eta), t, tn, noise, eta)
            elif method == "conjugate_splitting":
                u = self._forced_ou(self._prior_flow(u, s, t, tn), s + u @ self.P.T, t, tn, noise, eta)
            elif method == "conjugate_residual":
                u = self._prior_flow(u, s, t, tn)
            elif method == "conjugate":
                u = self._conjugate(u, s, t, tn, lam, ones, numerical_eps)
            else:
                raise ValueError(method)
        if denoise:
            te = ts[-1]
            s = self._score(score, u, te)
            u = u + te * self.beta(te) * (-u @ self.F.T + s @ self.Q.T)
        return torch.from_numpy(u)
