"""fastint._C must run on the process's one shared libstdc++ (csrc/cxx_runtime.cpp).

A compiler that links libstdc++ statically into the extension (a g++ wrapper adding -static-libstdc++ did so on a
GPU machine) gives it a private C++ runtime beside the shared one torch loaded; the first error message it formats
(c10::str, `ostream << int64_t`) then segfaults or loses its numbers. Three checks: the detector on a tiny library
linked both ways (in a subprocess: a private libstdc++ must not enter this process), the built extension's own
symbol resolution, and the error path of every entry in a fresh process (so a crash fails the test, not the run).
"""

import ctypes
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from fastint import _build
from kernel_backends import require_backend

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")
CXX = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")

SHIM = textwrap.dedent("""
    #include <cstring>
    #include <string>
    #include "cxx_runtime.h"
    extern "C" int fastint_private_runtime(char* buf, int n) {
      const std::string r = fastint::private_cxx_runtime_reason();
      std::strncpy(buf, r.c_str(), n - 1);
      buf[n - 1] = 0;
      return static_cast<int>(r.size());
    }
""")

LOAD = textwrap.dedent("""
    import ctypes, sys
    lib = ctypes.CDLL(sys.argv[1])
    buf = ctypes.create_string_buffer(4096)
    lib.fastint_private_runtime(buf, 4096)
    print("REASON:" + buf.value.decode())
""")


def _detector_says(tmp_path, link_flags):
    """What private_cxx_runtime_reason() returns in a library linked with `link_flags` (loaded in a subprocess)."""
    shim = tmp_path / "shim.cpp"
    shim.write_text(SHIM)
    lib = tmp_path / f"libshim{len(link_flags)}.so"
    cmd = [CXX, "-shared", "-fPIC", "-O1", "-std=c++17", f"-I{CSRC}", str(shim), os.path.join(CSRC, "cxx_runtime.cpp"),
           "-o", str(lib), *link_flags, "-ldl"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and "-static-libstdc++" in link_flags:
        pytest.skip(f"this toolchain cannot link libstdc++ statically into a shared library: {r.stderr[-500:]}")
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-c", LOAD, str(lib)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.split("REASON:", 1)[1].strip(), str(lib)


@pytest.fixture
def cpp():
    require_backend("cpp", "cpu")


@pytest.mark.skipif(not sys.platform.startswith("linux") or CXX is None, reason="needs Linux and a C++ compiler")
def test_detector_tells_a_private_libstdcxx_from_the_shared_one(tmp_path):
    reason, _ = _detector_says(tmp_path, [])
    assert reason == ""
    for flags in (["-static-libstdc++"], ["-static-libstdc++", "-Wl,-Bsymbolic-functions"]):
        reason, lib = _detector_says(tmp_path, flags)
        assert lib in reason and "its own copy of libstdc++" in reason, (flags, reason)
    # the build's link arguments win over a wrapper's -static-libstdc++
    reason, _ = _detector_says(tmp_path, ["-static-libstdc++", "-Wl,-Bsymbolic-functions", *_build.release_ldflags()])
    assert reason == ""


@pytest.mark.skipif(not sys.platform.startswith("linux") or CXX is None, reason="needs Linux and a C++ compiler")
def test_a_toolchain_with_only_the_static_archive_still_links_the_shared_runtime(tmp_path):
    """A wrapper whose own lib directory holds libstdc++.a and no libstdc++.so (a GPU image's /opt/gcc): naming the
    library (-Bdynamic -lstdc++) then takes the archive; the build names the loaded runtime by its path instead."""
    archive = subprocess.run([CXX, "-print-file-name=libstdc++.a"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(archive) or not os.path.isfile(archive):
        pytest.skip("this toolchain has no libstdc++.a")
    only_archive = tmp_path / "only_archive"
    only_archive.mkdir()
    shutil.copy(archive, only_archive / "libstdc++.a")
    wrapper = ["-static-libstdc++", "-Wl,-Bsymbolic-functions", f"-L{only_archive}"]
    reason, lib = _detector_says(tmp_path, wrapper + _build.SHARED_LIBSTDCXX_BY_NAME)
    assert lib in reason and "its own copy of libstdc++" in reason, reason
    assert _build.loaded_libstdcxx() is not None  # torch (imported by the test session) loaded one
    reason, _ = _detector_says(tmp_path, wrapper + _build.release_ldflags())
    assert reason == ""


def test_extension_uses_the_shared_libstdcxx(cpp):
    """The loaded fastint._C resolves std::locale::classic() to a library other than itself."""
    from fastint.ops import extension

    path = extension.module().__file__
    lib = ctypes.CDLL(path)  # already loaded: the same handle
    try:
        address = ctypes.cast(lib._ZNSt6locale7classicEv, ctypes.c_void_p).value
    except AttributeError:
        pytest.skip("no libstdc++ in this process (another C++ runtime)")

    class DlInfo(ctypes.Structure):
        _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p), ("dli_sname", ctypes.c_char_p),
                    ("dli_saddr", ctypes.c_void_p)]

    info = DlInfo()
    libdl = ctypes.CDLL(None)
    if not hasattr(libdl, "dladdr"):  # glibc < 2.34: in libdl
        libdl = ctypes.CDLL("libdl.so.2")
    libdl.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
    assert libdl.dladdr(address, ctypes.byref(info)) != 0
    assert os.path.realpath(info.dli_fname.decode()) != os.path.realpath(path), \
        f"{path} defines libstdc++'s std::locale::classic(): libstdc++ was linked into it statically"


ERRORS = textwrap.dedent("""
    import torch
    from fastint.ops import extension
    assert extension.load() is None, extension.load()
    x = torch.randn(4, 8)
    entries = {"torch.ops": torch.ops.fastint.fused_step, "default": torch.ops.fastint.fused_step.default,
               "fast entry": extension.module().fused_step}
    for name, op in entries.items():
        for args in (([torch.empty_like(x)], [x], [1.0, 2.0], None, 0, 0),
                     ([torch.empty_like(x, dtype=torch.float64)], [x], [1.0], None, 0, 0),
                     ([torch.empty_like(x)], [x], [1.0, 1.0], None, 3, 1)):
            try:
                op(*args)
                print(name, "NO ERROR")
            except RuntimeError as e:
                print(name, "|", str(e).splitlines()[0])
""")


def test_error_messages_in_a_fresh_process(cpp):
    """The TORCH_CHECK messages of every entry keep their numbers and dtypes (text formatting inside fastint._C);
    run in a subprocess so that a crash there is this test's failure."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", ERRORS], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, f"exit {r.returncode} (negative: killed by that signal)\n{r.stdout}\n{r.stderr[-3000:]}"
    lines = r.stdout.splitlines()
    for name in ("torch.ops", "default", "fast entry"):
        got = [line.split(" | ", 1)[-1] for line in lines if line.startswith(name + " ")]
        assert got[0].endswith("expected M * (N + K) = 1 coefficients, got 2"), got
        assert got[1].endswith("output 0 has dtype Double; the compiled kernels take float32, float16 and "
                               "bfloat16"), got
        assert got[2].endswith("in-kernel noise needs seeds"), got
