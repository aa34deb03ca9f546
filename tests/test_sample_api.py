"""fastint.sample's contract: inputs never corrupted, clear errors on bad input, seeds, callbacks, progress."""


import pytest
import torch

import fastint
from fastint.models import default_mixture
from fastint.schedules import karras

GUIDED = {"lie_trotter", "strang"}  # need a guidance function: tests/test_splitting.py
SOLVERS = [s["name"] for s in fastint.list_solvers() if s["name"] not in GUIDED]


@pytest.fixture
def setup():
    gen = torch.Generator().manual_seed(77)
    sigmas = karras(6, 0.05, 20.0)
    return default_mixture(), torch.randn(4, 2, generator=gen) * 20, sigmas


def test_list_solvers_describes_every_solver():
    rows = {r["name"]: r for r in fastint.list_solvers()}
    assert set(rows) == {"euler", "heun", "ddim", "euler_ancestral", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde",
                         "dpmpp_3m_sde", "seeds_1", "seeds_2", "seeds_3", "restart", "plms", "lie_trotter", "strang",
                         "heunpp2", "ddpm", "lcm", "ipndm", "ipndm_v", "deis"} | \
        {"res_multistep", "res_multistep_ancestral", "gradient_estimation", "er_sde", "sa_solver", "sa_solver_pece",
         "exp_heun_2_x0", "exp_heun_2_x0_sde"} \
        | {"dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral", "dpmpp_sde"}   # k-diffusion's samplers
    assert rows["seeds_3"]["options"] == {"eta": 1.0, "s_noise": 1.0, "r_1": 1 / 3, "r_2": 2 / 3}
    assert rows["heun"]["nfe_per_step"].startswith("2") and rows["seeds_3"]["nfe_per_step"].startswith("3")
    assert rows["dpmpp_2m_sde"]["stochastic"] and not rows["dpmpp_2m"]["stochastic"]


@pytest.mark.parametrize("solver", SOLVERS)
def test_inputs_are_never_modified_and_nfe_is_as_documented(setup, solver):
    gm, x, sigmas = setup
    x_before, sigmas_before = x.clone(), sigmas.clone()
    calls = []

    def counting_model(x_in, sigma):
        calls.append(sigma)
        return gm(x_in, sigma)

    out = fastint.sample(counting_model, x, sigmas, solver, seed=1, backend="eager")
    assert torch.equal(x, x_before) and torch.equal(sigmas, sigmas_before)
    assert out.shape == x.shape and out.dtype == x.dtype and out.data_ptr() != x.data_ptr()
    per_step = int(next(r for r in fastint.list_solvers() if r["name"] == solver)["nfe_per_step"][0])
    steps = len(sigmas) - 1
    expected = per_step * (steps - 1) + 1  # the last step (to sigma = 0) takes one evaluation
    if solver == "heunpp2":                # and its second-to-last step two
        expected -= 1
    assert len(calls) == expected


def test_callback_sees_every_step(setup):
    gm, x, sigmas = setup
    seen = []
    fastint.sample(gm, x, sigmas, "dpmpp_2m", callback=seen.append, backend="eager")
    assert [s["i"] for s in seen] == list(range(len(sigmas) - 1))
    assert [s["sigma"] for s in seen] == sigmas[:-1].tolist()
    assert all(s["denoised"].shape == x.shape for s in seen)


def test_progress_bar_runs(setup, capsys):
    gm, x, sigmas = setup
    fastint.sample(gm, x, sigmas, "euler", progress=True, backend="eager")
    assert "fastint euler" in capsys.readouterr().err


def test_seeds_make_runs_repeatable_and_distinct(setup):
    gm, x, sigmas = setup
    a = fastint.sample(gm, x, sigmas, "dpmpp_2m_sde", seed=5, backend="eager")
    b = fastint.sample(gm, x, sigmas, "dpmpp_2m_sde", seed=[5, 6, 7, 8], backend="eager")
    c = fastint.sample(gm, x, sigmas, "dpmpp_2m_sde", seed=torch.tensor([9, 6, 7, 8]), backend="eager")
    assert torch.equal(a, b)
    assert torch.equal(a[1:], c[1:]) and not torch.allclose(a[0], c[0])
    torch.manual_seed(0)
    d = fastint.sample(gm, x, sigmas, "dpmpp_2m_sde", backend="eager")
    torch.manual_seed(0)
    e = fastint.sample(gm, x, sigmas, "dpmpp_2m_sde", backend="eager")
    assert torch.equal(d, e)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"solver": "dpmpp_9m"}, ValueError, "unknown solver 'dpmpp_9m'; available: euler"),
    ({"solver": "euler", "eta": 0.5}, TypeError, "unknown option.*eta.*valid options: s_churn"),
    ({"solver": "ddim", "eta": 1.5}, ValueError, "eta=1.5 is invalid"),
    ({"solver": "dpmpp_2m_sde", "solver_type": "rk4"}, ValueError, "'midpoint' or 'heun'"),
    ({"solver": "seeds_3", "r_1": 0.7, "r_2": 0.5}, ValueError, "needs r_1 < r_2"),
    ({"solver": "seeds_2", "r": 1.5}, ValueError, r"in \(0, 1\]"),
    ({"solver": "euler_ancestral", "s_noise": float("nan")}, ValueError, "s_noise=nan is invalid"),
    ({"seed": [1, 2]}, ValueError, "2 seeds for a batch of 4"),
    ({"seed": 1.5}, TypeError, "integers"),
    ({"check_finite": "sometimes"}, ValueError, "check_finite"),
    ({"extra_args": [1]}, TypeError, "extra_args"),
    ({"noise_sampler": 3}, TypeError, "noise_sampler must be callable"),
])
def test_bad_arguments_are_named(setup, kwargs, error, match):
    gm, x, sigmas = setup
    kwargs = {"solver": "dpmpp_2m_sde", **kwargs}
    with pytest.raises(error, match=match):
        fastint.sample(gm, x, sigmas, backend="eager", **kwargs)


@pytest.mark.parametrize("sigmas,match", [
    ([10.0, 5.0, 5.0, 0.0], "strictly decreasing"),
    ([1.0, 5.0, 0.0], "strictly decreasing"),
    ([10.0, float("nan"), 0.0], "finite"),
    ([10.0], "at least two"),
    ([10.0, 0.0, -1.0], "strictly decreasing|positive"),
    (torch.ones(2, 2), "1-D"),
])
def test_bad_sigmas(setup, sigmas, match):
    gm, x, _ = setup
    with pytest.raises(ValueError, match=match):
        fastint.sample(gm, x, sigmas, "euler", backend="eager")


def test_bad_state_and_model(setup):
    gm, x, sigmas = setup
    with pytest.raises(TypeError, match="floating-point"):
        fastint.sample(gm, torch.ones(4, 2, dtype=torch.int64), sigmas, "euler")
    with pytest.raises(ValueError, match="x contains NaN"):
        fastint.sample(gm, torch.full((4, 2), float("nan")), sigmas, "euler")
    with pytest.raises(ValueError, match=r"model returned \(4, 3\)"):
        fastint.sample(lambda x, s: torch.ones(4, 3), x, sigmas, "euler", backend="eager")
    with pytest.raises(TypeError, match="model returned tuple"):
        fastint.sample(lambda x, s: (x,), x, sigmas, "euler", backend="eager")
    with pytest.raises(ValueError, match="noise_sampler returned"):
        fastint.sample(gm, x, sigmas, "euler_ancestral", noise_sampler=lambda a, b: torch.ones(3), backend="eager")


@pytest.mark.parametrize("check", ["end", "step"])
def test_nan_in_a_model_output_is_reported(setup, check):
    gm, x, sigmas = setup

    def model(x_in, sigma):
        out = gm(x_in, sigma)
        if sigma[0] < 1:
            out = out.clone()
            out[1, 0] = float("nan")
        return out

    x_before = x.clone()
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        fastint.sample(model, x, sigmas, "dpmpp_2m", check_finite=check, backend="eager")
    assert torch.equal(x, x_before)


def test_float16_and_bfloat16_states(setup):
    gm, x, sigmas = setup
    ref = fastint.sample(gm, x.double(), sigmas, "dpmpp_2m", backend="eager")
    for dtype, tol in ((torch.float16, 5e-3), (torch.bfloat16, 4e-2)):
        out = fastint.sample(lambda xx, s: gm(xx.float(), s.float()).to(dtype), x.to(dtype), sigmas, "dpmpp_2m",
                             backend="eager")
        assert out.dtype == dtype
        assert ((out.double() - ref).norm() / ref.norm()).item() < tol


@pytest.mark.parametrize("solver", SOLVERS)
def test_the_sampling_loop_never_reads_device_values(solver):
    """On the meta device every read of a tensor's value raises: the loop must not synchronise (CUDA graphs)."""
    x = torch.empty(4, 3, 8, 8, device="meta")
    sigmas = karras(5, 0.1, 10.0)
    out = fastint.sample(lambda x_in, sigma: x_in * 0.5, x, sigmas, solver, seed=3, backend="eager",
                         check_finite="off", **({"s_churn": 1.0} if solver in ("euler", "heun") else {}))
    assert out.device.type == "meta" and out.shape == x.shape
