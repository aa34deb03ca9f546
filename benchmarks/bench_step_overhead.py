"""Per-step host overhead of ``fastint.sample`` with a null network (prints a markdown table; not a test).

    PYTHONPATH=<tree> python benchmarks/bench_step_overhead.py [--steps 50] [--repeats 15] [--numel 12288]

Times are the calling thread's CPU time (``time.thread_time``, one torch thread), best of the repeats: on a shared
machine the wall clock mostly measures the other processes. The network returns a fresh tensor from ``torch.empty_like`` (the cost of that call alone is measured and
subtracted), so what remains is fastint's per-step cost: the solver's Python, the op calls and checks. Three paths:
a plain model (``model(x, sigma) -> D``), a fastint adapter (``DiscreteVPDenoiser``: D as its parts), and the same
adapter with a callback (every step also materialises D for the callback), and the adapter around a network that
returns one buffer every call (what the executor's history copies cost, where a solver keeps outputs). Run it on two trees in turn to compare.
"""

import argparse
import time

import torch

import fastint
from fastint.models import DiscreteVPDenoiser
from fastint.schedules import alphas_cumprod_from_betas, betas_linear, vp_discrete

SOLVERS = ("euler", "dpmpp_2m", "dpmpp_2m_sde", "heun", "euler_ancestral", "seeds_2")
TWO_STAGE = ("heun", "seeds_2")   # 2 evaluations per step, 1 on the last step to 0


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        times.append(time.thread_time() - start)
    return min(times)   # the least disturbed run (a loaded machine only adds time)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--numel", type=int, default=16 * 3 * 16 * 16)
    parser.add_argument("--backend", default="cpp")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ab = alphas_cumprod_from_betas(betas_linear(1000, 1e-4, 0.02))
    sigmas = vp_discrete(ab, args.steps, spacing="linspace").sigmas
    x = torch.randn(16, args.numel // 16) * float(sigmas[0])

    def null_network(u, t):
        return torch.empty_like(u)

    def null_model(u, sigma):
        return torch.empty_like(u)

    network_alone = _median_seconds(lambda: [null_network(x, None) for _ in range(args.steps)], args.repeats)
    buffer = torch.zeros_like(x)

    def reusing_network(u, t):   # one output buffer for every call (a CUDA-graph-style model): the history copies
        return buffer

    adapter = DiscreteVPDenoiser(null_network, ab)
    paths = {"plain model": (null_model, {}), "adapter": (adapter, {}),
             "adapter + callback": (adapter, {"callback": lambda info: None}),
             "adapter, reused output": (DiscreteVPDenoiser(reusing_network, ab), {})}
    print(f"fastint {fastint.__file__}; {args.steps} steps, {args.numel} fp32 elements, backend {args.backend}, "
          f"best of {args.repeats}, thread CPU time; us per model evaluation beyond the null network")
    print("| solver | " + " | ".join(paths) + " |")
    print("|---|" + "---:|" * len(paths))
    with torch.no_grad():
        for solver in SOLVERS:
            evaluations = 2 * args.steps - 1 if solver in TWO_STAGE else args.steps
            cells = []
            for model, kw in paths.values():
                seconds = _median_seconds(lambda: fastint.sample(model, x, sigmas, solver, seed=1,
                                                                 backend=args.backend, check_finite="off", **kw),
                                          args.repeats)
                per = (seconds - network_alone * evaluations / args.steps) / evaluations
                cells.append(f"{per * 1e6:.1f}")
            print(f"| {solver} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
