"""Distributed generation (``fastint.distributed``, ``torchrun -m fastint sample``) on CPU with gloo.

- In process: the per-rank chunk computation of world sizes 1, 2, 3 and 4 concatenates to the same tensor bit for bit,
  and equals fastint.sample on the documented initial noise (sigma_max * Philox normals at INIT_NOISE_COUNTER).
- Subprocesses: ``torchrun --nproc_per_node=2 -m fastint sample`` writes exactly the single-process file's samples;
  a model that raises on rank 1 makes the job exit non-zero, names the rank, and leaves no output file.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fastint
from fastint import distributed
from fastint.distributed import (INIT_NOISE_COUNTER, DistributedSamplingError, _sample_chunks, initial_noise,
                                 load_samples, sample_seeds, save_samples, shard_chunks)
from fastint.models import default_mixture
from fastint.ops import fused_step
from fastint.schedules import karras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_shards_are_contiguous_whole_chunks_covering_everything():
    for n, b in ((10, 3), (7, 7), (5, 1), (1, 4), (64, 8)):
        for world in (1, 2, 3, 4, 8):
            ranges = [c for r in range(world) for c in shard_chunks(n, b, r, world)]
            assert [i for c in ranges for i in c] == list(range(n))
            assert all(len(c) == b for c in ranges[:-1])


@pytest.mark.parametrize("solver,options", [("seeds_2", {"eta": 0.7}), ("dpmpp_2m", {}), ("euler_ancestral", {})])
def test_world_size_does_not_change_the_samples(solver, options):
    base = int(torch.randint(0, 2 ** 40, (1,)))
    seeds = [base + 17 * i for i in range(11)]
    model = default_mixture()
    sigmas = karras(6, 0.002, 80.0)
    results = {}
    for world in (1, 2, 3, 4):
        parts = [_sample_chunks(model, seeds, shard_chunks(len(seeds), 3, r, world), (2,), sigmas, solver,
                                dtype=torch.float32, device="cpu", backend="auto", **options) for r in range(world)]
        results[world] = torch.cat(parts)
    for world in (2, 3, 4):
        assert torch.equal(results[world], results[1]), world
    assert torch.equal(sample_seeds(model, seeds, (2,), sigmas, solver, batch_size=3, **options), results[1])
    # = fastint.sample on the documented initial noise, per chunk
    x = initial_noise(seeds[:3], (2,), 80.0)
    z = fused_step([torch.zeros(3, 2)], [[0.0, 1.0]], num_noise=1, seeds=torch.tensor(seeds[:3]),
                   counter=INIT_NOISE_COUNTER, backend="eager")[0]
    assert torch.allclose(x, 80.0 * z, rtol=1e-5, atol=1e-5)
    assert torch.equal(results[1][:3], fastint.sample(model, x, sigmas, solver, seed=seeds[:3], **options))
    # another seed list differs
    other = sample_seeds(model, [s + 1 for s in seeds], (2,), sigmas, solver, batch_size=3, **options)
    assert not torch.equal(other, results[1])


def test_single_process_errors_raise_and_save_is_atomic(tmp_path):
    sigmas = karras(3, 0.01, 10.0)

    def broken(x, sigma):
        raise RuntimeError("model exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        sample_seeds(broken, [1, 2], (2,), sigmas, "euler")
    out = tmp_path / "s.npy"
    samples = torch.randn(4, 2)
    save_samples(str(out), samples, [0, 1, 2, 3])
    assert torch.equal(load_samples(str(out)), samples)
    assert os.listdir(tmp_path) == ["s.npy"]  # no temporary left behind
    assert issubclass(DistributedSamplingError, RuntimeError)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc, args, cwd):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={_free_port()}", "-m", "fastint", "sample"] + args
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120)


def test_torchrun_two_ranks_equals_single_process_bit_for_bit(tmp_path):
    seed = int(torch.randint(0, 2 ** 31, (1,)))
    common = ["--num-samples", "10", "--seed", str(seed), "--batch-size", "3", "--solver", "seeds_2",
              "--steps", "6", "-o", "eta=0.5", "--device", "cpu", "--no-progress"]
    single = subprocess.run([sys.executable, "-m", "fastint", "sample", "--out", str(tmp_path / "one.pt")] + common,
                            cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr
    two = _torchrun(2, ["--out", str(tmp_path / "two.pt")] + common, tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = torch.load(tmp_path / "one.pt", weights_only=True), torch.load(tmp_path / "two.pt", weights_only=True)
    assert b["world_size"] == 2 and a["world_size"] == 1
    assert torch.equal(a["seeds"], torch.arange(seed, seed + 10))
    assert torch.equal(a["samples"], b["samples"])
    assert a["samples"].shape == (10, 2)


def test_failing_rank_gives_error_and_no_output(tmp_path):
    (tmp_path / "flaky_model.py").write_text(textwrap.dedent("""
        import os
        from fastint.models import default_mixture
        _mixture = default_mixture()

        def model(x, sigma):
            if os.environ.get("RANK") == "1":
                raise RuntimeError("injected failure on rank 1")
            return _mixture(x, sigma)
    """))
    out = tmp_path / "never.pt"
    result = _torchrun(2, ["--out", str(out), "--model", "flaky_model:model", "--shape", "2", "--num-samples", "8",
                           "--batch-size", "2", "--steps", "4", "--device", "cpu", "--no-progress"], tmp_path)
    assert result.returncode != 0
    assert "injected failure on rank 1" in result.stderr
    assert "rank(s) 1" in result.stderr
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".never.pt")]
