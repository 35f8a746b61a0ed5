"""The shipped toy model: loaded like any model, and every lesson's effect measured by the judge.

Each test asserts a target of the evaluation (`python -m helpers.evaluation`, results in benchmarks/RESULTS.md) on
a batched subset. Thresholds sit below the full evaluation's figures by a margin that makes a chance failure
unlikely, and far above what a model that ignored its prompts would score (a colour by chance: 1 in 6).
"""

import json

import pytest
import torch

from helpers.evaluation import (
    adherence,
    evaluation_scenes,
    image_to_image_curve,
    inpainting_check,
    negative_colour_effect,
)
from helpers.loading import load_pipeline, toy_model_dir
from helpers.models import MODELS

TOY = MODELS["toy"]
SETTINGS = {k: v for k, v in TOY.recommended().items() if k != "guidance_scale"}
COUNT = 48


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(TOY)


def test_the_toy_model_ships_in_the_package_as_fp16_safetensors_with_its_record():
    folder = toy_model_dir()
    weights = [path for path in folder.rglob("*") if path.suffix in {".safetensors", ".bin", ".pt"}]
    assert weights and all(path.suffix == ".safetensors" for path in weights)
    assert sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) <= 15 * 2**20
    record = json.loads((folder / "training.json").read_text())
    assert record["saved_dtype"] == "float16" and record["steps"] == record["recipe"]["steps"]
    assert record["t5_max_length"] == TOY.max_sequence_length


def test_it_loads_through_from_pretrained_like_any_model(pipe):
    assert type(pipe).__name__ == "StableDiffusion3Pipeline"
    assert pipe.dtype == torch.float32 and pipe.vae_scale_factor == 8
    assert pipe.vae.config.latent_channels == 16 and pipe.scheduler.config.shift == 3.0


@pytest.fixture(scope="module")
def guided(pipe):
    return adherence(pipe, evaluation_scenes(COUNT), guidance_scale=TOY.guidance_scale, **SETTINGS)


def test_prompts_are_followed_at_the_recommended_settings(guided):
    assert guided.colour >= 0.90, guided
    assert guided.shape >= 0.80, guided
    assert guided.background >= 0.80, guided


def test_adherence_rises_with_guidance_to_the_recommended_value_and_falls_beyond(pipe, guided):
    unguided = adherence(pipe, evaluation_scenes(COUNT), guidance_scale=1.0, **SETTINGS)
    overdone = adherence(pipe, evaluation_scenes(COUNT), guidance_scale=10.0, **SETTINGS)
    assert unguided.everything < guided.everything > overdone.everything, (unguided, guided, overdone)


def test_a_negative_prompt_naming_a_colour_at_least_halves_it(pipe):
    effect = negative_colour_effect(pipe, 60, guidance_scale=TOY.guidance_scale, **SETTINGS)
    assert effect.without >= 0.08, effect  # the colour does come out without the negative prompt
    assert effect.with_negative <= effect.without / 2, effect


def test_image_to_image_keeps_the_input_at_low_strength_and_follows_the_prompt_at_high(pipe):
    image_pipe = load_pipeline(TOY, task="image-to-image")
    low, middle, high = image_to_image_curve(image_pipe, 24, (0.05, 0.2, 1.0), guidance_scale=TOY.guidance_scale,
                                             **SETTINGS)
    assert low.kept_input >= 0.8 and high.took_prompt >= 0.8, (low, high)
    assert low.kept_input >= middle.kept_input >= high.kept_input
    assert low.took_prompt <= middle.took_prompt <= high.took_prompt
    assert low.distance < middle.distance < high.distance


def test_inpainting_changes_the_inside_and_keeps_the_outside(pipe):
    paint_pipe = load_pipeline(TOY, task="inpainting")
    result = inpainting_check(paint_pipe, 24, guidance_scale=TOY.guidance_scale, strength=1.0, **SETTINGS)
    assert result.took_prompt_colour >= 0.8, result
    # Outside the mask only the decoder's mixing changes the picture (RESULTS.md): far less than inside.
    assert result.inside > 5 * result.outside, result


def test_nf4_weights_still_follow_prompts(pipe):
    quantized = load_pipeline(TOY, quantize="nf4")
    result = adherence(quantized, evaluation_scenes(24), guidance_scale=TOY.guidance_scale, **SETTINGS)
    assert result.colour >= 0.7, result

