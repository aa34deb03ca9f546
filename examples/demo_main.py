"""What ``fastint demo`` runs: the main table (``demo.run_demo``) over every entry (the solvers, Restart, guided
splitting, the augmented CLD/PSLD samplers), then, for the full demo, the Restart-plateau and guided-splitting
tables (``demo_extras.print_sections``).

The modules import in one direction only: ``demo`` (the table machinery) <- ``demo_extras``, ``demo_augmented``
(their entries) <- this module, which registers them.
"""

import sys
import time
from typing import Optional, Sequence, TextIO

from . import demo, demo_augmented, demo_extras
from . import demo_kdiff

demo_extras.register()
demo_augmented.register()
demo_kdiff.register()


def retain_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (``mallopt``: mmap threshold 256 MiB, or 32 MiB where a
    glibc refuses that; trim threshold 1 GiB) for the rest of this process; returns whether it applied (Linux with
    glibc only).

    PyTorch's CPU allocator is plain malloc, and glibc serves every block above its (dynamic) mmap threshold with a
    fresh ``mmap`` and hands it back with ``munmap``: each temporary of a few MB then costs page faults on first
    touch. On the 2-core CI machine that was a third of the demo's time (58 s -> 39 s, system time 19.6 s -> 1.0 s;
    a 32 MiB threshold alone: 47 s, the sliced-W2 projections are ~40 MB). Only the demo's own process does this
    (``run``): a library must not change its host's allocator."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    mmap_set = bool(mallopt(m_mmap_threshold, 256 << 20)) or bool(mallopt(m_mmap_threshold, 32 << 20))
    return mmap_set and bool(mallopt(m_trim_threshold, 1 << 30))


def run(out_dir: Optional[str] = "demo_out", solvers: Optional[Sequence[str]] = None,
        stream: Optional[TextIO] = None, **kwargs) -> "demo.DemoResult":
    """``demo.run_demo`` over every registered entry (keyword arguments as there); the full demo (``solvers``
    None) adds the Restart-plateau and guided-splitting tables. Prints the total wall time."""
    stream = sys.stdout if stream is None else stream
    start = time.perf_counter()
    retain_freed_memory()
    result = demo.run_demo(out_dir=out_dir, solvers=solvers, stream=stream, **kwargs)
    if solvers is None:
        demo_extras.print_sections(stream, backend=result.backend, out_dir=out_dir)
    print(f"demo total wall time {time.perf_counter() - start:.1f} s", file=stream, flush=True)
    return result
