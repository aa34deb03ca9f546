"""Smoke tests of the benchmark code at tiny sizes: everything runs and produces its tables. No timing asserts."""

import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import bench_suite as bs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_microbench_rows_table_and_plot(tmp_path):
    rows = bs.microbench(sizes=[4096], dtypes=["fp32", "bf16"], device="cpu", rounds=1, budget_s=0.0,
                         verbose=False)
    cands = {(r["kind"], r["dtype"], r["candidate"]) for r in rows}
    for kind in bs.STEP_KINDS:
        assert (kind, "fp32", "floor: copy of the same bytes") in cands
        assert (kind, "fp32", "torch ops") in cands
        assert any(c[0] == kind and c[2].startswith("fastint") for c in cands)
    assert all(r["seconds"] > 0 and r["bytes"] > 0 for r in rows)
    text = bs.micro_markdown(rows)
    assert "| dpmpp_2m_sde | fp32 | 4K |" in text and "% of floor" in text
    pytest.importorskip("matplotlib")
    assert os.path.exists(bs.write_plot(rows, str(tmp_path / "micro.png")))


def test_end_to_end_tiny_unet(tmp_path):
    pytest.importorskip("diffusers")
    rows = bs.end_to_end(batch=2, steps=3, repeats=1, device="cpu", verbose=False,
                         samples_png=str(tmp_path / "samples.png"))
    samplers = {(r["method"], r["sampler"]) for r in rows}
    assert {("dpmpp_2m", "fastint"), ("dpmpp_2m_sde", "fastint"), ("euler", "fastint")} <= samplers
    assert any(s.startswith("diffusers") for _, s in samplers)
    for r in rows:
        assert r["model_calls"] == 3, r            # equal NFE
        assert 0 < r["model_s"] <= r["total_s"]
    assert "overhead %" in bs.e2e_markdown(rows)


def test_unet_training_is_cached(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("diffusers")
    assert bs.digits_data(8).shape == (1797, 1, 8, 8)
    first = bs.build_unet(8, train_seconds=0.5, cache_dir=str(tmp_path), verbose=False)
    cached = [f for f in os.listdir(tmp_path) if f.endswith(".pt")]
    assert len(cached) == 1
    again = bs.build_unet(8, train_seconds=0.5, cache_dir=str(tmp_path), verbose=False)
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_cuda_graph_bench_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("has CUDA: covered by tests/test_cuda_graph.py and the GPU benchmark run")
    assert bs.cuda_graph_bench() == []
    assert "no CUDA" in bs.graph_markdown([])


def _run(args, **kw):
    """Run a script in a fresh interpreter, without this pytest's worker variables (under pytest-xdist a nested
    pytest would take itself for a worker and pytest-benchmark would not write its JSON)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(kw.pop("env", {}))
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
                          **kw)


def test_bench_command_and_report(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "bench"
    proc = _run(["-m", "benchmarks.bench_suite", "--device", "cpu", "--sizes", "4096", "--dtypes", "fp32",
                 "--batch", "2", "--steps", "2", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "## Fused step vs floor and peers" in proc.stdout and "## End to end" in proc.stdout
    assert (out / "results_cpu.md").exists() and (out / "rows_cpu.json").exists()
    proc = _run(["benchmarks/report.py", str(out / "rows_cpu.json"), "--out", str(tmp_path / "report")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "report" / "report_cpu.md").exists()


def test_pytest_benchmark_file_and_report(tmp_path):
    pytest.importorskip("pytest_benchmark")
    js = tmp_path / "bench.json"
    proc = _run(["-m", "pytest", "benchmarks/test_bench_fused_step.py", "-q", "-p", "no:cacheprovider",
                 "--bench-sizes", "4096", "--bench-dtypes", "fp32", "--bench-device", "cpu",
                 "-k", "dpmpp_2m_sde and not graph", f"--benchmark-json={js}", "--benchmark-min-rounds=1"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(js.read_text())
    assert any(b["extra_info"].get("candidate", "").startswith("floor") for b in data["benchmarks"])
    proc = _run(["benchmarks/report.py", str(js), "--name", "micro"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dpmpp_2m_sde" in proc.stdout


def test_end_to_end_script(tmp_path):
    pytest.importorskip("diffusers")
    proc = _run(["benchmarks/bench_end_to_end.py", "--train-seconds", "0", "--batch", "2", "--steps", "2",
                 "--repeats", "1", "--solvers", "dpmpp_2m", "--out", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dpmpp_2m" in proc.stdout and (tmp_path / "e2e_cpu_8px.md").exists()


def test_augmented_quality_script():
    proc = _run(["benchmarks/augmented_quality.py", "--process", "cld", "--samples", "500", "--reference", "1000",
                 "--budgets", "2", "6", "--methods", "em", "conjugate_splitting:eta=0.5", "pf_heun"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in proc.stdout.splitlines() if line.startswith("| ") and "NFE" not in line}
    assert set(rows) == {"em", "conjugate_splitting:eta=0.5", "pf_heun"}, proc.stdout
    assert rows["pf_heun"][0] == "-" and all(float(c) > 0 for c in rows["em"] + rows["pf_heun"][1:]), rows
    bad = _run(["benchmarks/augmented_quality.py", "--methods", "em:eta=0.5", "--samples", "100", "--reference", "100"])
    assert bad.returncode != 0 and "eta applies to the splitting methods" in bad.stderr
