"""The tiny stand-in, loaded through load_pipeline exactly as the real models are."""

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusion3InpaintPipeline, StableDiffusion3Pipeline

from helpers.loading import load_pipeline
from helpers.models import MODELS
from helpers.tiny import build_tiny_pipeline, tiny_pipeline_dir

TINY = MODELS["tiny"]


@pytest.fixture(scope="module")
def pipe():
    pipe = load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompt="a cat in a forest", seed=0, **overrides) -> np.ndarray:
    settings = {**TINY.recommended(), **overrides}
    image = pipe(prompt=prompt, generator=torch.Generator("cpu").manual_seed(seed), **settings).images[0]
    return np.asarray(image, dtype=np.int16)


def test_loads_through_from_pretrained_from_safetensors_only(pipe):
    folder = tiny_pipeline_dir()
    assert isinstance(pipe, StableDiffusion3Pipeline)
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusion3Pipeline"
    weights = {path.suffix for path in folder.rglob("*") if path.is_file() and path.suffix in {".bin", ".safetensors"}}
    assert weights == {".safetensors"}
    assert pipe.dtype == torch.float32 and pipe.device.type == "cpu"
    assert not pipe.transformer.training and not pipe.text_encoder_3.training


def test_stand_in_has_the_real_shape_rules(pipe):
    assert pipe.vae_scale_factor == 8
    assert pipe.transformer.config.in_channels == 16 == pipe.vae.config.latent_channels
    assert pipe.text_encoder_3.config.d_model == pipe.transformer.config.joint_attention_dim
    projections = pipe.text_encoder.config.projection_dim + pipe.text_encoder_2.config.projection_dim
    assert projections == pipe.transformer.config.pooled_projection_dim


@pytest.mark.parametrize(
    ("task", "pipeline_class"),
    [("image-to-image", StableDiffusion3Img2ImgPipeline), ("inpainting", StableDiffusion3InpaintPipeline)],
)
def test_other_tasks_reuse_the_loaded_components(pipe, task, pipeline_class):
    other = load_pipeline("tiny", task=task)
    assert isinstance(other, pipeline_class)
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        assert getattr(other, part) is getattr(pipe, part)


def test_same_task_again_returns_the_same_pipeline(pipe):
    assert load_pipeline("tiny") is pipe


def test_image_to_image_and_inpainting_run(pipe):
    source = generate(pipe).astype(np.uint8)
    from PIL import Image

    image = Image.fromarray(source)
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (32, 32, 96, 96))
    settings = TINY.recommended()
    generator = torch.Generator("cpu").manual_seed(0)
    edited = load_pipeline("tiny", task="image-to-image")(
        prompt="a dragon", image=image, strength=0.6, generator=generator, **settings
    ).images[0]
    painted = load_pipeline("tiny", task="inpainting")(
        prompt="a dragon", image=image, mask_image=mask, generator=generator, **settings
    ).images[0]
    assert edited.size == painted.size == image.size


def test_same_seed_same_image(pipe):
    assert np.array_equal(generate(pipe, seed=3), generate(pipe, seed=3))


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1},
        {"prompt": "a dragon over the sea"},
        {"negative_prompt": "green grass"},
        {"guidance_scale": 7.0},
        {"num_inference_steps": 2},
    ],
)
def test_each_input_changes_the_image(pipe, change):
    changed = generate(pipe, **change)
    assert np.abs(changed - generate(pipe)).mean() > 1.0


def test_negative_prompt_has_no_effect_without_guidance(pipe):
    # Turbo's setting: guidance <= 1 turns classifier-free guidance off, and with it the negative prompt.
    plain = generate(pipe, guidance_scale=1.0)
    assert np.array_equal(plain, generate(pipe, guidance_scale=1.0, negative_prompt="green grass"))


@pytest.mark.parametrize("size", [64, 128, 256])
def test_sizes_from_64_to_256(pipe, size):
    assert generate(pipe, height=size, width=size, num_inference_steps=2).shape == (size, size, 3)


def test_every_prompt_gets_its_own_tokens(pipe):
    prompts = ["a cat", "a dog", "xylophone quartet", "Xylophone quartet!", "zebra"]
    for tokenizer in (pipe.tokenizer, pipe.tokenizer_3):
        ids = [tuple(tokenizer(p).input_ids) for p in prompts]
        assert len(set(ids)) == len(prompts), type(tokenizer).__name__
    assert len(pipe.tokenizer("a cat").input_ids) == 4  # <start> a cat <end>: known words are single tokens
    assert pipe.tokenizer.model_max_length == 77


def test_build_is_deterministic():
    first, second = build_tiny_pipeline(), build_tiny_pipeline()
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        a, b = getattr(first, part).state_dict(), getattr(second, part).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[name], b[name]) for name in a), part


def test_saved_folder_is_reused():
    folder = tiny_pipeline_dir()
    stamp = (folder / "model_index.json").stat().st_mtime_ns
    assert tiny_pipeline_dir() == folder
    assert (folder / "model_index.json").stat().st_mtime_ns == stamp
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".building-")]


def test_switching_task_keeps_the_loaded_dtype():
    # diffusers' from_pipe casts to float32 unless told the dtype; on a GPU that would double a bf16 model's memory.
    bf16 = load_pipeline("tiny", dtype=torch.bfloat16)
    inpainting = load_pipeline("tiny", task="inpainting", dtype=torch.bfloat16)
    assert inpainting.transformer is bf16.transformer
    assert bf16.transformer.dtype == bf16.text_encoder_3.dtype == bf16.vae.dtype == torch.bfloat16
