#!/usr/bin/env bash
# GPU acceptance run of the compiled kernels, for a machine with an NVIDIA GPU and a CUDA build of torch.
#
#   OUT=/path/to/results bash benchmarks/gpu_check.sh        # from the repository root
#
# 1. builds the extension in place (CPU + CUDA kernels; TORCH_CUDA_ARCH_LIST defaults to the GPU's own arch),
# 2. checks that the cuda and triton backends are available,
# 3. runs the whole test suite (tests/ parametrise over CUDA when a GPU is present: cuda/triton parity, CUDA-graph
#    capture of a sampling loop with identical replays, ...),
# 4. runs the GPU benchmarks (fused DPM-Solver++(2M) / SDE steps per backend against a copy of the same bytes; the
#    benchmark suite: microbenchmarks vs floor and peers with CUDA-graph replay, end to end with a small UNet,
#    whole-loop CUDA-graph gain; pytest-benchmark with its report table and plot),
# 5. writes logs and results.md (a summary table) to $OUT. Exit status: 0 only if every step passed.
# No network access is needed (nothing is pip-installed).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python}
status=0
step() { echo "== $*" | tee -a "$OUT/steps.log"; }
result() { echo "| $1 | $2 |" >> "$OUT/results.md"; }

{ echo "# fastint GPU check"; echo; echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit: $(git rev-parse --short HEAD 2>/dev/null || echo ?)"; echo; } > "$OUT/results.md"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.version.cuda and torch.cuda.is_available() else 1)"; then
  echo "gpu_check: needs a CUDA build of torch and a visible GPU" | tee -a "$OUT/results.md"
  exit 2
fi
"$PY" - > "$OUT/env.txt" 2>&1 <<'EOF'
import torch, platform
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0),
      "capability", torch.cuda.get_device_capability(0), "python", platform.python_version())
try:
    import triton
    print("triton", triton.__version__)
except Exception as exc:
    print("triton unavailable:", exc)
EOF
cat "$OUT/env.txt" >> "$OUT/results.md"; echo >> "$OUT/results.md"
echo "| step | result |" >> "$OUT/results.md"; echo "|---|---|" >> "$OUT/results.md"

step "build (setup.py build_ext --inplace)"
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")
  export TORCH_CUDA_ARCH_LIST
fi
export MAX_JOBS=${MAX_JOBS:-8}
if "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1 && grep -q "WITH_CUDA = True" fastint/_build_info.py; then
  result build "ok (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
else
  result build "FAILED (see build.log)"; status=1
fi

step "nvcc compile-only check"
if make check-cuda > "$OUT/check_cuda.log" 2>&1; then result "make check-cuda" ok; else result "make check-cuda" FAILED; status=1; fi

step "backends"
if "$PY" - > "$OUT/backends.txt" 2>&1 <<'EOF'
import fastint
rows = fastint.ops.list_backends()
for r in rows:
    print(f"{r['name']:8s} available={r['available']} reason={r['reason']}")
missing = [r["name"] for r in rows if r["name"] in ("cpp", "cuda", "triton") and not r["available"]]
raise SystemExit(f"unavailable: {missing}" if missing else 0)
EOF
then result backends "cpp, cuda, triton available"; else result backends "MISSING (see backends.txt)"; status=1; fi

step "test suite on CUDA (python -m pytest tests)"
"$PY" -m pytest tests -q -rs -p no:cacheprovider > "$OUT/pytest.log" 2>&1
rc=$?
summary=$(tail -n 1 "$OUT/pytest.log")
if [ $rc -eq 0 ]; then result "pytest tests" "ok: $summary"; else result "pytest tests" "FAILED: $summary"; status=1; fi
cuda_skips=$(grep -c "SKIPPED.*\(no CUDA\|cuda unavailable\|triton unavailable\)" "$OUT/pytest.log" || true)
result "CUDA/Triton skips on this GPU machine" "$cuda_skips (must be 0)"
[ "$cuda_skips" = "0" ] || status=1

step "GPU benchmarks"
if "$PY" - > "$OUT/gpu_bench.md" 2> "$OUT/gpu_bench.err" <<'EOF'
import math
import torch
import fastint
from fastint.ops import fused_step

torch.manual_seed(0)
dev = "cuda"


def bench(fn, reps=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
print()
print("| elements | dtype | candidate | ms | GB/s | x floor |")
print("|---:|---|---|---:|---:|---:|")
for n in (4 * 2 ** 20, 64 * 2 ** 20):
    for dtype in (torch.float32, torch.bfloat16):
        x, d, d_old = (torch.randn(1, n, device=dev, dtype=dtype) for _ in range(3))
        seeds = torch.tensor([1], device=dev)
        src = torch.randn(2 * n, device=dev, dtype=dtype)
        dst = torch.empty_like(src)
        nbytes = 4 * n * x.element_size()
        floor = bench(lambda: dst.copy_(src))
        rows = [("floor: copy of the same bytes", floor)]
        coeffs = [[0.8, 0.3, -0.1]]
        for backend in ("cuda", "triton", "compile", "eager"):
            try:
                det = bench(lambda: fused_step([x, d, d_old], coeffs, out=x, backend=backend))
                sde = bench(lambda: fused_step([x, d, d_old], [coeffs[0] + [0.2]], num_noise=1, seeds=seeds,
                                               counter=3, out=x, backend=backend))
            except Exception as exc:  # report, keep going
                print(f"| {n} | {dtype} | {backend}: ERROR {exc!r} | | | |")
                continue
            rows += [(f"{backend}: DPM-Solver++(2M) step", det), (f"{backend}: DPM-Solver++(2M) SDE step", sde)]

        def torch_ops():
            return 0.8 * x + 0.3 * d - 0.1 * d_old + 0.2 * torch.randn_like(x)
        rows.append(("torch ops + randn_like: SDE step", bench(torch_ops)))
        for name, ms in rows:
            print(f"| {n} | {str(dtype).replace('torch.', '')} | {name} | {ms:.3f} | {nbytes / ms / 1e6:.0f} | "
                  f"{ms / floor:.2f} |")
EOF
then result "GPU benchmarks" "ok (gpu_bench.md)"; else result "GPU benchmarks" "FAILED (gpu_bench.err)"; status=1; fi

step "benchmark suite on CUDA (fused op vs floor and peers incl. CUDA-graph replay, e2e UNet, whole-loop graph)"
mkdir -p "$OUT/bench"
if "$PY" -m benchmarks.bench_suite --device cuda --full --out "$OUT/bench" > "$OUT/bench_suite.log" 2>&1; then
  result "benchmarks.bench_suite --full" "ok (bench/results.md)"; else result "benchmarks.bench_suite --full" "FAILED (bench_suite.log)"; status=1; fi

step "end to end with a briefly trained UNet (CUDA)"
if "$PY" benchmarks/bench_end_to_end.py --device cuda --train-seconds 30 --out "$OUT/bench/e2e" > "$OUT/e2e.log" 2>&1; then
  result "bench_end_to_end.py" "ok (bench/e2e*)"; else result "bench_end_to_end.py" "FAILED (e2e.log)"; status=1; fi

step "pytest-benchmark microbenchmarks"
if "$PY" -m pytest benchmarks/test_bench_fused_step.py -q -p no:cacheprovider --benchmark-json "$OUT/bench/pytest_benchmark.json" \
     > "$OUT/pytest_benchmark.log" 2>&1 && "$PY" benchmarks/report.py "$OUT/bench/pytest_benchmark.json" --out "$OUT/bench" \
     >> "$OUT/pytest_benchmark.log" 2>&1; then
  result "pytest-benchmark + report.py" "ok"; else result "pytest-benchmark + report.py" "FAILED (pytest_benchmark.log)"; status=1; fi

{ echo; echo "## GPU benchmarks"; echo; cat "$OUT/gpu_bench.md"; echo; echo "## backends"; echo; echo '```'; cat "$OUT/backends.txt"; echo '```'; } >> "$OUT/results.md"
step "done, status $status (results in $OUT/results.md)"
exit $status
