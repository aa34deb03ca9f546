"""Independent float64 guided samplers in the splitting paper's own variables (Wizadwongsa & Suwajanakorn 2023).

Written in VP quantities, deliberately not in fastint's VE shortcut: ``ab = 1 / (1 + g^2)`` (alphas_cumprod),
``xbar = x_vp / sqrt(ab)`` (the state), ``eps = (x_vp - sqrt(ab) x0) / sqrt(1 - ab)``, the classifier gradient taken
with respect to ``x_vp`` (``grad_vp = grad_xbar / sqrt(ab)``, the chain rule), and the guided eps
``eps - sqrt(1 - ab) * w * grad_vp``. PLMS: ``xbar <- xbar + dg * AB(eps history)``, orders raised from 1 without
warm-up. LTSP: guidance Euler step at (xbar, g_s), then PLMS from there.

STSP (``stsp_sample``) is written in the VP state itself, as the algorithm runs in the authors' variables (not from
fastint's VE form): ``y = a(g) xbar`` with ``a(g) = sqrt(ab) = 1 / sqrt(1 + g^2)``, the model's eps and the VP
classifier term ``C(y, g) = w grad_y log p(label | y, g)`` (a VE-convention guidance ``G(xbar, g)`` seen through its VP
wrapper ``xbar = y / a(g)``: ``C = w G(y / a, g) / a``). One step g_s -> g_t, ``dg = g_t - g_s``, half point
``g_m = (g_s + g_t) / 2``:

    y1 = y - (dg/2) a(g_s) sqrt(1 - a(g_s)^2) C(y, g_s)                 (first half guidance step)
    y2 = a(g_t) (y1 / a(g_s) + dg AB(eps history))                      (PLMS; eps of the model at (y1, g_s))
    y3 = y2 - (dg/2) a(g_t) sqrt(1 - a(g_m)^2) C(y2, g_t)               (second half; "authors", every step)
    y3 = y2 - (dg/2) a(g_t) sqrt(1 - a(g_t)^2) C(y2, g_t)               (second half; "endpoint", skipped at g_t = 0)

On the last step (g_t = 0) the classifier is asked at the new point and g = 0 (the authors' code clamps its
timestep to 0 there). Returns ``y / a(g_final)``.

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


def guided_sample(model, xbar, sigmas, method, grad_fn=None, w=1.0, order=4, diffusion="plms",
                  second_half="authors"):
    """method in 'plms', 'ltsp', 'stsp'; diffusion 'plms' or 'heun' (the diffusion part of ltsp/stsp).
    Returns (xbar, model calls, gradient calls)."""
    if method == "stsp":
        return stsp_sample(model, xbar, sigmas, grad_fn, w, order, diffusion, second_half)
    history = []
    n_model = n_grad = 0
    for i in range(len(sigmas) - 1):
        g_s, g_t = float(sigmas[i]), float(sigmas[i + 1])
        dg = g_t - g_s
        if method == "ltsp" and grad_fn is not None:
            xbar = xbar - dg * _guidance_eps(grad_fn, xbar, g_s, w)
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
            continue
        history.insert(0, eps)
        weights = WEIGHTS[min(order, len(history)) - 1]
        mixed = sum(c * e for c, e in zip(weights, history))
        history = history[:order - 1] if order > 1 else []
        xbar = xbar + dg * mixed
    return xbar, n_model, n_grad


def _a(g):
    """sqrt(alphas_cumprod) at VE level g."""
    return 1.0 / math.sqrt(1.0 + g * g)


def stsp_sample(model, xbar, sigmas, grad_fn, w=1.0, order=4, diffusion="plms", second_half="authors"):
    """Strang splitting in the VP state (module docstring). Returns (xbar, model calls, gradient calls)."""
    if second_half not in ("authors", "endpoint"):
        raise ValueError(second_half)

    def eps_vp(y, g):  # the model's eps at the VP point y of level g
        a = _a(g)
        x0 = model(y / a, torch.full((y.shape[0],), g, dtype=y.dtype))
        return (y - a * x0) / math.sqrt(1.0 - a * a)

    def classifier_vp(y, g):  # w grad_y log p(label | y, g): the VE guidance through its VP wrapper
        a = _a(g)
        return w * grad_fn(y / a, torch.full((y.shape[0],), g, dtype=y.dtype)) / a

    y = _a(float(sigmas[0])) * xbar
    history = []  # newest first
    n_model = n_grad = 0
    for i in range(len(sigmas) - 1):
        g_s, g_t = float(sigmas[i]), float(sigmas[i + 1])
        dg = g_t - g_s
        a_s, a_t, a_m = _a(g_s), _a(g_t), _a(0.5 * (g_s + g_t))
        if grad_fn is not None:
            y = y - 0.5 * dg * a_s * math.sqrt(1.0 - a_s * a_s) * classifier_vp(y, g_s)
            n_grad += 1
        eps = eps_vp(y, g_s)
        n_model += 1
        if diffusion == "heun":
            mixed = eps
            if g_t > 0:
                eps_2 = eps_vp(a_t * (y / a_s + dg * eps), g_t)
                n_model += 1
                mixed = 0.5 * (eps + eps_2)
        else:
            history = [eps] + history[:order - 1]
            weights = WEIGHTS[len(history) - 1]
            mixed = sum(c * e for c, e in zip(weights, history))
        y = a_t * (y / a_s + dg * mixed)
        if grad_fn is None:
            continue
        a_c = a_m if second_half == "authors" else a_t
        if second_half == "authors" or g_t > 0:
            y = y - 0.5 * dg * a_t * math.sqrt(1.0 - a_c * a_c) * classifier_vp(y, g_t)
            n_grad += 1
    return y / _a(float(sigmas[-1])), n_model, n_grad


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
