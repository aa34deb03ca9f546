"""GPU figures of the fused op, measured side by side in one run (benchmarks/gpu_check.sh calls this).

    python benchmarks/gpu_bench.py --json figures.json [--sizes 16M,64M] [--smoke]

1. Bandwidth of the fused step against the device's own copy. For each size and dtype: a device-to-device copy
   of the same number of bytes as the step moves (the floor), and per backend (cuda, triton) the deterministic
   DPM-Solver++(2M) step ``x <- a x + b D + c D_old`` (3 reads, 1 write) and the same with one in-kernel noise
   stream (the 2M SDE step). Reported: median time over many rounds, effective GB/s (bytes read + written over
   time) and the fraction of the copy's bandwidth, the target being >= 90 % (deterministic) and >= 80 % (noise)
   at >= 16M elements. Beside them, the same SDE step in plain torch ops + ``torch.randn_like`` and, when diffusers
   is installed, ``DPMSolverMultistepScheduler.step`` (sde-dpmsolver++, order 2) on the same tensors: the peers.
2. Whole-loop CUDA graph: ``fastint.cuda_graph.capture_sampler`` replay against eager ``fastint.sample`` for a
   small network (the analytic Gaussian denoiser, and a small diffusers UNet when diffusers is installed), the
   outputs compared for equality.

Step timings are taken over CUDA-graph replays of ``inner`` calls (the ``timing`` column says "graph"), so that they
measure the kernels rather than host launch overhead; the whole-loop part compares eager against replay on purpose.

``--smoke`` runs every code path on the CPU at tiny sizes (cpp/eager backends, no graph part): the CI dry run of
gpu_check.sh uses it so that this script cannot rot unseen.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

import fastint  # noqa: E402
from fastint.ops import fused_step  # noqa: E402

STEP_COEFFS = [0.8, 0.3, -0.1]      # x, D, D_old of a DPM-Solver++(2M) step
NOISE_COEFF = 0.2


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 2 ** 10, "M": 2 ** 20}.get(text[-1:], 1)
    return int(text[:-1] if scale > 1 else text) * scale


class Timer:
    """Median time per call of ``fn``: ``rounds`` rounds of ``inner`` calls each. On the GPU the ``inner`` calls are
    captured once in a CUDA graph and the graph's replays are timed with CUDA events, so that host launch overhead
    (Python, argument checks, Triton's launcher) does not hide the kernel's own time; a callable that cannot be
    captured is timed eagerly (``last_mode`` says which)."""

    def __init__(self, device: str, rounds: int, inner: int, capture: bool = True):
        self.device, self.rounds, self.inner, self.capture, self.last_mode = device, rounds, inner, capture, "eager"

    def _graph(self, fn):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(self.inner):
                fn()
        return graph.replay

    def __call__(self, fn) -> float:
        run, per_round, self.last_mode = None, self.inner, "eager"
        if self.device == "cuda" and self.capture:
            try:
                run, self.last_mode = self._graph(fn), "graph"
            except Exception:  # not capturable (host reads, allocations the graph cannot keep): time it eagerly
                torch.cuda.synchronize()
        if run is None:
            def run():
                for _ in range(self.inner):
                    fn()
        for _ in range(2):
            run()
        times = []
        for _ in range(self.rounds):
            if self.device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                run()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3 / per_round)
            else:
                t0 = time.perf_counter()
                run()
                times.append((time.perf_counter() - t0) / per_round)
        return statistics.median(times)


def diffusers_sde_step(x, d, device):
    """diffusers' DPM-Solver++(2M) SDE step on the same tensors (None without diffusers)."""
    try:
        from diffusers import DPMSolverMultistepScheduler
    except ImportError:
        return None
    sched = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2)
    sched.set_timesteps(20, device=device)
    t = sched.timesteps[5]

    def step():
        sched._step_index = 5                   # a step in the middle of the loop, history filled
        sched.lower_order_nums = 2
        sched.model_outputs = [d, d]
        return sched.step(d, t, x).prev_sample
    return step


def bandwidth(sizes, dtypes, backends, device, timer):
    rows = []
    gen = torch.Generator().manual_seed(20261126)
    for n in sizes:
        for dtype in dtypes:
            x, d, d_old = (torch.randn(1, n, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
            seeds = torch.tensor([7], dtype=torch.int64, device=device)
            out = torch.empty_like(x)
            step_bytes = 4 * n * x.element_size()              # 3 reads + 1 write
            src = torch.randn(step_bytes // 2 // x.element_size(), generator=gen).to(device=device, dtype=dtype)
            dst = torch.empty_like(src)
            def timed(fn):
                seconds = timer(fn)
                return seconds, timer.last_mode
            floor, floor_mode = timed(lambda: dst.copy_(src))  # the same bytes: half read, half written
            cands = {"copy of the same bytes (floor)": (floor, floor_mode)}
            for backend in backends:
                cands[f"{backend}: 2M step"] = timed(
                    lambda b=backend: fused_step([x, d, d_old], [STEP_COEFFS], out=out, backend=b))
                cands[f"{backend}: 2M SDE step (in-kernel noise)"] = timed(
                    lambda b=backend: fused_step([x, d, d_old], [STEP_COEFFS + [NOISE_COEFF]], num_noise=1,
                                                 seeds=seeds, counter=3, out=out, backend=b))
            cands["torch ops + randn_like: SDE step"] = timed(
                lambda: torch.add(0.8 * x + 0.3 * d - 0.1 * d_old, torch.randn_like(x), alpha=NOISE_COEFF))
            peer = diffusers_sde_step(x, d, device) if n <= 2 ** 24 else None
            if peer is not None:
                cands["diffusers DPMSolverMultistep.step (SDE, order 2)"] = timed(peer)
            for name, (seconds, mode) in cands.items():
                rows.append({"elements": n, "dtype": str(dtype).replace("torch.", ""), "candidate": name,
                             "timing": mode, "ms": seconds * 1e3, "GBps": step_bytes / seconds / 1e9,
                             "fraction_of_copy_bw": floor / seconds})
    return rows


def gaussian_denoiser(x, sigma):
    """Exact denoiser of N(0, I) data (tensor ops only: capturable)."""
    return x / (1 + sigma.view(-1, *([1] * (x.dim() - 1))) ** 2)


def small_unet():
    try:
        import diffusers
    except ImportError:
        return None
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(32, 64), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8).cuda().eval()


def cuda_graph_rows(timer, steps=20, batch=16):
    from fastint.cuda_graph import capture_sampler
    from fastint.models import DiscreteVPDenoiser
    from fastint.schedules import alphas_cumprod_from_betas, betas_linear, karras, vp_discrete
    models = {"gaussian, x 16x4x16": (gaussian_denoiser, karras(steps, 0.01, 20.0), (batch, 4, 16))}
    unet = small_unet()
    if unet is not None:
        ab = alphas_cumprod_from_betas(betas_linear())
        models["UNet2DModel (32, 64), 1x8x8"] = (DiscreteVPDenoiser(unet, ab), vp_discrete(ab, steps).sigmas,
                                                 (batch, 1, 8, 8))
    rows = []
    with torch.inference_mode():
        for label, (model, sigmas, shape) in models.items():
            x = torch.randn(shape, device="cuda") * math.sqrt(1 + float(sigmas[0]) ** 2)
            for solver, options in (("dpmpp_2m", {}), ("dpmpp_2m_sde", {"eta": 1.0}), ("euler", {})):
                def eager():
                    return fastint.sample(model, x, sigmas, solver, seed=0, check_finite="off", **options)
                replay = capture_sampler(model, x, sigmas, solver, seed=0, **options)
                identical = bool(torch.equal(eager(), replay(x)))
                eager_s, graph_s = timer(eager), timer(lambda: replay(x))
                rows.append({"model": label, "solver": solver, "steps": steps, "batch": batch, "eager_ms": eager_s * 1e3,
                             "graph_ms": graph_s * 1e3, "speedup": eager_s / graph_s, "identical": identical})
    return rows


def markdown(bw_rows, graph_rows, device_name):
    lines = [f"device: {device_name}, torch {torch.__version__}", "",
             "| elements | dtype | candidate | timing | ms | GB/s | x copy bandwidth |",
             "|---:|---|---|---|---:|---:|---:|"]
    for r in bw_rows:
        lines.append(f"| {r['elements'] / 2 ** 20:g}M | {r['dtype']} | {r['candidate']} | {r['timing']} | "
                     f"{r['ms']:.4f} | {r['GBps']:.0f} | {r['fraction_of_copy_bw']:.2f} |")
    if graph_rows:
        lines += ["", "| model | solver | steps | batch | eager ms | CUDA graph ms | speed-up | identical |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for r in graph_rows:
            lines.append(f"| {r['model']} | {r['solver']} | {r['steps']} | {r['batch']} | {r['eager_ms']:.3f} | "
                         f"{r['graph_ms']:.3f} | {r['speedup']:.2f}x | {r['identical']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16M,64M", help="comma-separated element counts (K/M suffixes)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--backends", default="cuda,triton")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, cpp/eager: checks the code paths")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if args.smoke:
        device, sizes, backends, timer = "cpu", [4096], ["cpp", "eager"], Timer("cpu", 3, 1)
    else:
        if not torch.cuda.is_available():
            print("gpu_bench: no CUDA device (use --smoke on the CPU)", file=sys.stderr)
            return 2
        device, timer = "cuda", Timer("cuda", args.rounds, 20)
        sizes, backends = [parse_size(s) for s in args.sizes.split(",")], args.backends.split(",")
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    bw_rows = bandwidth(sizes, dtypes, backends, device, timer)
    graph_rows = cuda_graph_rows(Timer("cuda", max(5, args.rounds // 3), 3, capture=False)) if device == "cuda" else []
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke)"
    print(markdown(bw_rows, graph_rows, name))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "bandwidth": bw_rows, "cuda_graph": graph_rows},
                      f, indent=1)
    bad = [r for r in graph_rows if not r["identical"]]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
