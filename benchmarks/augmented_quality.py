"""Sample quality of the augmented samplers (CLD, PSLD) on the analytic target, as a markdown table.

The sliced 2-Wasserstein distance of each sampler's x samples to exact data samples of the default mixture, per NFE
budget (``steps = (NFE - 1) // NFE-per-step``, the final denoising step included). Every method starts from the same
exact samples of the t = 1 marginal and runs with the same noise seed; the reference set, the projection directions
and the start are seeded, so a run is reproducible. The floor row is the distance of fresh exact samples of the same
size (the metric's own noise). Example (docs/augmented.md, large-sample table):

    python benchmarks/augmented_quality.py --process psld --samples 200000 --reference 1000000 \
        --methods em sscs conjugate_splitting conjugate_splitting:eta=0.5
"""

import argparse
import platform
import time

import torch

from fastint.augmented import CLD, PSLD, AugmentedTarget, ExactScore, nfe_per_step, sample_augmented
from fastint.metrics import random_directions, sliced_wasserstein
from fastint.models.gaussian_mixture import default_mixture


def parse_method(spec: str):
    """``name`` or ``name:key=value,key=value`` (numbers as floats, other values as strings)."""
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            options[key] = float(value)
        except ValueError:
            options[key] = value
    return name, options


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--process", choices=["cld", "psld"], default="psld")
    ap.add_argument("--methods", nargs="+", default=["em", "sscs", "conjugate_splitting"])
    ap.add_argument("--budgets", nargs="+", type=int, default=[6, 10, 20, 40])
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--reference", type=int, default=100000, help="exact reference samples")
    ap.add_argument("--directions", type=int, default=64)
    ap.add_argument("--seed", type=int, default=3, help="the noise seed of every stochastic run")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    proc = CLD() if args.process == "cld" else PSLD()
    mix = default_mixture()
    target = AugmentedTarget(mix, proc)
    model = ExactScore(target)
    ref = mix.sample(args.reference, generator=torch.Generator().manual_seed(321))
    dirs = random_directions(args.directions, 2, torch.Generator().manual_seed(9))
    x0, v0 = target.sample(args.samples, 1.0, torch.Generator().manual_seed(55), dtype=torch.float32)
    floor = sliced_wasserstein(mix.sample(args.samples, generator=torch.Generator().manual_seed(77)), ref,
                               projections=dirs)
    print(f"{proc.name}, {args.samples} samples, {args.reference} reference samples, {args.directions} directions, "
          f"noise seed {args.seed}, torch {torch.__version__}, {args.threads} thread(s), {platform.machine()}, "
          f"{time.strftime('%Y-%m-%d')}; floor (exact samples) {floor:.3f}\n")
    print("| sampler | " + " | ".join(f"NFE {b}" for b in args.budgets) + " |")
    print("|:--|" + "--:|" * len(args.budgets))
    for spec in args.methods:
        name, options = parse_method(spec)
        cells = []
        for nfe in args.budgets:
            steps = (nfe - 1) // nfe_per_step(name)
            if steps < 1:
                cells.append("-")
                continue
            x, _ = sample_augmented(proc, model, x0, v0, steps=steps, method=name, seed=args.seed, **options)
            cells.append(f"{sliced_wasserstein(x.double(), ref, projections=dirs):.3f}")
        print(f"| {spec} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
