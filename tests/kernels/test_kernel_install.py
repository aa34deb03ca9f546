"""Installing the package without compiled kernels: `pip install --no-build-isolation -e .` with FASTINT_BUILD_EXT=0
and with a C++ compiler that does not run (CXX=false) both give a working pure-Python package whose list_backends()
names the cause, distinct for each (and distinct again for FASTINT_BUILD_EXT=0 at run time); without a compiler the
first use warns once, clearly, and the pure-Python backends run.

Each case copies the sources (not the built extension) to a temporary directory and installs them into a fresh
virtual environment that sees this interpreter's site-packages (torch) through a .pth file, offline. About 20-40 s
per case. The installs from the sdist, with and without build isolation and with a compiler, are
.ci/install_check.sh's (minutes each).
"""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHECK = """
import warnings
warnings.simplefilter("always")
import torch, fastint
from fastint.ops import fused_step, list_backends
rows = {r["name"]: r for r in list_backends()}
print("BACKENDS", {n: r["available"] for n, r in rows.items()})
print("CPP_REASON", rows["cpp"]["reason"])
assert not rows["cpp"]["available"]
g = torch.Generator().manual_seed(20261126)
x = torch.randn(2, 3, generator=g)
out = fused_step([x], [[3.0]])[0]
assert torch.equal(out, 3.0 * x)
import fastint._build_info as info
print("MODE", info.MODE)
"""


def _copy_sources(dst):
    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "LICENSE"):
        if os.path.exists(os.path.join(ROOT, name)):
            shutil.copy(os.path.join(ROOT, name), dst)
    ignore = shutil.ignore_patterns("*.so", "_build_info.py", "__pycache__", "*.egg-info", "_csrc")
    for name in ("fastint", "csrc"):
        shutil.copytree(os.path.join(ROOT, name), os.path.join(dst, name), ignore=ignore)


def _venv(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    # see this interpreter's packages (torch, setuptools, pip), which may itself be a venv: a .pth file, not
    # --system-site-packages (that would expose the base interpreter's instead)
    site_dir = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    parents = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    with open(os.path.join(site_dir, "_parent_site.pth"), "w") as f:
        f.write("\n".join(parents) + "\n")
    return py


@pytest.mark.parametrize("how", ["FASTINT_BUILD_EXT=0", "CXX=false"])
def test_install_without_extension(tmp_path, how):
    pytest.importorskip("torch")
    src = tmp_path / "src"
    src.mkdir()
    _copy_sources(str(src))
    py = _venv(tmp_path)
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1",
               FASTINT_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("PYTHONPATH", None)
    env.pop("FASTINT_BUILD_EXT", None)
    key, value = how.split("=")
    env[key] = value
    r = subprocess.run([py, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-v", "-e", str(src)],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert not list(src.glob("fastint/_C*.so")), "an extension was built although it should not have been"
    log = r.stdout + r.stderr
    if key == "FASTINT_BUILD_EXT":
        expected_log, mode = "installed with FASTINT_BUILD_EXT=0: pure Python", "disabled"
        expected_reason = "installed with FASTINT_BUILD_EXT=0 (pure Python by request)"
    else:
        expected_log, mode = "the C++ compiler 'false' does not work", "jit"
        expected_reason = ("no compiled kernels: the C++ compiler 'false' does not work (`false --version` exits 1) "
                           "at install time; on first use: the C++ compiler 'false' does not work")
    assert expected_log in log, log[-3000:]
    if key == "FASTINT_BUILD_EXT":
        env.pop(key)  # the install's choice holds at run time
    r = subprocess.run([py, "-c", CHECK], capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"MODE {mode}" in r.stdout, r.stdout
    assert expected_reason in r.stdout, r.stdout
    warned = [line for line in r.stderr.splitlines() if "RuntimeWarning: fastint:" in line]
    if key == "CXX":  # one clear warning: what is missing, and that the pure-Python backends run
        assert len(warned) == 1 and "Using the pure-Python backends" in warned[0], r.stderr
        assert not os.listdir(tmp_path / "cache") if (tmp_path / "cache").exists() else True
    else:
        assert not warned, r.stderr  # a pure-Python install asked for: nothing to warn about
        r = subprocess.run([py, "-c", CHECK], capture_output=True, text=True, cwd=str(tmp_path), timeout=300,
                           env=dict(env, FASTINT_BUILD_EXT="0"))
        assert r.returncode == 0 and "FASTINT_BUILD_EXT=0 is set: no compiled kernels, no just-in-time build" in \
            r.stdout, r.stdout + r.stderr


def test_setup_does_not_import_torch_when_disabled(tmp_path):
    """FASTINT_BUILD_EXT=0: setup.py must not import torch (a poisoned torch on the path proves it)."""
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch imported by setup.py')\n")
    env = dict(os.environ, FASTINT_BUILD_EXT="0", PYTHONPATH=str(tmp_path / "fake"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "setup.py"), "--name"], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fastint" in r.stdout and "torch imported" not in r.stderr
