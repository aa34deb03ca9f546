"""Independent float64 implementations of every solver, written straight from docs/solvers.md.

Deliberately naive: plain tensor arithmetic in the formulas' own form (lambda = -log sigma, alpha = 1 in VE
coordinates), no fastint code, no fusion. Noise comes from ``noise(sigma_a, sigma_b)`` (the k-diffusion
``noise_sampler`` convention), so the same sampler object can drive fastint and these references.
"""

import math

import torch


def _lam(sigma):
    return -math.log(sigma)


def _model(model, x, sigma):
    return model(x, torch.full((x.shape[0],), sigma, dtype=x.dtype))


def euler(model, x, sigmas, noise=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    n = len(sigmas) - 1
    for i in range(n):
        s, t = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / n, 2 ** 0.5 - 1) if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + s_noise * (s_hat ** 2 - s ** 2) ** 0.5 * noise(s_hat, s)
        d = (x - _model(model, x, s_hat)) / s_hat
        x = x + (t - s_hat) * d
    return x


def heun(model, x, sigmas, noise=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    n = len(sigmas) - 1
    for i in range(n):
        s, t = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / n, 2 ** 0.5 - 1) if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + s_noise * (s_hat ** 2 - s ** 2) ** 0.5 * noise(s_hat, s)
        d = (x - _model(model, x, s_hat)) / s_hat
        x_euler = x + (t - s_hat) * d
        if t == 0:
            x = x_euler
        else:
            d2 = (x_euler - _model(model, x_euler, t)) / t
            x = x + (t - s_hat) * (d + d2) / 2
    return x


def ancestral(model, x, sigmas, noise=None, eta=1.0, s_noise=1.0):
    """Euler ancestral; DDIM(eta) is the same step (SPECS: DDIM with eta, divided by alpha_prev)."""
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        den = _model(model, x, s)
        up = min(t, eta * (t ** 2 * (s ** 2 - t ** 2) / s ** 2) ** 0.5) if eta else 0.0
        down = (t ** 2 - up ** 2) ** 0.5
        x = den + (down / s) * (x - den)
        if t > 0 and up > 0:
            x = x + s_noise * up * noise(s, t)
    return x


def ddim_vp(model, x, sigmas, noise=None, eta=0.0, s_noise=1.0):
    """DDIM with eta exactly as diffusers writes it, in VP coordinates, mapped back to VE at the end."""
    ab = [1.0 / (1.0 + s ** 2) for s in sigmas]
    x_vp = x * ab[0] ** 0.5
    for i in range(len(sigmas) - 1):
        a_t, a_prev = ab[i], ab[i + 1]
        s = sigmas[i]
        x0 = _model(model, x_vp / a_t ** 0.5, s)
        eps = (x_vp - a_t ** 0.5 * x0) / (1 - a_t) ** 0.5
        var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        sig = eta * var ** 0.5
        x_vp = a_prev ** 0.5 * x0 + max(1 - a_prev - sig ** 2, 0.0) ** 0.5 * eps
        if sig > 0:
            x_vp = x_vp + s_noise * sig * noise(sigmas[i], sigmas[i + 1])
    return x_vp / ab[-1] ** 0.5


def dpmpp_2m(model, x, sigmas, noise=None):
    old, h_last = None, None
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        den = _model(model, x, s)
        if t == 0:
            x = den
        else:
            h = _lam(t) - _lam(s)
            if old is None:
                dd = den
            else:
                r = h_last / h
                dd = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
            x = (t / s) * x - math.expm1(-h) * dd
            h_last = h
        old = den
    return x


def dpmpp_2m_sde(model, x, sigmas, noise=None, eta=1.0, s_noise=1.0, solver_type="midpoint"):
    old, h_last = None, None
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        den = _model(model, x, s)
        if t == 0:
            x = den
        else:
            h = _lam(t) - _lam(s)
            he = (1 + eta) * h
            x = (t / s) * math.exp(-eta * h) * x + (1 - math.exp(-he)) * den
            if old is not None:
                r = h_last / h
                if solver_type == "midpoint":
                    x = x + 0.5 * (1 - math.exp(-he)) * (1 / r) * (den - old)
                else:
                    x = x + ((1 - math.exp(-he)) / (-he) + 1) * (1 / r) * (den - old)
            if eta:
                x = x + t * (1 - math.exp(-2 * eta * h)) ** 0.5 * s_noise * noise(s, t)
            h_last = h
        old = den
    return x


def dpmpp_3m_sde(model, x, sigmas, noise=None, eta=1.0, s_noise=1.0, third_order="peer"):
    d_1 = d_2 = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        den = _model(model, x, s)
        if t == 0:
            x = den
        else:
            h = _lam(t) - _lam(s)
            he = (1 + eta) * h
            x = (t / s) * math.exp(-eta * h) * x + (1 - math.exp(-he)) * den
            phi_2 = math.expm1(-he) / he + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (den - d_1) / r0
                d1_1 = (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / he - 0.5
                if third_order == "exact":
                    phi_3 = 2 * phi_3
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                x = x + phi_2 * (den - d_1) / (h_1 / h)
            if eta:
                x = x + t * (1 - math.exp(-2 * eta * h)) ** 0.5 * s_noise * noise(s, t)
            d_1, d_2, h_1, h_2 = den, d_1, h, h_1
    return x


def dpmpp_3m(model, x, sigmas, noise=None, third_order="peer"):
    return dpmpp_3m_sde(model, x, sigmas, noise, eta=0.0, third_order=third_order)


def _phi2(v):
    return (math.expm1(v) - v) / v


def seeds_1(model, x, sigmas, noise=None, eta=1.0, s_noise=1.0):
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        den = _model(model, x, s)
        if t == 0:
            x = den
            continue
        h = _lam(t) - _lam(s)
        he = (1 + eta) * h
        x = (t / s) * math.exp(-eta * h) * x - math.expm1(-he) * den
        if eta and s_noise:
            x = x + t * s_noise * (1 - math.exp(-2 * eta * h)) ** 0.5 * noise(s, t)
    return x


def seeds_2(model, x, sigmas, noise=None, eta=1.0, s_noise=1.0, r=0.5, solver_type="phi_1"):
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        den = _model(model, x, s)
        if t == 0:
            x = den
            continue
        h = _lam(t) - _lam(s)
        he = (1 + eta) * h
        s2 = math.exp(-(_lam(s) + r * h))
        noisy = eta and s_noise
        n1 = (1 - math.exp(-2 * r * eta * h)) ** 0.5 * noise(s, s2) if noisy else 0.0
        x2 = (s2 / s) * math.exp(-r * eta * h) * x - math.expm1(-r * he) * den + s2 * s_noise * n1
        den2 = _model(model, x2, s2)
        if solver_type == "phi_1":
            comb = -math.expm1(-he) * ((1 - 1 / (2 * r)) * den + (1 / (2 * r)) * den2)
        else:
            b2 = _phi2(-he) / r
            b1 = math.expm1(-he) - b2
            comb = -(b1 * den + b2 * den2)
        x = (t / s) * math.exp(-eta * h) * x + comb
        if noisy:
            n = math.exp((r - 1) * eta * h) * n1 + (1 - math.exp(2 * (r - 1) * eta * h)) ** 0.5 * noise(s2, t)
            x = x + t * s_noise * n
    return x


def seeds_3(model, x, sigmas, noise=None, eta=1.0, s_noise=1.0, r_1=1 / 3, r_2=2 / 3):
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        den = _model(model, x, s)
        if t == 0:
            x = den
            continue
        h = _lam(t) - _lam(s)
        he = (1 + eta) * h
        sa, sb = s * math.exp(-r_1 * h), s * math.exp(-r_2 * h)
        noisy = eta and s_noise
        na = (1 - math.exp(-2 * r_1 * eta * h)) ** 0.5 * noise(s, sa) if noisy else 0.0
        x2 = (sa / s) * math.exp(-r_1 * eta * h) * x - math.expm1(-r_1 * he) * den + sa * s_noise * na
        den2 = _model(model, x2, sa)
        nb = (math.exp(-(r_2 - r_1) * eta * h) * na
              + (1 - math.exp(-2 * (r_2 - r_1) * eta * h)) ** 0.5 * noise(sa, sb)) if noisy else 0.0
        a32 = (r_2 / r_1) * _phi2(-r_2 * he)
        a31 = math.expm1(-r_2 * he) - a32
        x3 = (sb / s) * math.exp(-r_2 * eta * h) * x - (a31 * den + a32 * den2) + sb * s_noise * nb
        den3 = _model(model, x3, sb)
        b3 = _phi2(-he) / r_2
        b1 = math.expm1(-he) - b3
        x = (t / s) * math.exp(-eta * h) * x - (b1 * den + b3 * den3)
        if noisy:
            nt = (math.exp(-(1 - r_2) * eta * h) * nb
                  + (1 - math.exp(-2 * (1 - r_2) * eta * h)) ** 0.5 * noise(sb, t))
            x = x + t * s_noise * nt
    return x


REFERENCES = {
    "euler": euler, "heun": heun, "ddim": ddim_vp, "euler_ancestral": ancestral, "dpmpp_2m": dpmpp_2m,
    "dpmpp_3m": dpmpp_3m, "dpmpp_2m_sde": dpmpp_2m_sde, "dpmpp_3m_sde": dpmpp_3m_sde,
    "seeds_1": seeds_1, "seeds_2": seeds_2, "seeds_3": seeds_3,
}
