"""DPM-Solver++ multistep stepped as diffusers' ``DPMSolverMultistepScheduler`` steps it (``algorithm_type=
"dpmsolver++"``): its warm-up, its lower-order final steps and both second-order forms.

VE coordinates (alpha = 1), step s -> t, ``h = log(s / t)``, previous step sizes h_0, h_1 and data predictions
D (this step), D_1, D_2. Every order starts from the first-order (DDIM) step

    x_t = (t / s) x + (1 - e^{-h}) D                        (t = 0: x_t = D)

second order, r0 = h_0 / h, D1 = (D - D_1) / r0:
    midpoint:  + (1 - e^{-h}) / 2 * D1
    heun:      + phi_2 D1,  phi_2 = (e^{-h} - 1) / h + 1
third order, r1 = h_1 / h, D1_0 = (D - D_1) / r0, D1_1 = (D_1 - D_2) / r1,
    D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),  D2 = (D1_0 - D1_1) / (r0 + r1):
           + phi_2 D1 - phi_3 D2,  phi_3 = (e^{-h} - 1 + h) / h^2 - 1/2

(diffusers writes the same updates in VP coordinates, x_vp = alpha x: dividing by alpha_t gives these). The order of
step i of n: 1 when ``solver_order`` is 1, in the first step, or in the last step when ``euler_at_final``, the
final sigma is 0, or ``lower_order_final`` with a schedule of fewer than 15 steps; at most 2 in the second step and
(``lower_order_final``, fewer than 15 steps) in the second-to-last one; else ``solver_order``. ``schedule_steps``
is the length of the whole schedule when the run starts part-way (img2img), as diffusers counts it;
``trailing_steps = 1``: diffusers' schedule has one more step after these, of length 0 (its "sigma_min" final level
repeated: a model call that leaves the sample unchanged), so the last step here is its second-to-last.
"""

import math

from ..solvers.base import Option, Solver, one_of
from ..solvers.coefficients import log_step
from ..solvers.program import Denoise, Report, combine

__all__ = ["DiffusersDPMSolverPP"]

BOOL = one_of(True, False)


def _steps_or_none(v) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)


class DiffusersDPMSolverPP(Solver):
    name = "diffusers_dpmpp"
    order = 2
    order_note = "solver_order (2 or 3), lower at the ends as diffusers steps it"
    nfe_per_step = "1"
    summary = "DPM-Solver++ multistep with diffusers' DPMSolverMultistepScheduler step orders"
    options = {"solver_order": Option(2, one_of(1, 2, 3), "1, 2 or 3"),
               "solver_type": Option("midpoint", one_of("midpoint", "heun"), "'midpoint' or 'heun'"),
               "lower_order_final": Option(True, BOOL, "True or False"),
               "euler_at_final": Option(False, BOOL, "True or False"),
               "schedule_steps": Option(None, _steps_or_none, "None or an int >= 1"),
               "trailing_steps": Option(0, one_of(0, 1), "0 or 1")}

    def _orders(self, n: int, final_zero: bool):
        cfg = self.config
        total = cfg["schedule_steps"] or n
        short = cfg["lower_order_final"] and total < 15
        for i in range(n):
            from_end = n - 1 - i + cfg["trailing_steps"]
            if cfg["solver_order"] == 1 or i == 0 or (from_end == 0 and (cfg["euler_at_final"] or short or final_zero)):
                yield 1
            elif cfg["solver_order"] == 2 or i == 1 or (from_end == 1 and short):
                yield 2
            else:
                yield 3

    def correction(self, order: int, h: float, history, denoised):
        """[(coef, D)] added to the first-order step (``history`` = [(h_0, D_1), (h_1, D_2)], most recent first)."""
        if order == 1:
            return []
        phi_2 = math.expm1(-h) / h + 1
        h_0, d_1 = history[0]
        r0 = h_0 / h
        if order == 2:
            c = (-math.expm1(-h) / 2 if self.config["solver_type"] == "midpoint" else phi_2) / r0
            return [(c, denoised), (-c, d_1)]
        h_1, d_2 = history[1]
        r1 = h_1 / h
        phi_3 = (math.expm1(-h) + h) / (h * h) - 0.5
        p = phi_2 * (1 + r0 / (r0 + r1)) - phi_3 / (r0 + r1)     # coefficient of D1_0
        q = -phi_2 * r0 / (r0 + r1) + phi_3 / (r0 + r1)          # coefficient of D1_1
        return [(p / r0, denoised), (-p / r0 + q / r1, d_1), (-q / r1, d_2)]

    def program(self, sigmas, x):
        n = len(sigmas) - 1
        history = []
        for i, order in enumerate(self._orders(n, n > 0 and sigmas[-1] == 0)):
            s, t = sigmas[i], sigmas[i + 1]
            denoised = yield Denoise(x, s)
            yield Report(i, x, s, s, denoised)
            if t == 0:
                x = yield combine([(1.0, denoised)])
                continue
            h = log_step(s, t)
            terms = [(t / s, x), (-math.expm1(-h), denoised)] + self.correction(order, h, history, denoised)
            x = yield combine(terms)
            history = ([(h, denoised)] + history)[:2]
        return x
