"""Accuracy of ``strang``'s two second-half forms (``second_half="authors"``, the default, and ``"endpoint"``) on the
guided analytic tasks, as markdown tables (docs/restart_and_splitting.md):

1. the demo's guided task: the 8-component mixture guided towards a class by its exact classifier (the component
   posterior), Karras grid 80 .. 0.002 (steps end at 0.002, as the demo), PLMS4, mean |x - x_exact| against the
   guided probability-flow ODE solved by DOP853 (rtol = atol = 1e-10), with ``plms`` and ``lie_trotter`` alongside;
2. a Gaussian target with a linear classifier (constant gradient a), uniform grid 4 .. 0.5, exact solution in closed
   form (``u = x - m``: ``u(g) = c sqrt(s^2 + g^2) - w a (s^2 + g^2)``), diffusion part PLMS4 and Heun, with the
   measured order (log-log slope);
3. the same Gaussian task run to sigma = 0 (the last step to 0, where the two forms differ in the step itself).

    python benchmarks/strang_second_half.py [--batch 256] [--seed 0]
"""

import argparse
import math
import platform
import time

import numpy as np
import torch
from scipy.integrate import solve_ivp

import fastint
from fastint.guidance import mixture_class_guidance
from fastint.models import GaussianMixture, default_mixture
from fastint.schedules import karras

FORMS = ("authors", "endpoint")


def _exact_guided(target, x0, guidance, w, s_max, s_min):
    batch = x0.shape[0]

    def rhs(u, y):  # d x / d log g = x - D - g^2 w G
        g = math.exp(u)
        x = torch.from_numpy(y).reshape(x0.shape)
        sb = torch.full((batch,), g, dtype=torch.float64)
        return (x - target(x, sb) - g * g * w * guidance(x, sb)).reshape(-1).numpy()

    sol = solve_ivp(rhs, (math.log(s_max), math.log(s_min)), x0.reshape(-1).numpy(), method="DOP853", rtol=1e-10,
                    atol=1e-10)
    return torch.from_numpy(sol.y[:, -1]).reshape(x0.shape)


def mixture_table(batch, seed, scales=(1.0, 3.0, 8.0), steps=(8, 10, 15, 20, 40)):
    target = default_mixture()
    gen = torch.Generator().manual_seed(seed)
    s_max, s_min = 80.0, 0.002
    x0 = torch.randn(batch, target.dim, generator=gen, dtype=torch.float64) * s_max
    guidance = mixture_class_guidance(target, torch.randint(0, target.components, (batch,), generator=gen))
    lines = ["| w | steps | plms | lie_trotter | strang `authors` | strang `endpoint` |",
             "|---:|---:|---:|---:|---:|---:|"]
    for w in scales:
        exact = _exact_guided(target, x0, guidance, w, s_max, s_min)
        for n in steps:
            sigmas = karras(n + 1, s_min, s_max)[:-1]
            cells = []
            for name, opts in (("plms", {}), ("lie_trotter", {}), ("strang", {"second_half": "authors"}),
                               ("strang", {"second_half": "endpoint"})):
                out = fastint.sample(target, x0, sigmas, name, guidance=guidance, guidance_scale=w, backend="eager",
                                     **opts)
                cells.append((out - exact).abs().mean().item())
            best = min(cells[2:])
            text = [f"{e:.3g}" if i < 2 or e != best else f"**{e:.3g}**" for i, e in enumerate(cells)]
            lines.append(f"| {w:g} | {n} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def _gaussian_case(batch, seed, g_lo):
    m, s2 = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([0.4, 1.5], dtype=torch.float64) ** 2
    gm = GaussianMixture(m[None], s2.sqrt()[None])
    a, w, g_hi = torch.tensor([1.0, -0.7], dtype=torch.float64), 2.0, 4.0
    x0 = torch.randn(batch, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * g_hi
    c = (x0 - m + w * a * (s2 + g_hi ** 2)) / (s2 + g_hi ** 2).sqrt()
    exact = m + c * (s2 + g_lo ** 2).sqrt() - w * a * (s2 + g_lo ** 2)
    return gm, (lambda x, sigma: a.expand_as(x).clone()), w, g_hi, x0, exact


def gaussian_table(batch, seed, g_lo, steps=(8, 16, 32, 64)):
    gm, guidance, w, g_hi, x0, exact = _gaussian_case(batch, seed, g_lo)
    lines = ["| diffusion part | second_half | " + " | ".join(f"{n} steps" for n in steps) + " | order |",
             "|:---|:---|" + "---:|" * (len(steps) + 1)]
    for diffusion in ("plms", "heun"):
        for form in FORMS:
            errors = [(fastint.sample(gm, x0, torch.linspace(g_hi, g_lo, n + 1, dtype=torch.float64), "strang",
                                      guidance=guidance, guidance_scale=w, diffusion_solver=diffusion,
                                      second_half=form, backend="eager") - exact).abs().mean().item() for n in steps]
            order = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
            lines.append(f"| {diffusion} | `{form}` | " + " | ".join(f"{e:.3g}" for e in errors) + f" | {order:.2f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    t0 = time.perf_counter()
    print(f"# strang second_half forms ({time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, float64, eager; batch {args.batch}, seed {args.seed})\n")
    print("## 8-component mixture, exact classifier, Karras 80 .. 0.002, PLMS4: mean |x - x_exact|\n")
    print(mixture_table(args.batch, args.seed) + "\n")
    print("## Gaussian target, linear classifier (w = 2), uniform grid 4 .. 0.5: mean |x - x_exact|\n")
    print(gaussian_table(args.batch, args.seed, 0.5) + "\n")
    print("## The same, uniform grid 4 .. 0 (last step to sigma = 0)\n")
    print(gaussian_table(args.batch, args.seed, 0.0) + "\n")
    print(f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
