"""SA-Solver (Xue et al. 2023, "SA-Solver: stochastic Adams solver for fast sampling of diffusion models"), data
prediction, predictor-corrector in PEC or PECE form (ComfyUI ``sample_sa_solver`` / ``sample_sa_solver_pece``).

VE coordinates, lambda = -log(sigma); tau = tau_func(sigma) >= 0 sets the stochasticity of a step (tau = 0: the
probability-flow ODE; tau = 1: the reverse-time SDE). A step lambda_s -> lambda_t (h = lambda_t - lambda_s, a =
1 + tau^2, tau the value at the step's end sigma_t) integrates the data predictions D_k at the nodes lambda_k through
their Lagrange interpolant L_k:

    x_t = (sigma_t / sigma_s) e^{-tau^2 h} x_s + sum_k b_k D_k + sigma_t sqrt(1 - e^{-2 tau^2 h}) s_noise z,
    b_k = a int_{lambda_s}^{lambda_t} e^{a (lambda - lambda_t)} L_k(lambda) d lambda
        = a h sum_p l_kp int_0^1 e^{-a h u} u^p du,     L_k = sum_p l_kp u^p in u = (lambda_t - lambda) / h,

the moments computed as p! e^{-z} phi_{p+1}(z), phi_{p+1}(z) = sum_m z^m / (m + p + 1)! (positive terms, no
cancellation). ``simple_order_2`` replaces the two-node coefficients by the paper's Appendix D forms: predictor
b_1 = a h^2 / (2 (lambda_1 - lambda_s)) for the older node, corrector b_0 = a h / 2 for the newer one, the other
1 - e^{-a h} minus it.

Step i (sigma_i -> sigma_{i+1}), with x the corrected state and x_p the predicted one (both x_0 at first):

    E:  D_i = D(x_p, sigma_i)
    C:  unless i = 0 (or sigma_{i+1} = 0 in PEC form): x = the update above from x at sigma_{i-1} with the
        corrector_order newest nodes (D_i included), the previous predictor's tau and the same noise z;
        PECE: D_i = D(x, sigma_i) replaces D_i
    P:  x_p = the update from x with the predictor_order newest nodes (x_p = D_i on a step to sigma = 0)

The orders grow with the history; with sigmas ending at 0 they shrink near the end (predictor <= steps left - 1,
corrector <= steps left), as ComfyUI does, which makes the ODE form (tau = 0) globally at most second order
(measured); without the final 0, predictor_order p alone (corrector_order 0) measures order p, and the
default 3/4 reaches errors of third order or better. The result is x_p. Each C and each P is one fused-op call; the
corrector regenerates the predictor's noise (same counter and stream) instead of storing it.

``tau_func`` is a host callable sigma (a Python float) -> tau (a float >= 0), evaluated once per step when the run
is recorded (it must be a pure function). ComfyUI's default is tau = 1 between the model's sigmas at 20 % and 80 %
of its schedule; fastint cannot see the model, so its default uses the SD-1.x/SDXL discrete schedule (scaled-linear
betas 0.00085 .. 0.012, 1000 steps): tau = 1 for 0.5712 <= sigma <= 5.0924. For other models pass
``tau_func=tau_interval(start_sigma, end_sigma)``.

An update reading more than 4 data predictions (orders 5 and 6) takes a second fused-op call that sums the oldest
ones first: the op reads at most 6 tensors, an injected noise tensor among them.
"""

import math

from .base import NOISE_OPTIONS, Option, Solver
from .program import Denoise, NoiseEvent, Report, combine


def sd_discrete_sigma(percent: float) -> float:
    """Sigma of the SD discrete schedule (scaled-linear betas 0.00085 .. 0.012, 1000 steps) at ``percent`` of the
    sampling (ComfyUI ``ModelSamplingDiscrete.percent_to_sigma``: timestep (1 - percent) 999, log-sigma linear
    between the neighbouring timesteps)."""
    start, end = math.sqrt(0.00085), math.sqrt(0.012)
    alpha_bar, log_sigmas = 1.0, []
    for k in range(1000):
        beta = (start + (end - start) * k / 999) ** 2
        alpha_bar *= 1 - beta
        log_sigmas.append(0.5 * math.log((1 - alpha_bar) / alpha_bar))
    timestep = (1 - percent) * 999
    low = math.floor(timestep)
    w = timestep - low
    high = min(low + 1, 999)
    return math.exp((1 - w) * log_sigmas[low] + w * log_sigmas[high])


def tau_interval(start_sigma: float, end_sigma: float, eta: float = 1.0):
    """tau_func: ``eta`` for end_sigma <= sigma <= start_sigma, else 0 (ComfyUI ``get_tau_interval_func``)."""
    def tau_func(sigma: float) -> float:
        if eta <= 0:
            return 0.0
        return float(eta) if start_sigma >= sigma >= end_sigma else 0.0
    return tau_func


default_tau = tau_interval(sd_discrete_sigma(0.2), sd_discrete_sigma(0.8))


def _moment(p: int, z: float) -> float:
    """int_0^1 e^{-z u} u^p du = p! e^{-z} sum_m z^m / (m + p + 1)!  (z >= 0)."""
    term = 1.0 / math.factorial(p + 1)
    total, m = term, 0
    while term > 1e-17 * total or m < z:
        m += 1
        term *= z / (m + p + 1)
        total += term
    return math.factorial(p) * math.exp(-z) * total


def _lagrange_monomials(nodes, k):
    """Coefficients (lowest power first) of the Lagrange basis polynomial of node k."""
    poly = [1.0]
    for j, node in enumerate(nodes):
        if j == k:
            continue
        scale = 1.0 / (nodes[k] - node)
        shifted = [0.0] + poly                         # u * poly
        poly = [(shifted[n] - node * (poly[n] if n < len(poly) else 0.0)) * scale for n in range(len(shifted))]
    return poly


def adams_coefficients(lambdas, lambda_s: float, lambda_t: float, tau: float, simple_order_2: bool,
                       corrector: bool):
    """b_k for the nodes ``lambdas`` (oldest first) of a step lambda_s -> lambda_t (module docstring)."""
    a, h = 1 + tau * tau, lambda_t - lambda_s
    total = -math.expm1(-a * h)
    if simple_order_2 and len(lambdas) == 2:
        if corrector:
            newer = 0.5 * a * h
            return [total - newer, newer]
        older = 0.5 * a * h * h / (lambdas[0] - lambda_s)
        return [older, total - older]
    nodes = [(lambda_t - node) / h for node in lambdas]
    moments = [_moment(p, a * h) for p in range(len(nodes))]
    return [a * h * sum(c * m for c, m in zip(_lagrange_monomials(nodes, k), moments)) for k in range(len(nodes))]


MAX_TERMS = 5   # state handles one fused-op call reads besides an injected noise tensor (the op reads 6 tensors)


def update(terms, noise):
    """Program fragment: ``sum c h`` over ``terms`` (the state first, then the data predictions, oldest first) plus
    ``noise`` in one fused-op call, or two when there are more than MAX_TERMS terms (the oldest predictions summed
    first)."""
    if len(terms) > MAX_TERMS:
        folded = len(terms) - MAX_TERMS + 1
        partial = yield combine(terms[1:1 + folded])
        terms = [terms[0], (1.0, partial)] + terms[1 + folded:]
    return (yield combine(terms, noise))


def _order(low):
    return lambda v: type(v) is int and low <= v <= 6


class SASolver(Solver):
    name = "sa_solver"
    order = 2
    order_note = "2 (ODE, tau = 0, sigmas ending at 0: the orders are lowered on the last steps); " \
                 "predictor_order without a final 0; 1 strong (SDE)"
    nfe_per_step = "1"
    stochastic = True
    summary = "SA-Solver, stochastic Adams predictor-corrector (ComfyUI sample_sa_solver)"
    options = {"tau_func": Option(None, lambda v: v is None or callable(v),
                                  "None (tau = 1 for 0.5712 <= sigma <= 5.0924) or a callable sigma -> tau >= 0"),
               "s_noise": NOISE_OPTIONS["s_noise"],
               "predictor_order": Option(3, _order(1), "an integer from 1 to 6"),
               "corrector_order": Option(4, _order(0), "an integer from 0 to 6"),
               "use_pece": Option(False, lambda v: type(v) is bool, "True or False"),
               "simple_order_2": Option(False, lambda v: type(v) is bool, "True or False")}
    dropin_parameters = ("tau_func", "s_noise", "noise_sampler", "predictor_order", "corrector_order", "use_pece",
                         "simple_order_2")
    dropin_disable = False   # ComfyUI's default: the progress bar shown

    def pece(self) -> bool:
        return self.config["use_pece"]

    def tau(self, sigma: float) -> float:
        try:
            tau = (self.config["tau_func"] or default_tau)(sigma)
        except Exception as error:
            raise TypeError(f"solver {self.name!r}: tau_func must map a Python float sigma to a float; "
                            f"tau_func({sigma!r}) raised {error!r}") from error
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
            raise ValueError(f"solver {self.name!r}: tau_func({sigma!r}) returned {tau!r}; it must return a finite "
                             "float >= 0")
        return float(tau)

    def program(self, sigmas, x):
        cfg = self.config
        predictor_order, corrector_order, simple = cfg["predictor_order"], cfg["corrector_order"], \
            cfg["simple_order_2"]
        s_noise, pece, n = cfg["s_noise"], self.pece(), len(sigmas)
        lambdas = [-math.log(v) if v > 0 else math.inf for v in sigmas]
        to_end = sigmas[-1] == 0
        predictions, x_pred, previous = [], x, None   # previous: the last predictor's (tau, noise)
        for i in range(n - 1):
            s, t = sigmas[i], sigmas[i + 1]
            denoised = yield Denoise(x_pred, s, fuse=False)
            yield Report(i, x_pred, s, s, denoised)
            predictions = (predictions + [denoised])[-max(predictor_order, corrector_order):]
            p_used = min(predictor_order, len(predictions))
            c_used = 0 if i == 0 or (t == 0 and not pece) else min(corrector_order, len(predictions))
            if to_end:
                p_used, c_used = min(p_used, n - 2 - i), min(c_used, n - 1 - i)
            if c_used == 0:
                x = x_pred
            else:
                tau, noise = previous
                b = adams_coefficients(lambdas[i - c_used + 1:i + 1], lambdas[i - 1], lambdas[i], tau, simple, True)
                decay = (s / sigmas[i - 1]) * math.exp(-tau * tau * (lambdas[i] - lambdas[i - 1]))
                x = yield from update([(decay, x)] + list(zip(b, predictions[-c_used:])), noise)
                if pece:
                    predictions[-1] = denoised = yield Denoise(x, s, fuse=False)
            if t == 0:
                x_pred = yield combine([(1.0, denoised)])
                continue
            tau = self.tau(t)
            h = lambdas[i + 1] - lambdas[i]
            b = adams_coefficients(lambdas[i - p_used + 1:i + 1], lambdas[i], lambdas[i + 1], tau, simple, False)
            noise = None
            if tau > 0 and s_noise > 0:
                noise = (NoiseEvent(i, [(s, t)]), [t * math.sqrt(-math.expm1(-2 * tau * tau * h)) * s_noise])
            x_pred = yield from update([((t / s) * math.exp(-tau * tau * h), x)] + list(zip(b, predictions[-p_used:])),
                                       noise)
            previous = (tau, noise)
        return x_pred


class SASolverPECE(SASolver):
    name = "sa_solver_pece"
    nfe_per_step = "2 (1 on the first step)"
    summary = "SA-Solver in PECE form, the corrected state re-evaluated (ComfyUI sample_sa_solver_pece)"
    options = {k: v for k, v in SASolver.options.items() if k != "use_pece"}
    dropin_parameters = ("tau_func", "s_noise", "noise_sampler", "predictor_order", "corrector_order",
                         "simple_order_2")

    def pece(self) -> bool:
        return True
