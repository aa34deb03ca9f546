"""DPM-Solver-12 / DPM-Solver-23 with adaptive step size (Lu et al. 2022, arXiv 2206.00927, Sec. 4.3): k-diffusion's
``sample_dpm_adaptive``, the one sampler whose next step depends on tensor values.

Its steps cannot be recorded in advance (``fastint.executor`` replays recordings), so this module runs them itself:
each attempt is the recorded-style program fragment ``solvers.dpm_solver.dpm_solver_stages`` (one fused-op call per
stage) ending in ONE fused call that writes both the high-order result and the embedded lower-order one
(DPM-Solver-3 and -2 with r_1 = 1/3 for order 3; DPM-Solver-2 and -1 for order 2). Then, on the host:

    delta = max(atol, rtol max(|x_low|, |x_prev|)),   error = ||(x_low - x_high) / delta||_2 / sqrt(numel)

(x_prev: the last accepted x_low; one norm over the whole batch, as k-diffusion), read to the host (**one
device-to-host read per attempt**: this sampler synchronises every step, unlike every other fastint sampler), fed
to a PID step-size controller in lambda = -log sigma (Söderlind 2003: with inverse errors e_0, e_1, e_2 of this and
the two last accepted attempts, factor = 1 + atan(e_0^b_1 e_1^b_2 e_2^b_3 - 1), b_1 = (p + i + d) / k,
b_2 = -(p + 2 d) / k, b_3 = d / k, k = order (1.5 when eta > 0); accept when factor >= accept_safety; h *= factor).
An accepted step with eta > 0 goes to ``max(sigma_down, sigma_min)`` and adds ``s_noise sqrt(t^2 - that^2) z`` in one
more fused call (z: in-kernel stream 0 at counter = the accepted step's index, or ``noise_sampler(s, t)``).
Every attempt evaluates the model ``order`` times (a rejected attempt's evaluations are not reused, as in
k-diffusion).
"""

import math
from typing import Any, Callable, Dict, List, Optional

import torch

from .ops import fused_step
from .solvers.coefficients import ancestral_step
from .solvers.dpm_solver import dpm_solver_stages
from .solvers.program import Combine, Denoise


class PIDStepSizeController:
    """The step size h in lambda and its PID update from the attempts' errors (see the module docstring)."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float, accept_safety: float,
                 eps: float = 1e-8):
        self.h, self.accept_safety, self.eps = h, accept_safety, eps
        self.exponents = ((pcoeff + icoeff + dcoeff) / order, -(pcoeff + 2 * dcoeff) / order, dcoeff / order)
        self.inverse_errors: Optional[List[float]] = None   # this attempt's, then the two last accepted ones'

    def propose_step(self, error: float) -> bool:
        """Update h from ``error``; whether the attempt is accepted."""
        inverse = 1 / (error + self.eps)
        if self.inverse_errors is None:
            self.inverse_errors = [inverse] * 3
        self.inverse_errors[0] = inverse
        factor = math.prod(e ** b for e, b in zip(self.inverse_errors, self.exponents))
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.inverse_errors[1:] = self.inverse_errors[:2]
        self.h *= factor
        return accept


class _Attempt:
    """Answers a program fragment's requests directly: Denoise by the model, Combine by one fused-op call."""

    def __init__(self, model: Callable, extra_args: Dict[str, Any], x: torch.Tensor, backend: Optional[str]):
        self.model, self.extra_args, self.backend = model, extra_args, backend
        self.shape, self.dtype, self.device = x.shape, x.dtype, x.device

    def denoise(self, state: torch.Tensor, sigma: float) -> torch.Tensor:
        out = self.model(state, torch.full((self.shape[0],), sigma, dtype=self.dtype, device=self.device),
                         **self.extra_args)
        if not isinstance(out, torch.Tensor) or out.shape != self.shape or not out.is_floating_point() \
                or out.device != self.device:
            raise ValueError(f"the model returned {getattr(out, 'shape', type(out).__name__)}; expected a floating "
                             f"point tensor of shape {tuple(self.shape)} on {self.device}")
        return out.contiguous()

    def combine(self, rows) -> List[torch.Tensor]:
        inputs: List[torch.Tensor] = []
        position: Dict[int, int] = {}
        for row in rows:
            for _, h in row:
                if id(h) not in position:
                    position[id(h)] = len(inputs)
                    inputs.append(h)
        matrix = [[0.0] * len(inputs) for _ in rows]
        for m, row in enumerate(rows):
            for c, h in row:
                matrix[m][position[id(h)]] += c
        return fused_step(inputs, matrix, backend=self.backend)

    def run(self, fragment):
        sent = None
        while True:
            try:
                request = fragment.send(sent)
            except StopIteration as stop:
                return stop.value
            if type(request) is Denoise:
                sent = self.denoise(request.state, request.sigma)
            elif type(request) is Combine:
                outs = self.combine(request.rows)
                sent = outs[0] if len(outs) == 1 else tuple(outs)
            else:
                raise TypeError(f"dpm_adaptive: unexpected request {type(request).__name__}")


def _stages_and_results(x, denoised, s: float, t: float, order: int):
    """Fragment: the stages of one attempt, then one fused call writing (x_high, x_low)."""
    rows = yield from dpm_solver_stages(x, denoised, s, t, order, 1 / 3 if order == 3 else 1 / 2)
    low, high = (rows["x_2"], rows["x_3"]) if order == 3 else (rows["x_1"], rows["x_2"])
    return (yield Combine((tuple(high), tuple(low))))


def dpm_adaptive(model: Callable, x: torch.Tensor, sigma_min: float, sigma_max: float, *,
                 extra_args: Dict[str, Any], order: int, rtol: float, atol: float, h_init: float, pcoeff: float,
                 icoeff: float, dcoeff: float, accept_safety: float, eta: float, s_noise: float,
                 noise_sampler: Optional[Callable], seeds: Optional[torch.Tensor], backend: Optional[str],
                 callback: Optional[Callable] = None, progress_bar=None):
    """Run the adaptive sampler from ``x`` at ``sigma_max`` down to ``sigma_min`` (arguments already validated by
    ``fastint.k_diffusion.sample_dpm_adaptive``); returns ``(x, info)`` with k-diffusion's ``info``."""
    attempt = _Attempt(model, extra_args, x, backend)
    lam, lam_end = -math.log(sigma_max), -math.log(sigma_min)
    pid = PIDStepSizeController(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
    x_prev = x
    numel_root = math.sqrt(x.numel())
    while lam < lam_end - 1e-5:
        lam_next = min(lam_end, lam + pid.h)
        s, t = math.exp(-lam), math.exp(-lam_next)
        target, up = t, 0.0
        if eta:
            down, _ = ancestral_step(s, t, eta)
            target = max(down, math.exp(-lam_end))   # the end level as the grid computes it: no noise on the last step
            up = math.sqrt(max(t * t - target * target, 0.0))
        denoised = attempt.denoise(x, s)
        x_high, x_low = attempt.run(_stages_and_results(x, denoised, s, target, order))
        delta = torch.maximum(torch.full_like(x_low, atol), rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = (torch.linalg.vector_norm((x_low - x_high) / delta) / numel_root).item()   # the host read
        if not math.isfinite(error):
            raise FloatingPointError(f"dpm_adaptive: the error estimate at sigma={s:.6g} is {error} (a model output "
                                     "contains NaN or Inf?)")
        if pid.propose_step(error):
            x_prev = x_low
            if up > 0 and s_noise > 0:
                if noise_sampler is not None:
                    z = noise_sampler(s, t)
                    if not isinstance(z, torch.Tensor) or z.shape != x.shape:
                        raise ValueError(f"noise_sampler returned {getattr(z, 'shape', type(z))}; expected a "
                                         f"tensor of shape {tuple(x.shape)}")
                    x_high = fused_step([x_high, z.to(x_high.device).contiguous()], [[1.0, s_noise * up]],
                                        out=x_high, backend=backend)[0]
                else:
                    x_high = fused_step([x_high], [[1.0, s_noise * up]], num_noise=1, seeds=seeds,
                                        counter=info["n_accept"], out=x_high, backend=backend)[0]
            x = x_high
            lam = lam_next
            info["n_accept"] += 1
        else:
            info["n_reject"] += 1
        info["nfe"] += order
        info["steps"] += 1
        if progress_bar is not None:
            progress_bar.update(order)
        if callback is not None:
            sigma = math.exp(-lam)
            callback({"x": x, "i": info["steps"] - 1, "sigma": sigma, "sigma_hat": sigma, "t": lam, "t_up": lam,
                      "denoised": denoised, "error": error, "h": pid.h, **info})
    return x, info
