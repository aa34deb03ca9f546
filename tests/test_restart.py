"""Restart sampling: parity with the reference restart_sampler (tests/reference_restart.py), exact NFE, in-kernel
noise addressing, quality against the ODE and SDE baselines, and bad configurations."""

import json
import zlib

import pytest
import torch

import fastint
from fastint.models import default_mixture
from fastint.ops.philox import normals
from fastint.schedules import karras
from fastint.solvers.restart import plan_restart, parse_restart_info, restart_nfe
from fastint.solvers.restart_presets import PRESETS, stable_diffusion_preset

from reference_restart import OccurrenceNoise, restart_a1111, restart_official

CUSTOM = {"0": [4, 2, 2.0, 6.0], "1": [3, 3, 0.3, 0.9], "2": [5, 1, 0.05, 0.2]}
OFFICIAL_CASES = [
    ("cifar10_edm", 18, PRESETS["cifar10_edm"].restart_info, PRESETS["cifar10_edm"].churn),
    ("imagenet64_edm", 36, PRESETS["imagenet64_edm"].restart_info, PRESETS["imagenet64_edm"].churn),
    ("custom+main-churn", 12, CUSTOM, {"s_noise": 1.01, "restart_gamma": 0.2, "s_min": 0.1, "s_max": 4.0,
                                       "s_churn": 5.0}),
]


def _counting(gm):
    calls = []

    def model(x, sigma):
        calls.append(float(sigma[0]))
        return gm(x, sigma)
    return model, calls


def _ref_kwargs(opts):
    names = {"s_noise": "S_noise", "s_min": "S_min", "s_max": "S_max", "s_churn": "S_churn",
             "restart_gamma": "restart_gamma"}
    return {names[k]: v for k, v in opts.items() if k in names}


@pytest.mark.parametrize("name,steps,info,opts", OFFICIAL_CASES, ids=[c[0] for c in OFFICIAL_CASES])
def test_official_form_matches_reference_value_for_value(name, steps, info, opts):
    seed = int(torch.randint(0, 2 ** 31, (1,)))
    gen = torch.Generator().manual_seed(seed)
    gm = default_mixture(dim=3)
    sigmas = karras(steps, 0.002, 80.0)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64) * 80.0
    expected, ref_nfe = restart_official(gm, x.clone(), sigmas, OccurrenceNoise(x.shape, seed), info,
                                         **_ref_kwargs(opts))
    model, calls = _counting(gm)
    got = fastint.sample(model, x, sigmas, "restart", restart_info=json.dumps(info),
                         noise_sampler=OccurrenceNoise(x.shape, seed), backend="eager", **opts)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-10, f"seed {seed}"
    plan = plan_restart(sigmas.tolist(), parse_restart_info(info), a1111=False)
    formula = 2 * steps - 1 + sum(r.times * 2 * (r.n_restart - 1) for r in plan.values())
    assert len(calls) == ref_nfe == formula == restart_nfe(sigmas.tolist(), plan)
    if name in PRESETS:
        assert formula == PRESETS[name].nfe


def test_a1111_form_matches_reference_value_for_value():
    seed = int(torch.randint(0, 2 ** 31, (1,)))
    gen = torch.Generator().manual_seed(seed)
    gm = default_mixture()
    sigmas = karras(20, 0.0292, 14.6146)
    x = torch.randn(4, 2, generator=gen, dtype=torch.float64) * sigmas[0]
    for restart_list in (PRESETS["sd_w2"].restart_list, stable_diffusion_preset(7.5).restart_list,
                         {0.5: [4, 3, 5.0], 0.05: [3, 2, 0.3]}):
        expected, ref_nfe = restart_a1111(gm, x.clone(), sigmas, OccurrenceNoise(x.shape, seed), restart_list,
                                          s_noise=1.02)
        model, calls = _counting(gm)
        got = fastint.sample(model, x, sigmas, "restart", restart_list=restart_list, s_noise=1.02,
                             noise_sampler=OccurrenceNoise(x.shape, seed), backend="eager")
        assert ((got - expected).norm() / expected.norm()).item() < 1e-10, f"seed {seed} {restart_list}"
        assert len(calls) == ref_nfe


def test_float32_state_matches_float64_reference():
    gm = default_mixture()
    sigmas = karras(18, 0.002, 80.0)
    x = torch.randn(6, 2, dtype=torch.float64) * 80.0
    info = PRESETS["cifar10_edm"].restart_info
    expected, _ = restart_official(gm, x.clone(), sigmas, OccurrenceNoise(x.shape, 3), info, S_noise=1.003)
    got = fastint.sample(gm, x.float(), sigmas, "restart", preset="cifar10_edm", s_noise=1.003,
                         noise_sampler=OccurrenceNoise(x.shape, 3, torch.float32), backend="eager")
    assert got.dtype == torch.float32
    assert ((got.double() - expected).norm() / expected.norm()).item() < 1e-5


def test_in_kernel_noise_follows_the_documented_addressing():
    """Main churn of step i: counter i, stream 0; restart event e (jumps and inner steps in order): counter
    len(sigmas) + e, stream 0 (docs/noise.md)."""
    gm = default_mixture()
    sigmas = karras(12, 0.002, 80.0)
    x = torch.randn(3, 2, dtype=torch.float64) * 80.0
    seeds = torch.tensor([4, -9, 2 ** 35 + 1], dtype=torch.int64)

    def noise(sigma_a, sigma_b, where):
        counter = where[1] if where[0] == "main" else len(sigmas) + where[1]
        return normals(seeds, counter, 0, 2).reshape(x.shape).double()

    opts = OFFICIAL_CASES[2][3]
    expected, _ = restart_official(gm, x.clone(), sigmas, noise, CUSTOM, **_ref_kwargs(opts))
    got = fastint.sample(gm, x, sigmas, "restart", restart_info=CUSTOM, seed=seeds, backend="eager", **opts)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-10
    other = fastint.sample(gm, x, sigmas, "restart", restart_info=CUSTOM, seed=seeds + 1, backend="eager", **opts)
    assert not torch.allclose(got, other)


def test_without_intervals_it_is_heun_and_other_inner_solvers_count_their_nfe():
    gm = default_mixture()
    sigmas = karras(10, 0.002, 80.0)
    x = torch.randn(4, 2, dtype=torch.float64) * 80.0
    assert torch.equal(fastint.sample(gm, x, sigmas, "restart", backend="eager"),
                       fastint.sample(gm, x, sigmas, "heun", backend="eager"))
    info = {"0": [4, 2, 0.3, 1.5]}
    plan = plan_restart(sigmas.tolist(), parse_restart_info(info), a1111=False)
    for main, inner in (("heun", "dpmpp_2m"), ("dpmpp_2m", "euler"), ("euler", "heun")):
        model, calls = _counting(gm)
        out = fastint.sample(model, x, sigmas, "restart", restart_info=info, main_solver=main, inner_solver=inner,
                             restart_gamma=0.0, seed=0, backend="eager")
        assert len(calls) == restart_nfe(sigmas.tolist(), plan, main, inner)
        assert torch.isfinite(out).all()


def test_callback_and_step_ids():
    gm = default_mixture()
    sigmas = karras(8, 0.002, 80.0)
    seen = []
    fastint.sample(gm, torch.randn(2, 2) * 80, sigmas, "restart", restart_info={"0": [3, 2, 0.3, 1.0]}, seed=0,
                   callback=seen.append, backend="eager")
    assert [d["i"] for d in seen] == list(range(8 + 2 * 2))


@pytest.mark.parametrize("opts,match", [
    ({"restart_info": {"0": [3, 2, 0.14, 0.30], "1": [3, 2, 0.5, 1.0]}}, "unsorted"),
    ({"restart_info": {"0": [3, 2, 0.5, 0.3]}}, "t_min 0.5 above or at t_max 0.3"),
    ({"restart_list": {2.0: [3, 2, 1.0]}}, "above or at t_max"),
    ({"restart_info": {"0": [3, 2, 0.14, 120.0]}}, "outside the sigma range"),
    ({"restart_info": {"0": [3, 2, 0.0001, 0.3]}}, "outside the sigma range"),
    ({"restart_list": {0.1: [3, 2, 0.11]}}, "no interval left"),
    ({"restart_info": {"0": [3, 2, 0.31, 0.9], "1": [3, 2, 0.3, 0.5]}}, "same main-grid sigma"),
    ({"restart_info": {"0": [1, 2, 0.14, 0.3]}}, "N_restart must be >= 2"),
    ({"restart_info": {"0": [3, 0, 0.14, 0.3]}}, "K .* must be >= 1"),
    ({"restart_info": {"0": [3, 2, 0.14]}}, r"must be \[N_restart, K, t_min, t_max\]"),
    ({"restart_info": {"0": [3, "two", 0.14, 0.3]}}, "must be a number"),
    ({"restart_info": {"0": [3, 2, 0.14, 0.3]}, "preset": "cifar10_edm"}, "give one of"),
    ({"restart_info": {"0": [3, 2, 0.14, 0.3]}, "inner_solver": "dpmpp_2m", "restart_gamma": 0.05},
     "restart_gamma churns Heun/Euler"),
    ({"inner_solver": "dpmpp_2m_sde"}, "inner_solver='dpmpp_2m_sde' is invalid"),
    ({"preset": "nope"}, "preset='nope' is invalid"),
])
def test_bad_configurations_are_named(opts, match):
    gm = default_mixture()
    sigmas = karras(18, 0.002, 80.0)
    with pytest.raises(ValueError, match=match):
        fastint.sample(gm, torch.randn(2, 2) * 80, sigmas, "restart", seed=0, backend="eager", **opts)


def test_official_numbers_as_strings_are_accepted():
    """The official commands pass e.g. '{"0": [3, "2", "0.14", "0.30"]}'."""
    gm = default_mixture()
    sigmas = karras(18, 0.002, 80.0)
    x = torch.randn(3, 2, dtype=torch.float64) * 80
    a = fastint.sample(gm, x, sigmas, "restart", restart_info='{"0": [3, "2", "0.14", "0.30"]}', seed=4,
                       backend="eager")
    b = fastint.sample(gm, x, sigmas, "restart", preset="cifar10_edm", seed=4, backend="eager")
    assert torch.equal(a, b)


def test_restart_beats_ode_and_sde_at_equal_nfe_where_the_ode_plateaus():
    """sigma_max = 3 with x ~ N(0, 3^2): the prior is much narrower than the true marginal, the ODE carries the
    mismatch to the end (Heun with many more steps is no better), the SDE contracts it partly, Restart's jumps
    contract it K times. Equal NFE (39); two seeds (fixed, from a stable hash); the gap between Restart's worst and
    each baseline's best run exceeds the seed-to-seed spread of both. Distance: the Frechet distance to the target
    (a 200000-sample exact set: its own noise is far below the differences)."""
    from fastint.metrics import frechet_distance
    gm = default_mixture()
    batch, s_max = 10000, 3.0
    ref = gm.sample(200000, generator=torch.Generator().manual_seed(_seed("restart plateau reference")))
    sigmas = karras(8, 0.002, s_max)
    info = {"0": [3, 6, 1.0, 2.97]}
    nfe = restart_nfe(sigmas.tolist(), plan_restart(sigmas.tolist(), parse_restart_info(info), a1111=False))
    assert nfe == 39
    results = {"restart": [], "heun": [], "dpmpp_2m_sde": []}
    for run in range(2):
        seed = _seed(f"restart plateau run {run}")
        x = s_max * torch.randn(batch, 2, generator=torch.Generator().manual_seed(seed))
        results["restart"].append(frechet_distance(
            fastint.sample(gm, x, sigmas, "restart", restart_info=info, seed=seed), ref))
        results["heun"].append(frechet_distance(fastint.sample(gm, x, karras(20, 0.002, s_max), "heun"), ref))
        results["dpmpp_2m_sde"].append(frechet_distance(
            fastint.sample(gm, x, karras(nfe, 0.002, s_max), "dpmpp_2m_sde", seed=seed), ref))
    spread = {k: max(v) - min(v) for k, v in results.items()}
    for other in ("heun", "dpmpp_2m_sde"):
        gap = min(results[other]) - max(results["restart"])
        assert gap > max(spread["restart"], spread[other]), (other, results)
        assert max(results["restart"]) < 0.5 * min(results[other]), (other, results)


def _seed(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


@pytest.mark.parametrize("solver", ["dpmpp_2m", "dpmpp_3m"])
def test_segments_give_the_bits_of_each_solver_run_alone(solver):
    """Restart with another solver for the main pass and the restarts is, bit for bit, that solver's own runs
    composed by hand: main pass to t_min, the jump, the restart down its Karras grid, the rest of the main pass.
    With an adapter whose c_in != 1 this holds only if each segment's first network input is c_in times its
    stored initial state, as in a run of its own, not staged by the previous segment's last update."""
    from fastint.models import DiscreteVPDenoiser
    from fastint.ops import fused_step
    from fastint.schedules import alphas_cumprod_from_betas, betas_linear, vp_discrete
    from fastint.solvers.restart import inner_grid

    ab = alphas_cumprod_from_betas(betas_linear(1000, 1e-4, 0.02))
    sigmas = vp_discrete(ab, 12, spacing="linspace").sigmas
    weight = torch.linspace(-0.5, 0.7, 6)
    model = DiscreteVPDenoiser(lambda u, t: torch.tanh(u * weight) * (1 + t[:, None] / 2000), ab)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(41)) * float(sigmas[0])
    z = torch.randn(3, 6, generator=torch.Generator().manual_seed(42))
    idx, t_max, n = 6, float(sigmas[3]), 4
    t_min = float(sigmas[idx])
    got = fastint.sample(model, x, sigmas, "restart", restart_info={"0": [n, 1, t_min, t_max]}, main_solver=solver,
                         inner_solver=solver, restart_gamma=0.0, noise_sampler=lambda a, b: z, backend="cpp")
    main = fastint.sample(model, x, sigmas[:idx + 1], solver, backend="cpp")
    jumped, = fused_step([main, z], [[1.0, (t_max ** 2 - t_min ** 2) ** 0.5]], backend="cpp")
    restart_grid = torch.tensor(inner_grid(t_min, t_max, n), dtype=torch.float64)
    restarted = fastint.sample(model, jumped, restart_grid, solver, backend="cpp")
    want = fastint.sample(model, restarted, sigmas[idx:], solver, backend="cpp")
    assert torch.equal(got, want), (got - want).abs().max()
