#!/usr/bin/env bash
# The GPU check of fastint: one call on a fresh GPU machine (NVIDIA H100/H200 image: Python 3.12, torch with CUDA,
# Triton, nvcc, cuobjdump, compute-sanitizer; no network). Run from anywhere in the repository:
#
#   bash benchmarks/prepare_gpu_wheels.sh             # here, once: the wheels the GPU machine lacks, into .whl/
#   OUT=DIR bash benchmarks/gpu_check.sh [--wheels .whl] [--budget 420] [--tests-limit 300] [--gpu-only]
#                                                     # on the GPU machine; --gpu-only: only the tests that need
#                                                     # CUDA or Triton on a device (CI runs the rest on CPUs)
#                                                     # (GPU_CHECK_COMMIT=<hash> names the commit in results.md)
#   bash benchmarks/gpu_check.sh --dry-run            # on a CPU machine (CI): everything that needs no GPU
#
# Steps (each time-boxed; the run stops starting optional steps once --budget seconds are spent):
#  1. environment: GPU, driver, torch, CUDA, Triton (nvidia-smi, python);
#  2. the wheels of --wheels installed into a target folder put on PYTHONPATH (pip --no-index: nothing downloaded);
#  3. build: the extension in place, CPU + CUDA kernels for the GPU's own architecture (TORCH_CUDA_ARCH_LIST);
#  4. backends: cpp, cuda and triton must be available;
#  5. the GPU selection of the tests (GPU_TESTS below: the op parity suite over cpp/cuda/triton, CUDA-graph capture,
#     every solver and the adapter loop on CUDA, the fast op entry on CUDA), in parallel when pytest-xdist is there;
#     no test of the selection may skip for want of CUDA, Triton or a peer;
#  6. machine code of the real build: 128-bit global loads/stores in the CUDA kernel's SASS (cuobjdump);
#  7. benchmarks/gpu_bench.py: fused step vs the device's copy bandwidth (16M and 64M elements, fp32 and bf16,
#     cuda and triton side by side, peers beside them) and whole-loop CUDA-graph replay vs eager;
#  8. compute-sanitizer memcheck of the CUDA kernel on odd sizes and misaligned views (optional: budget allowing).
# Writes four files to $OUT: results.md (the summary, printed last), gpu_check.log (every step's output),
# failures.log (each failing test with its traceback, written as it fails: kept when a step is stopped at its limit)
# and figures.json (the benchmark figures). Exit status 0 only if every step passed.
#
# --dry-run (CPU): checks the arguments, prepares the wheels into a temporary folder (or takes --wheels) and installs
# them into a temporary target, collects the GPU selection (pytest --collect-only, must collect tests and no errors)
# and runs benchmarks/gpu_bench.py --smoke; so the script cannot rot unseen on machines without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."

GPU_TESTS=(tests/kernels/test_kernels.py tests/test_cuda_graph.py tests/test_cuda_sampling.py tests/test_python_entry.py)
DRY_RUN=0
WHEELS=""
BUDGET=420
TESTS_LIMIT=300
GPU_ONLY=0
usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --wheels) [ $# -ge 2 ] || { echo "gpu_check: --wheels needs a folder" >&2; exit 2; }; WHEELS=$2; shift ;;
    --budget) [ $# -ge 2 ] && [[ "$2" =~ ^[0-9]+$ ]] || { echo "gpu_check: --budget needs seconds" >&2; exit 2; }
              BUDGET=$2; shift ;;
    --tests-limit) [ $# -ge 2 ] && [[ "$2" =~ ^[0-9]+$ ]] || { echo "gpu_check: --tests-limit needs seconds" >&2; exit 2; }
                   TESTS_LIMIT=$2; shift ;;
    --gpu-only) GPU_ONLY=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$WHEELS" ] && [ -d .whl ] && [ "$DRY_RUN" = 0 ]; then WHEELS=.whl; fi
if [ -n "$WHEELS" ] && ! ls "$WHEELS"/*.whl > /dev/null 2>&1; then
  echo "gpu_check: no wheels in '$WHEELS' (prepare them with benchmarks/prepare_gpu_wheels.sh)" >&2; exit 2
fi

OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ "$DRY_RUN" = 1 ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi  # make test's venv
RES="$OUT/results.md"
LOG="$OUT/gpu_check.log"
FIG="$OUT/figures.json"
START=$SECONDS
status=0
: > "$LOG"
{ echo "# fastint GPU check$([ "$DRY_RUN" = 1 ] && echo ' (dry run)')"; echo
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit: ${GPU_CHECK_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo '?')}"
  echo; } > "$RES"
row() { echo "| $1 | $2 | $3 |" >> "$RES"; }
elapsed() { echo $((SECONDS - START)); }
# step NAME TIMEOUT CMD...: runs CMD with its output in the log, time-boxed; appends a row; 0 if it passed.
step() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "===== $name (limit ${limit}s, at $(elapsed)s)" | tee -a "$LOG"
  if declare -F "$1" > /dev/null; then "$@" >> "$LOG" 2>&1      # a function of this script: not time-boxed
  else timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1; fi
  local rc=$?
  local took=$((SECONDS - t0))
  if [ $rc -eq 0 ]; then row "$name" ok "${took}s"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then row "$name" "TIMED OUT after ${limit}s" "${took}s"; status=1
  else row "$name" "FAILED (exit $rc, see gpu_check.log)" "${took}s"; status=1; fi
  echo "----- $name: exit $rc after ${took}s" >> "$LOG"
  return $rc
}
over_budget() { [ "$(elapsed)" -ge "$BUDGET" ]; }
skip_row() { row "$1" "NOT RUN: $2" "-"; status=1; }
finish() {
  row "total" "$([ $status = 0 ] && echo ok || echo FAILED)" "$(elapsed)s"
  cat "$RES"
  exit $status
}

# Installs the wheels of $1 into the folder $2 (pip, no index, no dependencies) and prepends it to PYTHONPATH.
install_wheels() {
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$2" "$1"/*.whl \
    && "$PY" -c "import sys; sys.path.insert(0, '$2'); import diffusers; print('diffusers', diffusers.__version__)"
}

echo "| step | result | time |" >> "$RES"; echo "|---|---|---:|" >> "$RES"

if [ "$DRY_RUN" = 1 ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  step "bash syntax" 10 bash -n "$0"
  if [ -z "$WHEELS" ]; then step "prepare the wheels (benchmarks/prepare_gpu_wheels.sh)" 180 \
       bash benchmarks/prepare_gpu_wheels.sh "$tmp/wheels" && WHEELS="$tmp/wheels"; fi
  [ -n "$WHEELS" ] && step "install the wheels into a target folder" 120 install_wheels "$WHEELS" "$tmp/site"
  step "collect the GPU selection (pytest --collect-only)" 300 \
    "$PY" -m pytest --collect-only -q -p no:cacheprovider "${GPU_TESTS[@]}"
  collected=$(grep -cE "^tests/.*::" "$LOG" || true)
  if [ "${collected:-0}" -gt 0 ]; then row "GPU selection" "$collected tests collected" "-"
  else row "GPU selection" "NOTHING COLLECTED" "-"; status=1; fi
  step "benchmarks/gpu_bench.py --smoke" 180 "$PY" benchmarks/gpu_bench.py --smoke --json "$FIG"
  finish
fi

# ---------------------------------------------------------------------------------------------------- on the GPU
step "environment" 60 bash -c "nvidia-smi; '$PY' -c 'import torch, platform; print(\"python\", platform.python_version(), \"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"device\", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))'; '$PY' -c 'import triton; print(\"triton\", triton.__version__)'; nvcc --version | tail -2"
grep -E "^python |^triton " "$LOG" | sed 's/^/    /' >> "$RES"; echo >> "$RES"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.version.cuda and torch.cuda.is_available() else 1)"; then
  skip_row "everything else" "needs a CUDA build of torch and a visible GPU"; finish
fi
if [ -n "$WHEELS" ]; then
  SITE=${TMPDIR:-/tmp}/fastint_gpu_site
  step "install the wheels of $WHEELS (no index)" 120 install_wheels "$WHEELS" "$SITE" && export PYTHONPATH="$SITE:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"

if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")
  export TORCH_CUDA_ARCH_LIST
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
rm -f fastint/_C*.so
step "build (setup.py build_ext --inplace, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)" 300 \
  "$PY" setup.py build_ext --inplace
step "backends cpp, cuda, triton available" 60 "$PY" - <<'EOF'
import fastint
rows = fastint.ops.list_backends()
for r in rows:
    print(f"{r['name']:8s} available={r['available']} reason={r['reason']}")
missing = [r["name"] for r in rows if r["name"] in ("cpp", "cuda", "triton") and not r["available"]]
raise SystemExit(f"unavailable: {missing}" if missing else 0)
EOF

XDIST=()
if "$PY" -c "import xdist" 2> /dev/null; then
  workers=$(( $(nproc) < 8 ? $(nproc) : 8 ))
  XDIST=(-n "$workers")
  export OMP_NUM_THREADS=$(( $(nproc) / workers > 0 ? $(nproc) / workers : 1 ))  # no oversubscribed CPU threads
fi
SELECT=()
[ "$GPU_ONLY" = 1 ] && SELECT=(-k "(cuda or triton) and not interpreter")
export FASTINT_FAILURE_LOG="$OUT/failures.log"
: > "$FASTINT_FAILURE_LOG"
step "GPU selection of the tests (${GPU_TESTS[*]}${SELECT[*]:+ ${SELECT[*]}})" "$TESTS_LIMIT" \
  "$PY" -m pytest -q -rs -p no:cacheprovider -p no:benchmark -p benchmarks.pytest_failure_log --durations=15 \
  "${XDIST[@]}" "${SELECT[@]}" "${GPU_TESTS[@]}"
unset FASTINT_FAILURE_LOG
row "failing tests (failures.log)" "$(grep -c '^===== ' "$OUT/failures.log")" "-"
unset OMP_NUM_THREADS
summary=$(grep -E "^[0-9]+ (passed|failed)|^=+ .*(passed|failed)" "$LOG" | tail -n 1)
row "pytest summary" "${summary:-none}" "-"
bad_skips=$(grep -E "^SKIPPED" "$LOG" | grep -ciE "no CUDA|unavailable|not installed|could not import|not built" || true)
row "skips for want of CUDA, Triton, the build or a peer (must be 0)" "${bad_skips:-0}" "-"
[ "${bad_skips:-0}" = 0 ] || status=1

so=$(ls fastint/_C*.so 2> /dev/null | head -n 1)
if [ -n "$so" ] && command -v cuobjdump > /dev/null; then
  cuobjdump -sass "$so" > "${TMPDIR:-/tmp}/fastint_sass.txt" 2>> "$LOG"
  wide=$(grep -cE "LDG\.E\.128|STG\.E\.128" "${TMPDIR:-/tmp}/fastint_sass.txt" || true)
  narrow=$(grep -cE "LDG\.E(\.[A-Z0-9]+)*[^0-9.]|STG\.E(\.[A-Z0-9]+)*[^0-9.]" "${TMPDIR:-/tmp}/fastint_sass.txt" || true)
  row "SASS of the built kernel: 128-bit global loads/stores" "$wide (other global accesses: $narrow)" "-"
  [ "${wide:-0}" -gt 0 ] || status=1
else
  skip_row "SASS check" "no built extension or no cuobjdump"
fi

if over_budget; then skip_row "benchmarks/gpu_bench.py" "over the ${BUDGET}s budget"; else
  step "benchmarks/gpu_bench.py (bandwidth vs copy, CUDA-graph replay)" 180 \
    "$PY" benchmarks/gpu_bench.py --json "$FIG" --sizes 16M,64M
  { echo; echo "## GPU benchmarks"; echo; sed -n '/^device: /,$p' "$LOG" | sed -n '/^device: /,/^-----/p' | grep -v "^-----"; } >> "$RES"
fi

if over_budget; then skip_row "compute-sanitizer memcheck" "over the ${BUDGET}s budget"
elif ! command -v compute-sanitizer > /dev/null; then skip_row "compute-sanitizer memcheck" "not installed"
else
  step "compute-sanitizer memcheck of the CUDA kernel" 150 \
    compute-sanitizer --tool memcheck --error-exitcode 3 "$PY" benchmarks/gpu_memcheck.py
fi
finish
