"""Test entries into the CPU tile kernel's Box-Muller pieces (cpu_kernel_harness.cpp): compiled per capability with
the extension's flags for it (setup.py's CPU_VARIANTS) and cached under build/cpu_host/ by a hash of the sources and
flags; called through ctypes on contiguous float32 CPU tensors whose size is a multiple of 8."""

import ctypes
import hashlib
import os
import shutil
import subprocess

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
CSRC = os.path.join(REPO, "csrc")
SOURCES = [os.path.join(HERE, "cpu_kernel_harness.cpp")] + \
          [os.path.join(CSRC, p) for p in ("cpu/fused_step_impl.h", "cpu/fused_step_kernel.h", "fused_step.h",
                                           "philox.h")]
# as setup.py compiles the tile kernels (-O3, C++20: no FMA contraction beyond the intrinsics), one set per capability
FLAGS = ["-std=c++20", "-O3", "-fPIC", "-shared", "-Wall", "-Werror"]
CAPABILITY_FLAGS = {
    "DEFAULT": ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"],
    "AVX2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
}
_libs = {}


def compiler():
    for name in (os.environ.get("CXX"), "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags and " f16c" in flags


def load(capability: str) -> ctypes.CDLL:
    if capability in _libs:
        return _libs[capability]
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no host C++ compiler (g++ / clang++ / $CXX)")
    flags = FLAGS + CAPABILITY_FLAGS[capability]
    digest = hashlib.sha256(" ".join([cxx] + flags).encode())
    for path in SOURCES:
        with open(path, "rb") as f:
            digest.update(f.read())
    out_dir = os.path.join(REPO, "build", "cpu_host")
    path = os.path.join(out_dir, f"cpu_{capability.lower()}_{digest.hexdigest()[:16]}.so")
    if not os.path.exists(path):
        os.makedirs(out_dir, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        cmd = [cxx, *flags, "-I", CSRC, SOURCES[0], "-o", tmp]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"compiling the CPU kernel harness failed:\n{' '.join(cmd)}\n{r.stderr[-4000:]}")
        os.replace(tmp, path)
    lib = ctypes.CDLL(path)
    lib.fastint_cpu_box_muller.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    if capability == "AVX2":
        lib.fastint_cpu_log8.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        lib.fastint_cpu_sincos8.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    _libs[capability] = lib
    return lib


def _padded(x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.float32).reshape(-1)
    pad = (-x.numel()) % 8
    return torch.cat([x, x.new_full((pad,), 0.5)]) if pad else x.clone()


def box_muller(capability: str, u_radius: torch.Tensor, u_angle: torch.Tensor):
    n = u_radius.numel()
    ua, ub = _padded(u_radius), _padded(u_angle)
    load(capability).fastint_cpu_box_muller(ua.data_ptr(), ub.data_ptr(), ua.numel())
    return ua[:n], ub[:n]


def log8(x: torch.Tensor) -> torch.Tensor:
    n = x.numel()
    xs = _padded(x)
    y = torch.empty_like(xs)
    load("AVX2").fastint_cpu_log8(xs.data_ptr(), y.data_ptr(), xs.numel())
    return y[:n]


def sincos8(x: torch.Tensor):
    n = x.numel()
    xs = _padded(x)
    s, c = torch.empty_like(xs), torch.empty_like(xs)
    load("AVX2").fastint_cpu_sincos8(xs.data_ptr(), s.data_ptr(), c.data_ptr(), xs.numel())
    return s[:n], c[:n]
