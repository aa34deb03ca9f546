"""Classifier-guided sampling by operator splitting (Wizadwongsa & Suwajanakorn, ICLR 2023; sWizad/split-diffusion
``ltsp_sample`` / ``stsp_sample``), and the unsplit PLMS baseline.

**The guided ODE in fastint's VE coordinates.** The paper writes, with ``xbar = x_vp / alpha`` and ``g = sigma_vp /
alpha = sqrt(1 - ab) / sqrt(ab)``, ``dxbar/dg = eps(x) - sqrt(1 - ab) grad_{x_vp} log p(y | x_vp)`` (times the
guidance scale w). Here xbar is exactly fastint's VE state x and g its sigma. Since ``x_vp = alpha x``,
``grad_{x_vp} = grad_x / alpha`` and ``sqrt(1 - ab) = alpha g``, so the guidance term is
``sqrt(1 - ab) grad_{x_vp} log p = g grad_x log p``. With the denoiser D, ``eps = (x - D(x, g)) / g``, and

    dx/dg = (x - D) / g  -  g w G(x, g),        G = guidance(x, g) = grad_x log p(y | x, g)   (VE gradient).

(This is the probability-flow ODE of ``p_g(x) p_g(y | x)^w``: ``-g (score + w grad log p(y|x))``; for w = 1 and an
exact classifier it is the PF ODE of ``p(x | y)``.)

**The parts.** Diffusion: PLMS = Adams-Bashforth on the eps history, ``x <- x + dg eps_mixed`` with weights
(1), (3, -1)/2, (23, -16, 5)/12, (55, -59, 37, -9)/24, the order raised by one per step from 1 (no warm-up), up to
``order`` (4: plms4/ltsp4/stsp4; 2: plms2/ltsp2/stsp2). Guidance: explicit Euler, ``x <- x - dg g w G(x, g)``.
A step from g_s to g_t (``dg = g_t - g_s < 0``):

- ``plms``: eps_guided = (x - D)/g_s - g_s w G(x, g_s) enters the history; x <- x + dg AB(eps history).
  One fused call (inputs x, D, G and up to 3 old eps; outputs x and the new eps).
- ``lie_trotter`` (LTSP): x' = x - dg g_s w G(x, g_s) (one call); D = D(x', g_s); x <- x' + dg AB(eps history with
  eps = (x' - D)/g_s) (one call, two outputs). One gradient and one model evaluation per step.
- ``strang`` (STSP): x' = x - (dg/2) g_s w G(x, g_s); the PLMS step from x' gives x''; then the second half
  guidance step x <- x'' - (dg/2) c w G(x'', g_t) at the new point, on every step including the last one to g = 0.
  ``second_half="authors"`` (default, the authors' ``stsp_sample``): ``c = g_m sqrt(1 + g_t^2) / sqrt(1 + g_m^2)``
  with the half point ``g_m = (g_s + g_t)/2``; two gradients per step, 2K for K steps. ``second_half="endpoint"``:
  ``c = g_t``, the guidance coefficient of the new point (an Euler half step evaluated at the end, which with the
  first half makes the trapezoidal rule of the guidance sub-flow); its term is 0 on a last step to g = 0, which is
  then skipped (2K - 1 gradients).

**Strang, one step on both sides (the derivation of ``second_half="authors"``).** The authors' code
(split-diffusion, ``guided_diffusion/gaussian_diffusion.py``, ``stsp_sample``) works in the VP state ``x_vp = a x``
with ``a = sqrt(ab) = 1 / sqrt(1 + g^2)`` and ``g = sqrt(1 - ab) / sqrt(ab)`` (their ``self.g``, the VE sigma; the
step goes from ``g_s`` = their ``g0`` to ``g_t`` = their ``g_1``), its classifier term ``C(x_vp, g) = w
grad_{x_vp} log p(y | x_vp, g)`` (their ``cond_fn`` includes the scale) and ``a_m = 1 / sqrt(1 + g_m^2)``:

    1. y1 = x_vp - (dg/2) a_s sqrt(1 - a_s^2) C(x_vp, g_s)
    2. y2 = a_t (y1 / a_s + dg eps_mixed)              (PLMS; eps of the model at y1 and g_s enters the history)
    3. y3 = y2 - (dg/2) a_t sqrt(1 - a_m^2) C(y2, g_t)

In fastint's VE state ``x = x_vp / a`` (a of the point's own level) and with ``grad_{x_vp} = grad_x / a``, i.e.
``C = w G / a``: step 1 is ``x1 = x - (dg/2) (sqrt(1 - a_s^2) / a_s) w G(x, g_s) = x - (dg/2) g_s w G(x, g_s)``,
step 2 is ``x2 = x1 + dg eps_mixed``, and step 3 is ``x3 = x2 - (dg/2) (sqrt(1 - a_m^2) / a_t) w G(x2, g_t)`` with
``sqrt(1 - a_m^2) / a_t = g_m a_m / a_t = g_m sqrt(1 + g_t^2) / sqrt(1 + g_m^2)``: the coefficient ``sqrt(1 -
ab)`` of the VP guidance term frozen at the half point (the start of the second half interval) and carried to the
new point by its ``1 / a_t``. At g 3.98 -> 2.9753 it is 3.0166 where ``c = g_t`` is 2.9753; the two agree only
where g >> 1 (``a_m / a_t -> g_t / g_m``); near g = 0 the authors' ``c`` tends to ``g_m``, so on a guidance term linear
in g (a constant gradient) their two half steps integrate ``int g dg`` with an O(dg^2) local error where ``c =
g_t`` is exact. On the last step ``g_t = 0``, ``a_t = 1``: the authors' code has no timestep for g = 0 and clamps
the classifier's timestep to 0, the level a discrete-time classifier wrapper gives sigma = 0 (the nearest trained
level); fastint asks ``G(x2, 0)`` and applies ``c = g_m / sqrt(1 + g_m^2)``, ``g_m = g_s / 2``. The first half step
and the PLMS part are the same on both sides (Lie-Trotter's guidance step is step 1 with dg in place of dg/2, their
``ltsp_sample``).

**Order.** With exact sub-flows Lie-Trotter is first and Strang second order (tests/test_splitting.py). With PLMS as
the diffusion part, as in the reference, the eps history was evaluated at points that the guidance steps moved off
the diffusion sub-flow through the current point (by O(h) per step), and the Adams-Bashforth extrapolation turns that
into an O(h) error of eps_mixed: the global order of ``lie_trotter`` and ``strang`` with PLMS is 1 (measured), and
Strang's gain is a smaller constant and stability at high guidance scales, not the order. ``diffusion_solver="heun"``
(EDM Heun from x' at g_s to g_t, self-starting, 2 model evaluations per step) keeps the splitting order: Strang with
``second_half="endpoint"`` then measures 2 when its Euler half steps integrate the guidance exactly enough (a
guidance term linear in g, e.g. a linear classifier; an x-dependent gradient adds an O(h) term of the explicit half
steps); the authors' second half coefficient measures 1 there (1.2 at 16-64 steps). Measured comparison of the two
forms: docs/restart_and_splitting.md (neither wins everywhere: ``endpoint`` at few steps, ``authors`` by a few per
cent at w = 3-8 from 15-20 steps on).

On a last step to sigma = 0 PLMS keeps its formula (x + dg eps_mixed). No noise. The unguided eps history of the
split methods is the model's own; the ``plms`` history holds the guided eps (as the baseline of the paper).

The guidance is ``guidance=fn(x, sigma_batch) -> grad_x log p(y | x)`` or ``classifier=fn(x, sigma_batch) -> logits``
with ``labels`` (gradient by autograd, ``fastint.guidance``); ``guidance_scale`` is w. ``plms`` without
guidance is plain PLMS; ``lie_trotter`` and ``strang`` require it.
"""

import math
from numbers import Integral

from .adams_coefficients import FIXED_STEP_WEIGHTS as AB_WEIGHTS
from .base import Option, Solver, non_negative, one_of
from .edm import heun_step
from ..guidance import classifier_guidance
from .program import Combine, Denoise, Gradient, Report, combine



def _labels_ok(v):
    """None, an int, a sequence or an integer tensor (anything with a ``dtype``; checked when guidance runs)."""
    return v is None or (isinstance(v, (Integral, list, tuple)) or hasattr(v, "dtype")) and not isinstance(v, bool)


GUIDANCE_OPTIONS = {
    "guidance": Option(None, lambda v: v is None or callable(v),
                       "None or a callable guidance(x, sigma_batch) -> grad_x log p(y | x) shaped like x"),
    "classifier": Option(None, lambda v: v is None or callable(v),
                         "None or a callable classifier(x, sigma_batch) -> logits (batch, classes)"),
    "labels": Option(None, _labels_ok, "None, an int or one int per sample (with classifier)"),
    "guidance_scale": Option(1.0, non_negative, "a finite number >= 0"),
    "order": Option(4, one_of(1, 2, 3, 4), "1, 2, 3 or 4 (the PLMS / Adams-Bashforth order)"),
}


class _Guided(Solver):
    stochastic = False
    options = GUIDANCE_OPTIONS
    needs_guidance = True
    split = ""  # "", "lie_trotter", "strang"

    def __init__(self, **options):
        super().__init__(**options)
        cfg = self.config
        if cfg["guidance"] is not None and cfg["classifier"] is not None:
            raise ValueError(f"solver {self.name!r}: give guidance or classifier (with labels), not both")
        if (cfg["classifier"] is None) != (cfg["labels"] is None):
            raise ValueError(f"solver {self.name!r}: classifier and labels go together")
        self.guidance_fn = cfg["guidance"]
        if cfg["classifier"] is not None:
            self.guidance_fn = classifier_guidance(cfg["classifier"], cfg["labels"])
        if self.needs_guidance and self.guidance_fn is None:
            raise ValueError(f"solver {self.name!r} needs guidance=fn(x, sigma) -> grad_x log p(y | x) or "
                             "classifier=fn(x, sigma) -> logits with labels=...")

    def uses_noise(self) -> bool:
        return False

    def _plms(self, x, denoised, grad_coef, grad, history, s, t, k):
        """Program fragment: x + dg AB(eps) with eps = (x - D)/s [+ grad_coef G], and that eps, in one fused call
        (two rows over x, D[, G] and the eps history); returns (new state, new eps history)."""
        weights = AB_WEIGHTS[min(self.config["order"], k + 1)]
        dg = t - s
        w0 = weights[0]
        row_x = [(1 + dg * w0 / s, x), (-dg * w0 / s, denoised)]
        row_e = [(1 / s, x), (-1 / s, denoised)]
        if grad is not None:
            row_x.append((dg * w0 * grad_coef, grad))
            row_e.append((grad_coef, grad))
        for w, eps in zip(weights[1:], history):
            row_x.append((dg * w, eps))
        x, eps = yield Combine((tuple(row_x), tuple(row_e)))
        return x, ([eps] + history)[:max(self.config["order"] - 1, 1)]

    def program(self, sigmas, x):
        w = self.config["guidance_scale"]
        guided = self.guidance_fn is not None and w != 0
        history = []
        for i in range(len(sigmas) - 1):
            s, t = sigmas[i], sigmas[i + 1]
            dg = t - s
            grad, grad_coef = None, 0.0
            if self.split and guided:
                frac = 1.0 if self.split == "lie_trotter" else 0.5
                g = yield Gradient(self.guidance_fn, x, s)
                x = yield combine([(1.0, x), (-frac * dg * s * w, g)])
            elif guided:
                grad, grad_coef = (yield Gradient(self.guidance_fn, x, s)), -s * w
            denoised = yield Denoise(x, s, fuse=False)
            yield Report(i, x, s, s, denoised)
            if self.config.get("diffusion_solver") == "heun":
                x = yield from heun_step(x, denoised, s, t)
            else:
                x, history = yield from self._plms(x, denoised, grad_coef, grad, history, s, t, i)
            if self.split == "strang" and guided:
                coefficient = self.second_half_coefficient(s, t)
                if coefficient != 0.0:
                    g = yield Gradient(self.guidance_fn, x, t)
                    x = yield combine([(1.0, x), (-0.5 * dg * coefficient * w, g)])
        return x


SPLIT_OPTIONS = {**GUIDANCE_OPTIONS,
                 "diffusion_solver": Option("plms", one_of("plms", "heun"),
                                            "'plms' (the reference: Adams-Bashforth on the eps history) or 'heun' "
                                            "(EDM Heun, 2 model evaluations per step, self-starting)")}


class PLMS(_Guided):
    name = "plms"
    order = 4
    order_note = "4 (Adams-Bashforth on the eps history; 2 on non-uniform sigma grids)"
    nfe_per_step = "1 (+ 1 guidance gradient)"
    summary = "PLMS (Adams-Bashforth on eps), optional classifier guidance added to eps (the unsplit baseline)"
    needs_guidance = False


class LieTrotter(_Guided):
    name = "lie_trotter"
    order = 1
    order_note = "1"
    nfe_per_step = "1 (+ 1 guidance gradient)"
    summary = "Lie-Trotter splitting for classifier guidance (LTSP): Euler guidance step, then PLMS"
    split = "lie_trotter"
    options = SPLIT_OPTIONS


class Strang(_Guided):
    name = "strang"
    order = 1
    order_note = "1 with the PLMS eps history; 2 with exact or heun sub-solves and second_half='endpoint'"
    nfe_per_step = "1 (+ 2 guidance gradients; with second_half='endpoint' 1 gradient on a last step to 0)"
    summary = "Strang splitting for classifier guidance (STSP): half guidance, PLMS, half guidance at the new point"
    split = "strang"
    options = {**SPLIT_OPTIONS,
               "second_half": Option("authors", one_of("authors", "endpoint"),
                                     "'authors' (split-diffusion's stsp_sample: the half point's coefficient "
                                     "carried to the new point, also on the last step) or 'endpoint' (the new "
                                     "point's coefficient g_t)")}

    def second_half_coefficient(self, s: float, t: float) -> float:
        """``c`` of the second half guidance step ``x <- x - (dg/2) c w G(x, t)`` (module docstring)."""
        if self.config["second_half"] == "endpoint":
            return t
        half = 0.5 * (s + t)
        return half * math.sqrt(1.0 + t * t) / math.sqrt(1.0 + half * half)
