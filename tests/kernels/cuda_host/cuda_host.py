"""The CUDA kernel's own source on the CPU: builds cuda_host_harness.cpp with the host compiler (cached under
build/cuda_host/ by a hash of every source and flag, so only the first test of a clean checkout compiles, ~2 s) and
calls it through ctypes on CPU tensors' data pointers. See shim/cuda_shim.h for what is emulated and how exactly.
"""

import ctypes
import hashlib
import os
import shutil
import subprocess
from typing import List, Optional, Sequence, Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
CSRC = os.path.join(REPO, "csrc")
SOURCES = [os.path.join(HERE, p) for p in ("cuda_host_harness.cpp", "shim/cuda_shim.h", "shim/cuda_runtime.h",
                                             "shim/cuda_fp16.h")] + \
          [os.path.join(CSRC, p) for p in ("cuda/fused_step_kernel.cuh", "fused_step.h", "philox.h")]
# -fsanitize=alignment: a float4 / uint2 access through a misaligned pointer aborts (the GPU would fault).
# -ffp-contract=off: no FMA contraction (see the shim's note on nvcc's); -O1 keeps the build at ~2 s.
FLAGS = ["-std=c++17", "-O1", "-fPIC", "-shared", "-Wall", "-Werror", "-Wno-unknown-pragmas", "-ffp-contract=off",
         "-fsanitize=alignment", "-fno-sanitize-recover=all"]
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
BLOCK_THREADS = 256  # kThreads of the kernel
_lib = None


def compiler() -> Optional[str]:
    for name in (os.environ.get("CXX"), "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def build_dir() -> str:
    return os.path.join(REPO, "build", "cuda_host")


def library_path(cxx: str) -> str:
    digest = hashlib.sha256()
    for path in SOURCES:
        with open(path, "rb") as f:
            digest.update(f.read())
    digest.update(" ".join([cxx] + FLAGS).encode())
    return os.path.join(build_dir(), f"cuda_host_{digest.hexdigest()[:16]}.so")


def load() -> ctypes.CDLL:
    """The harness library, compiled on first use (a compile error raises with the compiler's output)."""
    global _lib
    if _lib is not None:
        return _lib
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no host C++ compiler (g++ / clang++ / $CXX)")
    path = library_path(cxx)
    if not os.path.exists(path):
        os.makedirs(build_dir(), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        cmd = [cxx, *FLAGS, "-I", os.path.join(HERE, "shim"), "-I", CSRC, SOURCES[0], "-o", tmp]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"compiling the CUDA host harness failed:\n{' '.join(cmd)}\n{r.stderr[-4000:]}")
        os.replace(tmp, path)
    lib = ctypes.CDLL(path)
    lib.fastint_cuda_host_fused_step.restype = ctypes.c_int64
    lib.fastint_cuda_host_fused_step.argtypes = [
        ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int32), ctypes.c_int32,
        ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int32), ctypes.c_int32,
        ctypes.POINTER(ctypes.c_float), ctypes.c_int32, ctypes.c_uint32, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(ctypes.c_int32)]
    lib.fastint_cuda_host_philox.restype = None
    lib.fastint_cuda_host_philox.argtypes = [ctypes.POINTER(ctypes.c_uint32)] * 3
    lib.fastint_cuda_host_box_muller.restype = None
    lib.fastint_cuda_host_box_muller.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                                                 ctypes.c_void_p]
    _lib = lib
    return lib


def fused_step(inputs: Sequence[torch.Tensor], coeffs, num_noise: int = 0, seeds: Optional[torch.Tensor] = None,
               counter: int = 0, out: Optional[List[torch.Tensor]] = None, block_cap: int = 3,
               reverse: bool = False) -> Tuple[List[torch.Tensor], bool, int]:
    """The fused step on CPU tensors through the CUDA kernel's source: (outputs, vectorised?, blocks launched).

    Same contract as ``fastint.ops.fused_step`` for contiguous tensors (views may start at any offset); ``out``
    defaults to new float32 tensors. ``block_cap`` caps the grid (the grid-stride loop wraps beyond it)."""
    lib = load()
    coeffs = [list(map(float, row)) for row in coeffs]
    ref = inputs[0]
    assert all(t.is_contiguous() and t.shape == ref.shape and t.dtype in DTYPE_CODES for t in inputs)
    if out is None:
        out = [torch.empty(ref.shape, dtype=torch.float32) for _ in coeffs]
    assert all(o.is_contiguous() and o.shape == ref.shape for o in out) and len(out) == len(coeffs)
    samples = ref.shape[0] if ref.dim() else 1
    per_sample = ref.numel() // samples if samples else 0
    if num_noise:
        assert seeds is not None and seeds.dtype == torch.int64 and seeds.numel() == samples
        seeds = seeds.contiguous()
    coef = torch.tensor(coeffs, dtype=torch.float32).reshape(-1).contiguous()  # rounded as the op does
    outs_p = (ctypes.c_void_p * len(out))(*[o.data_ptr() for o in out])
    ins_p = (ctypes.c_void_p * len(inputs))(*[t.data_ptr() for t in inputs])
    out_dt = (ctypes.c_int32 * len(out))(*[DTYPE_CODES[o.dtype] for o in out])
    in_dt = (ctypes.c_int32 * len(inputs))(*[DTYPE_CODES[t.dtype] for t in inputs])
    vectorized = ctypes.c_int32(-1)
    blocks = lib.fastint_cuda_host_fused_step(
        outs_p, out_dt, len(out), ins_p, in_dt, len(inputs),
        ctypes.cast(coef.data_ptr(), ctypes.POINTER(ctypes.c_float)), num_noise, counter, samples, per_sample,
        seeds.data_ptr() if num_noise else None, block_cap, int(reverse), ctypes.byref(vectorized))
    return out, bool(vectorized.value), blocks


def philox(counter: Sequence[int], key: Sequence[int]) -> Tuple[int, int, int, int]:
    lib = load()
    c = (ctypes.c_uint32 * 4)(*counter)
    k = (ctypes.c_uint32 * 2)(*key)
    w = (ctypes.c_uint32 * 4)()
    lib.fastint_cuda_host_philox(c, k, w)
    return tuple(w)


def box_muller(u_radius: torch.Tensor, u_angle: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    lib = load()
    ua = u_radius.to(torch.float32).contiguous()
    ub = u_angle.to(torch.float32).contiguous()
    n_cos, n_sin = torch.empty_like(ua), torch.empty_like(ua)
    lib.fastint_cuda_host_box_muller(ua.data_ptr(), ub.data_ptr(), ua.numel(), n_cos.data_ptr(), n_sin.data_ptr())
    return n_cos, n_sin
