"""Measuring what the offline toy model does, with the judge of helpers.world as the instrument.

Introduced in notebook 04 and used by notebooks 04 to 08. Each measurement generates a batch of pictures with
one setting changed and counts what the judge reads in them: how often a picture follows its prompt, how often
the colour named by a negative prompt still appears, how much of an input picture survives image-to-image, what
inpainting changes inside and outside its mask. Seeds are paired: the n-th picture of every setting starts from
the same noise, so settings are compared picture by picture.

    python -m helpers.evaluation            # every measurement at >= 64 pictures a point, as benchmarks/RESULTS.md
    python -m helpers.evaluation --count 16 # quicker, rougher

The scenes and prompts of an evaluation come from seeds below helpers.training.POOL_SEEDS_START: the model never
saw those scenes in training.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from helpers import world
from helpers.checks import (
    MAX_SIDE,
    check_guidance_scale,
    check_prompt,
    check_seed,
    check_strength,
    checked,
    flag,
    instance,
    listed,
    optional,
    pipeline,
    whole,
)
from helpers.checks import picture as a_picture
from helpers.experiments import (
    PER_PICTURE,
    TimeTeller,
    batch_settings,
    check_for_pipeline,
    mean_difference,
    region_difference,
)
from helpers.inputs import rectangle_mask

SCENE = instance(world.Scene, "a helpers.world.Scene")
MAX_BATCH = 256
"""Pictures in one call of the pipeline: more than the toy needs, and far more than an SD3.5 GPU holds."""


@checked(pipe=pipeline, prompts=listed(check_prompt), seeds=listed(check_seed), batch_size=whole(1, MAX_BATCH),
         progress=flag, drop_t5=flag, settings=batch_settings)
def generate_batch(pipe, prompts: Sequence[str], seeds: Sequence[int], *, batch_size: int = 16,
                   progress: bool = False, drop_t5: bool = False, **settings: Any) -> list[Image.Image]:
    """One picture per (prompt, seed), in batches of `batch_size`: `seeds[i]` seeds the i-th picture's generator,
    so it is the same picture as a call with that prompt and seed alone.

    Settings that are lists (`negative_prompt`, `image`, `mask_image`) give one value per picture; any other
    setting applies to all. `drop_t5=True` makes the pictures a pipeline loaded without T5 makes, from this one
    (`helpers.encoders.embeddings_without_t5`).
    """
    import torch
    from tqdm.auto import tqdm

    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts and {len(seeds)} seeds: give one seed per prompt.")
    per_picture = {name: value for name, value in settings.items() if name in PER_PICTURE and isinstance(value, list)}
    for name, values in per_picture.items():
        if len(values) != len(prompts):
            raise ValueError(f"{name} has {len(values)} values for {len(prompts)} prompts: give one per prompt.")
    shared = {name: value for name, value in settings.items() if name not in per_picture}
    check_for_pipeline(pipe, {**shared, **{name: values[0] for name, values in per_picture.items() if values}})
    if drop_t5:  # the prompts go in as embeddings, encoded as a pipeline without T5 encodes them
        from helpers.encoders import embeddings_without_t5

        length, negative = shared.pop("max_sequence_length", None), shared.pop("negative_prompt", "")
    pipe.set_progress_bar_config(disable=True)
    pictures: list[Image.Image] = []
    starts = range(0, len(prompts), batch_size)
    clock = TimeTeller(pipe, len(prompts), shared, verbose=progress and len(starts) > 1)
    for start in tqdm(starts, desc="generating", disable=not progress or len(starts) < 2):
        began = time.perf_counter()
        chunk = slice(start, start + batch_size)
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds[chunk]]
        arguments = {name: values[chunk] for name, values in per_picture.items()}
        if drop_t5:
            arguments.update(embeddings_without_t5(pipe, list(prompts[chunk]), max_sequence_length=length,
                                                   negative_prompt=arguments.pop("negative_prompt", negative)))
        else:
            arguments["prompt"] = list(prompts[chunk])
        pictures += pipe(generator=generators, **arguments, **shared).images
        if start == 0:
            clock.first_made((time.perf_counter() - began) / len(generators), len(prompts) - len(generators))
    return pictures


def ones(flags: Sequence[bool]) -> list[int]:
    """1 for each True, 0 for each False: counts paired_change can compare seed by seed."""
    return [int(bool(flag)) for flag in flags]


def share(flags: Sequence[bool]) -> float:
    """The share of True values, 0 to 1."""
    if not flags:
        raise ValueError("nothing to count: measure at least one picture.")
    return sum(map(bool, flags)) / len(flags)


@checked(count=whole(1, 10_000), start=whole(0))
def evaluation_scenes(count: int, start: int = 0) -> list[world.Scene]:
    """`count` scenes the model was not trained on (seeds `start` ... `start + count - 1`)."""
    from helpers.training import POOL_SEEDS_START

    if start < 0 or start + count > POOL_SEEDS_START:
        raise ValueError(f"start={start}, count={count}: evaluation seeds must lie in 0 ... {POOL_SEEDS_START - 1}.")
    return [world.scene(seed) for seed in range(start, start + count)]


@dataclass
class Adherence:
    """How often pictures followed their prompts, by attribute; `readings` are the judge's, picture by picture."""

    colour: float
    shape: float
    background: float
    everything: float
    count: int
    readings: list[world.Reading] = field(repr=False, default_factory=list)
    followed: list[int] = field(repr=False, default_factory=list)
    """Picture by picture, 1 where all three attributes were followed, else 0 (pair two runs with paired_change)."""
    shapes: list[int] = field(repr=False, default_factory=list)
    """Picture by picture, 1 where the shape was followed."""


@checked(pipe=pipeline, scenes=listed(SCENE), settings=batch_settings)
def adherence(pipe, scenes: Sequence[world.Scene], **settings: Any) -> Adherence:
    """Generate each scene's full caption (seeded by its position) and judge what the pictures show."""
    prompts = [item.caption for item in scenes]
    return judged(generate_batch(pipe, prompts, range(len(scenes)), **settings), scenes)


@checked(pictures=listed(a_picture), scenes=listed(SCENE))
def judged(pictures: Sequence[Image.Image], scenes: Sequence[world.Scene]) -> Adherence:
    """How often `pictures[i]` shows what `scenes[i]` describes: colour, shape, background."""
    if len(pictures) != len(scenes):
        raise ValueError(f"got {len(pictures)} pictures for {len(scenes)} scenes: give one scene per picture.")
    readings = [world.judge(picture) for picture in pictures]
    colour = [reading.colour == item.colour for reading, item in zip(readings, scenes, strict=True)]
    shape = [reading.shape == item.shape for reading, item in zip(readings, scenes, strict=True)]
    background = [reading.background == item.background for reading, item in zip(readings, scenes, strict=True)]
    followed = [all(flags) for flags in zip(colour, shape, background, strict=True)]
    return Adherence(share(colour), share(shape), share(background), share(followed), len(scenes), readings,
                     ones(followed), ones(shape))


@dataclass
class NegativeEffect:
    """How often the shape came out in the colour a negative prompt names, without and with that negative."""

    without: float
    with_negative: float
    count: int
    named_without: list[int] = field(repr=False, default_factory=list)
    """Picture by picture (same seeds), 1 where the named colour came out without the negative prompt ..."""
    named_with: list[int] = field(repr=False, default_factory=list)
    """... and with it."""


@checked(pipe=pipeline, count=whole(1, 10_000), settings=batch_settings)
def negative_colour_effect(pipe, count: int, **settings: Any) -> NegativeEffect:
    """Prompts name a shape and a background but no colour ("a circle on a blue background"); the negative prompt
    names one colour ("a red shape"), a different one for each picture, cycling through the colours (never the
    background's). Counts how often the shape has that colour, with the same seeds with and without it."""
    colours = list(world.COLOURS)
    prompts, negatives, named = [], [], []
    for index, item in enumerate(evaluation_scenes(count, start=50_000)):
        colour = colours[index % len(colours)]
        background = item.background if item.background != colour else item.colour
        prompts.append(world.caption(None, item.shape, background))
        negatives.append(world.caption(colour, None, None))
        named.append(colour)
    seeds = range(count)
    plain = generate_batch(pipe, prompts, seeds, **settings)
    pushed = generate_batch(pipe, prompts, seeds, negative_prompt=negatives, **settings)
    without = [world.judge(picture).colour == colour for picture, colour in zip(plain, named, strict=True)]
    with_negative = [world.judge(picture).colour == colour for picture, colour in zip(pushed, named, strict=True)]
    return NegativeEffect(share(without), share(with_negative), count, ones(without), ones(with_negative))


IMAGE_TO_IMAGE_STRENGTHS = (0.05, 0.1, 0.2, 0.4, 0.7, 1.0)
"""Where the toy model hands over from the input to the prompt: at far lower strengths than SD3.5 (RESULTS.md)."""


def different_scene(item: world.Scene, offset: int) -> world.Scene:
    """A scene whose shape, colour and background all differ from `item`'s, chosen by `offset`."""
    colours = [name for name in world.COLOURS if name not in (item.colour, item.background)]
    shapes = [name for name in world.SHAPES if name != item.shape]
    colour = colours[offset % len(colours)]
    background = [name for name in colours if name != colour][offset % (len(colours) - 1)]
    return world.Scene(shapes[offset % len(shapes)], colour, background, item.centre, item.extent)


@dataclass
class StrengthPoint:
    strength: float
    kept_input: float
    """Share of pictures whose shape and colour are still the input's."""
    took_prompt: float
    """Share of pictures whose shape and colour are the prompt's."""
    distance: float
    """Mean pixel difference from the input (0 to 255)."""
    kept: list[int] = field(repr=False, default_factory=list)
    """Picture by picture (the same seeds at every strength), 1 where the input's shape and colour were kept ..."""
    took: list[int] = field(repr=False, default_factory=list)
    """... the prompt's taken ..."""
    distances: list[float] = field(repr=False, default_factory=list)
    """... and the mean pixel difference from the input."""


@checked(pipe=pipeline, count=whole(1, 10_000), strengths=listed(check_strength), settings=batch_settings)
def image_to_image_curve(pipe, count: int, strengths: Sequence[float], **settings: Any) -> list[StrengthPoint]:
    """Inputs are drawn scenes; each prompt asks for a different shape, colour and background. At each strength,
    how often the input's shape and colour survive, and how often the prompt's take over (same seeds throughout).
    `pipe` must be an image-to-image pipeline."""
    inputs = evaluation_scenes(count, start=60_000)
    targets = [different_scene(item, index) for index, item in enumerate(inputs)]
    images = [item.draw() for item in inputs]
    points = []
    for strength in strengths:
        pictures = generate_batch(pipe, [item.caption for item in targets], range(count), image=list(images),
                                  strength=strength, **settings)
        readings = [world.judge(picture) for picture in pictures]
        kept = [r.follows(item.colour, item.shape) for r, item in zip(readings, inputs, strict=True)]
        took = [r.follows(item.colour, item.shape) for r, item in zip(readings, targets, strict=True)]
        distances = [mean_difference(a, b) for a, b in zip(pictures, images, strict=True)]
        points.append(StrengthPoint(strength, share(kept), share(took), float(np.mean(distances)), ones(kept),
                                    ones(took), distances))
    return points


def _rgb(value: Any, name: str) -> Image.Image:
    image = a_picture(value, name)
    if image.mode != "RGB" or max(image.size) > MAX_SIDE:
        raise ValueError(f"{name} is a {image.width}x{image.height} {image.mode} image; the VAE takes RGB pictures up "
                         f"to {MAX_SIDE} px. Pass it through helpers.prepare_image() first.")
    return image


@checked(pipe=pipeline, image=_rgb)
def vae_round_trip(pipe, image: Image.Image) -> Image.Image:
    """`image` encoded by the pipeline's VAE and decoded again: what the VAE alone does to a picture."""
    import torch

    processor = pipe.image_processor
    with torch.no_grad():
        pixels = processor.preprocess(image).to(pipe.vae.device, pipe.vae.dtype)
        latents = pipe.vae.encode(pixels).latent_dist.mean
        decoded = pipe.vae.decode(latents).sample
    return processor.postprocess(decoded)[0]


def latent_box(box: tuple[float, float, float, float], size: int, cell: int) -> tuple[float, float, float, float]:
    """A box (shares of a `size`-pixel side) grown outwards to whole latent cells of `cell` pixels."""
    left, top, right, bottom = (value * size for value in box)
    snap_down = [max(0, int(value // cell) * cell) / size for value in (left, top)]
    snap_up = [min(size, int(-(-value // cell)) * cell) / size for value in (right, bottom)]
    return (*snap_down, *snap_up)


@dataclass
class InpaintingResult:
    took_prompt_colour: float
    """Share of pictures whose shape has the prompt's colour."""
    outside: float
    """Mean pixel difference from the input outside the mask (0 to 255)."""
    vae_outside: float
    """The same for the VAE's round trip alone: the least any SD3 pipeline can change a picture."""
    inside: float
    count: int
    insides: list[float] = field(repr=False, default_factory=list)
    """Picture by picture: the mean pixel difference inside the mask ..."""
    outsides: list[float] = field(repr=False, default_factory=list)
    """... and outside it."""


@checked(pipe=pipeline, count=whole(1, 10_000), settings=batch_settings)
def inpainting_check(pipe, count: int, **settings: Any) -> InpaintingResult:
    """Inputs are drawn scenes; the mask covers the shape (grown to whole latent cells); each prompt asks for the
    same shape in another colour on the same background. `pipe` must be an inpainting pipeline."""
    inputs = evaluation_scenes(count, start=70_000)
    size = world.SIZE
    cell = pipe.vae_scale_factor
    masks = [rectangle_mask((size, size), latent_box(item.box, size, cell)) for item in inputs]
    targets = [different_scene(item, index) for index, item in enumerate(inputs)]
    targets = [world.Scene(item.shape, target.colour, item.background, item.centre, item.extent)
               for item, target in zip(inputs, targets, strict=True)]
    images = [item.draw() for item in inputs]
    pictures = generate_batch(pipe, [item.caption for item in targets], range(count), image=list(images),
                              mask_image=masks, **settings)
    outside, vae_outside, inside = [], [], []
    for picture, image, mask in zip(pictures, images, masks, strict=True):
        change = region_difference(picture, image, mask)
        outside.append(change["outside"])
        inside.append(change["inside"])
        vae_outside.append(region_difference(vae_round_trip(pipe, image), image, mask)["outside"])
    colour = [world.judge(picture).colour == item.colour for picture, item in zip(pictures, targets, strict=True)]
    return InpaintingResult(share(colour), float(np.mean(outside)), float(np.mean(vae_outside)),
                            float(np.mean(inside)), count, inside, outside)


# --- The full evaluation, as recorded in benchmarks/RESULTS.md ----------------------------------------------------


@checked(count=whole(1, 10_000), guidance=optional(listed(check_guidance_scale)))
def evaluate(count: int = 64, *, guidance: Sequence[float] | None = None) -> str:
    """Every measurement of the toy model at its recommended settings, `count` pictures a point, as Markdown."""
    import torch

    from helpers.loading import load_pipeline
    from helpers.models import MODELS

    spec = MODELS["toy"]
    settings = spec.recommended()
    recommended_guidance = settings.pop("guidance_scale")
    guidance = sorted(set(guidance or (1.0, 2.0, 3.0, 5.0, 7.0, 10.0)) | {recommended_guidance})
    started = time.monotonic()
    pipe = load_pipeline(spec)
    lines = [(f"Toy model, {count} pictures a point, {settings['num_inference_steps']} steps, "
              f"{settings['width']}x{settings['height']}, torch {torch.__version__} on the CPU."), ""]

    scenes = evaluation_scenes(count)
    lines.append("| weights | guidance | colour followed | shape followed | background followed | all three |")
    lines.append("|---|---|---|---|---|---|")
    rows = [(pipe, "float32", scale) for scale in guidance]
    rows.append((load_pipeline(spec, quantize="nf4"), "NF4 transformer", recommended_guidance))
    for model, label, scale in rows:
        result = adherence(model, scenes, guidance_scale=scale, **settings)
        lines.append(f"| {label} | {scale:g} | {result.colour:.0%} | {result.shape:.0%} | {result.background:.0%} | "
                     f"{result.everything:.0%} |")

    effect = negative_colour_effect(pipe, max(count, 96), guidance_scale=recommended_guidance, **settings)
    lines.append("")
    lines.append(f"Negative prompt naming a colour ({effect.count} pictures, paired seeds): the shape has that colour "
                 f"in {effect.without:.0%} of pictures without it, {effect.with_negative:.0%} with it.")

    image_pipe = load_pipeline(spec, task="image-to-image")
    curve = image_to_image_curve(image_pipe, count, IMAGE_TO_IMAGE_STRENGTHS,
                                 guidance_scale=recommended_guidance, **settings)
    lines.append("")
    lines.append("| image-to-image strength | input's shape and colour kept | prompt's shape and colour "
                 "| distance from input (0-255) |")
    lines.append("|---|---|---|---|")
    lines += [f"| {point.strength:g} | {point.kept_input:.0%} | {point.took_prompt:.0%} | {point.distance:.1f} |"
              for point in curve]

    paint_pipe = load_pipeline(spec, task="inpainting")
    painted = inpainting_check(paint_pipe, count, guidance_scale=recommended_guidance, strength=1.0, **settings)
    lines.append("")
    lines.append(f"Inpainting at strength 1.0 ({painted.count} pictures, mask over the shape): the prompt's colour in "
                 f"{painted.took_prompt_colour:.0%}; change outside the mask {painted.outside:.1f}/255 against the "
                 f"VAE's own round trip {painted.vae_outside:.1f}/255; inside {painted.inside:.1f}/255.")
    lines.append("")
    lines.append(f"(Evaluation took {time.monotonic() - started:.0f} s.)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.evaluation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=64, help="pictures per point (default 64)")
    arguments = parser.parse_args(argv)
    try:
        whole(1, 10_000)(arguments.count, "--count")
    except ValueError as error:
        parser.error(str(error))
    print(evaluate(arguments.count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
