"""The demo (in-process, tiny budgets) and the ``fastint`` command line."""

import io
import json
import os
import struct
import subprocess
import sys

import pytest
import torch

import fastint
from examples import demo, demo_main  # noqa: F401  (demo_main registers every entry)
from fastint import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_cli(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "fastint", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("demo_out")
    stream = io.StringIO()
    result = demo.run_demo(out_dir=str(out), batch=200, budgets=(5, 10), solvers=["euler", "heun"], seed=3,
                           stream=stream)
    return result, stream.getvalue(), out


def test_demo_writes_a_valid_png_and_tables(small_demo):
    result, text, out = small_demo
    width, height = _png_size(out / demo.PLOT_NAME)
    assert width > 200 and height > 200
    md = (out / demo.TABLE_NAME).read_text()
    data = json.loads((out / demo.JSON_NAME).read_text())
    for name in ("euler", "heun"):
        assert name in text and name in md
    assert "floor" in text and "floor" in md
    assert {r["name"] for r in data["rows"]} == {"euler", "heun"}
    assert set(result.files) == {"table", "json", "plot"}


def test_demo_prints_progress_for_every_method_and_budget(small_demo):
    result, text, out = small_demo
    for k, name in enumerate(("euler", "heun"), 1):
        for budget in (5, 10):
            assert f"[ {k}/2] {name:<5}  NFE budget {budget:>3}:" in text, text
    assert text.index("floor (exact samples") < text.index("[ 1/2] euler")  # progress before the table
    assert text.index("[ 2/2] heun") < text.index("NFE budget  method")


def test_demo_announces_every_file_it_writes(small_demo):
    result, text, out = small_demo
    written = sorted(os.path.join(str(out), name) for name in os.listdir(out))
    assert written == sorted(result.files.values())
    for path in written:
        assert f"wrote {path}" in text


def test_demo_skips_a_method_below_its_minimum_configuration_and_says_why():
    """Restart's interval does not fit in 10 NFE: the demo skips it there (it used to run 1 plain Euler step under
    the name 'restart') and says so in the progress, in the result and under the table."""
    stream = io.StringIO()
    result = demo.run_demo(out_dir=None, batch=64, budgets=(10, 20), solvers=["restart"], stream=stream)
    assert [(r.budget, r.nfe > 10) for r in result.rows] == [(20, True)]
    assert len(result.skipped) == 1 and result.skipped[0].startswith("restart at NFE budget 10: skipped")
    assert "restart interval" in result.skipped[0]
    assert "NFE budget  10: skipped (needs" in stream.getvalue()
    assert "not run: restart at NFE budget 10" in result.table()


def test_demo_table_explains_outliers():
    row = demo.DemoRow("slow_method", "solvers", 10, 2, 3, 50.0, 1.0, 0.1)
    result = demo.DemoResult([row], 1.0, 1.0, [0.9, 1.1], [0.9, 1.1], 64, [10], "eager", 0, 1,
                             notes={"slow_method": "two steps of a method that needs ten"})
    table = result.table()
    assert "far above the floor (more than 20x): slow_method at 3 NFE (2 steps, 50x): two steps of a method" in table


def test_plot_series_are_distinct_in_colour_and_marker():
    colors, markers = demo.series_styles(24)
    assert len(set(colors)) == 24 and len(set(markers)) == 24
    n = len(demo.available_entries())
    colors, markers = demo.series_styles(n)
    assert len(set(zip(colors, markers))) == n  # every demo series gets its own pair


def test_demo_counts_nfe_and_fits_budgets(small_demo):
    result = small_demo[0]
    got = {(r.name, r.budget): (r.steps, r.nfe) for r in result.rows}
    # euler: 1 NFE per step; heun: 2 per step, 1 on the last step to 0 (NFE = 2 steps - 1 <= budget)
    assert got == {("euler", 5): (5, 5), ("euler", 10): (10, 10), ("heun", 5): (3, 5), ("heun", 10): (5, 9)}
    for r in result.rows:
        assert r.seconds > 0 and r.sliced_wasserstein > 0 and r.frechet >= 0


def test_demo_quality_floor_below_few_step_error(small_demo):
    result = small_demo[0]
    euler = {r.budget: r for r in result.rows if r.name == "euler"}
    assert result.floor_sliced_wasserstein < euler[5].sliced_wasserstein
    assert result.floor_frechet < euler[5].frechet
    assert euler[10].sliced_wasserstein < euler[5].sliced_wasserstein
    lo, hi = result.floor_sliced_wasserstein_range
    assert 0 < lo <= result.floor_sliced_wasserstein <= hi


def test_demo_table_header_and_floor_line(small_demo):
    text = small_demo[1]
    for header in ("NFE budget", "method", "steps", "NFE used", "sliced W2", "Frechet", "time [s]"):
        assert header in text
    assert demo.EXPLANATION in text
    assert "floor: exact samples" in text
    assert "backend" in text


def test_demo_is_reproducible(tmp_path):
    kwargs = dict(out_dir=None, batch=64, budgets=(3,), solvers=["euler_ancestral"], seed=5,
                  stream=io.StringIO())
    a, b = demo.run_demo(**kwargs), demo.run_demo(**kwargs)
    assert [(r.sliced_wasserstein, r.frechet) for r in a.rows] == [(r.sliced_wasserstein, r.frechet) for r in b.rows]


def test_solver_nfe_and_steps_for_budget():
    nfe = {row["name"]: row["nfe"] for row in fastint.list_solvers()}
    assert nfe["euler"](7) == 7
    heun = nfe["heun"]
    assert [heun(n) for n in (1, 2, 5)] == [1, 3, 9]
    seeds3 = nfe["seeds_3"]
    entry = demo.DemoEntry("x", seeds3, run=None)
    assert entry.steps_for_budget(10) == 4 and seeds3(4) == 10
    assert entry.steps_for_budget(1) == 1
    assert entry.steps_for_budget(2) == 1  # one step costs 1, two cost 4


def test_every_listed_solver_is_a_demo_entry():
    names = [e.name for e in demo.available_entries()]
    assert names[:len(fastint.list_solvers())] == [s["name"] for s in fastint.list_solvers()]


def test_augmented_samplers_are_demo_entries():
    from examples.demo_augmented import ENTRIES
    sections = {e.name: e.section for e in demo.available_entries()}
    assert all(sections.get(name) == "augmented" for name, _, _ in ENTRIES), sections


def test_register_entry_adds_a_row(monkeypatch):
    monkeypatch.setattr(demo, "_EXTRA_ENTRIES", [])

    def run(setup, model, x, steps):  # a toy method: denoise once at sigma_max, then return the denoised
        sigma = torch.full((x.shape[0],), setup.sigma_max, dtype=x.dtype)
        return model(x, sigma)

    demo.register_entry(demo.DemoEntry("one_shot", lambda steps: 1, run, section="toy"))
    assert "one_shot" in [e.name for e in demo.available_entries()]
    result = demo.run_demo(out_dir=None, batch=64, budgets=(4,), solvers=["one_shot"], stream=io.StringIO())
    assert [(r.name, r.section, r.nfe) for r in result.rows] == [("one_shot", "toy", 1)]


def test_run_demo_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown solver"):
        demo.run_demo(out_dir=None, solvers=["nope"], stream=io.StringIO())
    with pytest.raises(ValueError, match="budgets"):
        demo.run_demo(out_dir=None, budgets=(0,), stream=io.StringIO())
    with pytest.raises(ValueError, match="batch"):
        demo.run_demo(out_dir=None, batch=1, stream=io.StringIO())


def test_default_backend_is_not_jit():
    assert demo.default_backend() in ("cpp", "eager")


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_demo_in_process(tmp_path, capsys):
    code = cli.main(["demo", "--out", str(tmp_path), "--batch", "100", "--budgets", "4", "--solvers",
                     "euler,dpmpp_2m", "--backend", "eager", "--no-plot"])
    assert code == 0
    out = capsys.readouterr().out
    assert "euler" in out and "dpmpp_2m" in out and "backend 'eager'" in out


def test_cli_demo_runs_single_threaded_by_default_and_restores_threads(tmp_path, capsys):
    before = torch.get_num_threads()
    args = ["demo", "--out", str(tmp_path), "--batch", "100", "--budgets", "4", "--solvers", "euler", "--no-plot"]
    assert cli.main(args) == 0
    assert "1 thread(s)" in capsys.readouterr().out and torch.get_num_threads() == before
    assert cli.main(args + ["--threads", "2"]) == 0
    assert "2 thread(s)" in capsys.readouterr().out and torch.get_num_threads() == before
    assert (tmp_path / demo.TABLE_NAME).exists() and not (tmp_path / demo.PLOT_NAME).exists()


def test_cli_solvers_lists_every_solver():
    proc = _run_cli("solvers")
    assert proc.returncode == 0, proc.stderr
    for s in fastint.list_solvers():
        assert s["name"] in proc.stdout
    assert "NFE/step" in proc.stdout and "stochastic" in proc.stdout


def test_cli_solvers_fits_100_columns_and_agrees_with_the_readme():
    proc = _run_cli("solvers")
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()) <= 100, proc.stdout
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[2:] if line.strip() and line[0] != "*"}
    assert "churn only" in rows["euler"] and "churn only" in rows["heun"]
    assert "when eta > 0" in rows["ddim"] and " yes " in rows["dpmpp_2m_sde"]
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert "| `euler` | 1 | 1 | churn only |" in readme and "| `ddim` | 1 | 1 | when `eta > 0` |" in readme


def test_cli_solvers_name_shows_the_details():
    proc = _run_cli("solvers", "dpmpp_2m_sde")
    assert proc.returncode == 0, proc.stderr
    assert "solver_type = 'midpoint'" in proc.stdout and "eta = 1.0" in proc.stdout
    bad = _run_cli("solvers", "nope")
    assert bad.returncode == 2 and "unknown solver 'nope'" in bad.stderr


def test_cli_bench_defaults_to_one_thread_and_prints_it(capsys):
    before = torch.get_num_threads()
    try:
        assert cli.main(["bench", "--sizes", "1024", "--repeat", "1", "--no-progress"]) == 0
    finally:
        torch.set_num_threads(before)
    assert "1 thread(s) (--threads)" in capsys.readouterr().out


def test_cli_demo_and_bench_need_a_checkout(monkeypatch, tmp_path, capsys):
    from fastint import _checkout
    monkeypatch.setattr(_checkout, "_candidates", lambda: iter([str(tmp_path)]))
    for command in (["demo"], ["bench"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(command)
        assert exc.value.code == 1
        err = capsys.readouterr().err
        assert "not part of the installed package" in err and "checkout" in err


def test_cpp_backend_description_names_fastints_own_polynomials():
    cpp = next(b for b in fastint.list_backends() if b["name"] == "cpp")
    assert "SLEEF" not in cpp["description"] and "own" in cpp["description"]


def test_cli_backends_lists_eager_and_compile():
    proc = _run_cli("backends")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name in ("eager", "compile"):
        assert any(line.startswith(name + " ") for line in lines), proc.stdout
    for b in fastint.list_backends():
        if not b["available"]:
            assert b["reason"] in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["demo", "--solvers", "euler,not_a_solver"], "unknown solver(s) not_a_solver"),
    (["demo", "--budgets", "10,abc"], "budgets must be comma-separated integers"),
    (["demo", "--budgets", "0"], "budgets must be >= 1"),
    (["demo", "--batch", "1"], "expected an integer >= 2"),
    (["demo", "--backend", "warp_drive"], "unknown backend 'warp_drive'"),
    (["no_such_command"], "invalid choice"),
    ([], "required"),
])
def test_cli_bad_arguments_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_bad_arguments_exit_2_subprocess():
    proc = _run_cli("demo", "--solvers", "bogus")
    assert proc.returncode == 2
    assert "unknown solver(s) bogus" in proc.stderr and "available: euler" in proc.stderr


@pytest.mark.parametrize("command", [[], ["demo"], ["solvers"], ["backends"]])
def test_cli_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*command, "--help"])
    assert exc.value.code == 0
    assert "usage: fastint" in capsys.readouterr().out


def test_demo_sections_run_on_the_demo_backend():
    """The full demo's Restart-plateau and guided tables (float64 guided errors) on the demo's default backend."""
    from examples import demo_extras
    stream = io.StringIO()
    text = demo_extras.print_sections(stream, backend=demo.default_backend())
    assert "Restart where the ODE plateaus" in text and "plms needs 1." in text
    printed = stream.getvalue()
    assert text in printed and printed.count("running") == 2 and printed.count("done in") == 2  # progress lines


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_demo_keeps_freed_memory_for_reuse():
    """The demo sets glibc's mmap/trim thresholds (freed temporaries are reused instead of unmapped and faulted in
    again): mallopt accepts the values on this machine."""
    assert demo_main.retain_freed_memory() is True
