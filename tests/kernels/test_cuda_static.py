"""Static checks of the machine code the GPU kernels compile to, for sm_90, without a GPU.

CUDA C++ kernel (csrc/cuda/fused_step_kernel.cuh, every M/K/E variant, compiled by nvcc -Xptxas -v, disassembled by
cuobjdump from the PyPI package nvidia-cuda-cuobjdump):
  * ptxas reports 0 bytes of spill stores and loads;
  * occupancy from the register count at the launch's 256 threads per block, with sm_90's limits (65536 registers
    and 2048 threads per SM, registers allocated per warp in units of 256): full occupancy (8 blocks, 2048
    threads, <= 32 registers) for every 4-element variant except two outputs with 2+ noise streams, which need
    more than 32 registers without spilling and must keep >= 6 blocks (1536 threads, 75%; <= 40 registers); the
    8-element variants (every tensor 16-bit: twice the values per thread) keep 8 blocks for one output without
    noise, 6 for one output with one stream or two outputs without, 5 otherwise. Rule: the kernel streams memory,
    so what matters is the bytes in flight per SM (Little's law: H100's ~3.35 TB/s x ~0.6 us of latency / 132 SMs
    ~ 15 KB); 1280 threads with one 16-byte load per input each keep 20 KB in flight;
  * the vectorised path's SASS has 128-bit global loads and stores (LDG.E.128 / STG.E.128: four float32 values,
    or eight half-precision values in the 8-element variants) and, in the 4-element variants, 64-bit ones
    (LDG.E.64 / STG.E.64, four half-precision values beside float32 tensors).
Triton kernel (fastint/ops/triton_kernel.py), compiled by triton.compile for GPUTarget("cuda", 90, 32) with
16-divisible pointers and size, in one autotuning configuration (256 groups per program, 4 warps), deterministic
and with four noise streams: no local memory (no spills), >= 15 KB of loads in flight per SM by the rule above,
LDG.E.128 / STG.E.128 in its SASS.
Skipped (with the reason) without nvcc; CI has nvcc, so these run there.
"""

import glob
import hashlib
import math
import os
import re
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CSRC = os.path.join(REPO, "csrc")
SOURCES = [os.path.join(CSRC, p) for p in ("cuda/fused_step_check.cu", "cuda/fused_step_launch.cuh",
                                           "cuda/fused_step_kernel.cuh", "fused_step.h", "philox.h")]
REGS_PER_SM, THREADS_PER_SM, BLOCKS_PER_SM, REG_UNIT = 65536, 2048, 32, 256  # sm_90
THREADS = 256  # the launch's block size (kThreads)
BYTES_IN_FLIGHT_PER_SM = 15 * 1024  # Little's law, see the module docstring


def _nvcc():
    return shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",) if os.path.exists(p)), None)


def _tool(name):
    """A CUDA binary tool: on PATH, else from a PyPI package (nvidia-cuda-cuobjdump installs nvidia/cu*/bin;
    triton bundles cuobjdump and nvdisasm in triton/backends/nvidia/bin)."""
    found = shutil.which(name)
    if found:
        return found
    for base in sys.path:
        for pattern in ("nvidia/*/bin/", "nvidia/cuda_*/bin/", "triton/backends/nvidia/bin/"):
            hits = sorted(glob.glob(os.path.join(base, pattern + name)))
            if hits:
                return hits[0]
    return None


def _sass(cubin):
    cuobjdump, nvdisasm = _tool("cuobjdump"), _tool("nvdisasm")
    if cuobjdump is None:
        pytest.skip("cuobjdump not found: pip install nvidia-cuda-cuobjdump (in the dev extras)")
    env = dict(os.environ)
    if nvdisasm:  # cuobjdump -sass runs nvdisasm
        env["PATH"] = os.path.dirname(nvdisasm) + os.pathsep + env.get("PATH", "")
    r = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _resident_blocks(registers, threads):
    per_warp = math.ceil(registers * 32 / REG_UNIT) * REG_UNIT
    warps = math.ceil(threads / 32)
    return min(REGS_PER_SM // (per_warp * warps), THREADS_PER_SM // threads, BLOCKS_PER_SM)


@pytest.fixture(scope="module")
def cuda_build():
    """(ptxas -v log, cubin path) of every kernel variant for sm_90, cached under build/cuda_static/."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found: the static checks of the CUDA kernel need the CUDA toolkit")
    digest = hashlib.sha256(nvcc.encode())
    for path in SOURCES:
        with open(path, "rb") as f:
            digest.update(f.read())
    out = os.path.join(REPO, "build", "cuda_static", digest.hexdigest()[:16])
    cubin, log = os.path.join(out, "fused_step.cubin"), os.path.join(out, "ptxas.log")
    if not (os.path.exists(cubin) and os.path.exists(log)):
        os.makedirs(out, exist_ok=True)
        r = subprocess.run([nvcc, "-std=c++17", "-O3", "-arch=sm_90", "-I", CSRC, "-Xptxas", "-v", "-cubin",
                            "-o", cubin + ".tmp", SOURCES[0]], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-4000:]
        with open(log + ".tmp", "w") as f:
            f.write(r.stdout + r.stderr)
        os.replace(cubin + ".tmp", cubin)
        os.replace(log + ".tmp", log)
    with open(log) as f:
        return f.read(), cubin


def _ptxas_report(log):
    """{(M, K, E): (registers, spill store bytes, spill load bytes)} from ptxas -v."""
    report = {}
    for block in log.split("Compiling entry function")[1:]:
        m = re.search(r"fused_step_kernelILi(\d)ELi(\d)ELi(\d)E", block)
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", block)
        regs = re.search(r"Used (\d+) registers", block)
        assert m and spill and regs, block
        report[(int(m.group(1)), int(m.group(2)), int(m.group(3)))] = (
            int(regs.group(1)), int(spill.group(1)), int(spill.group(2)))
    return report


def _required_blocks(m, k, e):
    if e == 4:
        return 6 if m == 2 and k >= 2 else THREADS_PER_SM // THREADS
    if m == 1 and k == 0:
        return THREADS_PER_SM // THREADS
    return 6 if (m, k) in ((1, 1), (2, 0)) else 5


def test_cuda_kernel_registers_and_spills(cuda_build):
    report = _ptxas_report(cuda_build[0])
    assert sorted(report) == [(m, k, e) for m in (1, 2) for k in range(5) for e in (4, 8)], sorted(report)
    problems = []
    for (m, k, e), (regs, stores, loads) in sorted(report.items()):
        blocks = _resident_blocks(regs, THREADS)
        if stores or loads:
            problems.append(f"M={m} K={k} E={e}: {stores} bytes spill stores, {loads} bytes spill loads")
        if blocks < _required_blocks(m, k, e):
            problems.append(f"M={m} K={k} E={e}: {regs} registers -> {blocks} blocks of {THREADS} per SM, "
                            f"needs {_required_blocks(m, k, e)}")
        if blocks * THREADS * 16 < BYTES_IN_FLIGHT_PER_SM:
            problems.append(f"M={m} K={k} E={e}: {blocks * THREADS * 16} bytes in flight per SM")
    assert not problems, "\n".join(problems)


def _functions(sass):
    """{function name: its SASS text}."""
    parts = re.split(r"\n\s*Function : (\S+)", sass)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_cuda_kernel_vector_loads_and_stores(cuda_build):
    functions = _functions(_sass(cuda_build[1]))
    assert len(functions) == 20, list(functions)
    for name, text in functions.items():
        eight = re.search(r"ILi\dELi\dELi8E", name) is not None
        for op in ("LDG.E.128", "STG.E.128") + (() if eight else ("LDG.E.64", "STG.E.64")):
            assert re.search(re.escape(op) + r"\b", text), f"{name}: no {op} in its SASS"


# --- Triton --------------------------------------------------------------------------------------------------------

TRITON_VARIANTS = [(2, 1, 0), (6, 2, 4)]  # (N, M, K): deterministic, and the heaviest


@pytest.fixture(scope="module")
def triton_compile():
    pytest.importorskip("triton")
    if _nvcc() is None:
        pytest.skip("nvcc not found (the CUDA static checks run where the CUDA toolkit is)")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import triton

    from fastint.ops import triton_kernel

    if triton_kernel.interpreting():
        pytest.skip("TRITON_INTERPRET=1 in this process")
    fn = triton_kernel._build_kernel().jit_fn

    def compile_variant(n, m, k, dtype="fp32"):
        sig = {}
        for name in fn.arg_names:
            if name in ("out0", "out1") or re.fullmatch(r"in\d", name):
                sig[name] = f"*{dtype}"
            elif name == "seeds_ptr":
                sig[name] = "*i64"
            elif name == "per_sample":
                sig[name] = "i64"
            elif name == "counter4":
                sig[name] = "i32"
            elif name in ("N", "M", "K", "BLOCK_GROUPS"):
                sig[name] = "constexpr"
            else:
                sig[name] = "fp32"
        aligned = [i for i, name in enumerate(fn.arg_names) if sig[name].startswith("*") or name == "per_sample"]
        src = ASTSource(fn, sig, constexprs={"N": n, "M": m, "K": k, "BLOCK_GROUPS": 256},
                        attrs={(i,): [["tt.divisibility", 16]] for i in aligned})
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})

    return compile_variant


@pytest.mark.parametrize("variant", TRITON_VARIANTS, ids=lambda v: "N%dM%dK%d" % v)
def test_triton_kernel_machine_code(triton_compile, variant, tmp_path):
    kernel = triton_compile(*variant)
    cubin = tmp_path / "kernel.cubin"
    cubin.write_bytes(kernel.asm["cubin"])
    cuobjdump = _tool("cuobjdump")
    if cuobjdump is None:
        pytest.skip("cuobjdump not found: pip install nvidia-cuda-cuobjdump (in the dev extras)")
    usage = subprocess.run([cuobjdump, "-res-usage", str(cubin)], capture_output=True, text=True)
    assert usage.returncode == 0, usage.stderr
    res = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", usage.stdout)
    assert res, usage.stdout
    regs, stack, local = map(int, res.groups())
    assert stack == 0 and local == 0, f"local memory (spills): STACK {stack}, LOCAL {local}"
    threads = 32 * kernel.metadata.num_warps
    blocks = _resident_blocks(regs, threads)
    bytes_per_thread = 256 * 4 * 4 // threads  # each program loads 256 groups x 4 float32 per input
    assert blocks * threads * bytes_per_thread >= BYTES_IN_FLIGHT_PER_SM, (regs, blocks)
    sass = _sass(str(cubin))
    for op in ("LDG.E.128", "STG.E.128"):
        assert re.search(re.escape(op) + r"\b", sass), f"no {op} in the Triton kernel's SASS"
