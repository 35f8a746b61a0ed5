"""The shipped toy model: loaded like any model, and every lesson's effect measured by the judge.

Each test asserts a target of the evaluation (`python -m helpers.evaluation`, results in benchmarks/RESULTS.md) on
a batched subset, as the notebooks do: a comparison is a paired sign test over the same seeds (p < 0.05, the
notebooks' EVIDENCE), and a bound on a count sits at least four pictures below what was measured, so that no change of
one or two pictures (another CPU's kernels, another thread count, a library's rounding) can cross it. The counts
measured on 2026-12-08 (locked versions, AVX512 and default kernels, 1 and 2 threads) are in each comment.
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
from helpers.experiments import paired_change
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


def count(share: float, pictures: int) -> int:
    return round(share * pictures)


def test_prompts_are_followed_at_the_recommended_settings(guided):
    # measured 48, 46 and 48 of 48; the targets (90%, 80%, 80%) are 44, 39 and 39 pictures
    assert count(guided.colour, COUNT) >= 44, guided
    assert count(guided.shape, COUNT) >= 39, guided
    assert count(guided.background, COUNT) >= 39, guided


def test_overdone_guidance_loses_prompts_and_none_at_all_is_no_better_than_the_recommended(pipe, guided):
    """The rise from guidance 1 to the recommended 3 is small on the toy (91% to 97% at 64 pictures, RESULTS.md):
    a sign test over 48 seeds cannot show it, so the test asserts what the evidence supports, as notebook 05 does:
    guidance 10 follows fewer prompts than 3 (measured: lower in 10, higher in 0 of 48 seeds, p = 0.002), and
    guidance 1 is not measurably better than 3 (measured: worse in 6, better in 2, p = 0.29)."""
    unguided = adherence(pipe, evaluation_scenes(COUNT), guidance_scale=1.0, **SETTINGS)
    overdone = adherence(pipe, evaluation_scenes(COUNT), guidance_scale=10.0, **SETTINGS)
    without = paired_change(guided.followed, unguided.followed)
    beyond = paired_change(guided.followed, overdone.followed)
    assert beyond.direction == "lower", beyond
    assert without.direction != "higher", without


def test_a_negative_prompt_naming_a_colour_takes_it_away(pipe):
    effect = negative_colour_effect(pipe, 60, guidance_scale=TOY.guidance_scale, **SETTINGS)
    # the colour does come out without the negative prompt (measured 12 of 60; by chance alone 1 in 6 would)
    assert sum(effect.named_without) >= 6, effect
    change = paired_change(effect.named_without, effect.named_with)  # measured: lower in 12, higher in 0
    assert change.direction == "lower" and effect.with_negative <= effect.without / 2, (change, effect)


def test_image_to_image_keeps_the_input_at_low_strength_and_follows_the_prompt_at_high(pipe):
    image_pipe = load_pipeline(TOY, task="image-to-image")
    low, middle, high = image_to_image_curve(image_pipe, 24, (0.05, 0.2, 1.0), guidance_scale=TOY.guidance_scale,
                                             **SETTINGS)
    # measured: input kept in 24 of 24 at 0.05, prompt taken in 22 of 24 at 1.0
    assert sum(low.kept) >= 20 and sum(high.took) >= 18, (low, high)
    assert paired_change(low.kept, high.kept).direction == "lower"
    assert paired_change(low.took, high.took).direction == "higher"
    # every seed moves further from the input as strength rises (measured: 24 of 24 at each step)
    assert paired_change(low.distances, middle.distances).direction == "higher"
    assert paired_change(middle.distances, high.distances).direction == "higher"


def test_inpainting_changes_the_inside_and_keeps_the_outside(pipe):
    paint_pipe = load_pipeline(TOY, task="inpainting")
    result = inpainting_check(paint_pipe, 24, guidance_scale=TOY.guidance_scale, strength=1.0, **SETTINGS)
    assert count(result.took_prompt_colour, 24) >= 19, result  # measured 23 of 24
    # Outside the mask only the decoder's mixing changes the picture (RESULTS.md): far less than inside, picture by
    # picture (measured: means 70 inside against 7 outside, the ratio a mean of 24 pictures, not one picture's)
    assert paired_change(result.outsides, result.insides).direction == "higher"
    assert result.inside > 5 * result.outside, result


def test_nf4_weights_still_follow_prompts(pipe):
    quantized = load_pipeline(TOY, quantize="nf4")
    result = adherence(quantized, evaluation_scenes(24), guidance_scale=TOY.guidance_scale, **SETTINGS)
    assert count(result.colour, 24) >= 17, result  # the 70% target; measured 24 of 24
