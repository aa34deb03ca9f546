"""Random test cases must be reproducible: no test or benchmark derives a seed from Python's built-in hash(), which
is salted per process for strings (PYTHONHASHSEED), so a failing case could not be rerun. Use zlib.crc32 or hashlib
of a repr instead."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python_files():
    for top in ("tests", "benchmarks"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    yield os.path.join(dirpath, name)


def test_no_seed_from_builtin_hash():
    calls = []
    for path in _python_files():
        with open(path) as f:
            tree = ast.parse(f.read(), filename=path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "hash":
                calls.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert not calls, f"built-in hash() (salted per process) used in: {', '.join(calls)}"
