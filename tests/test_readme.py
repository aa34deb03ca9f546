"""Every Python code block of README.md runs as written, each in a fresh namespace (its own imports, its own small
model), and prints what it made. A block preceded by ``<!-- readme-test: requires CUDA -->`` is skipped, with that
reason, without a CUDA device."""

import contextlib
import io
import os
import re

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"(?:<!-- readme-test: requires (?P<needs>\w+) -->\n)?```python\n(?P<code>.*?)```", re.S)


def readme_blocks():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    blocks = []
    for m in BLOCK.finditer(text):
        line = text.count("\n", 0, m.start("code")) + 1
        blocks.append(pytest.param(m.group("code"), m.group("needs"), id=f"README.md:{line}"))
    return blocks


def test_the_readme_has_python_blocks():
    assert len(readme_blocks()) >= 8


@pytest.mark.parametrize("code, needs", readme_blocks())
def test_readme_block_runs(code, needs, tmp_path, monkeypatch):
    if needs == "CUDA" and not torch.cuda.is_available():
        pytest.skip("this README block needs a CUDA device")
    assert needs in (None, "CUDA"), f"unknown readme-test requirement {needs!r}"
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    assert out.getvalue().strip(), "a README block should print what it made"
