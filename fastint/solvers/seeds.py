"""SEEDS-1/2/3: stochastic exponential derivative-free solvers (Gonzalez et al. 2023), ComfyUI's data-prediction form.

VE coordinates, step s -> t, ``h = log(s / t)``, ``h_eta = (1 + eta) h``; a stage at fraction r of the step sits at
``sigma_r = s e^{-r h}`` and has the linear part ``(sigma_r / s) e^{-r eta h} x``. Noise: one Brownian path over the
step, ``sigma_r s_noise n_r`` with ``n_r`` from ``coefficients.brownian_stage_noise`` (Var n_r = 1 - e^{-2 r eta h}),
so a later stage reuses the earlier stages' z and the step injects exactly ``t^2 (1 - e^{-2 eta h})``.

    SEEDS-1: x_t = lin_1 - expm1(-h_eta) D + t s_noise n_1
    SEEDS-2: x_2 = lin_r - expm1(-r h_eta) D + sigma_r s_noise n_r;  D_2 = D(x_2, sigma_r)
             phi_1: x_t = lin_1 - expm1(-h_eta) ((1 - 1/(2r)) D + (1/(2r)) D_2) + t s_noise n_1
             phi_2: b_2 = phi2(-h_eta)/r, b_1 = expm1(-h_eta) - b_2:  x_t = lin_1 - (b_1 D + b_2 D_2) + t s_noise n_1
    SEEDS-3: stages r_1 < r_2: x_2 as SEEDS-2 at r_1; a32 = (r_2/r_1) phi2(-r_2 h_eta), a31 = expm1(-r_2 h_eta) - a32,
             x_3 = lin_{r_2} - (a31 D + a32 D_2) + sigma_{r_2} s_noise n_{r_2};  D_3 = D(x_3, sigma_{r_2})
             b_3 = phi2(-h_eta)/r_2, b_1 = expm1(-h_eta) - b_3:  x_t = lin_1 - (b_1 D + b_3 D_3) + t s_noise n_1
with phi2(v) = (expm1(v) - v)/v. A step to sigma = 0 returns D. eta = 0 gives the deterministic exponential
Runge-Kutta methods (orders 1, 2, 3). SEEDS-2 takes r in (0, 1]: at r = 1 its stage sits on the end point t
(sigma_r = t exactly) and the final combination reuses the stage's noise n_1 (no second sub-interval), which is
ComfyUI's exp_heun_2_x0 (eta = 0) and exp_heun_2_x0_sde: the exponential Heun method in data prediction, phi_2 by
default. Each stage and the final combination is one fused-op call; the final SEEDS-3 call reads (x, D, D_3) and
regenerates z_1, z_2, z_3 in-kernel instead of storing them.
"""

import math

from .base import NOISE_OPTIONS, Option, Solver, one_of, unit_interval_open
from .coefficients import brownian_stage_noise, log_step, phi2
from .program import Denoise, NoiseEvent, Report, combine


class _Seeds(Solver):
    stochastic = True

    def stage_fractions(self):
        return []

    def noise_levels(self):
        """(eta, s_noise) of this configured solver."""
        return self.config["eta"], self.config["s_noise"]

    def stage_combination(self, stage, h_eta, denoised_list):
        """[(coef, D)] of stage ``stage`` (1-based among the intermediate stages, 0 = final)."""
        raise NotImplementedError

    def program(self, sigmas, x):
        eta, s_noise = self.noise_levels()
        fractions = self.stage_fractions()
        for i in range(len(sigmas) - 1):
            s, t = sigmas[i], sigmas[i + 1]
            denoised = yield Denoise(x, s, fuse=False)
            yield Report(i, x, s, s, denoised)
            if t == 0:
                x = yield combine([(1.0, denoised)])
                continue
            h = log_step(s, t)
            h_eta = (1 + eta) * h
            points = fractions + [1.0]
            sigma_of = {r: t if r == 1 else s * math.exp(-r * h) for r in points}
            distinct = sorted(sigma_of)   # a stage at r = 1 shares the end point's sub-interval and noise
            noisy = eta > 0 and s_noise > 0
            event = NoiseEvent(i, [(s if k == 0 else sigma_of[distinct[k - 1]], sigma_of[distinct[k]])
                                   for k in range(len(distinct))]) if noisy else None
            derived = [denoised]
            for j, r in enumerate(points):
                final = j == len(points) - 1
                sigma_r = sigma_of[r]
                terms = [((sigma_r / s) * math.exp(-r * eta * h), x)]
                terms += self.stage_combination(0 if final else j + 1, h_eta, derived)
                noise = None
                if noisy:
                    upto = distinct[:distinct.index(r) + 1]
                    noise = (event, [sigma_r * s_noise * c for c in brownian_stage_noise(upto, eta * h)])
                if not final:
                    stage_x = yield combine(terms, noise)
                    derived.append((yield Denoise(stage_x, sigma_r, fuse=False)))
                else:
                    x = yield combine(terms, noise)
        return x


class Seeds1(_Seeds):
    name = "seeds_1"
    order = 1
    order_note = "1"
    nfe_per_step = "1"
    summary = "SEEDS-1 (= DPM-Solver++(1) SDE)"
    options = NOISE_OPTIONS

    def stage_combination(self, stage, h_eta, d):
        return [(-math.expm1(-h_eta), d[0])]


SOLVER_TYPE = Option("phi_1", one_of("phi_1", "phi_2"), "'phi_1' or 'phi_2'")


def unit_interval_half_open(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1


class Seeds2(_Seeds):
    name = "seeds_2"
    order = 2
    order_note = "2 (ODE, eta = 0); 1 strong (SDE)"
    nfe_per_step = "2 (1 on the last step to 0)"
    summary = "SEEDS-2 (ComfyUI sample_seeds_2), phi_1 or phi_2 final combination"
    options = {**NOISE_OPTIONS, "r": Option(0.5, unit_interval_half_open, "a number in (0, 1]"),
               "solver_type": SOLVER_TYPE}

    def fraction(self) -> float:
        """r, the stage's fraction of the step."""
        return self.config["r"]

    def stage_fractions(self):
        return [self.fraction()]

    def stage_combination(self, stage, h_eta, d):
        r = self.fraction()
        if stage == 1:
            return [(-math.expm1(-r * h_eta), d[0])]
        if self.config["solver_type"] == "phi_2":
            b2 = phi2(-h_eta) / r
            return [(-(math.expm1(-h_eta) - b2), d[0]), (-b2, d[1])]
        e = -math.expm1(-h_eta)
        return [(e * (1 - 1 / (2 * r)), d[0]), (e / (2 * r), d[1])]


class Seeds3(_Seeds):
    name = "seeds_3"
    order = 3
    order_note = "3 (ODE, eta = 0); 1 strong (SDE)"
    nfe_per_step = "3 (1 on the last step to 0)"
    summary = "SEEDS-3 (ComfyUI sample_seeds_3), stages at r_1, r_2"
    options = {**NOISE_OPTIONS, "r_1": Option(1 / 3, unit_interval_open, "a number in (0, 1)"),
               "r_2": Option(2 / 3, unit_interval_open, "a number in (0, 1)")}

    def __init__(self, **options):
        super().__init__(**options)
        if not self.config["r_1"] < self.config["r_2"]:
            raise ValueError(f"solver 'seeds_3': needs r_1 < r_2, got r_1={self.config['r_1']}, "
                             f"r_2={self.config['r_2']}")

    def stage_fractions(self):
        return [self.config["r_1"], self.config["r_2"]]

    def stage_combination(self, stage, h_eta, d):
        r_1, r_2 = self.config["r_1"], self.config["r_2"]
        if stage == 1:
            return [(-math.expm1(-r_1 * h_eta), d[0])]
        if stage == 2:
            a32 = (r_2 / r_1) * phi2(-r_2 * h_eta)
            return [(-(math.expm1(-r_2 * h_eta) - a32), d[0]), (-a32, d[1])]
        b3 = phi2(-h_eta) / r_2
        return [(-(math.expm1(-h_eta) - b3), d[0]), (-b3, d[2])]


class ExpHeun2X0(Seeds2):
    name = "exp_heun_2_x0"
    order = 2
    order_note = "2"
    nfe_per_step = "2 (1 on the last step to 0)"
    stochastic = False
    summary = "exponential Heun in data prediction = SEEDS-2 with r = 1, eta = 0 (ComfyUI sample_exp_heun_2_x0)"
    options = {"solver_type": Option("phi_2", SOLVER_TYPE.check, SOLVER_TYPE.valid)}

    def fraction(self) -> float:
        return 1.0

    def noise_levels(self):
        return 0.0, 0.0


class ExpHeun2X0SDE(Seeds2):
    name = "exp_heun_2_x0_sde"
    order = 2
    order_note = "2 (ODE, eta = 0); 1 strong (SDE)"
    nfe_per_step = "2 (1 on the last step to 0)"
    summary = "stochastic exponential Heun = SEEDS-2 with r = 1 (ComfyUI sample_exp_heun_2_x0_sde)"
    options = {**NOISE_OPTIONS, "solver_type": Option("phi_2", SOLVER_TYPE.check, SOLVER_TYPE.valid)}

    def fraction(self) -> float:
        return 1.0
