"""A fastint scheduler built with ``from_config(peer.config)`` follows the diffusers scheduler it replaces.

Each case runs one sampling loop, as pipelines write it (``x_T * init_noise_sigma``, ``scale_model_input``,
``step``), twice from the same initial noise: with the diffusers scheduler (``DPMSolverMultistepScheduler``,
``EulerDiscreteScheduler``, ``HeunDiscreteScheduler``) and with the fastint scheduler built from its config, and
compares the final samples. The model is a small deterministic nonlinear function of the sample AND the timestep
(a wrong grid, timestep, coordinate convention, step order or coefficient changes its outputs). diffusers computes
every update in float32 (its noise levels and coefficients too), fastint in float64 host coefficients on float32
states: the samples agree to a few 1e-6 relative (worst measured 7.5e-6 over all DPM cases); RTOL = 2e-5.
"""

import math
import zlib

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,  # noqa: E402
                       HeunDiscreteScheduler)

from fastint.integrations.diffusers import (FastintDPMSolverScheduler, FastintHeunScheduler,  # noqa: E402
                                            FastintScheduler, FastintSEEDSScheduler)
from fastint.schedules import vp_discrete  # noqa: E402
from one_thread import one_torch_thread  # noqa: E402,F401 - autouse: one torch thread in this module

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
RTOL = 2e-5
SHAPE = (2, 3, 4, 4)


def model(x: torch.Tensor, t) -> torch.Tensor:
    """A deterministic eps / v 'network' of (x, t): nonlinear in x, smooth in t."""
    u = torch.as_tensor(t, dtype=torch.float32) / 1000
    if u.dim() == 1:   # a timestep batch (fastint's adapters pass one per sample)
        u = u.view((-1,) + (1,) * (x.dim() - 1))
    return torch.tanh(0.8 * x + 0.5 * x.roll(1, -1)) * (0.6 + 0.4 * u) + 0.2 * torch.sin(3 * u) * x


def noise(name: str) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(zlib.crc32(name.encode())))


def sample_loop(scheduler, x_T: torch.Tensor, **set_timesteps) -> torch.Tensor:
    scheduler.set_timesteps(**set_timesteps)
    x = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
    return x


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def both(peer, ours, name: str, **set_timesteps):
    x_T = noise(name)
    return sample_loop(ours, x_T, **set_timesteps), sample_loop(peer, x_T, **set_timesteps)


# -- DPM-Solver++ 2M / 3M from DPMSolverMultistepScheduler's config ---------------------------------------------------
KINDS = ("", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas")
DPM_CASES = []
for _i, (_order, _final, _kind) in enumerate([(o, f, k) for o in (2, 3) for f in ("zero", "sigma_min") for k in KINDS]):
    # spacings and prediction types rotate over the cases; 16 steps (>= 15: no lower-order final steps) in half of
    # them, except third order with "sigma_min", where a repeated final level makes diffusers' last step 0/0 (NaN)
    _steps = 8 if (_order == 3 and _final == "sigma_min") or _i % 2 else 16
    DPM_CASES.append(dict(solver_order=_order, final_sigmas_type=_final, timestep_spacing=("linspace", "leading",
                          "trailing")[_i % 3], prediction_type=("epsilon", "v_prediction")[(_i // 3) % 2],
                          **({_kind: True} if _kind else {}), steps=_steps))
DPM_CASES += [dict(solver_order=2, final_sigmas_type=f, timestep_spacing=s, prediction_type="epsilon", steps=10)
              for s in ("linspace", "leading", "trailing") for f in ("zero", "sigma_min")]


@pytest.mark.parametrize("case", DPM_CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_dpm_solver_from_config_samples_as_diffusers(case):
    case = dict(case)
    steps = case.pop("steps")
    peer = DPMSolverMultistepScheduler(**case)
    solver = {2: "dpmpp_2m", 3: "dpmpp_3m"}[case["solver_order"]]
    ours = FastintDPMSolverScheduler.from_config(peer.config, solver=solver)
    assert ours.config.peer == "DPMSolverMultistepScheduler"
    got, want = both(peer, ours, str(case), num_inference_steps=steps)
    assert ours.timesteps.tolist() == peer.timesteps.tolist()
    assert rel(got, want) < RTOL
    # the solver order is read from the config when no solver is named
    assert FastintDPMSolverScheduler.from_config(peer.config).config.solver == solver


EULER_CASES = [dict(timestep_spacing=s, prediction_type=p, **({k: True} if k else {}), steps=n)
               for s, p, k, n in [("linspace", "epsilon", "", 5), ("leading", "v_prediction", "", 6),
                                  ("trailing", "epsilon", "", 4), ("linspace", "v_prediction", "use_karras_sigmas", 5),
                                  ("leading", "epsilon", "use_exponential_sigmas", 4),
                                  ("trailing", "v_prediction", "use_beta_sigmas", 5)]]
HEUN_CASES = (0, 3, 5)


@pytest.mark.parametrize("peer_class,fastint_class,solver,case",
                         [(EulerDiscreteScheduler, FastintScheduler, "euler", c) for c in EULER_CASES] +
                         [(HeunDiscreteScheduler, FastintHeunScheduler, None, EULER_CASES[i]) for i in HEUN_CASES],
                         ids=[f"euler-{i}" for i in range(len(EULER_CASES))] +
                             [f"heun-{i}" for i in HEUN_CASES])
def test_euler_and_heun_from_config_sample_as_diffusers(peer_class, fastint_class, solver, case):
    case = dict(case)
    steps = case.pop("steps")
    peer = peer_class(**case)
    ours = fastint_class.from_config(peer.config, **({"solver": solver} if solver else {}))
    got, want = both(peer, ours, str(case), num_inference_steps=steps)
    assert ours.timesteps.tolist() == peer.timesteps.tolist()
    assert rel(got, want) < RTOL


def test_grid_coordinates_and_attributes_are_the_peers():
    for peer in (EulerDiscreteScheduler(), HeunDiscreteScheduler(), DPMSolverMultistepScheduler()):
        ours = FastintScheduler.from_config(peer.config, solver="heun" if isinstance(peer, HeunDiscreteScheduler)
                                            else "euler" if isinstance(peer, EulerDiscreteScheduler) else None)
        # defaults the source left implicit: "linspace" spacing, Heun's own betas
        assert ours.config.timestep_spacing == "linspace"
        assert ours.config.beta_start == peer.config.beta_start
        assert ours.order == peer.order
        assert torch.equal(ours.betas, peer.betas) and torch.equal(ours.alphas_cumprod.float(), peer.alphas_cumprod)
        assert ours.timesteps.tolist() == peer.timesteps.tolist()       # filled at construction
        ours.set_timesteps(7)
        peer.set_timesteps(7)
        assert ours.timesteps.tolist() == peer.timesteps.tolist()
        assert float(ours.init_noise_sigma) == float(peer.init_noise_sigma)
        x = noise("scale" + type(peer).__name__)
        t = peer.timesteps[0]
        assert torch.equal(ours.scale_model_input(x, t), peer.scale_model_input(x, t))
    assert FastintHeunScheduler.from_config(HeunDiscreteScheduler().config).order == 2
    # a saved config (with its class name) that lacks entries: the source class's defaults, as diffusers reads it
    saved = {"_class_name": "EulerDiscreteScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "beta_end": 0.012, "num_train_timesteps": 1000}
    ours = FastintScheduler.from_config(saved, solver="euler")
    assert ours.config.peer == "EulerDiscreteScheduler" and ours.config.timestep_spacing == "linspace"
    peer = EulerDiscreteScheduler.from_config(saved)
    ours.set_timesteps(6)
    peer.set_timesteps(6)
    assert ours.timesteps.tolist() == peer.timesteps.tolist()
    # a fastint config with a peer survives save / load
    reloaded = FastintScheduler.from_config(dict(ours.config))
    reloaded.set_timesteps(6)
    assert reloaded.config.peer == "EulerDiscreteScheduler" and torch.equal(reloaded.sigmas, ours.sigmas)


def test_fastint_grid_and_coordinates_remain_available():
    peer = EulerDiscreteScheduler(timestep_spacing="trailing")
    own = FastintScheduler.from_config(peer.config, solver="euler", peer="fastint")
    own.set_timesteps(5)
    assert own.init_noise_sigma == 1.0
    assert torch.equal(own.sigmas, vp_discrete(own.alphas_cumprod, 5, spacing="trailing", convention="ddim").sigmas)
    x = noise("identity")
    assert own.scale_model_input(x, own.timesteps[0]) is x
    # Euler's grid in model coordinates: the same result from the model-coordinate form of Euler's initial state
    model_coords = FastintScheduler.from_config(peer.config, solver="euler", coordinates="model")
    assert model_coords.init_noise_sigma == 1.0
    model_coords.set_timesteps(5)
    peer.set_timesteps(5)
    sigma_0 = float(peer.sigmas[0])
    x_ve = noise("coords") * peer.init_noise_sigma
    got = sample_loop(model_coords, x_ve / math.sqrt(1 + sigma_0 ** 2), num_inference_steps=5)
    want = sample_loop(peer, x_ve / peer.init_noise_sigma, num_inference_steps=5)
    assert rel(got, want) < RTOL


# -- custom timesteps and sigmas --------------------------------------------------------------------------------------
CUSTOM_TIMESTEPS = [999, 850, 500, 200, 20]


@pytest.mark.parametrize("peer_class,fastint_class,solver,custom", [
    (EulerDiscreteScheduler, FastintScheduler, "euler", {"timesteps": CUSTOM_TIMESTEPS}),
    (EulerDiscreteScheduler, FastintScheduler, "euler", {"sigmas": [14.6, 6.0, 2.0, 0.5, 0.03]}),
    (DPMSolverMultistepScheduler, FastintDPMSolverScheduler, None, {"timesteps": CUSTOM_TIMESTEPS}),
    (HeunDiscreteScheduler, FastintHeunScheduler, None, {"timesteps": CUSTOM_TIMESTEPS})])
def test_custom_timesteps_and_sigmas_as_diffusers(peer_class, fastint_class, solver, custom):
    peer = peer_class()
    ours = fastint_class.from_config(peer.config, **({"solver": solver} if solver else {}))
    got, want = both(peer, ours, str(custom), **custom)
    assert ours.timesteps.tolist() == peer.timesteps.tolist()
    assert rel(got, want) < RTOL


def test_custom_timesteps_on_fastints_grid_and_bad_calls():
    own = FastintScheduler.from_config(DDPMScheduler(clip_sample=False).config, solver="euler")
    own.set_timesteps(timesteps=CUSTOM_TIMESTEPS)
    assert own.timesteps.tolist() == CUSTOM_TIMESTEPS
    ab = own.alphas_cumprod[CUSTOM_TIMESTEPS]
    assert torch.equal(own.sigmas[:-1], ((1 - ab) / ab).sqrt()) and own.sigmas[-1] == 0
    for scheduler in (own, FastintDPMSolverScheduler.from_config(DPMSolverMultistepScheduler().config)):
        with pytest.raises(ValueError, match="only one"):
            scheduler.set_timesteps(timesteps=CUSTOM_TIMESTEPS, sigmas=[3.0, 1.0])
        with pytest.raises(ValueError, match="only one"):
            scheduler.set_timesteps(5, timesteps=CUSTOM_TIMESTEPS)
        with pytest.raises(ValueError, match="exactly one"):
            scheduler.set_timesteps()
    with pytest.raises(ValueError, match="mu"):
        FastintScheduler.from_config(EulerDiscreteScheduler().config).set_timesteps(4, mu=1.0)
    with pytest.raises(ValueError, match="decreasing"):
        own.set_timesteps(timesteps=[10, 500])
    with pytest.raises(ValueError, match="karras"):     # diffusers' own refusal, passed on
        FastintScheduler.from_config(DPMSolverMultistepScheduler(use_karras_sigmas=True).config).set_timesteps(
            timesteps=CUSTOM_TIMESTEPS)


# -- every option: diffusers' numbers, or a clear refusal -------------------------------------------------------------
OPTION_CASES = [  # (diffusers scheduler, fastint scheduler, its config, the option under test, steps)
    (DPMSolverMultistepScheduler, FastintDPMSolverScheduler, dict(thresholding=True, sample_max_value=1.5),
     "thresholding", 6),
    (DPMSolverMultistepScheduler, FastintDPMSolverScheduler, dict(lower_order_final=False, solver_order=3),
     "lower_order_final", 8),
    (DPMSolverMultistepScheduler, FastintDPMSolverScheduler, dict(euler_at_final=True, final_sigmas_type="sigma_min"),
     "euler_at_final", 16),
    (DPMSolverMultistepScheduler, FastintDPMSolverScheduler, dict(solver_type="heun"), "solver_type", 6),
    (DPMSolverMultistepScheduler, FastintDPMSolverScheduler, dict(solver_type="heun", solver_order=3), "solver_type",
     6),
    (DPMSolverMultistepScheduler, FastintDPMSolverScheduler, dict(solver_order=1), "solver_order", 6),
    (DPMSolverMultistepScheduler, FastintDPMSolverScheduler, dict(final_sigmas_type="sigma_min"), "final_sigmas_type",
     6),
    (DPMSolverMultistepScheduler, FastintDPMSolverScheduler, dict(beta_schedule="squaredcos_cap_v2",
                                                                  lambda_min_clipped=-5.1), "lambda_min_clipped", 6),
    (DPMSolverMultistepScheduler, FastintDPMSolverScheduler, dict(rescale_betas_zero_snr=True,
                                                                  timestep_spacing="trailing",
                                                                  prediction_type="v_prediction"),
     "rescale_betas_zero_snr", 6),
    (EulerDiscreteScheduler, FastintScheduler, dict(rescale_betas_zero_snr=True, timestep_spacing="trailing",
                                                    prediction_type="v_prediction"), "rescale_betas_zero_snr", 6),
    (EulerDiscreteScheduler, FastintScheduler, dict(timestep_type="continuous", prediction_type="v_prediction"),
     "timestep_type", 6),
    (EulerDiscreteScheduler, FastintScheduler, dict(interpolation_type="log_linear"), "interpolation_type", 6),
    (EulerDiscreteScheduler, FastintScheduler, dict(final_sigmas_type="sigma_min"), "final_sigmas_type", 6),
    (EulerDiscreteScheduler, FastintScheduler, dict(sigma_min=0.1, sigma_max=20.0, use_karras_sigmas=True),
     "sigma_min", 6),
    (HeunDiscreteScheduler, FastintHeunScheduler, dict(clip_sample=True, clip_sample_range=0.8), "clip_sample", 4),
    (HeunDiscreteScheduler, FastintHeunScheduler, dict(beta_schedule="scaled_linear", steps_offset=1,
                                                       timestep_spacing="leading"), "steps_offset", 4),
]


@pytest.mark.parametrize("peer_class,fastint_class,options,option,steps", OPTION_CASES,
                         ids=[f"{c[0].__name__[:5]}-{c[3]}-{i}" for i, c in enumerate(OPTION_CASES)])
def test_option_samples_as_diffusers(peer_class, fastint_class, options, option, steps):
    solver = {"solver": "euler"} if peer_class is EulerDiscreteScheduler else {}
    peer = peer_class(**options)
    got, want = both(peer, fastint_class.from_config(peer.config, **solver), str(options),
                     num_inference_steps=steps)
    assert rel(got, want) < RTOL
    # the option matters in this case (the comparison could fail)
    without = peer_class(**{k: v for k, v in options.items() if k != option})
    assert rel(sample_loop(without, noise(str(options)), num_inference_steps=steps), want) > 1e-4


def test_sde_config_picks_the_sde_solver():
    config = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_type="heun").config
    scheduler = FastintDPMSolverScheduler.from_config(config)
    assert scheduler.config.solver == "dpmpp_2m_sde" and scheduler.config.solver_options == {"solver_type": "heun"}


def test_options_fastint_cannot_follow_are_refused_by_name():
    dpm = DPMSolverMultistepScheduler
    refusals = [
        (lambda: FastintDPMSolverScheduler.from_config(dpm(algorithm_type="dpmsolver",
                                                           final_sigmas_type="sigma_min").config), "algorithm_type"),
        (lambda: FastintScheduler.from_config(dpm(euler_at_final=True).config, solver="seeds_2"), "euler_at_final"),
        (lambda: FastintSEEDSScheduler.from_config(dpm(solver_order=3).config), "solver_order"),
        (lambda: FastintScheduler.from_config(dpm(use_lu_lambdas=True).config, peer="fastint"), "use_lu_lambdas"),
        (lambda: FastintScheduler.from_config(dpm(use_flow_sigmas=True, prediction_type="flow_prediction").config),
         "use_flow_sigmas"),
        (lambda: FastintScheduler.from_config(DDIMScheduler(set_alpha_to_one=False).config), "set_alpha_to_one"),
        (lambda: FastintScheduler.from_config(DDPMScheduler(rescale_betas_zero_snr=True).config),
         "rescale_betas_zero_snr"),
        (lambda: FastintHeunScheduler(peer="HeunDiscreteScheduler", use_lu_lambdas=True), "use_lu_lambdas"),
        (lambda: FastintScheduler.from_config(dpm().config, solver="dpmpp_3m",
                                              solver_options={"third_order": "exact"}), "solver_options"),
        (lambda: FastintScheduler(peer="LMSDiscreteScheduler"), "peer"),
        (lambda: FastintScheduler(coordinates="vp"), "coordinates"),
    ]
    for build, name in refusals:
        with pytest.raises(ValueError, match=name):
            build()
    # the same options at their defaults, or dropped with None, are accepted
    FastintScheduler.from_config(dpm(euler_at_final=True).config, solver="seeds_2", euler_at_final=None)
    FastintSEEDSScheduler.from_config(dpm().config)


# -- attributes and part-way starts on fastint's own grid -------------------------------------------------------------
def test_betas_round_trip_and_construction_attributes(tmp_path):
    betas = torch.linspace(1e-4, 0.03, 300, dtype=torch.float64).tolist()
    scheduler = FastintScheduler(trained_betas=betas, num_train_timesteps=300, solver="seeds_3")
    scheduler.save_config(tmp_path)
    loaded = FastintScheduler.from_pretrained(tmp_path)
    assert torch.equal(loaded.betas, torch.tensor(betas, dtype=torch.float32))
    assert torch.equal(loaded.alphas_cumprod, scheduler.alphas_cumprod)
    assert loaded.timesteps.tolist() == list(range(299, -1, -1)) and loaded.order == 3
    ddpm = DDPMScheduler()
    assert torch.equal(FastintScheduler.from_config(ddpm.config).betas, ddpm.betas)


def test_part_way_start_on_fastints_grid_equals_sampling_the_tail():
    """set_begin_index(t_start * order) + add_noise, as img2img does, equals fastint.sample from the same state on
    the grid's tail; a start inside a Heun step is refused."""
    import fastint
    from fastint.models import DiscreteVPDenoiser

    scheduler = FastintScheduler.from_config(DDPMScheduler(clip_sample=False).config, solver="heun")
    scheduler.set_timesteps(5)
    t_start = 2
    scheduler.set_begin_index(t_start * scheduler.order)
    timesteps = scheduler.timesteps[t_start * scheduler.order:]
    x0, z = noise("x0"), noise("z")
    x = scheduler.add_noise(x0, z, timesteps[:1])
    x_ve = x * math.sqrt(1 + float(scheduler.sigmas[t_start]) ** 2)
    for t in timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
    adapter = DiscreteVPDenoiser(model, scheduler.alphas_cumprod)
    want = fastint.sample(adapter, x_ve, scheduler.sigmas[t_start:], "heun")
    assert rel(x, want) < 1e-5
    assert rel(x_ve, x0 + float(scheduler.sigmas[t_start]) * z) < 1e-6   # add_noise at the start's noise level
    scheduler.set_timesteps(5)
    scheduler.set_begin_index(3)                                          # the second call of a Heun step
    with pytest.raises(ValueError, match="first model call"):
        scheduler.step(model(x, scheduler.timesteps[3]), scheduler.timesteps[3], x)


def test_any_solver_on_a_peers_grid_in_ve_coordinates_equals_fastint_sample():
    """SEEDS-2 (stochastic, stage calls between the grid's levels) on Euler's grid with Euler's coordinates is
    fastint.sample from the same VE state on the same sigmas with the same seed (the model ignores t here: the
    stage calls' timesteps are interpolated floats, the grid's are Euler's)."""
    import fastint
    from fastint.models import DiscreteVPDenoiser

    def plain(x, t):
        return torch.tanh(0.8 * x + 0.5 * x.roll(1, -1))

    scheduler = FastintScheduler.from_config(EulerDiscreteScheduler(timestep_spacing="trailing").config,
                                             solver="seeds_2")
    scheduler.set_timesteps(5, seed=21)
    x = x_ve = noise("seeds on euler") * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(plain(scheduler.scale_model_input(x, t), t), t, x).prev_sample
    want = fastint.sample(DiscreteVPDenoiser(plain, scheduler.alphas_cumprod), x_ve, scheduler.sigmas, "seeds_2",
                          seed=21)
    assert rel(x, want) < 1e-5
    assert rel(fastint.sample(DiscreteVPDenoiser(plain, scheduler.alphas_cumprod), x_ve, scheduler.sigmas, "seeds_2",
                              seed=22), want) > 1e-3


def test_dpm_step_orders_and_the_program_protocol():
    """diffusers' order rule (warm-up 1, 2; lower-order final steps below 15 steps; the last step to 0 first order),
    and a program that holds no tensor code (the fake executor of tests/test_solver_programs.py)."""
    from fastint.integrations.diffusers_dpm import DiffusersDPMSolverPP
    from test_solver_programs import FakeExecutor

    def orders(n, final_zero=True, **options):
        return list(DiffusersDPMSolverPP(**options)._orders(n, final_zero))

    assert orders(8, solver_order=3) == [1, 2, 3, 3, 3, 3, 2, 1]
    assert orders(16, solver_order=3) == [1, 2] + [3] * 13 + [1]
    assert orders(16, False, solver_order=3) == [1, 2] + [3] * 14
    assert orders(8, False, solver_order=3, lower_order_final=False) == [1, 2] + [3] * 6
    assert orders(8, False, solver_order=2, euler_at_final=True, lower_order_final=False) == [1] + [2] * 6 + [1]
    assert orders(4, False, solver_order=3, trailing_steps=1) == [1, 2, 3, 2]
    assert orders(3, solver_order=3, schedule_steps=20) == [1, 2, 1]
    sigmas = [14.6, 6.0, 2.5, 1.0, 0.4, 0.1, 0.0]
    for options in ({"solver_order": 1}, {"solver_order": 2}, {"solver_order": 3, "solver_type": "heun"}):
        fake = FakeExecutor()
        fake.run(DiffusersDPMSolverPP(**options), sigmas)
        assert sum(type(r).__name__ == "Denoise" for r in fake.requests) == len(sigmas) - 1
