"""``fastint bench``: a quick benchmark of the fused step op against the same update written in plain PyTorch.

This is the quick, self-contained version (a few sizes, median of a few repeats, one table); the full benchmark
suite with dated records lives in ``benchmarks/``. The update is the DPM-Solver++(2M) SDE step
``x <- a x + b D + c D_old (+ s z)``: with noise (``z`` standard normal, K = 1) and without.

- plain PyTorch: ``a * x + b * D + c * D_old + s * torch.randn_like(x)`` (each operator one pass over memory, plus
  the stored noise tensor);
- fused: ``fastint.ops.fused_step([x, D, D_old], [[a, b, c, s]], num_noise=1, ...)``, one pass, noise generated
  in the kernel, written in place into ``x``.

Reported: milliseconds per step (median), effective bandwidth of the fused op (bytes of its inputs and output over
time) and the speed-up of the fused op over plain PyTorch.
"""

import statistics
import time
from typing import Dict, List, Optional, Sequence

import torch

from fastint.ops import fused_step

DEFAULT_SIZES = (1 << 16, 1 << 20, 1 << 22)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def resolved_backend(device: str = "cpu", dtype: torch.dtype = torch.float32, backend: str = "auto") -> str:
    """The name of the backend that ``backend`` resolves to for a 3-input noisy step on ``device``."""
    from fastint.ops import registry
    from fastint.ops.contract import validate
    x = torch.zeros(1, 4, device=device, dtype=dtype)
    call = validate([x, x.clone(), x.clone()], [[1.0, 0.0, 0.0, 1.0]], None,
                    torch.zeros(1, dtype=torch.int64, device=device), 0, 1)
    return registry.select(call, backend).name


def run_bench(sizes: Sequence[int] = DEFAULT_SIZES, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
              backend: str = "auto", repeat: int = 10, progress: bool = False) -> List[Dict]:
    """Time both implementations for each size (elements per tensor); returns one row dict per (size, noise)."""
    dev = torch.device(device)
    rows = []
    cases = [(n, noisy) for n in sizes for noisy in (False, True)]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(cases), desc="fastint bench")
    a, b, c, s = 0.7, 0.25, 0.05, 0.3
    for n, noisy in cases:
        g = torch.Generator(device=dev).manual_seed(n)
        x, d, d_old = (torch.randn(4, n // 4, generator=g, device=dev, dtype=dtype) for _ in range(3))
        seeds = torch.arange(4, dtype=torch.int64, device=dev)

        def plain():
            y = a * x + b * d + c * d_old
            if noisy:
                y = y + s * torch.randn_like(x)
            return y

        out = x.clone()
        coeffs = [[a, b, c, s]] if noisy else [[a, b, c]]

        def fused():
            fused_step([out, d, d_old], coeffs, num_noise=1 if noisy else 0, seeds=seeds if noisy else None,
                       counter=1, out=out, backend=backend)

        t_plain = _time(plain, dev, repeat)
        t_fused = _time(fused, dev, repeat)
        moved = 4 * n * x.element_size()  # 3 reads + 1 write
        rows.append({"elements": n, "noise": noisy, "plain_ms": t_plain, "fused_ms": t_fused,
                     "fused_GBps": moved / (t_fused * 1e-3) / 1e9, "speedup": t_plain / t_fused})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return rows


def format_table(rows: List[Dict], backend_name: Optional[str] = None) -> str:
    headers = ["elements", "noise", "plain PyTorch ms", f"fused ({backend_name or 'auto'}) ms", "fused GB/s",
               "speed-up"]
    body = [[f"{r['elements']:,}", "yes" if r["noise"] else "no", f"{r['plain_ms']:.3f}", f"{r['fused_ms']:.3f}",
             f"{r['fused_GBps']:.1f}", f"{r['speedup']:.2f}x"] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in body]
    return "\n".join(lines)
