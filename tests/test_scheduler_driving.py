"""``FastintScheduler`` drives the solver's program from the pipeline's own thread: no thread of its own, the
caller's ``use_backend`` / autocast / grad mode apply, a network output the pipeline reuses is safe, an interrupted
run leaves nothing behind, a scheduler driven by two pipelines at once says so, and gradients flow."""

import threading
import zlib

import pytest
import torch

import fastint
from fastint import executor, k_diffusion
from fastint.ops import registry

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402

from fastint.integrations.diffusers import FastintScheduler  # noqa: E402
from one_thread import one_torch_thread  # noqa: E402,F401 - autouse: one torch thread in this module

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
VP_SOLVERS = ["euler", "heun", "ddim", "euler_ancestral", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "dpmpp_3m_sde",
              "seeds_1", "seeds_2", "seeds_3", "restart"]
BATCH = 2


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


def _unet(seed: int) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval()


def _reusing(unet: UNet2DModel) -> UNet2DModel:
    """The UNet with its output copied into one buffer returned on every call (as a CUDA-graph-captured UNet)."""
    forward, buffers = unet.forward, {}

    def same_buffer(*args, **kwargs):
        out = forward(*args, **kwargs).sample
        buffer = buffers.setdefault("out", torch.empty_like(out))
        buffer.copy_(out)
        return diffusers.models.unets.unet_2d.UNet2DOutput(sample=buffer)

    unet.forward = same_buffer
    return unet


def _pipeline(unet, solver: str, seed: int, steps: int = 4, **config):
    scheduler = FastintScheduler.from_config(DDPMScheduler(clip_sample=False).config, solver=solver, **config)
    scheduler.set_seed(seed)
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(pipe, seed: int, steps: int = 4):
    return pipe(batch_size=BATCH, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                output_type="np").images


@pytest.mark.parametrize("solver", VP_SOLVERS)
def test_pipeline_with_a_unet_reusing_its_output(solver):
    seed = _seed(solver)
    fresh = _images(_pipeline(_unet(seed), solver, seed), seed)
    reused = _images(_pipeline(_reusing(_unet(seed)), solver, seed), seed)
    assert (fresh == reused).all()


def test_no_thread_is_started(monkeypatch):
    def refuse(self):
        raise AssertionError(f"fastint started a thread: {self.name}")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    seed = _seed("threads")
    _images(_pipeline(_unet(seed), "seeds_2", seed), seed)
    gm = fastint.models.default_mixture()
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(seed)) * 10
    for solver in ("dpmpp_2m_sde", "heun", "restart"):
        fastint.sample(gm, x, fastint.schedules.karras(4, 0.05, 10.0), solver, seed=1)
        k_diffusion.samplers()[solver](gm, x, fastint.schedules.karras(4, 0.05, 10.0), disable=True)


def test_use_backend_autocast_and_grad_mode_of_the_caller_apply(monkeypatch):
    """Every fused-op call of the scheduler's run sees the caller's backend, autocast and grad mode (it runs in the
    caller's thread), and the result is the one that backend gives."""
    seen = []
    original = executor.Run.op

    def spy(self, *args):
        seen.append((registry.current_backend(), torch.is_autocast_enabled("cpu"), torch.is_grad_enabled()))
        return original(self, *args)

    monkeypatch.setattr(executor.Run, "op", spy)
    seed = _seed("backend")
    unet = _unet(seed)
    with fastint.use_backend("eager"):
        eager = _images(_pipeline(unet, "dpmpp_2m", seed), seed)
    assert seen and set(seen) == {("eager", False, False)}
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _images(_pipeline(unet, "dpmpp_2m", seed), seed)
    assert seen and all(autocast for _, autocast, _ in seen)
    seen.clear()
    with fastint.use_backend("eager"):
        again = _images(_pipeline(unet, "dpmpp_2m", seed), seed)
    assert (eager == again).all()


def _first_step(model_output, sample, solver="euler"):
    scheduler = FastintScheduler.from_config(DDPMScheduler(clip_sample=False).config, solver=solver)
    scheduler.set_seed(7)                      # the same noise in every run
    scheduler.set_timesteps(3)
    return scheduler.step(model_output, scheduler.timesteps[0], sample).prev_sample


@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m_sde"])
def test_prev_sample_carries_gradients(solver):
    """With grad enabled, ``prev_sample`` is differentiable as diffusers' own schedulers' is: a step is affine in the
    model output and the sample, so the autograd gradient must equal the exact difference quotient."""
    gen = torch.Generator().manual_seed(_seed("grad" + solver))
    sample, model_output, direction, weight = (torch.randn(BATCH, 3, 8, 8, generator=gen) for _ in range(4))
    model_output.requires_grad_(True)
    with torch.enable_grad():
        prev = _first_step(model_output, sample, solver)
        assert prev.requires_grad and prev.grad_fn is not None
        (grad,) = torch.autograd.grad((prev * weight).sum(), model_output)
    with torch.no_grad():
        moved = _first_step(model_output.detach() + direction, sample, solver)
        base = _first_step(model_output.detach(), sample, solver)
    want = ((moved - base) * weight).sum().item()
    got = (grad * direction).sum().item()
    assert abs(got - want) <= 1e-4 * (1 + abs(want)), (got, want)
    assert grad.abs().sum().item() > 0


class Interrupt(Exception):
    pass


def test_interrupted_pipeline_then_reused_gives_a_fresh_run():
    seed = _seed("interrupt")
    for solver in ("dpmpp_2m_sde", "seeds_2"):
        unet = _unet(seed)
        want = _images(_pipeline(unet, solver, seed), seed)
        pipe = _pipeline(unet, solver, seed)
        forward, calls = unet.forward, []

        def interrupting(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise Interrupt()
            return forward(*args, **kwargs)

        unet.forward = interrupting
        with pytest.raises(Interrupt):
            _images(pipe, seed)
        del unet.forward
        assert (_images(pipe, seed) == want).all()


def _manual_steps(scheduler, unet, latents, count):
    for t in scheduler.timesteps[:count]:
        latents = scheduler.step(unet(latents, t).sample, t, latents).prev_sample
    return latents


def test_two_pipelines_driving_one_scheduler_raise():
    seed = _seed("concurrent")
    unet = _unet(seed)
    scheduler = FastintScheduler.from_config(DDPMScheduler(clip_sample=False).config, solver="dpmpp_2m")
    scheduler.set_timesteps(4)
    a = torch.randn(BATCH, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    b = torch.randn(BATCH, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        t0 = scheduler.timesteps[0]
        a = scheduler.step(unet(a, t0).sample, t0, a).prev_sample
        with pytest.raises(RuntimeError, match="two pipelines"):   # b's first step arrives in a's second
            scheduler.step(unet(b, t0).sample, t0, b)
        # from another thread, during a run
        scheduler.set_timesteps(4)
        a = scheduler.step(unet(a, t0).sample, t0, a).prev_sample
        errors = []

        def other_pipeline():
            try:
                t1 = scheduler.timesteps[1]
                scheduler.step(unet(a, t1).sample, t1, a)
            except RuntimeError as exc:
                errors.append(str(exc))

        thread = threading.Thread(target=other_pipeline)
        thread.start()
        thread.join()
        assert errors and "two pipelines" in errors[0]


def _paused_at_call(unet: UNet2DModel, call: int, arrived: threading.Event, resume: threading.Event) -> UNet2DModel:
    """The UNet, which on its ``call``-th call signals ``arrived`` and waits for ``resume`` before computing."""
    forward, calls = unet.forward, []

    def pausing(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            arrived.set()
            assert resume.wait(120), "the other pipeline never let this one go on"
        return forward(*args, **kwargs)

    unet.forward = pausing
    return unet


def _in_thread(fn, results: dict, name: str, done: threading.Event) -> threading.Thread:
    def body():
        try:
            results[name] = fn()
        except BaseException as exc:   # noqa: BLE001 - the test inspects what each pipeline met
            results[name] = exc
        finally:
            done.set()
    thread = threading.Thread(target=body)
    thread.start()
    return thread


# B's UNet call at which B waits for A to go on (None: B runs whole while A waits)
INTERLEAVINGS = {"b_runs_whole_between_two_steps_of_a": None, "a_steps_between_b_start_and_first_step": 1,
                 "a_steps_in_the_middle_of_b": 2}


@pytest.mark.parametrize("interleaving", list(INTERLEAVINGS))
def test_two_real_pipelines_sharing_one_scheduler(interleaving):
    """Two DDPMPipelines, one FastintScheduler, two threads, a fixed interleaving (A pauses at its second UNet call
    while B starts): the pipeline whose run the other ended raises a clear error; the other one's images equal a
    run alone (nothing silently wrong)."""
    seed = _seed("two pipelines " + interleaving)
    solver = "dpmpp_2m_sde"
    alone = _images(_pipeline(_unet(seed), solver, seed), seed)
    shared = _pipeline(_unet(seed), solver, seed).scheduler
    a_paused, b_paused, a_done, b_done = (threading.Event() for _ in range(4))
    b_pause = INTERLEAVINGS[interleaving]
    unet_a = _paused_at_call(_unet(seed), 2, a_paused, b_done if b_pause is None else b_paused)
    unet_b = _unet(seed) if b_pause is None else _paused_at_call(_unet(seed), b_pause, b_paused, a_done)
    pipe_a, pipe_b = (DDPMPipeline(unet=u, scheduler=shared) for u in (unet_a, unet_b))
    for pipe in (pipe_a, pipe_b):
        pipe.set_progress_bar_config(disable=True)
    results = {}
    thread_a = _in_thread(lambda: _images(pipe_a, seed), results, "a", a_done)
    assert a_paused.wait(120)
    thread_b = _in_thread(lambda: _images(pipe_b, seed), results, "b", b_done)
    thread_a.join(240)
    thread_b.join(240)
    assert isinstance(results["a"], RuntimeError) and "two pipelines" in str(results["a"]), results["a"]
    assert not isinstance(results["b"], BaseException), results["b"]
    assert (results["b"] == alone).all()
    # the scheduler is not broken: the pipeline that failed runs alone afterwards, as a fresh run
    del unet_a.forward
    assert (_images(pipe_a, seed) == alone).all()


def test_batch_size_change_between_steps_is_named():
    seed = _seed("batch")
    unet = _unet(seed)
    scheduler = FastintScheduler.from_config(DDPMScheduler(clip_sample=False).config, solver="heun")
    scheduler.set_timesteps(3)
    x = torch.randn(BATCH, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        x = _manual_steps(scheduler, unet, x, 1)
        t = scheduler.timesteps[1]
        with pytest.raises(ValueError, match="batch size 2 -> 3"):
            scheduler.step(unet(x[:1].repeat(3, 1, 1, 1), t).sample, t, x[:1].repeat(3, 1, 1, 1))
        scheduler.set_timesteps(3)
        out = _manual_steps(scheduler, unet, x[:1].repeat(3, 1, 1, 1), len(scheduler.timesteps))
    assert out.shape[0] == 3
