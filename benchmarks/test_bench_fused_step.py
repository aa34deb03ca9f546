"""pytest-benchmark microbenchmarks of the fused step, per backend and per solver step kind, with the floor and
the peers measured in the same session:

    pytest benchmarks/test_bench_fused_step.py --benchmark-json=bench.json [--bench-sizes=65536,1048576]
    python benchmarks/report.py bench.json --out benchmarks/results/     # markdown table + PNG

Candidates per (step kind, elements, dtype): ``floor`` (a copy of the same bytes), ``fastint:<backend>`` (every
available backend but ``compile``, whose first call compiles), ``torch`` (the step as plain PyTorch ops),
``diffusers`` (the scheduler's ``step`` for the same method) and ``k-diffusion`` (its per-step math). On CUDA each
timed call synchronises, and a ``[graph]`` variant replays 20 calls captured in a CUDA graph for sizes up to 4M
elements (launch overhead dominates there). Nothing is asserted on timings.
"""

import pytest
import torch

from benchmarks import bench_suite as bs
from fastint.ops import fused_step

CANDIDATES = ["floor", "fastint:cpp", "fastint:eager", "fastint:cuda", "fastint:triton", "torch", "diffusers",
              "k-diffusion"]


def _case(kind, elements, dtype_name, device):
    dtype = bs.DTYPES[dtype_name]
    gen = torch.Generator().manual_seed(elements)
    x, d, d_old = (torch.randn(1, elements, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
    return x, d, d_old


def _candidate(name, kind, x, d, d_old, device):
    n_in = bs.STEP_INPUTS[kind]
    nbytes = (n_in + 1) * x.numel() * x.element_size()
    if name == "floor":
        src = torch.empty(nbytes // (2 * x.element_size()), dtype=x.dtype, device=device).normal_()
        dst = torch.empty_like(src)
        return (lambda: dst.copy_(src)), nbytes
    if name.startswith("fastint:"):
        backend = name.split(":", 1)[1]
        if backend not in bs.available_backends(device):
            pytest.skip(f"backend {backend} unavailable on {device}")
        coeffs, c_noise = bs._dpmpp_coefficients(kind)
        ins = [x, d, d_old][:n_in]
        if c_noise is None:
            return (lambda: fused_step(ins, [coeffs], out=x, backend=backend)), nbytes
        seeds = torch.tensor([1234], device=device)
        return (lambda: fused_step(ins, [coeffs + [c_noise]], num_noise=1, seeds=seeds, counter=7, out=x,
                                   backend=backend)), nbytes
    build = {"torch": bs._torch_ops_step, "diffusers": bs._diffusers_step, "k-diffusion": bs._kdiffusion_step}[name]
    if name == "diffusers":
        pytest.importorskip("diffusers")
    return build(kind, x, d, d_old), nbytes


def _run(benchmark, fn, device, extra, graph):
    calls = 1
    if graph:
        if device != "cuda":
            pytest.skip("CUDA-graph replay needs CUDA")
        if extra["elements"] > bs.GRAPH_MAX_ELEMENTS:
            pytest.skip("CUDA-graph variant only for small tensors")
        calls = 20
        fn = bs.graph_replay(fn, calls=calls)
    if device == "cuda":
        inner = fn

        def fn():
            inner()
            torch.cuda.synchronize()
    benchmark.extra_info.update(extra, calls_per_round=calls)
    benchmark.pedantic(fn, rounds=7 if extra["elements"] >= 2 ** 24 else 15, iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("candidate", CANDIDATES)
@pytest.mark.parametrize("kind", bs.STEP_KINDS)
def test_step(benchmark, kind, candidate, elements, dtype_name, device, graph):
    if graph and (device != "cuda" or candidate in ("fastint:cpp", "fastint:eager")):
        pytest.skip("CUDA-graph replay: CUDA backends and peers only")
    x, d, d_old = _case(kind, elements, dtype_name, device)
    fn, nbytes = _candidate(candidate, kind, x, d, d_old, device)
    label = {"floor": "floor: copy of the same bytes", "torch": "torch ops", "diffusers": "diffusers step",
             "k-diffusion": "k-diffusion step math"}.get(candidate, candidate.replace(":", " "))
    group = "floor" if candidate == "floor" else ("fastint" if candidate.startswith("fastint") else "peer")
    benchmark.group = f"{kind} {dtype_name} n={elements}"
    _run(benchmark, fn, device, {"kind": kind, "elements": elements, "dtype": dtype_name, "bytes": nbytes,
                                 "candidate": label + (" [graph]" if graph else ""), "group": group,
                                 "device": device}, graph)
