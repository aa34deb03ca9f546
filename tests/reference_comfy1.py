"""Independent float64 references for ComfyUI's heunpp2, ddpm, lcm, ipndm, ipndm_v and deis samplers, written from
the methods (docs/solvers.md, "ComfyUI's multistep and renoising samplers"), not from fastint's code.

Plain loops in each method's own coordinates: DDPM in VP coordinates with the posterior mean and variance of Ho et
al.; the Adams-Bashforth family with a buffer of derivatives d = (x - D) / sigma; DEIS weights by mpmath's
quadrature in the VP time tau at 20 digits (``int L_j(tau) dsigma/dtau dtau``, where fastint integrates in sigma by
Gauss-Legendre in float64) and the Lagrange integrals in sigma by numpy's polynomial algebra. Noise comes from
``noise(sigma_a, sigma_b)``, the k-diffusion ``noise_sampler`` convention.
"""

import functools
import math

import mpmath
import numpy as np
import torch


def _d(model, x, sigma):
    return (x - model(x, torch.full((x.shape[0],), sigma, dtype=x.dtype))) / sigma


def heunpp2(model, x, sigmas, noise=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    n = len(sigmas) - 1
    for i in range(n):
        gamma = min(s_churn / n, 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        s_hat = sigmas[i] * (1 + gamma)
        if gamma > 0:
            x = x + s_noise * (s_hat ** 2 - sigmas[i] ** 2) ** 0.5 * noise(s_hat, sigmas[i])
        d = _d(model, x, s_hat)
        dt = sigmas[i + 1] - s_hat
        if i == n - 1:
            x = x + dt * d
            continue
        x_2 = x + dt * d
        d_2 = _d(model, x_2, sigmas[i + 1])
        if i == n - 2:
            w2 = sigmas[i + 1] / (2 * sigmas[0])
            x = x + dt * ((1 - w2) * d + w2 * d_2)
            continue
        x_3 = x_2 + (sigmas[i + 2] - sigmas[i + 1]) * d_2
        d_3 = _d(model, x_3, sigmas[i + 2])
        w2, w3 = sigmas[i + 1] / (3 * sigmas[0]), sigmas[i + 2] / (3 * sigmas[0])
        x = x + dt * ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3)
    return x


def ddpm(model, x, sigmas, noise=None):
    """Ho et al. Algorithm 2 with sigma_t^2 = beta~_t, in VP coordinates (ab = 1 / (1 + sigma^2))."""
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        ab_t, ab_prev = 1 / (1 + s * s), 1 / (1 + t * t)
        alpha = ab_t / ab_prev
        beta = 1 - alpha
        eps = _d(model, x, s)
        x_vp = x * math.sqrt(ab_t)
        mean = (x_vp - beta / math.sqrt(1 - ab_t) * eps) / math.sqrt(alpha)
        if t > 0:
            mean = mean + math.sqrt((1 - ab_prev) / (1 - ab_t) * beta) * noise(s, t)
        x = mean / math.sqrt(ab_prev)
    return x


def lcm(model, x, sigmas, noise=None):
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        x = x - s * _d(model, x, s)
        if t > 0:
            x = x + t * noise(s, t)
    return x


# -- Adams-Bashforth family ------------------------------------------------------------------------------------
AB = {1: [1.0], 2: [1.5, -0.5], 3: [23 / 12, -4 / 3, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -3 / 8]}


def _lagrange_integral(nodes, j, a, b):
    """int_a^b L_j(u) du by numpy's polynomial algebra."""
    others = [p for k, p in enumerate(nodes) if k != j]
    basis = np.polynomial.Polynomial.fromroots(others) if others else np.polynomial.Polynomial([1.0])
    antiderivative = (basis / np.prod([nodes[j] - p for p in others])).integ()
    return float(antiderivative(b) - antiderivative(a))


def comfy_ipndm_v_weights(sig, n, order):
    """ComfyUI's ipndm_v weights as docs/solvers.md states them (AB2 + T1 second- and T2 third-difference terms)."""
    h = sig[n + 1] - sig[n]
    if order == 1:
        return [h]
    h1 = sig[n] - sig[n - 1]
    w = np.zeros(order)
    w[:2] += [1 + h / (2 * h1), -h / (2 * h1)]
    if order >= 3:
        h2 = sig[n - 1] - sig[n - 2]
        a = h1 / h2
        w[:3] += (1 - h ** 2 / (3 * h1 * (h1 + h2))) / 2 * np.array([1, -(1 + a), a])
    if order == 4:
        h3 = sig[n - 2] - sig[n - 3]
        b, c = h1 * (h1 + h2) / (h2 * (h2 + h3)), h2 / h3
        u, v = h / (h + h1), h / (h + h1 + h2)
        t2 = (((1 - u / 3) / 2 + (1 - u / 2) * v / 6) * (h * (h + h1) * (h + h1 + h2))
              / (h1 * (h1 + h2) * (h1 + h2 + h3)))
        w += t2 * np.array([1, -(1 + a + b), a + b * (1 + c), -a * b])
    return list(h * w)


def deis_tab_weights(sig, n, order):
    return _deis_tab_weights(tuple(sig), n, order)


@functools.lru_cache(maxsize=None)
def _deis_tab_weights(sig, n, order):
    """int L_j(tau) dsigma/dtau dtau in 20-digit arithmetic (mpmath's tanh-sinh quadrature in tau), with the VP
    schedule log(1 + sigma(tau)^2) = beta_d tau^2 / 2 + beta_min tau through sigma(1e-3) = 0.002, sigma(1) = 80."""
    with mpmath.workdps(20):
        q_min, q_max = mpmath.log(1 + mpmath.mpf("0.002") ** 2), mpmath.log(1 + mpmath.mpf(80) ** 2)
        eps = mpmath.mpf("0.001")
        beta_d, beta_min = mpmath.lu_solve(mpmath.matrix([[eps ** 2 / 2, eps], [0.5, 1]]),
                                           mpmath.matrix([q_min, q_max]))

        def tau(s):
            return mpmath.findroot(lambda u: beta_d * u ** 2 / 2 + beta_min * u - mpmath.log(1 + mpmath.mpf(s) ** 2),
                                   mpmath.mpf(1))

        sigma_of = lambda u: mpmath.sqrt(mpmath.expm1(beta_d * u ** 2 / 2 + beta_min * u))   # noqa: E731
        dsigma = lambda u: (beta_d * u + beta_min) * (sigma_of(u) ** 2 + 1) / (2 * sigma_of(u))   # noqa: E731
        nodes = [tau(sig[n - k]) for k in range(order)]
        a, b = tau(sig[n]), tau(sig[n + 1])
        weights = []
        for j in range(order):
            others = [p for k, p in enumerate(nodes) if k != j]
            basis = lambda u: mpmath.fprod([(u - p) / (nodes[j] - p) for p in others])   # noqa: E731
            weights.append(float(mpmath.quad(lambda u: basis(u) * dsigma(u), [a, b])))
        return weights


def lagrange_sigma_weights(sig, n, order):
    nodes = [sig[n - k] for k in range(order)]
    return [_lagrange_integral(nodes, j, sig[n], sig[n + 1]) for j in range(order)]


def _adams(weights_of, model, x, sigmas, max_order):
    buffer = []                                   # newest first
    for n in range(len(sigmas) - 1):
        d = _d(model, x, sigmas[n])
        if sigmas[n + 1] == 0:
            x = x - sigmas[n] * d
            continue
        order = min(max_order, n + 1)
        c = weights_of(sigmas, n, order)
        x = x + sum(c_j * d_j for c_j, d_j in zip(c, [d] + buffer))
        buffer = ([d] + buffer)[:3]
    return x


def ipndm(model, x, sigmas, noise=None, max_order=4):
    return _adams(lambda sig, n, p: [(sig[n + 1] - sig[n]) * b for b in AB[p]], model, x, sigmas, max_order)


def ipndm_v(model, x, sigmas, noise=None, max_order=4, coefficients="peer"):
    weights = comfy_ipndm_v_weights if coefficients == "peer" else lagrange_sigma_weights
    return _adams(weights, model, x, sigmas, max_order)


def deis(model, x, sigmas, noise=None, max_order=3, deis_mode="tab"):
    weights = deis_tab_weights if deis_mode == "tab" else lagrange_sigma_weights
    return _adams(weights, model, x, sigmas, max_order)


REFERENCES = {"heunpp2": heunpp2, "ddpm": ddpm, "lcm": lcm, "ipndm": ipndm, "ipndm_v": ipndm_v, "deis": deis}
