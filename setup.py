"""Build script: the package is declared in pyproject.toml; the compiled fused-step extension is added here.

How the kernels get compiled (docs/build.md):

* ahead of time, when torch is importable where the package is built (``pip install --no-build-isolation ...``,
  ``python setup.py build_ext --inplace``) and a C++ compiler works: ``fastint._C`` against that torch;
* otherwise just in time, on first use (``fastint/ops/jit_build.py``) against the torch that is running: pip's
  default build isolation builds in an environment without torch, so the wheel is pure Python and carries the C++
  sources (``fastint/_csrc``).

Either way every build writes ``fastint/_build_info.py`` (how this installation gets its kernels and why); it is
never copied from an earlier build.

* ``FASTINT_BUILD_EXT=0``: pure-Python install with no just-in-time build either (torch is not even imported).
* The CUDA kernels are added when this torch was built with CUDA (``torch.version.cuda``) and a CUDA toolkit is
  found (``CUDA_HOME``); never decided by ``torch.cuda.is_available()``: wheels are built on machines without GPUs.
* ``TORCH_CUDA_ARCH_LIST`` (default ``"8.0;9.0"``), ``MAX_JOBS`` and ``FASTINT_CPU_VARIANTS`` (default
  ``"avx2,avx512"`` on x86-64) are honoured. Release flags: ``-O3 -g0``, stripped (``-s``).
* If compiling fails, the install still succeeds, with a warning; the first use then retries just in time and says
  what is missing.
"""

import importlib.util
import os
import shutil
import sys
import warnings

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")
SOURCE_BUILD_INFO = os.path.join(ROOT, "fastint", "_build_info.py")


def _load_recipe():
    """fastint/_build.py, loaded by path (importing the fastint package would import torch)."""
    spec = importlib.util.spec_from_file_location("_fastint_build", os.path.join(ROOT, "fastint", "_build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = _load_recipe()


def _log(msg):
    print(f"fastint setup: {msg}", file=sys.stderr, flush=True)


def _isolated_build() -> bool:
    """pip's build isolation: the build runs with an overlay prefix (pip-build-env-*) on sys.path."""
    return any("pip-build-env-" in p for p in sys.path)


class BuildPy(build_py):
    """build_py + the C++ sources into ``fastint/_csrc`` (for the just-in-time build) + a fresh _build_info.py."""

    info = None  # the fields of _build_info.py decided below

    def run(self):
        super().run()
        if not self.dry_run:
            dst = os.path.join(self.build_lib, "fastint", "_csrc")
            shutil.rmtree(dst, ignore_errors=True)
            for rel in recipe.source_files(CSRC):
                os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
                shutil.copy2(os.path.join(CSRC, rel), os.path.join(dst, rel))
            recipe.write_build_info(os.path.join(self.build_lib, "fastint", "_build_info.py"), **self.info)
            if getattr(self, "editable_mode", False):
                recipe.write_build_info(SOURCE_BUILD_INFO, **self.info)


def _pure(mode, reason):
    BuildPy.info = dict(mode=mode, reason=reason, torch_version=None, with_cuda=False, cpu_variants=(),
                        cuda_arch_list=None)
    _log(reason + ("" if mode == "disabled" else "; the kernels will be compiled on first use (docs/build.md)"))
    return {"cmdclass": {"build_py": BuildPy}}


def _extension_setup():
    """setup() keyword arguments: the extension built ahead of time, or a pure-Python package."""
    if recipe.disabled_by_env():
        return _pure("disabled", "installed with FASTINT_BUILD_EXT=0: pure Python, no compiled kernels")
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:
        why = ("pip's build isolation: torch is not installed in the isolated build environment"
               if _isolated_build() else f"torch was not importable at install time ({exc})")
        return _pure("jit", why)
    problem = recipe.compiler_problem()
    if problem:
        return _pure("jit", f"{problem} at install time")

    with_cuda = bool(torch.version.cuda) and cpp_extension.CUDA_HOME is not None
    if torch.version.cuda and not with_cuda:
        _log(f"torch {torch.__version__} has CUDA {torch.version.cuda} but no CUDA toolkit was found (CUDA_HOME): "
             "building the CPU kernels only")
    arch_list = recipe.cuda_arch_list() if with_cuda else None
    if with_cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    variants = recipe.cpu_variants()
    cxx_flags = recipe.RELEASE_CFLAGS + [recipe.version_define(torch.__version__)]
    nvcc_flags = ["-O3", recipe.version_define(torch.__version__), "-DFASTINT_WITH_CUDA"]
    sources = [os.path.relpath(p, ROOT) for p in recipe.sources(CSRC, with_cuda)]
    if with_cuda:
        cxx_flags.append("-DFASTINT_WITH_CUDA")
        ext_cls, extra_compile_args = cpp_extension.CUDAExtension, {"cxx": cxx_flags, "nvcc": nvcc_flags}
    else:
        ext_cls, extra_compile_args = cpp_extension.CppExtension, {"cxx": cxx_flags}
    ext = ext_cls("fastint._C", sources, extra_compile_args=extra_compile_args,
                  extra_link_args=recipe.release_ldflags(), include_dirs=[CSRC], depends=recipe.headers(CSRC))
    BuildPy.info = dict(mode="aot", reason=None, torch_version=torch.__version__, with_cuda=with_cuda,
                        cpu_variants=(), cuda_arch_list=arch_list)

    class BuildExt(cpp_extension.BuildExtension):
        """torch's BuildExtension (ninja) + per-capability CPU kernel objects + a pure-Python package on failure."""

        def build_extension(self, extension):
            built = []
            for name in variants:
                src = f"csrc/cpu/fused_step_{name}.cpp"
                flags = extension.extra_compile_args["cxx"] + recipe.CPU_VARIANTS[name]
                try:
                    objects = self.compiler.compile(
                        [src], output_dir=self.build_temp, macros=extension.define_macros,
                        include_dirs=extension.include_dirs, debug=False,
                        extra_postargs={"cxx": list(flags), "nvcc": []}, depends=extension.depends)
                except Exception as exc:  # e.g. a compiler without these instruction sets: skip the variant
                    _log(f"could not compile the {name} CPU kernel ({exc}); skipping it")
                    continue
                extension.extra_objects = list(extension.extra_objects or []) + list(objects)
                built.append(name)
            for name in built:
                for key in extension.extra_compile_args:
                    extension.extra_compile_args[key].append(f"-DFASTINT_HAVE_{name.upper()}")
            BuildPy.info["cpu_variants"] = tuple(built)
            super().build_extension(extension)

        def _write_info(self, info):
            targets = [os.path.join(os.path.abspath(self.build_lib), "fastint", "_build_info.py")]
            if self.inplace or getattr(self, "editable_mode", False):
                targets.append(SOURCE_BUILD_INFO)
            for path in targets:
                recipe.write_build_info(path, **info)

        def run(self):  # (setuptools clears self.inplace during super().run(): the record is written after it)
            try:
                super().run()
            except Exception as exc:  # noqa: BLE001  (any compiler/toolchain failure -> compile on first use)
                msg = (f"fastint: building the compiled kernels failed ({exc}); installing without them: the first "
                       "use compiles them just in time or says what is missing (docs/build.md)")
                warnings.warn(msg)
                _log(msg)
                self._write_info(dict(BuildPy.info, mode="jit", reason=f"the install-time build failed ({exc})",
                                      torch_version=None, cpu_variants=()))
            else:
                self._write_info(BuildPy.info)

    _log(f"building fastint._C against torch {torch.__version__}: CPU kernels (+{', '.join(variants) or 'none'})"
         + (f", CUDA kernels for TORCH_CUDA_ARCH_LIST={arch_list}" if with_cuda else ", no CUDA kernels"))
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExt.with_options(use_ninja=True),
                                               "build_py": BuildPy}}


setup(**_extension_setup())
