"""The just-in-time build of ``fastint._C`` on first use, for installs that compiled nothing ahead of time (pip's
build isolation hides torch from the build, so a wheel built that way is pure Python and carries the C++ sources).

The first process that needs the ``cpp``/``cuda`` backend compiles the sources with torch's own extension builder
(``torch.utils.cpp_extension.load``, ninja) against the torch that is running, prints one line that it is compiling
and one with the time it took, and caches the library in

    $FASTINT_CACHE_DIR (default $XDG_CACHE_HOME/fastint or ~/.cache/fastint) /
        torch<version>-py<major><minor>-<machine>-<hash of the sources and flags>/_C.so

so later processes load it at once; a new torch, Python, architecture or fastint source gets its own directory, and
concurrent first uses wait on torch's lock file. A failed build is recorded there too (``failed.txt`` with the
compiler's last lines), so later processes report it without compiling again; delete the directory to retry.
The sources come from ``fastint/_csrc`` (an installed wheel) or the checkout's ``csrc/`` (an editable install).
"""

import hashlib
import os
import platform
import shlex
import sys
import time
from typing import Optional, Tuple

import torch

from .. import _build

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source_dir() -> Optional[str]:
    """Where the C++ sources are: ``fastint/_csrc`` (installed) or ``<checkout>/csrc`` (editable), else None."""
    for candidate in (os.path.join(PACKAGE_DIR, "_csrc"), os.path.join(os.path.dirname(PACKAGE_DIR), "csrc")):
        if os.path.isfile(os.path.join(candidate, "ops.cpp")):
            return candidate
    return None


def _with_cuda() -> bool:
    from torch.utils import cpp_extension
    return bool(torch.version.cuda) and cpp_extension.CUDA_HOME is not None


def _flags(csrc: str, with_cuda: bool, variants) -> Tuple[list, list]:
    # torch writes these flags into build.ninja unquoted and ninja runs them through the shell: quote the string macro
    version = shlex.quote(_build.version_define(torch.__version__))
    cflags = _build.RELEASE_CFLAGS + [version]
    cflags += [f"-DFASTINT_HAVE_{name.upper()}" for name in variants]
    cuda_flags = ["-O3", version]
    if with_cuda:
        cflags.append("-DFASTINT_WITH_CUDA")
        cuda_flags.append("-DFASTINT_WITH_CUDA")
    return cflags, cuda_flags


def cache_dir(csrc: str, with_cuda: bool, variants) -> str:
    """The build directory for this torch, Python, machine and source/flag state."""
    digest = hashlib.sha256()
    for rel in _build.source_files(csrc):
        digest.update(rel.encode())
        with open(os.path.join(csrc, rel), "rb") as f:
            digest.update(f.read())
    digest.update(repr((_flags(csrc, with_cuda, variants), _build.release_ldflags(), with_cuda and _build.cuda_arch_list(),
                        os.environ.get("CXX", ""))).encode())
    base = os.environ.get("FASTINT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fastint")
    tag = f"torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}"
    return os.path.join(base, f"{tag}-{digest.hexdigest()[:12]}".replace("+", "_"))


def build_and_load():
    """Compile (or load the cached) ``fastint._C`` for the running torch; returns ``(module, None)`` or
    ``(None, reason)``. Never raises."""
    csrc = source_dir()
    if csrc is None:
        return None, "the C++ sources are not installed with this package (fastint/_csrc is missing)"
    problem = _build.compiler_problem()
    if problem:
        return None, problem
    try:
        import ninja  # noqa: F401  (torch's extension builder runs ninja)
    except ImportError:
        import shutil
        if shutil.which("ninja") is None:
            return None, "ninja is not installed (pip install ninja)"
    with_cuda = _with_cuda()
    variants = _build.cpu_variants()
    out = cache_dir(csrc, with_cuda, variants)
    failed = os.path.join(out, "failed.txt")
    if os.path.exists(failed):
        with open(failed, encoding="utf-8") as f:
            return None, f"{f.read().strip()} (recorded by an earlier build in {out}; delete it to retry)"
    os.makedirs(out, exist_ok=True)
    compiling = not any(name.startswith("_C") and name.endswith(".so") for name in os.listdir(out))
    start = time.perf_counter()
    if compiling:
        what = "CPU" + (" and CUDA" if with_cuda else "")
        print(f"fastint: compiling the {what} kernels for torch {torch.__version__} (first use; cached in {out})",
              file=sys.stderr, flush=True)
    try:
        module = _compile(csrc, out, with_cuda, variants)
    except Exception as exc:  # noqa: BLE001  (any compiler failure: recorded, reported once per process)
        log = os.path.join(out, "build.log")
        with open(log, "w", encoding="utf-8") as f:
            f.write(str(exc) + "\n")
        lines = [line.strip() for line in str(exc).splitlines() if "error" in line.lower()]
        reason = f"the just-in-time build failed ({(lines or [type(exc).__name__])[0][:200]}; full log: {log})"
        with open(failed, "w", encoding="utf-8") as f:
            f.write(reason + "\n")
        return None, reason
    if compiling:
        print(f"fastint: compiled in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return module, None


def _compile(csrc: str, out: str, with_cuda: bool, variants):
    from torch.utils import cpp_extension
    cxx = os.environ.get("CXX", "").strip() or "c++"
    objects = []
    for name in variants:
        obj = os.path.join(out, f"fused_step_{name}.o")
        if not os.path.exists(obj):
            obj, why = _build.compile_variant(cxx, name, csrc, out)
            if obj is None:
                print(f"fastint: skipping the {name} CPU kernel ({why})", file=sys.stderr)
                continue
        objects.append(obj)
    have = [os.path.basename(o)[len("fused_step_"):-2] for o in objects]
    cflags, cuda_flags = _flags(csrc, with_cuda, have)
    if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = _build.cuda_arch_list()  # never query the GPU (initialises CUDA)
    return cpp_extension.load(
        name="_C", sources=_build.sources(csrc, with_cuda), extra_cflags=cflags, extra_cuda_cflags=cuda_flags,
        extra_ldflags=_build.release_ldflags() + objects, extra_include_paths=[csrc], build_directory=out,
        with_cuda=with_cuda, is_python_module=True, verbose=False)
