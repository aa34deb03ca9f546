"""Heun++ (ComfyUI's ``sample_heunpp2``, from Carzit/sd-webui-samplers-scheduler), with EDM churn.

With ``d(x, sigma) = (x - D(x, sigma)) / sigma``, sigma_0 the first sigma of the grid and a step
s -> t = sigmas[i+1] (after churn, as in EDM Euler/Heun: ``s_hat = s (1 + gamma)``, ``x_hat = x + s_noise
sqrt(s_hat^2 - s^2) z``), ``dt = t - s_hat``, ``d_1 = d(x_hat, s_hat)``:

    last step:             x_t = x_hat + dt d_1                                                (Euler)
    second-to-last step:   x_2 = x_hat + dt d_1,  d_2 = d(x_2, t),  w_2 = t / (2 sigma_0)
                           x_t = x_hat + dt ((1 - w_2) d_1 + w_2 d_2)
    every other step:      x_2, d_2 as above;  u = sigmas[i+2],  x_3 = x_2 + (u - t) d_2,  d_3 = d(x_3, u),
                           w_2 = t / (3 sigma_0),  w_3 = u / (3 sigma_0)
                           x_t = x_hat + dt ((1 - w_2 - w_3) d_1 + w_2 d_2 + w_3 d_3)

The weights tend to (1 - sigma/sigma_0 ..., sigma/(3 sigma_0), ...) rather than Heun's (1/2, 1/2), so the method is
consistent but first order (measured). Model evaluations: 3 per step, 2 on the second-to-last, 1 on the last.
Each line above is one fused-op call; the final combination reads (x_hat, D_1, x_2, D_2, x_3, D_3).
"""

from .edm import _ChurnedSolver, churned
from .program import Denoise, Report, combine


class HeunPP2(_ChurnedSolver):
    name = "heunpp2"
    order = 1
    order_note = "1 (weights sigma / (3 sigma_0), not Heun's 1/2)"
    nfe_per_step = "3 (2, 1 on the last two steps)"
    stochastic = False
    summary = "Heun++ with a third evaluation one step ahead (ComfyUI sample_heunpp2), optional churn"

    def program(self, sigmas, x):
        steps, first = len(sigmas) - 1, sigmas[0]
        for i in range(steps):
            x, s_hat = yield from churned(x, sigmas[i], self.gamma(sigmas, i), self.config["s_noise"], i)
            denoised = yield Denoise(x, s_hat)
            yield Report(i, x, sigmas[i], s_hat, denoised)
            t = sigmas[i + 1]
            x_2 = yield combine([(t / s_hat, x), (1 - t / s_hat, denoised)])
            if i + 1 == steps:
                x = x_2
                continue
            denoised_2 = yield Denoise(x_2, t)
            dt = t - s_hat
            if i + 2 == steps:
                w_2 = t / (2 * first)
                terms = [(dt * (1 - w_2) / s_hat, x, denoised), (dt * w_2 / t, x_2, denoised_2)]
            else:
                u = sigmas[i + 2]
                x_3 = yield combine([(u / t, x_2), (1 - u / t, denoised_2)])
                denoised_3 = yield Denoise(x_3, u)
                w_2, w_3 = t / (3 * first), u / (3 * first)
                terms = [(dt * (1 - w_2 - w_3) / s_hat, x, denoised), (dt * w_2 / t, x_2, denoised_2),
                         (dt * w_3 / u, x_3, denoised_3)]
            # x_hat + sum c (y - D_y): each derivative term enters as (c, y), (-c, D_y)
            row = [(1.0, x)]
            for c, y, d in terms:
                row += [(c, y), (-c, d)]
            x = yield combine(row)
        return x
