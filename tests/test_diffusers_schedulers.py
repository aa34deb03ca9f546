"""fastint's diffusers schedulers in real diffusers pipelines, against ``fastint.sample`` on the same model and noise.

The pipeline is diffusers' own ``DDPMPipeline`` with a small ``UNet2DModel`` built from a config with seeded random
weights (no downloads): once with a DDPM (epsilon / v-prediction) scheduler config, once with a flow-matching
(``FlowMatchEulerDiscreteScheduler``) config, the UNet then being read as a velocity model. The pipeline draws its
initial noise ``x_T`` from the generator; fastint samples from ``x~_0 = x_T / alpha_0`` (the same state in VE
coordinates) with the adapter of the prediction type and the same per-sample seeds. The scheduler's final
``prev_sample`` is recorded by wrapping ``step`` (the pipeline clamps its image to [0, 1]) and must equal fastint's
result to 1e-5 relative (they run the same solver code; the difference is the rounding of x_T / alpha_0 * alpha_0).
"""

import copy
import gc
import math

import pytest
import torch

import fastint
from fastint.models import DiscreteVPDenoiser, FlowDenoiser
from fastint.schedules import flow

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMPipeline, DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel  # noqa: E402

from fastint.integrations.diffusers import (FastintDPMSolverScheduler, FastintHeunScheduler,  # noqa: E402
                                            FastintRestartScheduler, FastintScheduler, FastintSEEDSScheduler)
from one_thread import one_torch_thread  # noqa: E402,F401 - autouse: one torch thread in this module
from seeding import stable_seed  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
RTOL = 1e-5
SHAPE = (2, 3, 8, 8)
STEPS = 5


def _unet(seed: int) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval()


def _rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _run_pipeline(unet, scheduler, gen_seed: int, steps: int = STEPS):
    """Run DDPMPipeline; return (clamped images, the scheduler's final prev_sample, number of step calls)."""
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    outputs = []
    original = scheduler.step

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        outputs.append(out.prev_sample)
        return out

    scheduler.step = spy
    try:
        images = pipe(batch_size=SHAPE[0], generator=torch.Generator().manual_seed(gen_seed),
                      num_inference_steps=steps, output_type="pt").images
    finally:
        del scheduler.step
    return images, outputs[-1], len(outputs)


def _initial_noise(gen_seed: int) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(gen_seed))


VP_SOLVERS = ["euler", "heun", "ddim", "euler_ancestral", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "seeds_1",
              "seeds_2", "seeds_3", "restart"]


@pytest.mark.parametrize("solver", VP_SOLVERS)
def test_ddpm_pipeline_equals_fastint_sample(solver):
    seed = stable_seed("ddpm pipeline", solver)
    gen_seed = seed + 1
    unet = _unet(seed)
    scheduler = FastintScheduler.from_config(DDPMScheduler(clip_sample=False).config, solver=solver)
    scheduler.set_seed(seed)
    images, final, calls = _run_pipeline(unet, scheduler, gen_seed)
    assert calls == len(scheduler.timesteps)
    sigma0 = scheduler.sigmas[0].item()
    x0 = _initial_noise(gen_seed) * math.sqrt(1 + sigma0 ** 2)
    with torch.no_grad():
        ref = fastint.sample(DiscreteVPDenoiser(unet, scheduler.alphas_cumprod), x0, scheduler.sigmas, solver,
                             seed=seed)
    assert _rel(final, ref) < RTOL
    assert torch.allclose(images, (ref / 2 + 0.5).clamp(0, 1), atol=1e-5)
    # a different seed or solver is far from it (the comparison can fail)
    with torch.no_grad():
        other = fastint.sample(DiscreteVPDenoiser(unet, scheduler.alphas_cumprod), x0, scheduler.sigmas,
                               "dpmpp_2m" if solver != "dpmpp_2m" else "euler", seed=seed + 7)
    assert _rel(other, ref) > 1e-3


def test_multistage_timesteps_one_per_model_call():
    scheduler = FastintScheduler.from_config(DDPMScheduler(clip_sample=False).config, solver="seeds_3")
    scheduler.set_timesteps(4)
    # SEEDS-3: 3 calls per step, 1 on the last step to sigma = 0; stage timesteps lie between the step's
    assert len(scheduler.timesteps) == 3 * 3 + 1
    t = scheduler.timesteps.tolist()
    assert t == sorted(t, reverse=True)
    heun = FastintHeunScheduler.from_config(DDPMScheduler(clip_sample=False).config)
    heun.set_timesteps(4)
    assert len(heun.timesteps) == 2 * 3 + 1


def test_v_prediction_and_named_subclasses():
    seed = stable_seed("v prediction")
    unet = _unet(seed)
    config = DDPMScheduler(clip_sample=False, prediction_type="v_prediction", beta_schedule="scaled_linear",
                           beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing").config
    for cls, solver in ((FastintSEEDSScheduler, "seeds_2"), (FastintDPMSolverScheduler, "dpmpp_2m")):
        scheduler = cls.from_config(config)
        assert scheduler.config.solver == solver and scheduler.config.prediction_type == "v_prediction"
        scheduler.set_seed(seed)
        _, final, _ = _run_pipeline(unet, scheduler, seed)
        x0 = _initial_noise(seed) * math.sqrt(1 + scheduler.sigmas[0].item() ** 2)
        with torch.no_grad():
            ref = fastint.sample(DiscreteVPDenoiser(unet, scheduler.alphas_cumprod, "v_prediction"), x0,
                                 scheduler.sigmas, solver, seed=seed)
        assert _rel(final, ref) < RTOL


def test_restart_scheduler_named():
    assert FastintRestartScheduler.from_config(DDPMScheduler(clip_sample=False).config).config.solver == "restart"


@pytest.mark.parametrize("solver", ["euler", "heun", "seeds_2", "dpmpp_2m_sde"])
def test_flow_matching_pipeline_equals_fastint_sample(solver):
    seed = stable_seed("flow matching pipeline", solver)
    unet = _unet(seed)
    scheduler = FastintScheduler.from_config(FlowMatchEulerDiscreteScheduler(shift=3.0).config, solver=solver)
    assert scheduler.config.prediction_type == "flow"
    scheduler.set_seed(seed)
    _, final, calls = _run_pipeline(unet, scheduler, seed)
    assert calls == len(scheduler.timesteps)
    sigmas = flow(STEPS, 3.0)
    assert torch.equal(scheduler.sigmas, sigmas)
    x0 = _initial_noise(seed) * (1 + torch.tensor(sigmas[0].item(), dtype=torch.float32))
    with torch.no_grad():
        ref = fastint.sample(FlowDenoiser(unet), x0, sigmas, solver, seed=seed)
    assert _rel(final, ref) < RTOL


def test_stable_diffusion_style_loop():
    """A loop as Stable Diffusion's: latents * init_noise_sigma, scale_model_input, step(..., return_dict=False)."""
    seed = stable_seed("stable diffusion loop")
    unet = _unet(seed)
    scheduler = FastintScheduler.from_config(DDPMScheduler(clip_sample=False,
                                                           beta_schedule="squaredcos_cap_v2").config,
                                             solver="dpmpp_2m_sde", solver_options={"eta": 0.5})
    scheduler.set_timesteps(6, device="cpu", seed=[seed, seed + 100])
    latents = _initial_noise(seed) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(scheduler.scale_model_input(latents, t), t).sample
            latents = scheduler.step(out, t, latents, return_dict=False)[0]
        x0 = _initial_noise(seed) * math.sqrt(1 + scheduler.sigmas[0].item() ** 2)
        ref = fastint.sample(DiscreteVPDenoiser(unet, scheduler.alphas_cumprod), x0, scheduler.sigmas,
                             "dpmpp_2m_sde", seed=[seed, seed + 100], eta=0.5)
    assert _rel(latents, ref) < RTOL


def test_generator_seeding_is_reproducible():
    seed = stable_seed("generator seeding")
    unet = _unet(seed)
    config = DDPMScheduler(clip_sample=False).config
    _, a, _ = _run_pipeline(unet, FastintScheduler.from_config(config, solver="seeds_1"), seed)
    _, b, _ = _run_pipeline(unet, FastintScheduler.from_config(config, solver="seeds_1"), seed)
    _, c, _ = _run_pipeline(unet, FastintScheduler.from_config(config, solver="seeds_1"), seed + 1)
    assert torch.equal(a, b)
    assert _rel(a, c) > 1e-3


def test_edited_sample_is_used():
    """A pipeline that changes the sample between steps (inpainting) continues from the changed sample."""
    seed = torch.randint(0, 2 ** 31, (1,)).item()
    unet = _unet(seed)

    def run(edit):
        scheduler = FastintScheduler.from_config(DDPMScheduler(clip_sample=False).config, solver="euler")
        scheduler.set_timesteps(4)
        latents = _initial_noise(seed)
        with torch.no_grad():
            for i, t in enumerate(scheduler.timesteps):
                latents = scheduler.step(unet(latents, t).sample, t, latents).prev_sample
                if i == 1:
                    latents = edit(latents)
        return latents

    same = run(lambda x: x.clone())      # a new tensor with the same values
    plain = run(lambda x: x)
    edited = run(lambda x: x * 0.5)
    assert _rel(same, plain) < 1e-6
    assert _rel(edited, plain) > 1e-2


def test_config_round_trip(tmp_path):
    scheduler = FastintScheduler(solver="seeds_3", solver_options={"eta": 0.3}, beta_schedule="scaled_linear",
                                 beta_start=0.00085, beta_end=0.012)
    scheduler.save_config(tmp_path)
    loaded = FastintScheduler.from_pretrained(tmp_path)
    assert loaded.config.solver == "seeds_3" and loaded.config.solver_options == {"eta": 0.3}
    assert torch.equal(loaded.alphas_cumprod, scheduler.alphas_cumprod)


# -- bad input --------------------------------------------------------------------------------------------------------
def test_unknown_prediction_type_solver_and_option():
    with pytest.raises(ValueError, match="prediction_type"):
        FastintScheduler.from_config(DDPMScheduler(clip_sample=False).config, prediction_type="score")
    with pytest.raises(ValueError, match="unknown solver"):
        FastintScheduler(solver="nope")
    with pytest.raises(TypeError, match="unknown option"):
        FastintScheduler(solver="euler", solver_options={"eta": 1.0})


def test_config_lacking_what_is_needed():
    with pytest.raises(ValueError, match="beta_schedule"):
        FastintScheduler(beta_schedule="sigmoid")
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        FastintScheduler.from_config(DDPMScheduler(rescale_betas_zero_snr=True).config)
    dynamic = FastintScheduler.from_config(FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config)
    with pytest.raises(ValueError, match="mu"):
        dynamic.set_timesteps(4)
    dynamic.set_timesteps(4, mu=math.log(3.0))
    assert torch.allclose(dynamic.sigmas, flow(4, 3.0, dynamic_shifting=True))
    with pytest.raises(RuntimeError, match="set_timesteps"):
        FastintScheduler().step(torch.zeros(1, 2), 0, torch.zeros(1, 2))


def test_model_error_and_abandoned_runs():
    scheduler = FastintScheduler.from_config(DDPMScheduler(clip_sample=False).config, solver="heun")
    scheduler.set_timesteps(3)
    x = torch.randn(2, 4)
    out = scheduler.step(torch.randn(2, 4), scheduler.timesteps[0], x).prev_sample
    with pytest.raises(ValueError, match="shape"):  # a wrong-shaped model output: clear error, run cancelled
        scheduler.step(torch.randn(2, 5), scheduler.timesteps[1], out)
    with pytest.raises(FloatingPointError):  # a NaN output is reported at the end of the run
        scheduler.set_timesteps(2)
        s = x
        for t in scheduler.timesteps:
            s = scheduler.step(torch.full_like(x, float("nan")), t, s).prev_sample
    # abandoned mid-run; a copy made mid-run carries no run
    scheduler.set_timesteps(3)
    scheduler.step(torch.randn(2, 4), scheduler.timesteps[0], x)
    clone = copy.deepcopy(scheduler)
    assert clone.step_index is None and torch.equal(clone.timesteps, scheduler.timesteps)
    del clone
    del scheduler
    gc.collect()
    # too many step calls
    scheduler = FastintScheduler.from_config(DDPMScheduler(clip_sample=False).config, solver="euler")
    scheduler.set_timesteps(1)
    s = scheduler.step(torch.randn(2, 4), scheduler.timesteps[0], x).prev_sample
    with pytest.raises(RuntimeError, match="set_timesteps"):
        scheduler.step(torch.randn(2, 4), scheduler.timesteps[0], s)
