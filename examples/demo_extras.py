"""The demo's Restart and guided-splitting parts (``register()`` adds their rows to ``demo``).

1. Main table entries: ``restart`` (Heun main pass + one restart interval ``[3, 2, 1.0, 3.0]`` when it fits the grid)
   and ``lie_trotter`` / ``strang`` as class-conditional samplers with labels drawn from the class prior
   (the mixture's weights) and guidance scale 1: ``sum_y p(y) p(x | y) = p(x)``, so their samples target the same
   unconditional mixture as every other row.
2. ``restart_table``: the prior-mismatch task where the ODE plateaus: sigma_max = 3, x ~ N(0, 3^2) (the true
   marginal at sigma = 3 is much wider), Restart vs Heun vs dpmpp_2m_sde at equal NFE.
3. ``guided_table``: guidance towards a class with the exact classifier (the component posterior), error of plms,
   lie_trotter and strang against the exact solution of the guided probability-flow ODE (DOP853), at w = 1 (where the
   target p(x | y) is exact) and w = 8, with steps, gradient evaluations and time.
"""

import math
import time
from typing import Dict, List, Optional, TextIO

import torch

from . import demo as _demo
from fastint import schedules
from fastint.metrics import frechet_distance, random_directions, sliced_wasserstein
from fastint.models.gaussian_mixture import default_mixture
from fastint.sampling import sample
from fastint.guidance import mixture_class_guidance
from fastint.solvers.restart import parse_restart_info, plan_restart, restart_nfe

DEMO_INTERVAL = {"0": [3, 2, 1.0, 3.0]}
PLATEAU_SIGMA_MAX = 3.0
PLATEAU_INTERVAL = {"0": [3, 6, 1.0, 2.97]}
GUIDED_SCALES = (1.0, 8.0)
GUIDED_STEPS = (8, 10, 12, 15, 20, 30, 40)


def _restart_plan(sigmas, info):
    try:
        return plan_restart(sigmas.tolist(), parse_restart_info(info), a1111=False)
    except ValueError:
        return None  # the grid is too coarse for the interval: plain Heun


def _restart_nfe(steps: int) -> int:
    sigmas = schedules.karras(steps, _demo.SIGMA_MIN, _demo.SIGMA_MAX, _demo.RHO)
    plan = _restart_plan(sigmas, DEMO_INTERVAL)
    return restart_nfe(sigmas.tolist(), plan or {})


def _restart_min_steps() -> int:
    """The fewest main steps whose grid holds the demo's restart interval (fewer would be plain Heun)."""
    steps = 2
    while _restart_plan(schedules.karras(steps, _demo.SIGMA_MIN, _demo.SIGMA_MAX, _demo.RHO), DEMO_INTERVAL) is None:
        steps += 1
    return steps


def _restart_run(setup, model, x, steps):
    sigmas = setup.sigmas(steps)
    if _restart_plan(sigmas, DEMO_INTERVAL) is None:
        raise ValueError(f"restart: {steps} main steps cannot hold the interval {DEMO_INTERVAL['0']}")
    return sample(model, x, sigmas, "restart", restart_info=DEMO_INTERVAL, seed=setup.seed, backend=setup.backend)


def _prior_labels(target, batch: int, seed: int) -> torch.Tensor:
    return torch.multinomial(target.weights, batch, replacement=True, generator=torch.Generator().manual_seed(seed))


def _guided_runner(name: str):
    def run(setup, model, x, steps):
        labels = _prior_labels(setup.target, x.shape[0], setup.seed + 7)
        return sample(model, x, setup.sigmas(steps), name, guidance=mixture_class_guidance(setup.target, labels),
                      guidance_scale=1.0, backend=setup.backend)
    return run


def register() -> None:
    """Add the Restart and guided-splitting rows to the demo (``demo.register_entry``)."""
    _demo.register_entry(_demo.DemoEntry(
        "restart", _restart_nfe, _restart_run, section="restart",
        description="Restart: Heun + interval [3, 2, 1.0, 3.0] (K=2 jumps 1 -> 3)", min_steps=_restart_min_steps(),
        min_steps_reason="the main grid must hold the restart interval [3, 2, 1.0, 3.0]: 2 jumps cost 8 NFE"))
    for name in ("lie_trotter", "strang"):
        _demo.register_entry(_demo.DemoEntry(name, lambda steps: steps, _guided_runner(name), section="guided",
                                             description="class-conditional, labels ~ p(y), guidance scale 1"))


# ------------------------------------------------------------------------------------------------ Restart table
def restart_table(batch: int = 10000, seeds=(0, 1), backend: Optional[str] = None,
                  progress: Optional[TextIO] = None) -> List[Dict]:
    """Restart vs Heun vs dpmpp_2m_sde at equal NFE on the prior-mismatch task (sigma_max = 3); a line per run
    to ``progress`` when given."""
    target = default_mixture()
    ref = target.sample(batch, generator=torch.Generator().manual_seed(1))
    dirs = random_directions(256, target.dim, torch.Generator().manual_seed(2))
    rows = []
    for main_steps in (6, 8):
        sigmas = schedules.karras(main_steps, _demo.SIGMA_MIN, PLATEAU_SIGMA_MAX)
        nfe = restart_nfe(sigmas.tolist(), plan_restart(sigmas.tolist(), parse_restart_info(PLATEAU_INTERVAL),
                                                           a1111=False))
        runs = {"restart": lambda x, s: sample(target, x, sigmas, "restart", restart_info=PLATEAU_INTERVAL, seed=s,
                                               backend=backend),
                "heun": lambda x, s: sample(target, x, schedules.karras((nfe + 1) // 2, _demo.SIGMA_MIN,
                                                                        PLATEAU_SIGMA_MAX), "heun", backend=backend),
                "dpmpp_2m_sde": lambda x, s: sample(target, x, schedules.karras(nfe, _demo.SIGMA_MIN,
                                                                                PLATEAU_SIGMA_MAX),
                                                    "dpmpp_2m_sde", seed=s, backend=backend),
                "heun (60 steps)": lambda x, s: sample(target, x, schedules.karras(60, _demo.SIGMA_MIN,
                                                                                   PLATEAU_SIGMA_MAX), "heun",
                                                       backend=backend)}
        for name, run in runs.items():
            sw, fd, secs = [], [], 0.0
            for seed in seeds:
                x = PLATEAU_SIGMA_MAX * torch.randn(batch, target.dim, generator=torch.Generator().manual_seed(10 + seed))
                t0 = time.perf_counter()
                out = run(x, seed)
                secs += time.perf_counter() - t0
                sw.append(sliced_wasserstein(out, ref, projections=dirs))
                fd.append(frechet_distance(out, ref))
            rows.append({"budget": nfe, "method": name, "nfe": 119 if "60 steps" in name else nfe,
                         "sliced_w2": sum(sw) / len(sw), "sliced_w2_range": [min(sw), max(sw)],
                         "frechet": sum(fd) / len(fd), "seconds": secs / len(seeds)})
            if progress is not None:
                print(f"  restart table: {main_steps} main steps, {name}: sliced W2 {rows[-1]['sliced_w2']:.4f}",
                      file=progress, flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ guided table
def _exact_guided_endpoint(target, x0, guidance, w, s_max, s_min):
    from scipy.integrate import solve_ivp
    batch = x0.shape[0]

    def rhs(u, y):
        g = math.exp(u)
        x = torch.from_numpy(y).reshape(x0.shape)
        sb = torch.full((batch,), g, dtype=torch.float64)
        return (x - target(x, sb) - g * g * w * guidance(x, sb)).reshape(-1).numpy()

    sol = solve_ivp(rhs, (math.log(s_max), math.log(s_min)), x0.reshape(-1).numpy(), method="DOP853", rtol=1e-10,
                    atol=1e-10)
    return torch.from_numpy(sol.y[:, -1]).reshape(x0.shape)


def guided_table(batch: int = 256, seed: int = 0, backend: Optional[str] = None,
                 progress: Optional[TextIO] = None) -> List[Dict]:
    """Mean |x - x_exact| of plms, lie_trotter and strang (PLMS4) against the exact guided ODE endpoint (grid: Karras
    80 .. 0.002, the steps end at 0.002), per guidance scale and number of steps, with gradient counts and time."""
    target = default_mixture()
    gen = torch.Generator().manual_seed(seed)
    s_max, s_min = _demo.SIGMA_MAX, _demo.SIGMA_MIN
    x0 = torch.randn(batch, target.dim, generator=gen, dtype=torch.float64) * s_max
    labels = torch.randint(0, target.components, (batch,), generator=gen)
    rows = []
    for w in GUIDED_SCALES:
        exact = _exact_guided_endpoint(target, x0, mixture_class_guidance(target, labels), w, s_max, s_min)
        if progress is not None:
            print(f"  guided table: w = {w:g}, exact solution done; the three methods at {len(GUIDED_STEPS)} step "
                  "counts ...", file=progress, flush=True)
        for name in ("plms", "lie_trotter", "strang"):
            for steps in GUIDED_STEPS:
                grads = [0]
                base = mixture_class_guidance(target, labels)

                def guidance(x, s, base=base, grads=grads):
                    grads[0] += 1
                    return base(x, s)

                sigmas = schedules.karras(steps + 1, s_min, s_max)[:-1]
                t0 = time.perf_counter()
                out = sample(target, x0, sigmas, name, guidance=guidance, guidance_scale=w, backend=backend)
                secs = time.perf_counter() - t0
                rows.append({"w": w, "method": name, "steps": steps, "gradients": grads[0],
                             "error": (out - exact).abs().mean().item(), "seconds": secs})
    return rows


def steps_ratio(rows: List[Dict], w: float, strang_steps: int) -> Optional[float]:
    """plms steps needed (log-log interpolation) to reach strang's error at ``strang_steps``, over strang_steps."""
    target = next(r["error"] for r in rows if r["w"] == w and r["method"] == "strang" and r["steps"] == strang_steps)
    plms = sorted((r["steps"], r["error"]) for r in rows if r["w"] == w and r["method"] == "plms")
    for (n0, e0), (n1, e1) in zip(plms, plms[1:]):
        if e0 > target >= e1:
            frac = (math.log(e0) - math.log(target)) / (math.log(e0) - math.log(e1))
            return math.exp(math.log(n0) + frac * (math.log(n1) - math.log(n0))) / strang_steps
    return None  # plms is better already at its fewest tested steps, or never reaches strang's error


def format_sections(restart_rows: List[Dict], guided_rows: List[Dict]) -> str:
    out = ["Restart where the ODE plateaus: 8-component mixture, sigma_max = 3, x ~ N(0, 3^2) (narrower than the true "
           "marginal), Restart interval [3, 6, 1.0, 2.97] (K=6 jumps 1 -> 2.97); Heun and dpmpp_2m_sde at the same NFE; "
           "sliced W2 / Frechet to exact samples (mean over 2 seeds, [range]).",
           "", f"{'NFE':>4}  {'method':18s} {'sliced W2':>10} {'range':>16} {'Frechet':>9} {'time [s]':>9}"]
    for r in restart_rows:
        out.append(f"{r['nfe']:>4}  {r['method']:18s} {r['sliced_w2']:>10.4f} "
                   f"{'[%.3f, %.3f]' % tuple(r['sliced_w2_range']):>16} {r['frechet']:>9.2e} {r['seconds']:>9.3f}")
    out += ["", "Classifier guidance towards a class (exact classifier: the component posterior), PLMS4 diffusion part; "
            "mean |x - x_exact| against the exact guided probability-flow ODE solution (DOP853); grid Karras 80 .. 0.002.",
            "", f"{'w':>4}  {'steps':>5}  " + "  ".join(f"{m + ' err':>16} {'t[s]':>6}" for m in
                                                    ("plms", "lie_trotter", "strang"))]
    for w in GUIDED_SCALES:
        for steps in GUIDED_STEPS:
            cells = []
            for m in ("plms", "lie_trotter", "strang"):
                r = next(r for r in guided_rows if r["w"] == w and r["method"] == m and r["steps"] == steps)
                cells.append(f"{r['error']:>16.3e} {r['seconds']:>6.3f}")
            out.append(f"{w:>4g}  {steps:>5}  " + "  ".join(cells))
        counts = GUIDED_STEPS[:3]
        ratios = [steps_ratio(guided_rows, w, n) for n in counts]
        at = ", ".join(map(str, counts))
        if all(r is None for r in ratios):
            out.append(f"      w={w:g}: plms reaches strang's error with no more steps than strang (at {at} steps)")
        else:
            out.append(f"      w={w:g}: plms needs " + ", ".join("%.2fx" % r if r else "<= 1x" for r in ratios)
                       + f" the steps of strang at {at} steps for the same error")
    out.append("gradients per step: plms 1, lie_trotter 1, strang 2 (also on a last step to 0); one model call per "
               "step each.")
    return "\n".join(out)


SECTIONS_NAME = "restart_and_splitting.md"


def print_sections(stream: TextIO, backend: Optional[str] = None, out_dir: Optional[str] = None) -> str:
    """Run and print the two extra tables (with a progress line before each), write them to ``out_dir`` and say so."""
    print("\nRestart where the ODE plateaus: running (2 grids x 4 methods x 2 seeds) ...", file=stream, flush=True)
    t0 = time.perf_counter()
    restart_rows = restart_table(backend=backend, progress=stream)
    print(f"  done in {time.perf_counter() - t0:.1f} s; classifier guidance vs the exact guided ODE: running "
          f"({len(GUIDED_SCALES)} scales x 3 methods x {len(GUIDED_STEPS)} step counts) ...", file=stream, flush=True)
    t0 = time.perf_counter()
    guided_rows = guided_table(progress=stream)  # float64 errors: the auto backend
    print(f"  done in {time.perf_counter() - t0:.1f} s", file=stream, flush=True)
    text = format_sections(restart_rows, guided_rows)
    print("\n" + text, file=stream, flush=True)
    if out_dir is not None:
        import os
        path = os.path.join(out_dir, SECTIONS_NAME)
        with open(path, "w", encoding="utf-8") as f:
            f.write("```\n" + text + "\n```\n")
        print(f"\nwrote {path}", file=stream, flush=True)
    return text
