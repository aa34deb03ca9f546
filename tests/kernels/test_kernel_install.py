"""Installing the package: `pip install --no-build-isolation -e .` with FASTINT_BUILD_EXT=0 and with a failing
C++ compiler both give a working pure-Python package that reports which backends it has.

Each case copies the sources (not the built extension) to a temporary directory and installs them into a fresh
virtual environment that sees this interpreter's site-packages (torch) through a .pth file, offline. About 20-40 s per case.
"""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHECK = """
import torch, fastint
from fastint.ops import fused_step, list_backends
rows = {r["name"]: r for r in list_backends()}
print("BACKENDS", {n: r["available"] for n, r in rows.items()})
print("CPP_REASON", rows["cpp"]["reason"])
assert not rows["cpp"]["available"]
out = fused_step([torch.ones(2, 3)], [[3.0]])[0]
assert out.tolist() == [[3.0] * 3] * 2
"""


def _copy_sources(dst):
    for name in ("setup.py", "pyproject.toml", "README.md"):
        if os.path.exists(os.path.join(ROOT, name)):
            shutil.copy(os.path.join(ROOT, name), dst)
    ignore = shutil.ignore_patterns("*.so", "_build_info.py", "__pycache__", "*.egg-info")
    for name in ("fastint", "csrc"):
        shutil.copytree(os.path.join(ROOT, name), os.path.join(dst, name), ignore=ignore)


@pytest.mark.parametrize("how", ["FASTINT_BUILD_EXT=0", "CXX=false"])
def test_install_without_extension(tmp_path, how):
    pytest.importorskip("torch")
    src = tmp_path / "src"
    src.mkdir()
    _copy_sources(str(src))
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
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1")
    env.pop("PYTHONPATH", None)
    key, value = how.split("=")
    env[key] = value
    if key == "CXX":  # every compiler the build could pick fails
        env["CC"] = "false"
        env["LDSHARED"] = "false -shared"
    r = subprocess.run([py, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-v", "-e", str(src)],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert not list(src.glob("fastint/_C*.so")), "an extension was built although it should not have been"
    log = r.stdout + r.stderr
    expected = "pure-Python install, no compiled kernels" if key == "FASTINT_BUILD_EXT" else \
        "building the compiled kernels failed"
    assert expected in log, log[-3000:]
    env.pop(key)
    r = subprocess.run([py, "-c", CHECK], capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "BACKENDS" in r.stdout and "not built" in r.stdout, r.stdout


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
