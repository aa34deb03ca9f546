"""Where ``fastint demo`` and ``fastint bench`` find their code: ``examples/`` and ``benchmarks/`` of a checkout.

The demo and the benchmarks are not part of the installed package (a library ships no demo code); the two commands
are thin entry points that import them from the repository checkout only when run. The checkout is, in this order:
``$FASTINT_REPO``, the directory above the imported ``fastint`` package (an editable install or a run from the
checkout), the current directory or one of its parents. Without one, the commands say so and how to get one.
"""

import importlib
import os
import sys
from typing import Iterator, Optional

MARKERS = (os.path.join("examples", "demo.py"), os.path.join("benchmarks", "bench.py"))


class CheckoutMissing(RuntimeError):
    """The repository checkout with examples/ and benchmarks/ was not found."""


def _candidates() -> Iterator[str]:
    env = os.environ.get("FASTINT_REPO")
    if env:
        yield os.path.abspath(env)
    yield os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    here = os.getcwd()
    while True:
        yield here
        parent = os.path.dirname(here)
        if parent == here:
            return
        here = parent


def checkout_root() -> Optional[str]:
    """The repository checkout holding examples/demo.py and benchmarks/bench.py, or None."""
    for root in _candidates():
        if all(os.path.isfile(os.path.join(root, m)) for m in MARKERS):
            return root
    return None


def import_from_checkout(name: str, command: str):
    """Import ``name`` (``examples.demo_main``, ``benchmarks.bench``, ...) from the checkout; ``command`` names the
    CLI command for the error message."""
    root = checkout_root()
    if root is None:
        raise CheckoutMissing(
            f"`fastint {command}` runs code from the fastint repository's examples/ and benchmarks/ directories, which "
            "are not part of the installed package: run it inside a checkout of the repository (or set FASTINT_REPO "
            "to one)")
    if root not in sys.path:
        sys.path.insert(0, root)
    module = importlib.import_module(name)
    where = os.path.abspath(getattr(module, "__file__", "") or "")
    if not where.startswith(os.path.join(root, "")):
        raise CheckoutMissing(f"`fastint {command}`: the module {name!r} was imported from {where}, not from the "
                              f"checkout {root} (another package named {name.split('.')[0]!r} shadows it)")
    return module
