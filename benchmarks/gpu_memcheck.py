"""The CUDA kernel under compute-sanitizer (benchmarks/gpu_check.sh): every launch shape the op dispatches (the
vectorised and the scalar path, odd per-sample sizes, views misaligned by one element, 1..6 inputs, 1..2 outputs,
0..4 noise streams, in place, fp32/fp16/bf16 mixed), small enough to run under memcheck in seconds. Any
out-of-bounds or misaligned access is reported by the sanitizer (its exit status); the script also checks every
output against the float64 eager reference so that a silently skipped element fails too."""

import itertools
import sys
import zlib

import torch

from fastint.ops import fused_step


def case(n_in, n_out, k, per_sample, offset, dtype, inplace):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((n_in, n_out, k, per_sample, offset, str(dtype))).encode()))
    base = [torch.randn(3 * per_sample + offset, generator=gen) for _ in range(n_in)]
    inputs = [b.to("cuda", dtype)[offset:].view(3, per_sample) for b in base]   # misaligned views when offset > 0
    coeffs = (torch.rand(n_out, n_in + k, generator=gen, dtype=torch.float64) * 2 - 1).tolist()
    seeds = torch.tensor([1, -2, 3], dtype=torch.int64, device="cuda") if k else None
    want = fused_step([t.double().cpu() for t in inputs], coeffs, num_noise=k, counter=9, backend="eager",
                      seeds=seeds.cpu() if k else None)     # the reference on the CPU: no instrumented launches
    if inplace:
        outs = [inputs[m] for m in range(n_out)]
    else:
        outs = [torch.full((3, per_sample), float("nan"), device="cuda", dtype=dtype) for _ in range(n_out)]
    got = fused_step(inputs, coeffs, num_noise=k, seeds=seeds, counter=9, out=outs, backend="cuda")
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for g, w in zip(got, want):
        err = (g.double().cpu() - w).abs().max().item()
        if not err <= tol * (1 + w.abs().max().item()):
            raise SystemExit(f"wrong result: n_in={n_in} n_out={n_out} k={k} size={per_sample} offset={offset} "
                             f"{dtype} inplace={inplace}: max error {err:.3e}")


def main() -> int:
    count = 0
    for (n_in, n_out, k), per_sample, offset, dtype, inplace in itertools.product(
            [(1, 1, 0), (2, 1, 1), (3, 2, 2), (6, 2, 4), (4, 1, 3)], [1, 5, 1027, 4099], [0, 1],
            [torch.float32, torch.float16, torch.bfloat16], [False, True]):
        case(n_in, n_out, k, per_sample, offset, dtype, inplace)
        count += 1
    torch.cuda.synchronize()
    print(f"gpu_memcheck: {count} launches checked against the float64 reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
