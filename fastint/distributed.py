"""Distributed generation: shard a list of per-sample seeds over the ranks of a ``torch.distributed`` job.

    torchrun --nproc_per_node=4 -m fastint sample --num-samples 4096 --seed 0 --out samples.pt

or from Python, in every rank of a job (or in a single process):

    samples = fastint.distributed.sample_seeds(model, seeds, shape, sigmas, "seeds_2", batch_size=64)

**Why the output does not depend on the world size.** Everything about sample ``j`` is a function of its seed
``seeds[j]``: its initial state ``x_T = sigmas[0] * z`` with ``z`` the Philox normals of (seed, counter
``INIT_NOISE_COUNTER`` = 2**30 - 1, stream 0, element) (``docs/noise.md``; solvers use counters below that), and
all of its solver noise (same addressing, the step counters). The seed list is cut into fixed chunks of
``batch_size`` consecutive seeds (chunk ``c`` = ``seeds[c*B:(c+1)*B]``, the last one shorter), the same chunks
whatever the world size, and each rank samples a contiguous range of whole chunks. A chunk's computation is
therefore the same in every world size (same model batch, same shapes, same op calls), and the gathered result
is identical bit for bit for world sizes 1, 2, 4, ... on the same kind of device, backend and thread settings.

**Failure handling.** Each rank samples its chunks inside a try block; then every rank shares its status
(``all_gather_object``). If any rank failed, every rank raises ``DistributedSamplingError`` naming the failed
ranks and their errors, and nothing is written. Otherwise the results are gathered to rank 0, which writes the
output file atomically (a temporary file in the same directory, then ``os.replace``): a file at the output path is
always a complete result. A rank that dies without reporting (killed, segfault) is handled by ``torchrun``, which
stops the other workers; the collectives' ``timeout`` bounds the wait otherwise. No file is written in either case.
"""

import os
import sys
from datetime import timedelta
from typing import Callable, List, Optional, Sequence

import torch

from .ops import fused_step
from .sampling import sample as _sample

__all__ = ["sample_seeds", "initial_noise", "shard_chunks", "save_samples", "load_samples", "init_from_env",
           "DistributedSamplingError", "INIT_NOISE_COUNTER"]

INIT_NOISE_COUNTER = 2 ** 30 - 1


class DistributedSamplingError(RuntimeError):
    """A rank failed: raised on every rank, naming the failed ranks and their errors; no output was written."""


def initial_noise(seeds: Sequence[int], shape: Sequence[int], sigma: float, *, dtype=torch.float32,
                  device="cpu", backend: str = "auto") -> torch.Tensor:
    """``sigma * z`` with ``z[b]`` the normals of seed ``seeds[b]`` at counter ``INIT_NOISE_COUNTER``, stream 0."""
    seeds_t = torch.as_tensor(list(seeds), dtype=torch.int64).to(device)
    x = torch.zeros((len(seeds_t), *shape), dtype=dtype, device=device)
    fused_step([x], [[0.0, float(sigma)]], num_noise=1, seeds=seeds_t, counter=INIT_NOISE_COUNTER, out=x,
               backend=backend)
    return x


def shard_chunks(num_samples: int, batch_size: int, rank: int, world_size: int) -> List[range]:
    """The chunks (ranges of sample indices) of ``rank``: fixed chunks of ``batch_size``, contiguous per rank."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks = [range(a, min(a + batch_size, num_samples)) for a in range(0, num_samples, batch_size)]
    lo, hi = rank * len(chunks) // world_size, (rank + 1) * len(chunks) // world_size
    return chunks[lo:hi]


def _dist_active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def init_from_env(device: str = "auto", timeout_s: float = 600.0):
    """Initialise ``torch.distributed`` from torchrun's environment (``WORLD_SIZE`` > 1): nccl for CUDA, gloo for
    CPU. Returns ``(rank, world_size, device)``; ``(0, 1, device)`` when not launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if world <= 1 or _dist_active():
        rank = torch.distributed.get_rank() if _dist_active() else 0
        return rank, (torch.distributed.get_world_size() if _dist_active() else 1), device
    torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                                         timeout=timedelta(seconds=timeout_s))
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device


def sample_seeds(model: Callable, seeds: Sequence[int], shape: Sequence[int], sigmas, solver: str = "dpmpp_2m", *,
                 batch_size: int = 64, dtype: torch.dtype = torch.float32, device="cpu", backend: str = "auto",
                 progress: bool = False, extra_args: Optional[dict] = None, **options) -> Optional[torch.Tensor]:
    """Sample one item per seed; in a distributed job each rank does its share and rank 0 gets everything.

    Returns the samples ``(len(seeds), *shape)`` on the CPU, in seed order, on rank 0 (and in a single process);
    ``None`` on the other ranks. Raises ``DistributedSamplingError`` on every rank when any rank failed.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("sample_seeds: give at least one seed")
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if _dist_active() else (0, 1)
    chunks = shard_chunks(len(seeds), batch_size, rank, world)
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=sum(len(c) for c in chunks), desc=f"fastint {solver}" + (f" rank 0/{world}" if world > 1
                                                                                 else ""), unit="sample")
    error = None
    try:
        local = _sample_chunks(model, seeds, chunks, shape, sigmas, solver, dtype=dtype, device=device,
                               backend=backend, bar=bar, extra_args=extra_args, **options)
    except Exception as exc:  # noqa: BLE001 - reported to every rank below
        error = f"{type(exc).__name__}: {exc}"
        if not _dist_active():
            raise
        local = None
    finally:
        if bar is not None:
            bar.close()
    if not _dist_active():
        return local
    statuses = [None] * world
    torch.distributed.all_gather_object(statuses, (rank, error))
    failed = [(r, e) for r, e in statuses if e is not None]
    if failed:
        raise DistributedSamplingError("sampling failed on rank(s) " + ", ".join(f"{r} ({e})" for r, e in failed)
                                       + "; no output was written")
    gathered = [None] * world if rank == 0 else None
    torch.distributed.gather_object(local, gathered, dst=0)
    if rank != 0:
        return None
    return torch.cat(gathered)


def _sample_chunks(model, seeds, chunks, shape, sigmas, solver, *, dtype, device, backend, bar=None,
                   extra_args=None, **options) -> torch.Tensor:
    """Sample the given chunks of ``seeds`` (one model batch each), concatenated on the CPU in order."""
    sigma0 = float(sigmas[0])
    results = []
    for chunk in chunks:
        chunk_seeds = seeds[chunk.start:chunk.stop]
        x = initial_noise(chunk_seeds, shape, sigma0, dtype=dtype, device=device, backend=backend)
        out = _sample(model, x, sigmas, solver, seed=chunk_seeds, backend=backend, extra_args=extra_args, **options)
        results.append(out.cpu())
        if bar is not None:
            bar.update(len(chunk))
    return torch.cat(results) if results else torch.empty((0, *shape), dtype=dtype)


def save_samples(path: str, samples: torch.Tensor, seeds: Sequence[int], metadata: Optional[dict] = None) -> None:
    """Write ``samples`` atomically: ``.npy`` (the array only) or anything else as a ``torch.save`` dict
    ``{"samples", "seeds", **metadata}``; a temporary file in the same directory is renamed over ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if path.endswith(".npy"):
                import numpy as np
                np.save(f, samples.numpy())
            else:
                torch.save({"samples": samples, "seeds": torch.tensor(list(seeds), dtype=torch.int64),
                            **(metadata or {})}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_samples(path: str) -> torch.Tensor:
    """The samples tensor of a file written by ``save_samples``."""
    if os.fspath(path).endswith(".npy"):
        import numpy as np
        return torch.from_numpy(np.load(path))
    return torch.load(path, map_location="cpu", weights_only=True)["samples"]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
