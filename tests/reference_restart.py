"""Independent float64 Restart samplers, following the two reference implementations line by line.

- ``restart_official``: Newbeeer/diffusion_restart_sampling ``edm/generate_restart.py`` ``restart_sampler`` (main EDM
  Heun loop over t_steps, ``restart_list = {argmin |t_steps - t_min|: v}``, after step i check ``i + 1 in
  restart_list``, jump with ``new_t_steps[0]^2 - new_t_steps[-1]^2``, churned inner Heun steps).
- ``restart_a1111``: AUTOMATIC1111's ``restart_sampler`` (a flat ``step_list`` of (old, new) sigma pairs; a jump
  whenever the next pair starts above the last sigma reached; both interval ends snapped).

No fastint code. Departures, for injected-noise comparability only: noise is drawn from
``noise(sigma_a, sigma_b, where)`` instead of ``randn_like``, and only when its coefficient is nonzero (the official
code draws a zero-scaled ``randn_like`` when gamma = 0). ``where`` is ("main", i) for the churn of main step i and
("restart", e) for restart event e (each jump and each inner step, in order: the numbering of docs/noise.md).
"""

import json
import math
import zlib

import torch


def _model(model, x, sigma):
    return model(x, torch.full((x.shape[0],), float(sigma), dtype=x.dtype))


def _get_steps(min_t, max_t, num_steps, rho):
    step_indices = torch.arange(num_steps, dtype=torch.float64)
    return (max_t ** (1 / rho) + step_indices / (num_steps - 1) * (min_t ** (1 / rho) - max_t ** (1 / rho))) ** rho


def restart_official(model, x, sigmas, noise, restart_info, S_noise=1.0, restart_gamma=0.05, S_min=0.0,
                     S_max=float("inf"), S_churn=0.0, rho=7.0, counter=None):
    t_steps = torch.as_tensor(sigmas, dtype=torch.float64)
    num_steps = len(t_steps) - 1
    if isinstance(restart_info, str):
        restart_info = json.loads(restart_info)
    restart_list = {int(torch.argmin(abs(t_steps - float(v[2])), dim=0)): v for k, v in restart_info.items()}
    nfe = 0
    e = 0
    x_next = x
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0
        t_hat = t_cur + gamma * t_cur
        x_hat = x_cur
        if gamma > 0:
            x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * noise(float(t_hat), float(t_cur), ("main", i))
        denoised = _model(model, x_hat, t_hat)
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        nfe += 1
        if i < num_steps - 1:
            denoised = _model(model, x_next, t_next)
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
            nfe += 1
        # ================= restart ================== #
        if i + 1 in restart_list.keys():
            restart_idx = i + 1
            n_restart, times, _, t_max = restart_list[restart_idx]
            for _ in range(int(times)):
                new_t_steps = _get_steps(min_t=t_steps[restart_idx], max_t=float(t_max), num_steps=int(n_restart),
                                         rho=rho)
                x_next = x_next + noise(float(t_steps[restart_idx]), float(t_max), ("restart", e)) * \
                    (new_t_steps[0] ** 2 - new_t_steps[-1] ** 2).sqrt() * S_noise
                e += 1
                for j, (t_cur, t_next) in enumerate(zip(new_t_steps[:-1], new_t_steps[1:])):
                    x_cur = x_next
                    gamma = restart_gamma if S_min <= t_cur <= S_max else 0
                    t_hat = t_cur + gamma * t_cur
                    x_hat = x_cur
                    if gamma > 0:
                        x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * \
                            noise(float(t_hat), float(t_cur), ("restart", e))
                    e += 1
                    denoised = _model(model, x_hat, t_hat)
                    d_cur = (x_hat - denoised) / t_hat
                    x_next = x_hat + (t_next - t_hat) * d_cur
                    nfe += 1
                    denoised = _model(model, x_next, t_next)
                    d_prime = (x_next - denoised) / t_next
                    x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
                    nfe += 1
    return x_next, nfe


def _karras(n, sigma_min, sigma_max, rho=7.0):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def restart_a1111(model, x, sigmas, noise, restart_list, s_noise=1.0):
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    nfe = 0

    def heun_step(x, old_sigma, new_sigma, second_order=True):
        nonlocal nfe
        denoised = _model(model, x, old_sigma)
        nfe += 1
        d = (x - denoised) / old_sigma
        dt = new_sigma - old_sigma
        if new_sigma == 0 or not second_order:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = _model(model, x_2, new_sigma)
            nfe += 1
            d_2 = (x_2 - denoised_2) / new_sigma
            d_prime = (d + d_2) / 2
            x = x + d_prime * dt
        return x

    restart_list = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart_list.items()}
    step_list = []
    for i in range(len(sigmas) - 1):
        step_list.append((sigmas[i], sigmas[i + 1], False))
        if i + 1 in restart_list:
            restart_steps, restart_times, restart_max = restart_list[i + 1]
            min_idx = i + 1
            max_idx = int(torch.argmin(abs(sigmas - restart_max), dim=0))
            if max_idx < min_idx:
                sigma_restart = _karras(restart_steps, sigmas[min_idx].item(), sigmas[max_idx].item())[:-1]
                while restart_times > 0:
                    restart_times -= 1
                    step_list.extend((a, b, True) for a, b in zip(sigma_restart[:-1], sigma_restart[1:]))
    last_sigma = None
    e = 0
    for old_sigma, new_sigma, inner in step_list:
        if last_sigma is None:
            last_sigma = old_sigma
        elif last_sigma < old_sigma:
            x = x + noise(float(last_sigma), float(old_sigma), ("restart", e)) * s_noise * \
                (old_sigma ** 2 - last_sigma ** 2) ** 0.5
            e += 1
        x = heun_step(x, old_sigma, new_sigma)
        if inner:
            e += 1
        last_sigma = new_sigma
    return x, nfe


class OccurrenceNoise:
    """``noise(sigma_a, sigma_b[, where])``: the n-th request of an interval gets the n-th tensor of that interval
    (so repeated restart jumps over one interval get fresh noise, identically in two implementations)."""

    def __init__(self, shape, seed, dtype=torch.float64):
        self.shape, self.seed, self.dtype = tuple(shape), seed, dtype
        self.count = {}
        self.calls = 0

    def __call__(self, sigma_a, sigma_b, where=None):
        key = (round(float(sigma_a), 10), round(float(sigma_b), 10))
        n = self.count.get(key, 0)
        self.count[key] = n + 1
        self.calls += 1
        gen = torch.Generator().manual_seed(zlib.crc32(repr((self.seed, key, n)).encode()))  # stable seed
        return torch.randn(self.shape, generator=gen, dtype=torch.float64).to(self.dtype)
