"""CPU kernel benchmark: the fused DPM-Solver++(2M) steps of the C++ kernel against a memory-pass floor and peers.

    python benchmarks/bench_cpu_kernel.py [--elements 4194304] [--threads 2] [--rounds 15]

Everything is measured side by side in one run (rounds interleave the candidates; the median is reported):

* floor:      a copy moving the same bytes as the 3-input, 1-output step (16 B/element: copy of 2x the elements);
* det step:   fastint cpp kernel, DPM-Solver++(2M) deterministic step, inputs (x, D, D_old), x updated in place;
* sde step:   the DPM-Solver++(2M) SDE step: same + 1 in-kernel Philox noise stream;
* torch ops:  the SDE step written as plain PyTorch ops with torch.randn;
* diffusers:  DPMSolverMultistepScheduler.step (algorithm_type="sde-dpmsolver++", solver_order=2, x0-prediction).

Targets (issue 4): det <= 1.5x floor; sde <= 3x floor and >= 10x faster than diffusers and than the torch-ops step.
"""

import argparse
import math
import platform
import statistics
import time

import torch

import fastint
from fastint.ops import fused_step


def _timer(fn, warmup=2):
    for _ in range(warmup):
        fn()

    def once():
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return once


def dpmpp_2m_sde_coefficients(sigma, sigma_next, sigma_prev, eta=1.0):
    """Host float64 coefficients of the DPM-Solver++(2M) SDE step (k-diffusion's sample_dpmpp_2m_sde, midpoint)."""
    t, s = -math.log(sigma), -math.log(sigma_next)
    h = s - t
    h_last = -math.log(sigma) + math.log(sigma_prev)
    r = h_last / h
    eta_h = eta * h
    c_x = sigma_next / sigma * math.exp(-eta_h)
    c_d = -math.expm1(-h - eta_h)
    c_corr = 0.5 * c_d / r  # times (D - D_old)
    c_noise = sigma_next * math.sqrt(-math.expm1(-2 * eta_h))
    return c_x, c_d + c_corr, -c_corr, c_noise


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--no-diffusers", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.elements
    from fastint.ops import extension
    reason = extension.load()
    if reason:
        raise SystemExit(f"the cpp backend is unavailable: {reason}")

    x = torch.randn(1, n)
    d = torch.randn(1, n)
    d_old = torch.randn(1, n)
    seeds = torch.tensor([1234])
    sigma, sigma_next, sigma_prev = 2.0, 1.6, 2.5
    c_x, c_d, c_dold, c_noise = dpmpp_2m_sde_coefficients(sigma, sigma_next, sigma_prev)
    src = torch.randn(2 * n)
    dst = torch.empty(2 * n)

    candidates = {
        "floor: copy of the same bytes (16 B/elem)": lambda: dst.copy_(src),
        "fastint cpp: DPM-Solver++(2M) step": lambda: fused_step([x, d, d_old], [[c_x, c_d, c_dold]], out=x,
                                                                 backend="cpp"),
        "fastint cpp: DPM-Solver++(2M) SDE step": lambda: fused_step(
            [x, d, d_old], [[c_x, c_d, c_dold, c_noise]], num_noise=1, seeds=seeds, counter=7, out=x, backend="cpp"),
    }

    def torch_ops_sde():
        noise = torch.randn_like(x)
        return c_x * x + c_d * d + c_dold * d_old + c_noise * noise
    candidates["torch ops + torch.randn: SDE step"] = torch_ops_sde

    if not args.no_diffusers:
        try:
            from diffusers import DPMSolverMultistepScheduler
            sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, algorithm_type="sde-dpmsolver++",
                                                solver_order=2, prediction_type="sample")
            sched.set_timesteps(20)
            gen = torch.Generator().manual_seed(0)
            step_index = 5
            timestep = sched.timesteps[step_index]

            def diffusers_step():
                sched._step_index = step_index
                sched.model_outputs = [d_old, d]
                sched.lower_order_nums = 2
                return sched.step(d, timestep, x, generator=gen).prev_sample
            candidates["diffusers DPMSolverMultistepScheduler.step (sde-dpmsolver++, 2)"] = diffusers_step
        except Exception as exc:  # noqa: BLE001
            print(f"(diffusers unavailable: {exc!r})")

    timers = {name: _timer(fn) for name, fn in candidates.items()}
    samples = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, once in timers.items():
            samples[name].append(once())
    med = {name: statistics.median(v) * 1e3 for name, v in samples.items()}
    floor = med["floor: copy of the same bytes (16 B/elem)"]
    sde = med["fastint cpp: DPM-Solver++(2M) SDE step"]

    print(f"fastint {getattr(fastint, '__version__', '?')}, torch {torch.__version__}, "
          f"cpu kernel {extension.cpu_kernel_capability()}, ATen capability "
          f"{torch.backends.cpu.get_cpu_capability()}, threads {torch.get_num_threads()}, "
          f"{n} fp32 elements, {args.rounds} rounds (median)")
    print(f"machine: {platform.machine()} {platform.processor() or ''} {platform.platform()}")
    print()
    print("| candidate | ms | x floor | SDE step speed-up |")
    print("|---|---:|---:|---:|")
    for name, ms in med.items():
        speedup = f"{ms / sde:.1f}x" if "SDE" in name and "fastint" not in name or "diffusers" in name else ""
        print(f"| {name} | {ms:.2f} | {ms / floor:.2f} | {speedup} |")
    print()
    det_ratio = med["fastint cpp: DPM-Solver++(2M) step"] / floor
    sde_ratio = sde / floor
    print(f"det step / floor = {det_ratio:.2f} (target <= 1.5): {'met' if det_ratio <= 1.5 else 'MISSED'}")
    print(f"SDE step / floor = {sde_ratio:.2f} (target <= 3): {'met' if sde_ratio <= 3 else 'MISSED'}")
    for name in candidates:
        if "diffusers" in name or "torch ops" in name:
            ratio = med[name] / sde
            print(f"{name} / fastint SDE step = {ratio:.1f} (target >= 10): {'met' if ratio >= 10 else 'MISSED'}")


if __name__ == "__main__":
    main()
