"""Whole-loop CUDA graph capture of ``fastint.sample``: ``capture_sampler``.

A sampling loop of fastint never synchronises with the device (solver coefficients are host floats, noise is
generated in the kernel from per-sample seeds, ``check_finite="off"`` skips the one check at the end), so when the
model is capturable too (no ``.item()``, no host reads, static shapes) the complete loop -- every model call and
every fused step -- can be captured once in a CUDA graph and replayed with one launch:

    from fastint.cuda_graph import capture_sampler
    sampler = capture_sampler(denoiser, x, sigmas, "dpmpp_2m_sde", seed=0, eta=1.0)
    out = sampler(x_new)                 # copies x_new into the static input, replays, returns the static output
    out = sampler(x_new, seed=[7, 8])    # new per-sample seeds (copied into the static seed tensor)
    out = sampler(x_new).clone()         # the output buffer is overwritten by the next replay: clone to keep it

The capture records ``fastint.sample`` itself, i.e. the solver's program replayed by ``fastint.executor`` (the
same instructions, buffers and kernels as every other run), so a replay computes exactly what ``fastint.sample(
model, x, sigmas, solver, seed=..., check_finite="off", **options)`` computes (same noise addressing). A model that
returns one static output buffer (a graph-captured model) is safe: the executor copies an output the solver keeps
past the next model call when someone else holds its storage. Fixed at capture: the shapes, dtype and device of
``x``, the sigmas, the solver and its options, ``extra_args`` (their tensors are read at replay time, so
updating such a tensor in place is seen by the next replay). Not supported: ``noise_sampler`` (host callables),
``callback`` and ``progress`` (they would only run during capture).
"""

from typing import Any, Dict, Optional

import torch

__all__ = ["capture_sampler", "CapturedSampler"]


class CapturedSampler:
    """A captured sampling loop: call it with a new initial state (and optionally new seeds) to replay."""

    def __init__(self, graph, static_x: torch.Tensor, static_seeds: Optional[torch.Tensor],
                 static_out: torch.Tensor, pool):
        self.graph, self.static_input, self.seeds, self.static_output, self.pool = (
            graph, static_x, static_seeds, static_out, pool)

    def __call__(self, x: Optional[torch.Tensor] = None, seed=None) -> torch.Tensor:
        if x is not None:
            if not isinstance(x, torch.Tensor) or x.shape != self.static_input.shape or \
                    x.device != self.static_input.device:
                raise ValueError(f"capture_sampler: replay needs a tensor of shape {tuple(self.static_input.shape)} "
                                 f"on {self.static_input.device}, got "
                                 f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
                                 f"{' on ' + str(x.device) if isinstance(x, torch.Tensor) else ''}")
            if x.data_ptr() != self.static_input.data_ptr():
                self.static_input.copy_(x)
        if seed is not None:
            if self.seeds is None:
                raise ValueError("capture_sampler: this loop draws no in-kernel noise, seeds have no effect")
            from .sampling import per_sample_seeds
            self.seeds.copy_(per_sample_seeds(seed, self.static_input.shape[0], self.seeds.device))
        self.graph.replay()
        return self.static_output

    replay = __call__


def capture_sampler(model, x_like: torch.Tensor, sigmas, solver: str = "dpmpp_2m", *, seed=None,
                    extra_args: Optional[Dict[str, Any]] = None, backend: str = "auto", warmup: int = 2,
                    pool=None, **options) -> CapturedSampler:
    """Capture ``fastint.sample(model, x, sigmas, solver, seed=seed, **options)`` in a CUDA graph.

    Args:
        model: the denoiser, as for ``fastint.sample``; it must be capturable (no host synchronisation).
        x_like: a CUDA tensor with the initial state's shape and dtype; its values are the first static input.
        sigmas: the decreasing VE sigmas (host values; fixed in the graph).
        seed: per-sample seeds (int, sequence or tensor) for stochastic solvers; they are held in a static device
            tensor that each replay can overwrite (``sampler(x, seed=...)``). None draws a base seed from torch's
            default CPU generator, as ``fastint.sample`` does.
        backend: fused-op backend; it must be capturable (``cuda`` or ``triton``; ``auto`` picks ``cuda``).
        warmup: eager runs on a side stream before capture (lazy initialisation, cuDNN/cuBLAS workspaces,
            Triton compilation happen there, not in the graph).
        pool: a memory pool handle (``torch.cuda.graph_pool_handle()``) to share between several captured loops.

    Returns a ``CapturedSampler``; raises ValueError for CPU tensors or when CUDA is unavailable, and for the
    options that cannot be captured (``noise_sampler``, ``callback``, ``progress``, ``check_finite``).
    """
    for name in ("noise_sampler", "callback", "progress", "check_finite"):
        if name in options:
            raise ValueError(f"capture_sampler: {name}= cannot be captured in a CUDA graph (the loop runs with "
                             "in-kernel noise, no callbacks, check_finite='off')")
    if not isinstance(x_like, torch.Tensor) or not x_like.is_floating_point() or x_like.dim() < 1:
        raise TypeError("capture_sampler: x_like must be a floating-point tensor with a leading batch dimension")
    if x_like.device.type != "cuda":
        raise ValueError(f"capture_sampler: CUDA graphs need CUDA tensors; x_like is on {x_like.device} "
                         "(use fastint.sample on the CPU)")
    if not torch.cuda.is_available():
        raise ValueError("capture_sampler: CUDA is not available")
    if not isinstance(warmup, int) or warmup < 1:
        raise ValueError(f"capture_sampler: warmup must be an int >= 1, got {warmup!r}")
    if backend == "cpp":
        raise ValueError("capture_sampler: backend 'cpp' runs on the CPU; use 'cuda', 'triton' or 'auto'")
    from .sampling import per_sample_seeds, sample
    from .solvers import get_solver

    method = get_solver(solver, **options)   # validates the solver name and options before any capture
    static_x = torch.empty_like(x_like, memory_format=torch.contiguous_format).copy_(x_like)
    static_seeds = None
    if method.uses_noise():
        static_seeds = per_sample_seeds(seed, static_x.shape[0], static_x.device).clone()
    kwargs = dict(seed=static_seeds, extra_args=extra_args, backend=backend, check_finite="off", **options)

    side = torch.cuda.Stream(device=static_x.device)
    side.wait_stream(torch.cuda.current_stream(static_x.device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            sample(model, static_x, sigmas, solver, **kwargs)
    torch.cuda.current_stream(static_x.device).wait_stream(side)
    torch.cuda.synchronize(static_x.device)

    graph = torch.cuda.CUDAGraph()
    pool = pool if pool is not None else torch.cuda.graph_pool_handle()
    with torch.cuda.graph(graph, pool=pool):
        static_out = sample(model, static_x, sigmas, solver, **kwargs)
    return CapturedSampler(graph, static_x, static_seeds, static_out, pool)
