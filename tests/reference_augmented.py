"""Independent float64 references for the augmented samplers, following the public code step by step.

- CLD: nv-tlabs/CLD-SGM ``sampling.py`` (``get_em_sampler``, ``get_sscs_sampler``) and ``sde_lib.CLD`` (``sde``,
  ``get_reverse_sde``, ``var``, ``noise_multiplier``), with ``models/utils.get_score_fn``'s mixed score.
- PSLD: mandt-lab/PSLD ``main/samplers/sde.py`` (``EulerMaruyamaSampler``, ``SSCSSampler``) and
  ``main/models/sde/psld.py`` (``sde``, ``reverse_sde``, ``_cov``, ``get_inv_coeff``, ``get_score``).

Written in the codes' own form (state ``u = cat((x, v), dim=1)``, reverse time ``t`` from 0 to ``1 - eps``, the
forward formulas evaluated at negative integrated rates), no fastint code. ``noise()`` returns a standard normal
tensor shaped like u (it replaces ``torch.randn_like(u)``, in the same order of draws).
"""

import math

import numpy as np
import torch


def reverse_times(n, eps=1e-3, striding="linear"):
    t_final = 1.0 - eps
    t = torch.linspace(0.0, t_final, n + 1, dtype=torch.float64)
    if striding == "quadratic":
        t = t_final * torch.flip(1 - (t / t_final) ** 2.0, dims=[0])
    return t


# ---------------------------------------------------------------------------------------------------------- CLD
class CLDRef:
    def __init__(self, beta0=4.0, beta1=0.0, m_inv=4.0, gamma=0.04, numerical_eps=1e-9):
        self.beta0, self.beta1, self.m_inv, self.gamma, self.numerical_eps = beta0, beta1, m_inv, gamma, numerical_eps
        self.f = 2.0 / np.sqrt(m_inv)
        self.g = 1.0 / self.f

    def beta_fn(self, t):
        return self.beta0 + self.beta1 * t

    def beta_int_fn(self, t):
        return self.beta0 * t + 0.5 * self.beta1 * t ** 2

    def sde(self, u, t):
        x, v = torch.chunk(u, 2, dim=1)
        beta = self.beta_fn(t)
        drift_x = self.m_inv * beta * v
        drift_v = -beta * x - self.f * self.m_inv * beta * v
        diffusion_x = torch.zeros_like(x)
        diffusion_v = math.sqrt(2.0 * self.f * beta) * torch.ones_like(v)
        return torch.cat((drift_x, drift_v), dim=1), torch.cat((diffusion_x, diffusion_v), dim=1)

    def var(self, t, var0x=0.0, var0v=None):
        if var0v is None:
            var0v = self.gamma / self.m_inv
        beta_int = self.beta_int_fn(t)
        multiplier = math.exp(-4.0 * beta_int * self.g)
        g, f = self.g, self.f
        var_xx = var0x + (1.0 / multiplier) - 1.0 + 4.0 * beta_int * g * (var0x - 1.0) + 4.0 * beta_int ** 2.0 * \
            g ** 2.0 * (var0x - 2.0) + 16.0 * g ** 4.0 * beta_int ** 2.0 * var0v
        var_xv = -var0x * beta_int + 4.0 * g ** 2.0 * beta_int * var0v - 2.0 * g * beta_int ** 2.0 * (var0x - 2.0) \
            - 8.0 * g ** 3.0 * beta_int ** 2.0 * var0v
        var_vv = f ** 2.0 * ((1.0 / multiplier) - 1.0) / 4.0 + f * beta_int - 4.0 * g * beta_int * var0v + \
            4.0 * g ** 2.0 * beta_int ** 2.0 * var0v + var0v + beta_int ** 2.0 * (var0x - 2.0)
        return [var_xx * multiplier + self.numerical_eps, var_xv * multiplier, var_vv * multiplier + self.numerical_eps]

    def mean(self, u, t):
        x, v = torch.chunk(u, 2, dim=1)
        beta_int = self.beta_int_fn(t)
        coeff_mean = math.exp(-2.0 * beta_int * self.g)
        mean_x = coeff_mean * (2.0 * beta_int * self.g * x + 4.0 * beta_int * self.g ** 2.0 * v + x)
        mean_v = coeff_mean * (-beta_int * x - 2.0 * beta_int * self.g * v + v)
        return torch.cat((mean_x, mean_v), dim=1)

    def score_fn(self, model):
        """get_score_fn with mixed_score = true (forward time t)."""
        def score_fn(u, t):
            out = model(u, torch.full((u.shape[0],), t, dtype=u.dtype))
            var = self.var(t)
            noise_multiplier = -math.sqrt(var[0] / (var[0] * var[2] - var[1] ** 2))
            _, z = torch.chunk(u, 2, dim=1)
            var_zz = self.var(t, 0.0, self.gamma / self.m_inv)[2]
            return -z / var_zz + out * noise_multiplier
        return score_fn

    def reverse_step(self, score_fn, u, t, dt, noise):
        """sde.get_discrete_step_fn('reverse') at reverse time t: returns (u, u_mean)."""
        drift, diffusion = self.sde(u, 1.0 - t)
        score = score_fn(u, 1.0 - t)
        drift_x, drift_v = torch.chunk(drift, 2, dim=1)
        _, diffusion_v = torch.chunk(diffusion, 2, dim=1)
        rdrift = torch.cat((-drift_x, -drift_v + diffusion_v ** 2.0 * score), dim=1)
        rdiff = torch.cat((torch.zeros_like(diffusion_v), diffusion_v), dim=1)
        u_mean = u + rdrift * dt
        return u_mean + rdiff * math.sqrt(dt) * noise(), u_mean

    def em(self, model, u, n, noise, eps=1e-3, striding="linear", denoising=True):
        score_fn = self.score_fn(model)
        t = reverse_times(n, eps, striding)
        for i in range(n):
            dt = float(t[i + 1] - t[i])
            u, _ = self.reverse_step(score_fn, u, float(t[i]), dt, noise)
        if denoising:
            _, u = self.reverse_step(score_fn, u, 1.0 - eps, eps, noise)
        return u

    def sscs(self, model, u, n, noise, eps=1e-3, striding="linear", denoising=True, num_stab=0.0):
        score_fn = self.score_fn(model)
        t = reverse_times(n, eps, striding)
        g, f = self.g, self.f

        def mean_an(u, t, dt):
            B = self.beta_int_fn(1.0 - (t + dt)) - self.beta_int_fn(1.0 - t)
            x, v = torch.chunk(u, 2, dim=1)
            coeff = math.exp(2.0 * g * B)
            return torch.cat((coeff * ((1.0 - 2.0 * g * B) * x + 4.0 * g ** 2.0 * B * v),
                              coeff * (-B * x + (1.0 + 2.0 * g * B) * v)), dim=1)

        def var_an(t, dt):
            B = self.beta_int_fn(1.0 - (t + dt)) - self.beta_int_fn(1.0 - t)
            coeff = math.exp(4.0 * g * B)
            var_xx = coeff * (1.0 / coeff - 1.0 + 4.0 * g * B - 8.0 * g ** 2 * B ** 2.0)
            var_xv = -coeff * (4.0 * g * B ** 2.0)
            var_vv = coeff * (-f ** 2.0 * (-(1.0 / coeff) + 1.0) / 4.0 - f * B - 2.0 * B ** 2.0)
            return [var_xx + num_stab, var_xv, var_vv + num_stab]

        def analytical(u, t, dt):
            dt_hd = dt / 2.0
            mean = mean_an(u, t, dt_hd)
            var = var_an(t, dt_hd)
            c11 = math.sqrt(var[0])
            c21 = var[1] / c11
            c22 = math.sqrt(var[2] - c21 ** 2.0)
            zx, zv = torch.chunk(noise(), 2, dim=1)
            return mean + torch.cat((c11 * zx, c21 * zx + c22 * zv), dim=1)

        def score_step(u, t, dt):
            score = score_fn(u, 1.0 - t)
            x, v = torch.chunk(u, 2, dim=1)
            return torch.cat((x, v + 2.0 * f * (score + self.m_inv * v) * self.beta_fn(1.0 - t) * dt), dim=1)

        for i in range(n):
            dt = float(t[i + 1] - t[i])
            u = analytical(u, float(t[i]), dt)
            u = score_step(u, float(t[i]), dt)
            u = analytical(u, float(t[i]), dt)
        if denoising:
            _, u = self.reverse_step(score_fn, u, 1.0 - eps, eps, noise)
        return u


# --------------------------------------------------------------------------------------------------------- PSLD
class PSLDRef:
    def __init__(self, beta_min=8.0, beta_max=8.0, nu=4.01, gamma=0.01, kappa=0.04, numerical_eps=1e-9):
        self.beta_0, self.beta_1, self.nu, self.gamma = beta_min, beta_max, nu, gamma
        self.m_inv = (gamma - nu) ** 2 / 4
        self.m = 1 / self.m_inv
        self.mm_0 = kappa * self.m
        self.eps = numerical_eps
        self.T = 1.0

    def beta_t(self, t):
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def b_t(self, t):
        return self.beta_0 * t + 0.5 * (t ** 2) * (self.beta_1 - self.beta_0)

    def _cov(self, xx_0, mm_0, t):
        cov_lam = (self.nu + self.gamma) / 2
        b_t = self.b_t(t)
        b_t2 = b_t ** 2
        sf, isf = math.exp(-cov_lam * b_t), math.exp(cov_lam * b_t)
        m_inv, m, nu, gamma = self.m_inv, self.m, self.nu, self.gamma
        A_1, A_2, A_3, A_5, A_6 = m_inv / 4, m_inv ** 2 / 4, (nu - gamma) / 2, -m_inv / 2, (gamma - nu) / 2
        A_7 = isf - 1
        C_1, C_2, C_3, C_4, C_5 = (gamma - nu) / 8, m_inv * (gamma - nu) / 8, -1 / 2, m_inv / 2, (nu - gamma) / 4
        D_1, D_2, D_4, D_5, D_6 = 1 / 4, m_inv / 4, (gamma - nu) / 2, -1 / 2, m * (nu - gamma) / 2
        D_7 = m * (isf - 1)
        xx_t = (A_1 * b_t2 * xx_0 + A_2 * b_t2 * mm_0 + A_3 * b_t * xx_0 + A_5 * b_t2 + A_6 * b_t + A_7 + xx_0) * sf
        xm_t = (C_1 * b_t2 * xx_0 + C_2 * b_t2 * mm_0 + C_3 * b_t * xx_0 + C_4 * b_t * mm_0 + C_5 * b_t2) * sf
        mm_t = (D_1 * b_t2 * xx_0 + D_2 * b_t2 * mm_0 + D_4 * b_t * mm_0 + D_5 * b_t2 + D_6 * b_t + D_7 + mm_0) * sf
        return xx_t + self.eps, xm_t, mm_t + self.eps

    @staticmethod
    def get_coeff(var):
        xx_t, xm_t, mm_t = var
        l11 = math.sqrt(xx_t)
        l21 = xm_t / l11
        return l11, 0.0, l21, math.sqrt(mm_t - l21 ** 2.0)

    @staticmethod
    def get_inv_coeff(var):
        xx_t, xm_t, mm_t = var
        li11 = math.sqrt(1 / xx_t)
        li12 = -xm_t / (math.sqrt(xx_t) * math.sqrt(xx_t * mm_t - xm_t ** 2))
        li22 = math.sqrt(xx_t / (xx_t * mm_t - xm_t ** 2))
        return li11, li12, 0.0, li22

    def get_score(self, eps, t):
        c11, c12, c21, c22 = self.get_inv_coeff(self._cov(0, self.mm_0, t))
        eps_x, eps_m = torch.chunk(eps, 2, dim=1)
        return torch.cat((-c11 * eps_x - c12 * eps_m, -c21 * eps_x - c22 * eps_m), dim=1)

    def sde(self, u, t):
        x, m = torch.chunk(u, 2, dim=1)
        beta = self.beta_t(t)
        drift = torch.cat((0.5 * beta * (self.m_inv * m - self.gamma * x), 0.5 * beta * (-self.nu * m - x)), dim=1)
        diff = torch.cat((math.sqrt(beta * self.gamma) * torch.ones_like(x),
                          math.sqrt(beta * self.m * self.nu) * torch.ones_like(x)), dim=1)
        return drift, diff

    def reverse_sde(self, u, t, net):
        t = self.T - t
        f, g = self.sde(u, t)
        eps_pred = net(u, torch.full((u.shape[0],), t, dtype=u.dtype))
        return -f + g ** 2 * self.get_score(eps_pred, t), g

    def em(self, net, u, n, noise, eps=1e-3, striding="linear", denoise=True):
        ts = reverse_times(n, eps, striding)
        for i in range(n):
            dt = float(ts[i + 1] - ts[i])
            f, g = self.reverse_sde(u, float(ts[i]), net)
            u = u + f * dt + g * math.sqrt(dt) * noise()
        if denoise:
            f, _ = self.reverse_sde(u, self.T - eps, net)
            u = u + f * eps
        return u

    def sscs(self, net, u, n, noise, eps=1e-3, striding="linear", denoise=True):
        ts = reverse_times(n, eps, striding)
        nu, gamma = self.nu, self.gamma

        def _mean(u, t, dt):
            x, m = torch.chunk(u, 2, dim=1)
            db_t = self.b_t(self.T - (t + dt)) - self.b_t(self.T - t)
            sf = math.exp((nu + gamma) / 4 * db_t)
            A_1, A_2, C_1, C_2 = (nu - gamma) / 4, -((gamma - nu) ** 2) / 8, 0.5, (gamma - nu) / 4
            mu_x = -A_1 * x * db_t - A_2 * m * db_t + x
            mu_m = -C_1 * x * db_t - C_2 * m * db_t + m
            return torch.cat([mu_x, mu_m], dim=1) * sf

        def _var(t, dt):
            db_t = self.b_t(self.T - (t + dt)) - self.b_t(self.T - t)
            db_t2 = db_t ** 2
            cov_lam = (nu + gamma) / 2
            sf, isf = math.exp(cov_lam * db_t), math.exp(-cov_lam * db_t)
            A_5, A_6, A_7 = -self.m_inv / 2, (gamma - nu) / 2, isf - 1
            C_5 = (gamma - nu) / 4
            D_5, D_6, D_7 = -1 / 2, self.m * (nu - gamma) / 2, self.m * (isf - 1)
            return ((A_5 * db_t2 - A_6 * db_t + A_7) * sf + self.eps, (C_5 * db_t2) * sf,
                    (D_5 * db_t2 - D_6 * db_t + D_7) * sf + self.eps)

        def analytical(u, t, dt):
            mu = _mean(u, t, dt)
            c11, c12, c21, c22 = self.get_coeff(_var(t, dt))
            ex, em = torch.chunk(noise(), 2, dim=1)
            return mu + torch.cat((c11 * ex + c12 * em, c21 * ex + c22 * em), dim=1)

        def score_step(u, t, dt):
            t = self.T - t
            beta = self.beta_t(t)
            x, m = torch.chunk(u, 2, dim=1)
            eps_pred = net(u, torch.full((u.shape[0],), t, dtype=u.dtype))
            sx, sm = torch.chunk(self.get_score(eps_pred, t), 2, dim=1)
            return torch.cat((x + dt * gamma * beta * (sx + x), m + dt * self.m * nu * beta * (sm + self.m_inv * m)),
                             dim=1)

        for i in range(n):
            t, dt = float(ts[i]), float(ts[i + 1] - ts[i])
            u = analytical(u, t, dt / 2)
            u = score_step(u, t, dt)
            u = analytical(u, t, dt / 2)
        if denoise:
            f, g = self.reverse_sde(u, self.T - eps, net)
            u = u + f * eps  # x_mean (the noise drawn there is discarded)
        return u
