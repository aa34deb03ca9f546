"""Independent float64 references for ComfyUI's RES multistep, gradient estimation, ER-SDE, SA-Solver and
exponential Heun samplers, written from the papers' formulas (no fastint code).

Deliberately different in form from fastint's solvers: the exponential-integrator weights phi_k and the Adams
weights are integrals evaluated by Gauss-Legendre quadrature (exact to rounding for these smooth integrands), the
ER-SDE derivatives are Newton divided differences, the ER-SDE integrals the authors' 200-point left Riemann sums in
numpy. VE coordinates: alpha = 1, lambda = -log(sigma). Noise comes from ``noise(sigma_a, sigma_b)`` (the
k-diffusion ``noise_sampler`` convention), drawn once per interval and reused where the method reuses it.
"""

import math

import numpy as np
import torch

_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(48)


def _integral(f, a: float, b: float) -> float:
    """int_a^b f by 48-point Gauss-Legendre (f takes a numpy array)."""
    mid, half = (a + b) / 2, (b - a) / 2
    return float(half * np.sum(_WEIGHTS * f(mid + half * _NODES)))


def phi(k: int, z: float) -> float:
    """phi_k(z) = int_0^1 e^{(1 - u) z} u^{k-1} / (k-1)! du."""
    return _integral(lambda u: np.exp((1 - u) * z) * u ** (k - 1) / math.factorial(k - 1), 0.0, 1.0)


def _denoise(model, x, sigma):
    return model(x, torch.full((x.shape[0],), sigma, dtype=x.dtype))


def _ancestral(s, t, eta):
    if eta == 0:
        return t, 0.0
    up = min(t, eta * math.sqrt(t * t * (s * s - t * t) / (s * s)))
    return math.sqrt(t * t - up * up), up


# -- RES 2-step multistep (Zhang et al. 2023) ----------------------------------------------------------------------

def res_multistep(model, x, sigmas, noise=None, eta=0.0, s_noise=1.0):
    """x_{n+1} = e^{-h} x_n + h (b_1 D_n + b_2 D_{n-1}), b_2 = phi_2(-h) / c_2, b_1 = phi_1(-h) - b_2, in lambda-time
    from sigma_n to its ancestral sigma_down; c_2 = (lambda of the previous evaluation - lambda of the previous
    step's end point) / h. The first step and steps to sigma_down = 0 are Euler steps."""
    prev = None
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        den = _denoise(model, x, s)
        down, up = _ancestral(s, t, eta)
        if down == 0 or prev is None:
            x = x + (down - s) * (x - den) / s
        else:
            lam, lam_next = -math.log(s), -math.log(down)
            h = lam_next - lam
            c_2 = (-math.log(sigmas[i - 1]) - (-math.log(prev[1]))) / h
            b_2 = phi(2, -h) / c_2
            b_1 = phi(1, -h) - b_2
            x = math.exp(-h) * x + h * (b_1 * den + b_2 * prev[0])
        if t > 0 and up > 0:
            x = x + s_noise * up * noise(s, t)
        prev = (den, down)
    return x


def res_multistep_ancestral(model, x, sigmas, noise=None, eta=1.0, s_noise=1.0):
    return res_multistep(model, x, sigmas, noise, eta=eta, s_noise=s_noise)


# -- gradient estimation (Permenter & Yuan) -----------------------------------------------------------------------

def gradient_estimation(model, x, sigmas, noise=None, ge_gamma=2.0, cfg_pp=False):
    """d_i = (x_i - D_i) / sigma_i; x_{i+1} = x_i + (sigma_{i+1} - sigma_i) (d_i + (gamma - 1)(d_i - d_{i-1}))."""
    d_prev = None
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        den = _denoise(model, x, s)
        d = (x - den) / s
        if t == 0:
            x = den
        else:
            direction = d if d_prev is None else d + (ge_gamma - 1) * (d - d_prev)
            x = x + (t - s) * direction
        d_prev = d
    return x


# -- ER-SDE-Solver (Cui et al. 2023) -------------------------------------------------------------------------------

def er_default_scaler(v):
    return v * (np.exp(v ** 0.3) + 10.0)


def _left_riemann(f, lo: float, hi: float, points: int = 200) -> float:
    grid = lo + (hi - lo) * np.arange(points) / points
    return float(np.sum(f(grid)) * (hi - lo) / points)


def _divided_difference(sigmas, values):
    """Newton divided difference f[sigma_0, ..., sigma_k]."""
    if len(values) == 1:
        return values[0]
    return (_divided_difference(sigmas[:-1], values[:-1]) - _divided_difference(sigmas[1:], values[1:])) / \
        (sigmas[0] - sigmas[-1])


def er_sde(model, x, sigmas, noise=None, s_noise=1.0, noise_scaler=None, max_stage=3):
    """x_t = (phi(t)/phi(s)) x_s + sum_{k<stage} c_k D^{(k)}(s) + sqrt(t^2 - s^2 phi(t)^2/phi(s)^2) s_noise z with
    c_k = phi(t) int_t^s (l - s)^k / k! phi'(l)/phi(l)^2 dl, integrated by parts:
    c_0 = 1 - phi(t)/phi(s), c_1 = (t - s) + phi(t) I[1/phi], c_2 = (t - s)^2/2 + phi(t) I[(l - s)/phi],
    I the authors' 200-point left Riemann sum over [t, s]; D^{(k)} = k! times the Newton divided difference of the
    data predictions at this and the k previous sigmas."""
    phi_fn = noise_scaler if noise_scaler is not None else er_default_scaler
    phi_np = np.vectorize(lambda v: float(phi_fn(float(v)))) if noise_scaler is not None else phi_fn
    dens = []
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        den = _denoise(model, x, s)
        dens.insert(0, den)
        if t == 0:
            x = den
            continue
        stage = min(max_stage, i + 1)
        ratio = float(phi_fn(t)) / float(phi_fn(s))
        out = ratio * x + (1 - ratio) * den
        if stage >= 2:
            c_1 = (t - s) + float(phi_fn(t)) * _left_riemann(lambda l: 1 / phi_np(l), t, s)
            out = out + c_1 * _divided_difference(sigmas[i - 1:i + 1][::-1], dens[:2])
        if stage >= 3:
            c_2 = (t - s) ** 2 / 2 + float(phi_fn(t)) * _left_riemann(lambda l: (l - s) / phi_np(l), t, s)
            out = out + c_2 * 2 * _divided_difference(sigmas[i - 2:i + 1][::-1], dens[:3])
        variance = t * t - s * s * ratio * ratio
        if s_noise > 0 and variance > 0:
            out = out + s_noise * math.sqrt(variance) * noise(s, t)
        x = out
        del dens[3:]
    return x


# -- SA-Solver (Xue et al. 2023) -----------------------------------------------------------------------------------

def sa_default_tau(sigma):
    """ComfyUI's default for an SD-1.x/SDXL model: tau = 1 between its discrete schedule's sigmas at 20 % and 80 %
    (timesteps 799.2 and 199.8 of the scaled-linear betas 0.00085 .. 0.012), computed once in float64."""
    return 1.0 if 0.5711888666489997 <= sigma <= 5.09240759066568 else 0.0


def _adams_weights(nodes, lam_s, lam_t, tau, simple, corrector):
    """b_k = (1 + tau^2) int_{lam_s}^{lam_t} e^{(1 + tau^2)(l - lam_t)} L_k(l) dl (L_k: Lagrange basis on
    ``nodes``), or the paper's simplified order-2 weights (Appendix D)."""
    a, h = 1 + tau * tau, lam_t - lam_s
    if simple and len(nodes) == 2:
        whole = 1 - math.exp(-a * h)
        if corrector:
            return [whole - a * h / 2, a * h / 2]
        older = a * h * h / 2 / (nodes[0] - lam_s)
        return [older, whole - older]
    weights = []
    for k, node in enumerate(nodes):
        def basis(l, k=k, node=node):
            out = np.ones_like(l)
            for j, other in enumerate(nodes):
                if j != k:
                    out = out * (l - other) / (node - other)
            return out
        weights.append(a * _integral(lambda l: np.exp(a * (l - lam_t)) * basis(l), lam_s, lam_t))
    return weights


def sa_solver(model, x, sigmas, noise=None, tau_func=None, s_noise=1.0, predictor_order=3, corrector_order=4,
              use_pece=False, simple_order_2=False):
    """Stochastic Adams predictor-corrector: each update is
    x_t = (sigma_t/sigma_s) e^{-tau^2 h} x_s + sum_k b_k D_k + sigma_t sqrt(1 - e^{-2 tau^2 h}) s_noise z;
    the corrector (from the previous corrected state, including the newest evaluation, the predictor's tau and z)
    precedes each predictor from step 1 on; orders grow with the history and shrink towards a final sigma = 0."""
    if tau_func is None:
        tau_func = sa_default_tau
    lam = [-math.log(v) if v > 0 else None for v in sigmas]
    n_steps = len(sigmas) - 1
    ends_at_zero = sigmas[-1] == 0
    evaluations = []
    x_corr, x_pred = x, x
    tau, z_term = 0.0, None
    for i in range(n_steps):
        s, t = sigmas[i], sigmas[i + 1]
        evaluations.append(_denoise(model, x_pred, s))
        evaluations = evaluations[-max(predictor_order, corrector_order):]
        k_pred = min(predictor_order, len(evaluations))
        k_corr = 0 if (i == 0 or (t == 0 and not use_pece)) else min(corrector_order, len(evaluations))
        if ends_at_zero:
            k_pred = min(k_pred, n_steps - 1 - i)
            k_corr = min(k_corr, n_steps - i)
        if k_corr > 0:
            b = _adams_weights(lam[i - k_corr + 1:i + 1], lam[i - 1], lam[i], tau, simple_order_2, True)
            x_new = (s / sigmas[i - 1]) * math.exp(-tau * tau * (lam[i] - lam[i - 1])) * x_corr
            for w, d in zip(b, evaluations[-k_corr:]):
                x_new = x_new + w * d
            if z_term is not None:
                x_new = x_new + z_term
            x_corr = x_new
            if use_pece:
                evaluations[-1] = _denoise(model, x_corr, s)
        else:
            x_corr = x_pred
        if t == 0:
            x_pred = evaluations[-1]
            continue
        tau = float(tau_func(t))
        h = lam[i + 1] - lam[i]
        b = _adams_weights(lam[i - k_pred + 1:i + 1], lam[i], lam[i + 1], tau, simple_order_2, False)
        x_pred = (t / s) * math.exp(-tau * tau * h) * x_corr
        for w, d in zip(b, evaluations[-k_pred:]):
            x_pred = x_pred + w * d
        z_term = None
        if tau > 0 and s_noise > 0:
            z_term = t * math.sqrt(1 - math.exp(-2 * tau * tau * h)) * s_noise * noise(s, t)
            x_pred = x_pred + z_term
    return x_pred


def sa_solver_pece(model, x, sigmas, noise=None, **options):
    return sa_solver(model, x, sigmas, noise, use_pece=True, **options)


# -- exponential Heun in data prediction (SEEDS-2 with r = 1) -------------------------------------------------------

def exp_heun_2_x0_sde(model, x, sigmas, noise=None, eta=1.0, s_noise=1.0, solver_type="phi_2"):
    """Stage: x_2 = (t/s) e^{-eta h} x + (1 - e^{-(1+eta) h}) D + t s_noise sqrt(1 - e^{-2 eta h}) z, D_2 = D(x_2, t);
    phi_2: x_t = (t/s) e^{-eta h} x + (1 - e^{-g}) D + g phi_2(-g) (D_2 - D) + the same noise (g = (1 + eta) h);
    phi_1: x_t = (t/s) e^{-eta h} x + (1 - e^{-g}) (D + D_2) / 2 + the same noise."""
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        den = _denoise(model, x, s)
        if t == 0:
            x = den
            continue
        h = math.log(s / t)
        g = (1 + eta) * h
        base = (t / s) * math.exp(-eta * h) * x
        z = 0.0
        if eta > 0 and s_noise > 0:
            z = t * s_noise * math.sqrt(1 - math.exp(-2 * eta * h)) * noise(s, t)
        den_2 = _denoise(model, base + g * phi(1, -g) * den + z, t)
        if solver_type == "phi_2":
            x = base + g * phi(1, -g) * den + g * phi(2, -g) * (den_2 - den) + z
        else:
            x = base + g * phi(1, -g) * (den + den_2) / 2 + z
    return x


def exp_heun_2_x0(model, x, sigmas, noise=None, solver_type="phi_2"):
    return exp_heun_2_x0_sde(model, x, sigmas, noise, eta=0.0, s_noise=0.0, solver_type=solver_type)


REFERENCES = {f.__name__: f for f in (res_multistep, res_multistep_ancestral, gradient_estimation, er_sde, sa_solver,
                                      sa_solver_pece, exp_heun_2_x0, exp_heun_2_x0_sde)}
