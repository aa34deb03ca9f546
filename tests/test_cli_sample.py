"""The ``fastint`` CLI's ``sample`` and ``bench`` commands (and ``--help`` of every command), run in process."""

import sys
import textwrap
import zlib

import numpy as np
import pytest
import torch

from fastint import cli
from fastint.distributed import sample_seeds
from fastint.models import default_mixture
from fastint.schedules import exponential, karras
from fastint.solvers import SOLVERS


@pytest.mark.parametrize("command", ["demo", "sample", "bench", "solvers", "backends"])
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: fastint {command}")


def test_solvers_table_lists_every_solver(capsys):
    assert cli.main(["solvers"]) == 0
    out = capsys.readouterr().out
    for name in SOLVERS:
        assert f"\n{name} " in out


def test_sample_writes_what_sample_seeds_computes(tmp_path):
    seed = zlib.crc32(b"cli sample writes what sample_seeds computes") % 2 ** 31
    out = tmp_path / "s.pt"
    assert cli.main(["sample", "--out", str(out), "--num-samples", "7", "--seed", str(seed), "--batch-size", "4",
                     "--solver", "dpmpp_2m_sde", "-o", "eta=0.5", "-o", "solver_type=heun", "--steps", "5",
                     "--device", "cpu", "--no-progress"]) == 0
    saved = torch.load(out, weights_only=True)
    expected = sample_seeds(default_mixture(), range(seed, seed + 7), (2,), karras(5, 0.002, 80.0),
                            "dpmpp_2m_sde", batch_size=4, eta=0.5, solver_type="heun")
    assert torch.equal(saved["samples"], expected)
    assert saved["solver"] == "dpmpp_2m_sde" and saved["options"] == {"eta": 0.5, "solver_type": "heun"}
    assert torch.equal(saved["sigmas"], karras(5, 0.002, 80.0))


def test_sample_npy_seed_list_and_exponential_schedule(tmp_path):
    out = tmp_path / "s.npy"
    assert cli.main(["sample", "--out", str(out), "--seeds", "3,7,10-12", "--schedule", "exponential",
                     "--sigma-min", "0.01", "--sigma-max", "20", "--steps", "4", "--solver", "seeds_1",
                     "--device", "cpu", "--no-progress"]) == 0
    samples = np.load(out)
    expected = sample_seeds(default_mixture(), [3, 7, 10, 11, 12], (2,), exponential(4, 0.01, 20.0), "seeds_1")
    assert np.array_equal(samples, expected.numpy())


def test_sample_custom_model_callable_and_factory(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        import torch

        def shrink(x, sigma):               # a denoiser: D(x, sigma) = x / (1 + sigma^2) (standard normal data)
            return x / (1 + sigma.view(-1, *([1] * (x.dim() - 1))) ** 2)

        def make():
            return shrink
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec in ("my_models:shrink", "my_models:make()"):
        out = tmp_path / f"{spec.replace(':', '_').replace('()', '')}.pt"
        assert cli.main(["sample", "--out", str(out), "--model", spec, "--shape", "3,4,4", "--num-samples", "3",
                         "--steps", "3", "--device", "cpu", "--no-progress"]) == 0
        samples = torch.load(out, weights_only=True)["samples"]
        assert samples.shape == (3, 3, 4, 4) and torch.isfinite(samples).all()
    sys.modules.pop("my_models", None)


def test_sample_progress_bar(tmp_path, capsys):
    assert cli.main(["sample", "--out", str(tmp_path / "p.pt"), "--num-samples", "4", "--batch-size", "2",
                     "--steps", "3", "--device", "cpu", "--progress"]) == 0
    err = capsys.readouterr().err
    assert "fastint dpmpp_2m" in err and "4/4" in err


@pytest.mark.parametrize("argv,message", [
    (["--solver", "nope"], "unknown solver"),
    (["-o", "eta=-1", "--solver", "seeds_1"], "eta"),
    (["-o", "bogus=1"], "unknown option"),
    (["-o", "noequals"], "key=value"),
    (["--model", "fastint_no_such_module:f", "--shape", "2"], "cannot import"),
    (["--model", "fastint.models:default_mixture"], "--shape is required"),
    (["--seeds", "a-b"], "seeds must be"),
    (["--shape", "0,3"], "shape must be"),
    (["--sigma-min", "5", "--sigma-max", "1"], "sigma_min"),
])
def test_sample_bad_arguments_exit_2(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sample", "--out", str(tmp_path / "x.pt"), "--no-progress"] + argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_sample_bad_output_path(tmp_path, capsys):
    for out in (str(tmp_path / "x.txt"), str(tmp_path / "missing_dir" / "x.pt")):
        with pytest.raises(SystemExit):
            cli.main(["sample", "--out", out])
    err = capsys.readouterr().err
    assert ".npy" in err and "does not exist" in err


def test_sample_model_error_exits_1_without_output(tmp_path, monkeypatch, capsys):
    (tmp_path / "bad_model.py").write_text("def model(x, sigma):\n    return x[:, :1]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "x.pt"
    assert cli.main(["sample", "--out", str(out), "--model", "bad_model:model", "--shape", "2", "--num-samples",
                     "2", "--steps", "2", "--device", "cpu", "--no-progress"]) == 1
    assert "error" in capsys.readouterr().err
    assert not out.exists()
    sys.modules.pop("bad_model", None)


def test_bench_prints_a_table(capsys):
    assert cli.main(["bench", "--sizes", "1024,4096", "--repeat", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "speed-up" in out and "4,096" in out and "plain PyTorch" in out
    assert len([line for line in out.splitlines() if line.strip().endswith("x")]) == 4
    with pytest.raises(SystemExit):
        cli.main(["bench", "--backend", "no_such_backend"])
