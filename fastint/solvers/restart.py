"""Restart sampling (Xu et al., NeurIPS 2023), as the reference ``restart_sampler`` runs it.

Reference: Newbeeer/diffusion_restart_sampling, ``edm/generate_restart.py`` (the ``restart_info`` form) and
AUTOMATIC1111's k-diffusion-style ``restart_sampler`` (the ``restart_list`` form). VE/EDM coordinates.

**Main pass.** EDM Heun steps down the caller's ``sigmas`` (Euler on the last step to 0, NFE 2N - 1), with EDM churn
``gamma = min(s_churn / N, sqrt(2) - 1)`` for ``s_min <= sigma_i <= s_max`` (``s_churn = 0`` by default, as in the
reference). ``main_solver`` may name another deterministic fastint solver (see below).

**Restart intervals.** Each interval is ``(N_restart, K, t_min, t_max)``. ``t_min`` is snapped to the nearest
main-grid sigma ``sigmas[idx]`` (nearest over the whole grid, as ``argmin |t_steps - t_min|`` in the reference), and
the interval fires right after the main step that lands on ``sigmas[idx]``. Then, K times:

    jump:   x <- x + s_noise sqrt(t_max^2 - sigmas[idx]^2) z
    inner:  N_restart - 1 Heun steps down the fresh Karras grid
            t_j = (t_max^(1/rho) + j/(N_restart-1) (sigmas[idx]^(1/rho) - t_max^(1/rho)))^rho,  j = 0..N_restart-1,
            each churned first with gamma = restart_gamma when s_min <= t_j <= s_max:
            t_hat = t_j (1 + gamma),  x_hat = x + s_noise sqrt(t_hat^2 - t_j^2) z   (then Heun from t_hat to t_{j+1})

NFE = (2N - 1) + sum_i K_i 2 (N_restart,i - 1)  (``restart_nfe``; the run's count is asserted equal in the tests).

**The two configuration forms** (give one, or ``preset``; none gives the plain Heun main pass, like the reference
with an empty ``restart_info``):

- ``restart_info`` (official): ``{key: [N_restart, K, t_min, t_max]}`` (a dict or its JSON string; numbers may be
  numeric strings as in the official commands). Keys are interval indices; listed in key order the intervals must
  fire in sampling order (strictly decreasing t_min) -- else "unsorted" is raised. t_max is used as given. Default
  ``restart_gamma`` 0.05 (the official setting).
- ``restart_list`` (A1111): ``{min_sigma: [N_restart, K, max_sigma]}``. Both min_sigma and max_sigma are snapped to
  the nearest main-grid sigma (A1111 snaps max_sigma too); the order of the keys does not matter. Default
  ``restart_gamma`` 0 (A1111 has no inner churn).

Validation (clear ``ValueError``s): 0 < t_min < t_max; both inside the positive range of the main grid
``[min positive sigma, sigmas[0]]``; t_min must not snap to sigmas[0] (no step lands there) nor to a 0; after
snapping t_min < t_max; N_restart >= 2, K >= 1; two intervals may not snap to the same main-grid sigma.
(A1111 silently skips an interval whose snapped ends coincide; fastint raises instead.)

**Other inner / main solvers.** ``inner_solver`` / ``main_solver`` may be any deterministic fastint solver
(``heun`` default, ``euler``, ``ddim``, ``dpmpp_2m``, ``dpmpp_3m``). Heun and Euler run here with churn; the others
run on the grid segment through their own ``run`` (multistep history restarts at each segment: after a restart the
old denoised values belong to another trajectory) and take no churn (``restart_gamma`` / ``s_churn`` must be 0).

**Noise addressing** (docs/noise.md): main step i uses counter i (churn: stream 0); the restart events -- each jump and
each inner step, churned or not, in sampling order, numbered e = 0, 1, ... over the whole run -- use counter
``len(sigmas) + e``, stream 0. With an injected ``noise_sampler`` a jump asks ``(t_min, t_max)`` and a churned step
``(t_hat, t_j)``; note that an interval-keyed sampler (a Brownian tree) returns the same tensor for repeated jumps over
the same interval, which is not what Restart wants: give one that draws fresh noise per call.

Every churn, jump, Euler predictor and Heun corrector is one fused-op call.
"""

import json
import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from .base import Option, Solver, non_negative
from .edm import churned, heun_step
from .program import Denoise, NoiseEvent, Report, combine, nested
from .restart_presets import PRESETS

DETERMINISTIC = ("heun", "euler", "ddim", "dpmpp_2m", "dpmpp_3m")
CHURNABLE = ("heun", "euler")


@dataclass(frozen=True)
class RestartInterval:
    """A restart interval placed on a main grid: fires after the main step landing on ``sigmas[index]``."""

    index: int
    n_restart: int
    times: int
    t_min: float   # = sigmas[index] (snapped)
    t_max: float
    grid: Tuple[float, ...]  # N_restart Karras values from t_max down to t_min


def inner_grid(t_min: float, t_max: float, n: int, rho: float = 7.0) -> Tuple[float, ...]:
    """The reference's ``get_steps``: n Karras values from t_max to t_min (end points exact)."""
    lo, hi = t_min ** (1 / rho), t_max ** (1 / rho)
    grid = [(hi + j / (n - 1) * (lo - hi)) ** rho for j in range(n)]
    grid[0], grid[-1] = t_max, t_min
    return tuple(grid)


def _number(value, kind, what):
    try:
        out = kind(float(value)) if kind is int else float(value)
    except (TypeError, ValueError):
        raise ValueError(f"restart: {what} must be a number, got {value!r}") from None
    if kind is int and float(value) != out:
        raise ValueError(f"restart: {what} must be an integer, got {value!r}")
    if not math.isfinite(out):
        raise ValueError(f"restart: {what} must be finite, got {value!r}")
    return out


def parse_restart_info(info) -> List[Tuple[int, int, float, float]]:
    """The official form -> [(N_restart, K, t_min, t_max)] in key order (checked sorted by decreasing t_min)."""
    if isinstance(info, str):
        info = json.loads(info) if info.strip() else {}
    if not isinstance(info, dict):
        raise ValueError(f"restart_info must be a dict {{key: [N_restart, K, t_min, t_max]}} or its JSON string, "
                         f"got {type(info).__name__}")
    keys = list(info)
    try:
        keys = sorted(keys, key=lambda k: int(k))
    except (TypeError, ValueError):
        pass  # non-integer keys: insertion order
    out = []
    for key in keys:
        value = info[key]
        if not isinstance(value, (list, tuple)) or len(value) != 4:
            raise ValueError(f"restart_info[{key!r}] must be [N_restart, K, t_min, t_max], got {value!r}")
        out.append((_number(value[0], int, f"restart_info[{key!r}] N_restart"),
                    _number(value[1], int, f"restart_info[{key!r}] K"),
                    _number(value[2], float, f"restart_info[{key!r}] t_min"),
                    _number(value[3], float, f"restart_info[{key!r}] t_max")))
    for a, b in zip(out, out[1:]):
        if not b[2] < a[2]:
            raise ValueError(f"restart_info intervals are unsorted: listed in key order they must fire in sampling "
                             f"order (strictly decreasing t_min), got t_min {a[2]} then {b[2]}")
    return out


def parse_restart_list(restart_list) -> List[Tuple[int, int, float, float]]:
    """A1111's form -> [(N_restart, K, min_sigma, max_sigma)] sorted by decreasing min_sigma."""
    if not isinstance(restart_list, dict):
        raise ValueError(f"restart_list must be a dict {{min_sigma: [N_restart, K, max_sigma]}}, got "
                         f"{type(restart_list).__name__}")
    out = []
    for key, value in restart_list.items():
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise ValueError(f"restart_list[{key!r}] must be [N_restart, K, max_sigma], got {value!r}")
        out.append((_number(value[0], int, f"restart_list[{key!r}] N_restart"),
                    _number(value[1], int, f"restart_list[{key!r}] K"),
                    _number(key, float, "restart_list key (min_sigma)"),
                    _number(value[2], float, f"restart_list[{key!r}] max_sigma")))
    return sorted(out, key=lambda r: -r[2])


def _check_interval(n, k, t_min, t_max, where):
    if n < 2:
        raise ValueError(f"restart: {where}: N_restart must be >= 2 (N_restart - 1 inner steps), got {n}")
    if k < 1:
        raise ValueError(f"restart: {where}: K (restart times) must be >= 1, got {k}")
    if not 0 < t_min < t_max:
        raise ValueError(f"restart: {where}: needs 0 < t_min < t_max, got t_min {t_min} above or at t_max {t_max}"
                         if t_min >= t_max else f"restart: {where}: t_min must be > 0, got {t_min}")


def _nearest(sigmas: Sequence[float], value: float) -> int:
    return min(range(len(sigmas)), key=lambda i: (abs(sigmas[i] - value), i))


def plan_restart(sigmas: Sequence[float], intervals: Sequence[Tuple[int, int, float, float]], a1111: bool,
                 rho: float = 7.0) -> Dict[int, RestartInterval]:
    """Place parsed intervals on the main grid: {main-grid index: RestartInterval}; raises on bad placement."""
    sigmas = [float(s) for s in sigmas]
    positive = [s for s in sigmas if s > 0]
    lo, hi = positive[-1], positive[0]
    plan: Dict[int, RestartInterval] = {}
    for n, k, t_min, t_max in intervals:
        where = f"interval [{n}, {k}, t_min={t_min}, t_max={t_max}]"
        _check_interval(n, k, t_min, t_max, where)
        tol = 1e-9 * hi
        if t_max > hi + tol or t_min < lo - tol:
            raise ValueError(f"restart: {where} lies outside the sigma range of the main grid [{lo:.6g}, {hi:.6g}]")
        idx = _nearest(sigmas, t_min)
        if idx == 0:
            raise ValueError(f"restart: {where}: t_min snaps to sigmas[0] = {hi:.6g}; no main step lands there")
        if sigmas[idx] <= 0:
            raise ValueError(f"restart: {where}: t_min snaps to sigma = 0")
        if a1111:
            max_idx = _nearest(sigmas, t_max)
            if max_idx >= idx:
                raise ValueError(f"restart: {where}: min_sigma and max_sigma snap to main-grid sigmas "
                                 f"{sigmas[idx]:.6g} and {sigmas[max_idx]:.6g}: no interval left")
            t_max = sigmas[max_idx]
        if not sigmas[idx] < t_max:
            raise ValueError(f"restart: {where}: t_min snaps to {sigmas[idx]:.6g}, not below t_max")
        if idx in plan:
            raise ValueError(f"restart: two intervals snap to the same main-grid sigma {sigmas[idx]:.6g} "
                             f"(index {idx})")
        plan[idx] = RestartInterval(idx, n, k, sigmas[idx], t_max, inner_grid(sigmas[idx], t_max, n, rho))
    return dict(sorted(plan.items()))


def _steps_nfe(solver: str, grid: Sequence[float]) -> int:
    steps = len(grid) - 1
    if solver == "heun":
        return 2 * steps - (1 if grid[-1] == 0 else 0)
    return steps


def restart_nfe(sigmas: Sequence[float], plan: Dict[int, RestartInterval], main_solver: str = "heun",
                inner_solver: str = "heun") -> int:
    """Model evaluations of a Restart run: with Heun, 2N - 1 + sum_i K_i 2 (N_restart,i - 1)."""
    sigmas = [float(s) for s in sigmas]
    return _steps_nfe(main_solver, sigmas) + sum(r.times * _steps_nfe(inner_solver, r.grid) for r in plan.values())


def _gamma_check(v):
    return v is None or (non_negative(v) and v <= math.sqrt(2) - 1 + 1e-12)


class Restart(Solver):
    name = "restart"
    order = 2
    order_note = "2 (main pass and inner steps: Heun)"
    nfe_per_step = "2 (1 on the last step to 0) + 2 (N_restart - 1) K per restart interval"
    stochastic = True
    summary = ("Restart sampling (Heun main pass + forward jumps + churned inner Heun); intervals from restart_list "
               "(A1111), restart_info (official) or preset (none: plain Heun)")
    options = {
        "restart_list": Option(None, lambda v: v is None or isinstance(v, dict),
                               "None or {min_sigma: [N_restart, K, max_sigma]} (A1111 form)"),
        "restart_info": Option(None, lambda v: v is None or isinstance(v, (dict, str)),
                               "None, {key: [N_restart, K, t_min, t_max]} or its JSON string (official form)"),
        "preset": Option(None, lambda v: v is None or v in PRESETS, "None or one of " + ", ".join(PRESETS)),
        "s_noise": Option(1.0, non_negative, "a finite number >= 0"),
        "restart_gamma": Option(None, _gamma_check, "None (0.05 for restart_info/preset, 0 for restart_list) or "
                                "a number in [0, sqrt(2) - 1]"),
        "s_min": Option(0.0, non_negative, "a number >= 0"),
        "s_max": Option(float("inf"), lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
                        "a number >= 0 (inf allowed)"),
        "s_churn": Option(0.0, non_negative, "a finite number >= 0 (EDM churn of the main pass)"),
        "rho": Option(7.0, lambda v: non_negative(v) and v > 0, "a number > 0 (the inner grids' Karras rho)"),
        "main_solver": Option("heun", lambda v: v in DETERMINISTIC, "one of " + ", ".join(DETERMINISTIC)),
        "inner_solver": Option("heun", lambda v: v in DETERMINISTIC, "one of " + ", ".join(DETERMINISTIC)),
    }

    def __init__(self, **options):
        super().__init__(**options)
        cfg = self.config
        given = [k for k in ("restart_list", "restart_info", "preset") if cfg[k] is not None]
        if len(given) > 1:
            raise ValueError(f"solver 'restart': give one of restart_list, restart_info, preset; got {given}")
        self.a1111 = cfg["restart_list"] is not None
        if self.a1111:
            self.intervals = parse_restart_list(cfg["restart_list"])
        elif cfg["preset"] is not None:
            preset = PRESETS[cfg["preset"]]
            self.a1111 = preset.restart_list is not None
            self.intervals = (parse_restart_list(preset.restart_list) if self.a1111
                              else parse_restart_info(preset.restart_info))
        else:
            self.intervals = parse_restart_info(cfg["restart_info"] or {})
        for n, k, t_min, t_max in self.intervals:
            _check_interval(n, k, t_min, t_max, f"interval [{n}, {k}, {t_min}, {t_max}]")
        gamma = cfg["restart_gamma"]
        if gamma is None:
            gamma = 0.0 if (self.a1111 or cfg["inner_solver"] not in CHURNABLE) else 0.05
        if gamma > 0 and cfg["inner_solver"] not in CHURNABLE:
            raise ValueError(f"solver 'restart': restart_gamma churns Heun/Euler inner steps; set restart_gamma=0 "
                             f"with inner_solver={cfg['inner_solver']!r}")
        if cfg["s_churn"] > 0 and cfg["main_solver"] not in CHURNABLE:
            raise ValueError(f"solver 'restart': s_churn churns a Heun/Euler main pass; set s_churn=0 with "
                             f"main_solver={cfg['main_solver']!r}")
        self.gamma = gamma

    def uses_noise(self) -> bool:
        return self.config["s_noise"] > 0 and (bool(self.intervals) or self.config["s_churn"] > 0)

    def plan(self, sigmas: Sequence[float]) -> Dict[int, RestartInterval]:
        return plan_restart(sigmas, self.intervals, self.a1111, self.config["rho"])

    def _step(self, x, s, t, gamma, counter, step_id, second_order):
        """Program fragment: one churned Heun (or Euler) step from s to t."""
        x, s_hat = yield from churned(x, s, gamma, self.config["s_noise"], counter)
        denoised = yield Denoise(x, s_hat, fuse=False)
        yield Report(step_id, x, s, s_hat, denoised)
        return (yield from heun_step(x, denoised, s_hat, t, second_order))

    @staticmethod
    def _segment(x, solver_name, grid, step_id):
        """Program fragment: another deterministic solver down ``grid`` (its reports numbered from ``step_id``)."""
        from . import get_solver
        x = yield from nested(get_solver(solver_name).program([float(v) for v in grid], x), step_id)
        return x, step_id + len(grid) - 1

    def program(self, sigmas, x):
        cfg = self.config
        plan = self.plan(sigmas)
        n_main = len(sigmas) - 1
        main, inner = cfg["main_solver"], cfg["inner_solver"]
        base, event, step_id = len(sigmas), 0, 0
        stops = sorted(plan) + ([n_main] if n_main not in plan else [])
        start = 0
        for stop in stops:
            # main pass from sigmas[start] down to sigmas[stop]
            if main in CHURNABLE:
                for i in range(start, stop):
                    s = sigmas[i]
                    gamma = (min(cfg["s_churn"] / n_main, math.sqrt(2) - 1)
                             if cfg["s_churn"] > 0 and cfg["s_min"] <= s <= cfg["s_max"] else 0.0)
                    x = yield from self._step(x, s, sigmas[i + 1], gamma, i, step_id, main == "heun")
                    step_id += 1
            else:
                x, step_id = yield from self._segment(x, main, sigmas[start:stop + 1], step_id)
            start = stop
            interval = plan.get(stop)
            if interval is None:
                continue
            jump = cfg["s_noise"] * math.sqrt(interval.t_max ** 2 - interval.t_min ** 2)
            for _ in range(interval.times):
                noise = (NoiseEvent(base + event, [(interval.t_min, interval.t_max)]), [jump])
                x = yield combine([(1.0, x)], noise)
                event += 1
                if inner in CHURNABLE:
                    for j in range(interval.n_restart - 1):
                        s = interval.grid[j]
                        gamma = self.gamma if cfg["s_min"] <= s <= cfg["s_max"] else 0.0
                        x = yield from self._step(x, s, interval.grid[j + 1], gamma, base + event, step_id,
                                                  inner == "heun")
                        event += 1
                        step_id += 1
                else:
                    x, step_id = yield from self._segment(x, inner, interval.grid, step_id)
                    event += interval.n_restart - 1
        return x
