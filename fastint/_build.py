"""The build recipe of the compiled extension ``fastint._C``, shared by the ahead-of-time build (``setup.py``) and
the just-in-time build on first use (``fastint/ops/jit_build.py``): sources, flags, CPU variants, the compiler
check and the generated ``fastint/_build_info.py``. Imports nothing outside the standard library (``setup.py``
loads this file by path, before torch may even be importable).

Flags: ``-O3``, no debug information (``-g0``) and stripped at link time (``-s``): a release build. No
``-march=native``: the build must run on other machines than the one it was built on. The per-tile CPU kernel is
compiled once more per instruction set in ``CPU_VARIANTS`` (files that include no torch header, each with its own
flags); ``csrc/cpu/fused_step.cpp`` picks the one matching ATen's CPU capability at run time.
"""

import os
import platform
import shutil
import subprocess
from typing import Dict, List, Optional, Tuple

CPU_SOURCES = ("ops.cpp", "autograd.cpp", "python_entry.cpp", "step_replay.cpp", "all_finite.cpp", "cxx_runtime.cpp",
               "cpu/fused_step.cpp", "cpu/fused_step_default.cpp")
CUDA_SOURCES = ("cuda/fused_step.cu",)
CPU_VARIANTS: Dict[str, List[str]] = {
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
}
SOURCE_SUFFIXES = (".h", ".cuh", ".cpp", ".cu")
RELEASE_CFLAGS = ["-O3", "-g0", "-fopenmp"]
# On Linux the link names the shared libstdc++ that this process (the build, with torch imported) has loaded, by its
# path: the module must use the one C++ runtime torch uses. A private copy breaks iostreams: c10::str crashed
# formatting an error message (csrc/cxx_runtime.cpp refuses such a module at import). Named by path, it defines every
# libstdc++ symbol, so whatever static archive the compiler driver appends (a g++ wrapper adding -static-libstdc++)
# contributes nothing; `-Bdynamic -lstdc++` is not enough: the linker takes the first directory holding either
# libstdc++.so or libstdc++.a, and a toolchain whose own lib directory has only the archive (one GPU image's
# /opt/gcc) links it statically all the same. Without a loaded libstdc++ (no torch imported) it falls back to that.
SHARED_LIBSTDCXX_BY_NAME = ["-Wl,--push-state,-Bdynamic", "-lstdc++", "-Wl,--pop-state"]


def loaded_libstdcxx(maps: str = "/proc/self/maps") -> Optional[str]:
    """The path of the shared libstdc++ mapped into this process (None if none, or not Linux)."""
    try:
        with open(maps) as f:
            for line in f:
                fields = line.split(None, 5)  # address perms offset device inode [path]
                path = fields[5].strip() if len(fields) == 6 else ""
                if os.path.basename(path).startswith("libstdc++.so") and os.path.isfile(path):
                    return path
    except OSError:
        return None
    return None


def shared_libstdcxx_flags() -> List[str]:
    """Link arguments that give the module the process's shared libstdc++ (see above); [] off Linux."""
    if platform.system() != "Linux":
        return []
    path = loaded_libstdcxx()
    return [path] if path else list(SHARED_LIBSTDCXX_BY_NAME)


def release_ldflags() -> List[str]:
    """The link flags of a release build: OpenMP, stripped, the shared libstdc++."""
    return ["-fopenmp", "-s"] + shared_libstdcxx_flags()


DEFAULT_CUDA_ARCH_LIST = "8.0;9.0"


def disabled_by_env() -> bool:
    """``FASTINT_BUILD_EXT=0`` (or false/no/off): no compiled kernels at all."""
    return os.environ.get("FASTINT_BUILD_EXT", "1").strip().lower() in ("0", "false", "no", "off")


def enabled_by_env() -> bool:
    """``FASTINT_BUILD_EXT=1`` given explicitly (overrides an install made with ``FASTINT_BUILD_EXT=0``)."""
    return os.environ.get("FASTINT_BUILD_EXT", "").strip().lower() in ("1", "true", "yes", "on")


def compiler_problem() -> Optional[str]:
    """None when the C++ compiler torch's build would use (``$CXX``, else ``c++``) runs, else what is wrong."""
    cxx = os.environ.get("CXX", "").strip() or "c++"
    exe = cxx.split()[0]
    where = shutil.which(exe)
    if where is None:
        return f"no C++ compiler found ({'CXX=' + cxx if 'CXX' in os.environ else 'c++ is not on PATH'})"
    try:
        r = subprocess.run([where, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the C++ compiler {cxx!r} does not run ({exc})"
    if r.returncode != 0:
        return f"the C++ compiler {cxx!r} does not work (`{cxx} --version` exits {r.returncode})"
    return None


def cpu_variants() -> List[str]:
    """The CPU kernel variants to build: ``FASTINT_CPU_VARIANTS`` (default ``avx2,avx512`` on x86-64)."""
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
    if not x86:
        return []
    wanted = os.environ.get("FASTINT_CPU_VARIANTS", "avx2,avx512")
    return [v.strip() for v in wanted.split(",") if v.strip() in CPU_VARIANTS]


def cuda_arch_list() -> str:
    """``TORCH_CUDA_ARCH_LIST``, default ``8.0;9.0`` (set explicitly: torch would otherwise query the GPU)."""
    return os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or DEFAULT_CUDA_ARCH_LIST


def version_define(torch_version: str) -> str:
    return f'-DFASTINT_TORCH_VERSION="{torch_version}"'


def sources(csrc: str, with_cuda: bool) -> List[str]:
    return [os.path.join(csrc, p) for p in CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())]


def headers(csrc: str) -> List[str]:
    return sorted(os.path.join(d, f) for d, _, files in os.walk(csrc) for f in files if f.endswith((".h", ".cuh")))


def source_files(csrc: str) -> List[str]:
    """Every source and header below ``csrc`` (relative paths): what the sdist and the installed package carry."""
    return sorted(os.path.relpath(os.path.join(d, f), csrc) for d, _, files in os.walk(csrc) for f in files
                  if f.endswith(SOURCE_SUFFIXES))


def build_info_text(**fields) -> str:
    lines = ['"""Generated by each build (fastint/_build.py): how this installation got its compiled kernels."""', ""]
    lines += [f"{key.upper()} = {value!r}" for key, value in fields.items()]
    return "\n".join(lines) + "\n"


def write_build_info(path: str, **fields) -> None:
    """Write ``fastint/_build_info.py``: ``mode`` ('aot': compiled at install time; 'jit': compile on first use;
    'disabled': FASTINT_BUILD_EXT=0), ``reason`` (why not ahead of time), ``torch_version``, ``with_cuda``,
    ``cpu_variants``, ``cuda_arch_list``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(build_info_text(**fields))


def compile_variant(cxx: str, name: str, csrc: str, out_dir: str) -> Tuple[Optional[str], Optional[str]]:
    """Compile ``csrc/cpu/fused_step_<name>.cpp`` alone with its instruction-set flags (it includes no torch
    header): ``(object path, None)``, or ``(None, why not)`` for a compiler without that instruction set."""
    src = os.path.join(csrc, "cpu", f"fused_step_{name}.cpp")
    obj = os.path.join(out_dir, f"fused_step_{name}.o")
    cmd = cxx.split() + ["-std=c++17", "-fPIC", "-DNDEBUG", *RELEASE_CFLAGS, *CPU_VARIANTS[name], "-I", csrc,
                         "-c", src, "-o", obj]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        lines = (r.stderr or r.stdout).strip().splitlines()
        return None, lines[-1] if lines else f"exit status {r.returncode}"
    return obj, None
