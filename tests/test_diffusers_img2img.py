"""Part-way starts in diffusers' own pipelines: ``StableDiffusionImg2ImgPipeline`` and
``StableDiffusionInpaintPipeline`` (4-channel UNet: the pipeline re-noises the known region with ``add_noise``
after every step) run unchanged with fastint's schedulers at strengths 0.3, 0.6 and 1.0.

The components are tiny and randomly initialised from seeds, as diffusers' own pipeline tests build them (no
download): a ``UNet2DConditionModel``, an ``AutoencoderKL``, a ``CLIPTextModel`` from a ``CLIPTextConfig`` and a
``CLIPTokenizer`` over a vocabulary of a few words written here. Each pipeline runs twice with the same generator
seed: with the diffusers scheduler (DPMSolverMultistep, Euler, Heun) and with the fastint scheduler built from its
config running the deterministic solver that scheduler is (dpmpp_2m, euler, heun). The number of UNet calls must be
``order * steps_run - (order - 1)`` with ``steps_run = int(steps * strength)`` (diffusers' ``get_timesteps``) and
equal the diffusers scheduler's; the images must agree to 1e-5 (the decoded images of the same latents up to the
float32 rounding of the two schedulers' updates; a strength of 0.3 vs 0.6 changes them by far more).
"""

import json
import zlib

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from diffusers import (AutoencoderKL, DPMSolverMultistepScheduler, EulerDiscreteScheduler,  # noqa: E402
                       HeunDiscreteScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from fastint.integrations.diffusers import FastintScheduler  # noqa: E402
from one_thread import one_torch_thread  # noqa: E402,F401 - autouse: one torch thread in this module

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning")
STEPS = 4
SIZE = 16
ATOL = 1e-5
SCHEDULERS = [(DPMSolverMultistepScheduler, "dpmpp_2m"), (EulerDiscreteScheduler, "euler"),
              (HeunDiscreteScheduler, "heun")]


def _tokenizer(folder) -> CLIPTokenizer:
    words = ["a</w>", "cat</w>", "dog</w>", "c", "a", "t", "d", "o", "g", "t</w>", "g</w>", "ca", "do"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    vocab.update({w: 3 + i for i, w in enumerate(words)})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\nd o\ndo g</w>\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    torch.manual_seed(zlib.crc32(b"tiny stable diffusion"))
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=SIZE // 2, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                norm_num_groups=4, attention_head_dim=4).eval()
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, sample_size=SIZE).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16,
                                                intermediate_size=24, num_attention_heads=2, num_hidden_layers=2,
                                                vocab_size=16, layer_norm_eps=1e-5)).eval()
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=_tokenizer(tmp_path_factory.mktemp("tok")),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _image(name: str, channels: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return torch.rand(1, channels, SIZE, SIZE, generator=gen)


def _run(pipeline_class, components, scheduler, strength: float, **inputs):
    """The pipeline's images and the number of UNet calls."""
    pipe = pipeline_class(**components, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    unet, calls = pipe.unet, []
    forward = unet.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    unet.forward = counting
    try:
        with torch.no_grad():
            images = pipe(prompt="a cat", strength=strength, num_inference_steps=STEPS, guidance_scale=2.0,
                          generator=torch.Generator().manual_seed(zlib.crc32(b"pipeline")), output_type="np",
                          **inputs).images
    finally:
        del unet.forward
    return images, len(calls)


PIPELINES = {"img2img": (StableDiffusionImg2ImgPipeline, lambda: dict(image=_image("image"))),
             "inpaint": (StableDiffusionInpaintPipeline,
                         lambda: dict(image=_image("image"), mask_image=(_image("mask", 1) > 0.5).float(),
                                      height=SIZE, width=SIZE))}


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
@pytest.mark.parametrize("peer_class,solver", SCHEDULERS, ids=[s for _, s in SCHEDULERS])
def test_part_way_pipelines_equal_the_replaced_scheduler(components, pipeline, peer_class, solver):
    pipeline_class, inputs = PIPELINES[pipeline]
    peer = peer_class()
    results = {}
    for strength in (0.3, 0.6, 1.0):
        want, want_calls = _run(pipeline_class, components, peer_class.from_config(peer.config), strength, **inputs())
        ours = FastintScheduler.from_config(peer.config, solver=solver)
        got, calls = _run(pipeline_class, components, ours, strength, **inputs())
        steps_run = int(STEPS * strength)
        assert calls == want_calls == ours.order * steps_run - (ours.order - 1)   # guidance: one batch of 2
        assert np.abs(got - want).max() < ATOL, (strength, np.abs(got - want).max())
        results[strength] = got
    # the strengths matter: the images differ by far more than the tolerance
    assert np.abs(results[0.3] - results[0.6]).max() > 1e-3 and np.abs(results[0.6] - results[1.0]).max() > 1e-3


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_part_way_pipelines_with_a_multistage_solver(components, pipeline):
    """SEEDS-3 (3 model calls per step, 1 on the last) on Euler's grid in Euler's coordinates: the expected number of
    calls at every strength, finite images, different ones for another seed."""
    pipeline_class, inputs = PIPELINES[pipeline]
    config = EulerDiscreteScheduler().config
    for strength in (0.3, 0.6, 1.0):
        scheduler = FastintScheduler.from_config(config, solver="seeds_3")
        assert scheduler.order == 3
        scheduler.set_seed(11)
        first, calls = _run(pipeline_class, components, scheduler, strength, **inputs())
        assert calls == 3 * int(STEPS * strength) - 2 and np.isfinite(first).all()
    scheduler.set_seed(12)
    other, _ = _run(pipeline_class, components, scheduler, 1.0, **inputs())
    assert np.abs(other - first).max() > 1e-4
