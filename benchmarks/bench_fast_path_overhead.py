"""The no-grad fast path of the fused op, two source trees side by side (e.g. the previous commit and this one).

    python benchmarks/bench_fast_path_overhead.py --tree before=/path/to/old/checkout --tree after=. \
        [--rounds 7] [--out results.json]

Each tree must hold a built ``fastint/_C*.so``. Every round runs one fresh process per tree, in alternating order,
and each process times (median over many calls, 1 torch thread):

- ``entry_small``: ``fastint._C.fused_step`` on a (1, 64) float32 state, 3 inputs + 1 noise stream (the per-call
  overhead: argument parsing, dispatch, checks);
- ``entry_large``: the same on (4, 65536) (the kernel dominates);
- ``entry_small_grad_mode``: ``entry_small`` with grad mode on and nothing requiring grad (the Autograd kernel's
  check); the others run under ``torch.no_grad()``;
- ``sample_planned``: ``fastint.sample`` of a tiny MLP behind ``VEDenoiser`` (the planned loop), 20 steps of
  dpmpp_2m_sde on a (4, 64) state, under ``torch.no_grad()``.

The table prints each tree's median over rounds and the ratio after / before.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKER = r'''
import json, time, sys
import torch
torch.set_num_threads(1)
import fastint
from fastint.ops import extension
from fastint.models.adapters import VEDenoiser

assert extension.load() is None, extension.load()
entry = extension.module().fused_step


def median_us(fn, calls, repeats=7):
    best = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best.append((time.perf_counter() - t0) / calls * 1e6)
    best.sort()
    return best[len(best) // 2]


def entry_timer(shape):
    gen = torch.Generator().manual_seed(1)
    x, d, e = (torch.randn(shape, generator=gen) for _ in range(3))
    out = torch.empty(shape)
    seeds = torch.arange(shape[0])
    coeffs = [0.9, 0.05, 0.05, 0.1]
    return lambda: entry([out], [x, d, e], coeffs, seeds, 3, 1)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(65, 64)
        self.b = torch.nn.Linear(64, 64)

    def forward(self, x, t):
        return self.b(torch.tanh(self.a(torch.cat([x, t[:, None].log()], dim=1))))


model = VEDenoiser(Net())
x0 = torch.randn(4, 64, generator=torch.Generator().manual_seed(2)) * 20
sigmas = fastint.schedules.karras(20, sigma_min=0.02, sigma_max=20.0)
results = {}
with torch.no_grad():
    results["entry_small"] = median_us(entry_timer((1, 64)), 20000)
    results["entry_large"] = median_us(entry_timer((4, 65536)), 300)
    fastint.sample(model, x0, sigmas, "dpmpp_2m_sde", seed=0)
    results["sample_planned"] = median_us(lambda: fastint.sample(model, x0, sigmas, "dpmpp_2m_sde", seed=0), 40)
results["entry_small_grad_mode"] = median_us(entry_timer((1, 64)), 20000)
print(json.dumps(results))
'''


def run_tree(path: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(path), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, check=True,
                       cwd=os.path.abspath(path))
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="NAME=PATH of a source tree with fastint/")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    trees = [t.split("=", 1) for t in args.tree]
    runs = {name: [] for name, _ in trees}
    for r in range(args.rounds):
        order = trees if r % 2 == 0 else trees[::-1]
        for name, path in order:
            runs[name].append(run_tree(path))
    keys = list(runs[trees[0][0]][0])
    medians = {name: {k: statistics.median(run[k] for run in runs[name]) for k in keys} for name in runs}
    print(f"{'us per call':24s}" + "".join(f"{name:>12s}" for name, _ in trees)
          + (f"{'ratio':>8s}" if len(trees) == 2 else ""))
    for k in keys:
        row = f"{k:24s}" + "".join(f"{medians[name][k]:12.2f}" for name, _ in trees)
        if len(trees) == 2:
            row += f"{medians[trees[1][0]][k] / medians[trees[0][0]][k]:8.3f}"
        print(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"runs": runs, "medians": medians}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
