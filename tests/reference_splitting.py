"""Independent float64 guided samplers in the splitting paper's own variables (Wizadwongsa & Suwajanakorn 2023).

Written in VP quantities, deliberately not in fastint's VE shortcut: ``ab = 1 / (1 + g^2)`` (alphas_cumprod),
``xbar = x_vp / sqrt(ab)`` (the state), ``eps = (x_vp - sqrt(ab) x0) / sqrt(1 - ab)``, the classifier gradient taken
with respect to ``x_vp`` (``grad_vp = grad_xbar / sqrt(ab)``, the chain rule), and the guided eps
``eps - sqrt(1 - ab) * w * grad_vp``. PLMS: ``xbar <- xbar + dg * AB(eps history)``, orders raised from 1 without
warm-up. LTSP: guidance Euler step at (xbar, g_s), then PLMS from there. STSP: half guidance step at (xbar, g_s), PLMS,
half guidance step at the new point and g_t.

``split_exact`` composes exact sub-flows (Lie-Trotter: B then A; Strang: B/2, A, B/2) to measure the splitting
error alone.
"""

import math

import torch

WEIGHTS = [[1.0], [1.5, -0.5], [23 / 12, -16 / 12, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -9 / 24]]


def _vp(g):
    ab = 1.0 / (1.0 + g * g)
    return ab, math.sqrt(ab), math.sqrt(1.0 - ab)


def _eps(model, xbar, g):
    ab, sab, s1ab = _vp(g)
    x_vp = sab * xbar
    x0 = model(xbar, torch.full((xbar.shape[0],), g, dtype=xbar.dtype))
    return (x_vp - sab * x0) / s1ab


def _guidance_eps(grad_fn, xbar, g, w):
    """sqrt(1 - ab) * w * grad_{x_vp} log p(y | x)."""
    ab, sab, s1ab = _vp(g)
    grad_xbar = grad_fn(xbar, torch.full((xbar.shape[0],), g, dtype=xbar.dtype))
    return s1ab * w * grad_xbar / sab


def guided_sample(model, xbar, sigmas, method, grad_fn=None, w=1.0, order=4, diffusion="plms"):
    """method in 'plms', 'ltsp', 'stsp'; diffusion 'plms' or 'heun' (the diffusion part of ltsp/stsp).
    Returns (xbar, model calls, gradient calls)."""
    history = []
    n_model = n_grad = 0
    for i in range(len(sigmas) - 1):
        g_s, g_t = float(sigmas[i]), float(sigmas[i + 1])
        dg = g_t - g_s
        if method == "ltsp" and grad_fn is not None:
            xbar = xbar - dg * _guidance_eps(grad_fn, xbar, g_s, w)
            n_grad += 1
        if method == "stsp" and grad_fn is not None:
            xbar = xbar - 0.5 * dg * _guidance_eps(grad_fn, xbar, g_s, w)
            n_grad += 1
        eps = _eps(model, xbar, g_s)
        n_model += 1
        if method == "plms" and grad_fn is not None:
            eps = eps - _guidance_eps(grad_fn, xbar, g_s, w)
            n_grad += 1
        if diffusion == "heun":
            x_2 = xbar + dg * eps
            if g_t > 0:
                eps_2 = _eps(model, x_2, g_t)
                n_model += 1
                x_2 = xbar + dg * 0.5 * (eps + eps_2)
            xbar = x_2
            if method == "stsp" and grad_fn is not None and g_t > 0:
                xbar = xbar - 0.5 * dg * _guidance_eps(grad_fn, xbar, g_t, w)
                n_grad += 1
            continue
        history.insert(0, eps)
        weights = WEIGHTS[min(order, len(history)) - 1]
        mixed = sum(c * e for c, e in zip(weights, history))
        history = history[:order - 1] if order > 1 else []
        xbar = xbar + dg * mixed
        if method == "stsp" and grad_fn is not None and g_t > 0:
            xbar = xbar - 0.5 * dg * _guidance_eps(grad_fn, xbar, g_t, w)
            n_grad += 1
    return xbar, n_model, n_grad


def split_exact(kind, flow_a, flow_b, x, sigmas):
    """Splitting with exact sub-flows ``flow(x, g_from, g_to)``: A the diffusion part, B the guidance part.

    Lie-Trotter: B over the step, then A. Strang: B over the first half of the step, A over the step, B over the
    second half (in g)."""
    for i in range(len(sigmas) - 1):
        g_s, g_t = float(sigmas[i]), float(sigmas[i + 1])
        if kind == "lie_trotter":
            x = flow_a(flow_b(x, g_s, g_t), g_s, g_t)
        else:
            g_m = 0.5 * (g_s + g_t)
            x = flow_b(flow_a(flow_b(x, g_s, g_m), g_s, g_t), g_m, g_t)
    return x


def rk4_flow(rhs, substeps):
    """A near-exact flow of dx/dg = rhs(x, g) from g0 to g1: ``substeps`` classical RK4 steps."""
    def flow(x, g0, g1):
        h = (g1 - g0) / substeps
        g = g0
        for _ in range(substeps):
            k1 = rhs(x, g)
            k2 = rhs(x + 0.5 * h * k1, g + 0.5 * h)
            k3 = rhs(x + 0.5 * h * k2, g + 0.5 * h)
            k4 = rhs(x + h * k3, g + h)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            g += h
        return x
    return flow
