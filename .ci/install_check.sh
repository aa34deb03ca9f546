#!/usr/bin/env bash
# CI: install fastint the ways users do, from its sdist, into fresh virtual environments that have only torch.
#
#   1. pip install <sdist>                        (build isolation on, pip's default): pure-Python wheel, the kernels
#                                                  compiled on first use; `cpp` available and equal to `eager`
#   2. the same venv with CXX=false and an empty cache: one clear warning, the pure-Python backends run
#   3. pip install --no-build-isolation <sdist>   (torch, setuptools, wheel, ninja installed first): compiled at install
#                                                  time; `cpp` available at once (no first-use build) and equal to `eager`
#   4. the wheel's contents: every C++ source and header, _build_info.py of this build, a stripped library
#
# Each step prints its time. Usage: .ci/install_check.sh [PYTHON]   (default python3; TORCH_VERSION default 2.13.0)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${1:-${PYTHON:-python3}}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fastint_install_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONNOUSERSITE=1 MAX_JOBS=${MAX_JOBS:-2}
unset PYTHONPATH FASTINT_BUILD_EXT FASTINT_DISABLE_EXT FASTINT_BACKEND CXX || true

step_start=0
step() { step_start=$SECONDS; echo; echo "== install check: $*"; }
done_step() { echo "   ok ($((SECONDS - step_start)) s)"; }

step "sdist (FASTINT_BUILD_EXT=0: no torch needed to make it)"
FASTINT_BUILD_EXT=0 "$PYTHON" setup.py -q sdist -d "$WORK/dist" > "$WORK/sdist.log" 2>&1 || { cat "$WORK/sdist.log"; exit 1; }
SDIST=$(ls "$WORK"/dist/fastint-*.tar.gz)
tar -tzf "$SDIST" | sed 's|^[^/]*/||' > "$WORK/sdist_files.txt"
missing=$(git ls-files 'csrc/*.h' 'csrc/*.cuh' 'csrc/*.cpp' 'csrc/*.cu' LICENSE | grep -vxFf "$WORK/sdist_files.txt" || true)
[ -z "$missing" ] || { echo "the sdist lacks: $missing"; exit 1; }
if grep -E '\.so$|\.o$|_build_info\.py$' "$WORK/sdist_files.txt"; then echo "the sdist carries build products"; exit 1; fi
echo "   $(basename "$SDIST"): every csrc source and header, no build product"
done_step

CHECK=$WORK/check.py
cat > "$CHECK" <<'PY'
import os, sys, time, warnings
import torch, fastint
from fastint.ops import fused_step, list_backends
expect = sys.argv[1]
t0 = time.perf_counter()
rows = {r["name"]: r for r in list_backends()}
cpp = rows["cpp"]
print(f"   list_backends() took {time.perf_counter() - t0:.1f} s; cpp available: {cpp['available']} {cpp['reason'] or ''}")
assert "site-packages" in fastint.__file__, fastint.__file__
g = torch.Generator().manual_seed(20261126)
x, d, d_old = (torch.randn(3, 4099, generator=g) for _ in range(3))
coeffs = [[0.7, 0.2, 0.1, 0.3]]
seeds = torch.tensor([11, 12, 13])
ref = fused_step([x, d, d_old], coeffs, num_noise=1, seeds=seeds, counter=5, backend="eager")[0]
if expect == "cpp":
    assert rows["cpp"]["available"], rows["cpp"]["reason"]
    out = fused_step([x, d, d_old], coeffs, num_noise=1, seeds=seeds, counter=5, backend="cpp")[0]
    err = (out - ref).abs().max().item()
    print(f"   cpp vs eager: max |difference| {err:.2e}")
    assert err < 1e-5, err
    sample = fastint.sample(fastint.models.default_mixture(), torch.randn(64, 2, generator=g) * 80,
                            fastint.schedules.karras(8, 0.002, 80.0), "dpmpp_2m_sde", seed=0)
    assert torch.isfinite(sample).all()
else:
    assert not rows["cpp"]["available"]
    assert expect in rows["cpp"]["reason"], rows["cpp"]["reason"]
    out = fused_step([x, d, d_old], coeffs, num_noise=1, seeds=seeds, counter=5)[0]
    assert torch.equal(out, ref)
    print("   pure-Python backends: the auto choice equals eager")
PY

new_venv() {  # new_venv DIR PACKAGES...: a fresh venv with only these
  "$PYTHON" -m venv "$1"
  "$1/bin/python" -m pip install -q "${@:2}" > "$1.log" 2>&1 || { tail -40 "$1.log"; exit 1; }
}

step "1. fresh venv with torch==$TORCH_VERSION only; pip install <sdist> (build isolation on)"
new_venv "$WORK/iso" "torch==$TORCH_VERSION"
"$WORK/iso/bin/python" -m pip install "$SDIST" > "$WORK/iso.log" 2>&1 || { tail -40 "$WORK/iso.log"; exit 1; }
done_step
step "1. first use compiles the CPU kernel (cached in a fresh FASTINT_CACHE_DIR)"
(cd "$WORK" && FASTINT_CACHE_DIR="$WORK/cache_iso" "$WORK/iso/bin/python" "$CHECK" cpp 2>&1 | tee "$WORK/first_use.log")
grep -q "fastint: compiling the CPU kernels" "$WORK/first_use.log" || { echo "no 'compiling' line"; exit 1; }
grep -q "fastint: compiled in" "$WORK/first_use.log" || { echo "no 'compiled in' line"; exit 1; }
done_step
step "1. second process: the cached library, no compiling"
(cd "$WORK" && FASTINT_CACHE_DIR="$WORK/cache_iso" "$WORK/iso/bin/python" "$CHECK" cpp 2>&1 | tee "$WORK/second_use.log")
if grep -q "compiling" "$WORK/second_use.log"; then echo "compiled again"; exit 1; fi
done_step

step "2. no compiler (CXX=false, empty cache): one clear warning, the pure-Python backends"
(cd "$WORK" && CXX=false FASTINT_CACHE_DIR="$WORK/cache_nocxx" "$WORK/iso/bin/python" "$CHECK" \
  "pip's build isolation" > "$WORK/nocxx.log" 2>&1) || { cat "$WORK/nocxx.log"; exit 1; }
cat "$WORK/nocxx.log"
[ "$(grep -c 'RuntimeWarning: fastint: no compiled kernels' "$WORK/nocxx.log")" = 1 ] || { echo "expected one warning"; exit 1; }
grep -q "the C++ compiler 'false' does not work" "$WORK/nocxx.log"
grep -q "Using the pure-Python backends" "$WORK/nocxx.log"
done_step

step "3. fresh venv with torch==$TORCH_VERSION, setuptools, wheel, ninja; pip install --no-build-isolation <sdist>"
new_venv "$WORK/noiso" "torch==$TORCH_VERSION" setuptools wheel ninja
"$WORK/noiso/bin/python" -m pip install -v --no-build-isolation "$SDIST" > "$WORK/noiso.log" 2>&1 \
  || { tail -40 "$WORK/noiso.log"; exit 1; }
grep -q "fastint setup: building fastint._C against torch" "$WORK/noiso.log" || { tail -40 "$WORK/noiso.log"; exit 1; }
done_step
step "3. compiled at install time: cpp available at once"
(cd "$WORK" && FASTINT_CACHE_DIR="$WORK/cache_noiso" "$WORK/noiso/bin/python" "$CHECK" cpp 2>&1 | tee "$WORK/noiso_use.log")
if grep -q "compiling" "$WORK/noiso_use.log"; then echo "compiled on first use although built at install time"; exit 1; fi
done_step

step "4. what was installed: _build_info.py of each build, stripped library, the C++ sources for the first-use build"
SITE_ISO=$("$WORK/iso/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
SITE_NOISO=$("$WORK/noiso/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
grep -q "MODE = 'jit'" "$SITE_ISO/fastint/_build_info.py"
grep -q "build isolation" "$SITE_ISO/fastint/_build_info.py"
grep -q "MODE = 'aot'" "$SITE_NOISO/fastint/_build_info.py"
for f in $(git ls-files 'csrc/*.h' 'csrc/*.cuh' 'csrc/*.cpp' 'csrc/*.cu'); do
  [ -f "$SITE_ISO/fastint/_$f" ] || { echo "the installed package lacks fastint/_$f"; exit 1; }; done
SO=$(ls "$SITE_NOISO"/fastint/_C*.so)
if grep -qa "\.debug_info" "$SO"; then echo "$SO has debug info"; exit 1; fi
if grep -qa "\.symtab" "$SO"; then echo "$SO is not stripped"; exit 1; fi
echo "   $(basename "$SO"): $(du -k "$SO" | cut -f1) KiB, no debug info, stripped"
done_step
echo
echo "install check passed ($SECONDS s)"
