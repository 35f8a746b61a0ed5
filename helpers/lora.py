"""LoRA fine-tuning (notebook 11): teach an SD3 pipeline a concept it never saw, saved as diffusers saves SD3 LoRAs.

The toy world draws rings, which no training scene showed and no caption named (`world.NEW_SHAPES`); its judge
reads them. `train_lora` adds low-rank adapters (peft's LoRA) to the attention projections of the transformer's
blocks, trains only those on captioned pictures of rings with the flow-matching loss the toy was trained with
(helpers.training), and saves them with `StableDiffusion3Pipeline.save_lora_weights`, so plain
`pipe.load_lora_weights(folder)` loads them. Half of each batch can be scenes the model already knew, under their
own captions (`prior_share`): DreamBooth's prior preservation, with the world's own pictures where DreamBooth
generates its class pictures with the base model.

A reader's own folder of pictures and captions is checked by `check_training_folder` before any work (count,
formats, sizes, captions: every problem named at once) and trained on with `train_lora(..., pictures=...)`.

Every random choice comes from the seed and the step number, and a stopped run resumes from its last checkpoint
(safetensors, never a pickle). On one CPU thread the same recipe gives the same adapter bit for bit.

    python -m helpers.lora train --out ring-lora          # the recipe notebook 11 trains, on the offline toy model
    python -m helpers.lora measure --out try --rank 32    # a recipe's rings and old prompts, 64 seeds (~3.5 min)
    python -m helpers.lora variants --out FOLDER          # each of VARIANTS, into VARIANTS_FILE (~25 min)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from helpers import world
from helpers.checks import (
    check_path,
    check_seed,
    checked,
    flag,
    instance,
    number,
    one_of,
    optional,
    output_folder,
    pipeline,
    shown,
    side,
    text,
    whole,
)

TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
           "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
           "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")
"""The layers that get adapters: the attention projections and feed-forward layers of every block, image and text
streams. Measured on the toy (32 prompts, learning rate 1e-2): attention alone drew rings for 6 to 14 of 32 after
300 to 600 steps; with the feed-forward layers, 16 of 32 after 400 steps and 25 of 32 after 800."""
TRAINING_ADAPTER = "in_training"
"""The adapter's name on the pipeline while `train_lora` runs; it is removed when training ends."""
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
"""The file diffusers' `save_lora_weights` writes and `load_lora_weights` reads in a folder."""
CONCEPT_SEEDS_START = 20_000_000
"""Seeds of the concept's training scenes (the toy's own training pool starts at 10 million, evaluations below)."""


OPTIMIZERS = ("adamw", "adamw-8bit")
WEIGHTING_SCHEMES = ("logit_normal", "mode", "sigma_sqrt", "cosmap", "none")
"""The `--weighting_scheme` choices of diffusers' SD3 training scripts (helpers.training.flow_matching_loss)."""
MODE_SCALES = (-1.0, 2 / (math.pi - 2))
"""The `mode_scale` values for which the "mode" density's map from a uniform draw to a noise level stays
monotone and inside 0..1 (checked on a grid of 100,001 points; 1.76 is not)."""


@dataclass(frozen=True)
class LoraRecipe:
    """Everything that decides a trained adapter. The defaults are notebook 11's.

    Measured with `python -m helpers.lora measure` (64 seeds, one training each; the base model follows 62 of the
    64 old prompts): the defaults draw rings for 50 and keep 59 old prompts; rank 32, 48 and 56; prior_share 0,
    58 and 13; prior_share 0.125, 51 and 50; lr 1.5e-2, 51 and 54; 600 steps, 40 rings; batch 8, 36. None
    reached 52 rings (81%) with the old prompts within 5 points of the base model's."""

    seed: int = 0
    concept: str = "ring"
    rank: int = 16
    """The adapters' rank: each adapted layer learns a change of rank `rank` (its alpha is the rank: scale 1)."""
    steps: int = 1000
    batch: int = 16
    lr: float = 1e-2
    """Peak learning rate, warmed up over `warmup` steps, then a cosine decay to a tenth (as the toy's training).
    Measured on the toy: held constant at 1e-2 after warm-up, 1000 steps drew rings for 17 of 64 prompts (against
    46 with the decay), and the old prompts it followed fell from 62 of 64 to 44."""
    warmup: int = 20
    pool: int = 256
    """Pictures of the concept to learn from (and as many of the known shapes for prior preservation)."""
    prior_share: float = 0.25
    """Share of each batch from scenes the model already knew, captioned as it learned them (0: none)."""
    caption_dropout: float = 0.1
    weighting_scheme: str = "logit_normal"
    """How noise levels are drawn and the loss weighted, by the names of diffusers' SD3 training scripts (their
    `--weighting_scheme`): "logit_normal" (SD3's), "mode", or uniform levels with the loss weighted by
    "sigma_sqrt", "cosmap" or "none". Each is compared on the toy in VARIANTS_FILE (notebook 11's table)."""
    logit_mean: float = 0.0
    """Centre of the logit-normal draw; above 0 trains more at high noise. (diffusers' scripts index their
    scheduler's timesteps, which run from high noise to low, with the draw: there the sign is the other way.)"""
    logit_std: float = 1.0
    mode_scale: float = 1.29
    """The "mode" density's scale (diffusers' default): above 0 trains more at middle noise levels."""
    precondition_outputs: bool = False
    """Compare the clean latent the prediction implies with the true one (diffusers' `--precondition_outputs`),
    instead of the velocity with the true velocity."""
    checkpoint_every: int = 50
    gradient_checkpointing: bool = False
    """Make each block's activations again in the backward pass instead of keeping them (diffusers'
    `enable_gradient_checkpointing`): less memory for more time. SD3.5 needs it on cards under 40 GB
    (helpers.lora_memory)."""
    optimizer: str = "adamw"
    """'adamw' (PyTorch's, two float32 moments per value) or 'adamw-8bit' (bitsandbytes' AdamW8bit, 8-bit moments)."""

    def __post_init__(self) -> None:
        whole(0, 2**32 - 1)(self.seed, "seed")
        if self.concept not in world.NEW_SHAPES:
            raise ValueError(f"concept={shown(self.concept)} is not a shape the toy has yet to learn. Use one of: "
                             f"{', '.join(world.NEW_SHAPES)}.")
        for name, high in (("rank", 256), ("steps", 1_000_000), ("batch", 4096), ("pool", 100_000),
                           ("checkpoint_every", 1_000_000)):
            whole(1, high)(getattr(self, name), name)
        whole(0, 1_000_000)(self.warmup, "warmup")
        number(0, 1, above=True)(self.lr, "lr")
        for name in ("prior_share", "caption_dropout"):
            number(0, 1)(getattr(self, name), name)
        number(-10, 10)(self.logit_mean, "logit_mean")
        number(0, 10, above=True)(self.logit_std, "logit_std")
        one_of(*WEIGHTING_SCHEMES)(self.weighting_scheme, "weighting_scheme")
        number(*MODE_SCALES)(self.mode_scale, "mode_scale")
        flag(self.precondition_outputs, "precondition_outputs")
        if self.weighting_scheme == "sigma_sqrt" and not self.precondition_outputs:
            raise ValueError("weighting_scheme='sigma_sqrt' weights each loss by 1/sigma^2, which cancels the sigma^2 "
                             "of preconditioned outputs and is meant for them; on the velocity loss it reaches a "
                             "million at low noise. Add precondition_outputs=True, or pick another scheme.")
        flag(self.gradient_checkpointing, "gradient_checkpointing")
        one_of(*OPTIMIZERS)(self.optimizer, "optimizer")


@dataclass
class LoraProgress:
    step: int = 0
    loss: list[float] = field(default_factory=list)
    seconds: float = 0.0


@checked(seed=check_seed, concept=one_of(*world.NEW_SHAPES))
def concept_scene(seed: int, concept: str = "ring") -> world.Scene:
    """The scene of `seed` with its shape replaced by `concept`: every colour pair, size and place as likely."""
    spec = world.scene(seed)
    return world.Scene(concept, spec.colour, spec.background, spec.centre, spec.extent)


def training_scenes(recipe: LoraRecipe) -> tuple[list[world.Scene], list[world.Scene]]:
    """The concept's scenes and the known scenes of prior preservation (the first of the toy's training pool)."""
    from helpers.training import POOL_SEEDS_START

    start = CONCEPT_SEEDS_START + recipe.seed * recipe.pool
    concept = [concept_scene(seed, recipe.concept) for seed in range(start, start + recipe.pool)]
    prior = [world.scene(seed) for seed in range(POOL_SEEDS_START, POOL_SEEDS_START + recipe.pool)]
    return concept, prior


def batch(recipe: LoraRecipe, step: int, concept: list, prior: list) -> tuple[list[world.Scene], list[str]]:
    """One step's scenes and captions: the same on every run."""
    rng = random.Random(f"{recipe.seed}-lora-{step}")
    known = round(recipe.batch * recipe.prior_share) if prior else 0

    def draw(pool: list, count: int) -> list:  # without repeats where the pool is large enough
        return rng.sample(pool, count) if count <= len(pool) else rng.choices(pool, k=count)

    scenes = draw(concept, recipe.batch - known) + draw(prior, known)
    captions = ["" if rng.random() < recipe.caption_dropout else spec.caption for spec in scenes]
    return scenes, captions


# --- A reader's own pictures -----------------------------------------------------------------------------------

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
"""The picture files a training folder may hold (any case); captions are `.txt` files beside them."""
MIN_PICTURES = 3
"""Fewest pictures accepted: DreamBooth's own example teaches a dog from 5 photos; from 1 or 2 a LoRA can only copy."""
MAX_PICTURES = 10_000


@dataclass(frozen=True)
class TrainingPictures:
    """A checked folder of pictures with their captions, ready for `train_lora(..., pictures=...)`."""

    folder: Path
    files: tuple[Path, ...]
    captions: tuple[str, ...]
    size: int
    """The side of the square every picture is cropped (about its centre) and scaled to."""

    def __str__(self) -> str:
        captions = sorted(set(self.captions))
        named = "one caption for all" if len(captions) == 1 else f"{len(captions)} different captions"
        return (f"{len(self.files)} pictures in {self.folder}, cropped to {self.size} x {self.size}, {named} "
                f"(first: {self.captions[0]!r})")

    def arrays(self):
        """The pictures as training takes them: RGB, cropped about the centre to a square, `size` pixels a side."""
        import numpy as np
        from PIL import Image, ImageOps

        from helpers.inputs import load_image

        square = (self.size, self.size)
        return np.stack([np.asarray(ImageOps.fit(load_image(path, name=path.name).convert("RGB"), square,
                                                 method=Image.Resampling.LANCZOS)) for path in self.files])

    def listing(self) -> list[list]:
        """What decides the training data: each file's name, bytes and caption (a resumed run checks it)."""
        return [[path.name, path.stat().st_size, caption] for path, caption in zip(self.files, self.captions)]


def _listed(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


@checked(folder=check_path, size=side, caption=optional(text))
def check_training_folder(folder: str | Path, size: int = 1024, *, caption: str | None = None) -> TrainingPictures:
    """Check a folder of pictures for LoRA training before any work: at least MIN_PICTURES PNG, JPEG or WebP files
    that open, none smaller than `size` on its shorter side, each with a caption, from `<name>.txt` beside it
    (UTF-8), or `caption` for all of them (DreamBooth's way: one prompt with a rare word, 'a photo of sks dog').
    Every problem found is named with its files and its fix, all at once."""
    from helpers.inputs import load_image

    folder = folder.expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"folder={str(folder)!r} is not a folder. Give the folder that holds your training "
                                f"pictures (relative paths start at {Path.cwd()}).")
    entries = sorted(path for path in folder.iterdir() if not path.name.startswith("."))
    files = [path for path in entries if path.is_file() and path.suffix.lower() in PICTURE_SUFFIXES]
    others = [path.name for path in entries if path.is_file() and path not in files and path.suffix.lower() != ".txt"]
    problems = []
    if others:
        problems.append(f"files that are not PNG, JPEG or WebP pictures: {_listed(others)}; convert them (HEIC, "
                        "GIF, TIFF...) to PNG or JPEG, or move them out of the folder")
    if len(files) < MIN_PICTURES:
        problems.append(f"{len(files)} picture(s), fewer than the {MIN_PICTURES} needed (5 to 20 is usual for one "
                        "subject)")
    if len(files) > MAX_PICTURES:
        problems.append(f"{len(files)} pictures, more than the {MAX_PICTURES:,} accepted")
    small, unreadable, captions, uncaptioned = [], [], [], []
    for path in files[:MAX_PICTURES]:
        try:
            width, height = load_image(path, name=path.name).size
        except (ValueError, OSError) as error:
            unreadable.append(f"{path.name} ({error})")
            continue
        if min(width, height) < size:
            small.append(f"{path.name} ({width}x{height})")
        if caption is not None:
            captions.append(caption)
            continue
        sidecar = path.with_suffix(".txt")
        try:
            written = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
        except (OSError, UnicodeDecodeError):
            written = ""
        if not written:
            uncaptioned.append(path.name)
        captions.append(written)
    if unreadable:
        problems.append(f"pictures that do not open: {_listed(unreadable, 3)}")
    if small:
        problems.append(f"pictures smaller than {size} px on their shorter side, which training would blow up: "
                        f"{_listed(small)}; use larger pictures, or a smaller size=")
    if uncaptioned:
        problems.append(f"pictures without a caption (a non-empty UTF-8 .txt file of the same name): "
                        f"{_listed(uncaptioned)}; write those, or pass caption='a photo of sks dog' for all")
    if problems:
        raise ValueError(f"folder={str(folder)!r} cannot be trained on yet: " + "; ".join(problems) + ".")
    return TrainingPictures(folder, tuple(files), tuple(captions), size)


# --- Training --------------------------------------------------------------------------------------------------


def _check_out(out: Path) -> None:
    """`out` may be written: it does not exist, or it holds an adapter an earlier run saved (lora.json names a
    recipe). Anything else is the reader's: refused, never removed."""
    from helpers.training import saved_by_us

    if (out.exists() or out.is_symlink()) and not saved_by_us(out, "lora.json", WEIGHTS_NAME, {"recipe"}):
        raise ValueError(f"out={str(out)!r} exists and is not an adapter train_lora saved: it is left as it is. Choose "
                         "a folder that does not exist yet, or move that one away yourself.")


def _check_pipeline(pipe) -> None:
    transformer = getattr(pipe, "transformer", None)
    if transformer is None or not hasattr(transformer, "add_adapter"):
        raise ValueError(f"pipe is a {type(pipe).__name__} without an SD3 transformer; pass a pipeline from "
                         "load_pipeline() or StableDiffusion3Pipeline.from_pretrained().")
    if getattr(transformer, "peft_config", None):
        raise ValueError(f"pipe already holds LoRA adapters ({', '.join(transformer.peft_config)}); train on a pipeline "
                         "without them: load it again, or call pipe.unload_lora_weights() first.")
    if pipe.text_encoder_3 is None:
        raise ValueError("pipe has no T5 (text_encoder_3); train on a pipeline loaded with all three text encoders.")


@dataclass(frozen=True)
class _Captioned:
    caption: str


@contextmanager
def training_adapters(transformer, recipe: LoraRecipe):
    """`transformer` with trainable adapters of `recipe` on the layers of TARGETS (named TRAINING_ADAPTER), in
    float32 on a base in any dtype (QLoRA's way), and the recipe's gradient checkpointing: yields the adapters'
    parameters and the recipe's optimizer over them. Afterwards the transformer is as it was, however the block
    ends: adapters out, checkpointing, requires_grad and train mode as before."""
    import torch
    from peft import LoraConfig

    was_training, was_checkpointing = transformer.training, transformer.is_gradient_checkpointing
    grads = {name: parameter.requires_grad for name, parameter in transformer.named_parameters()}
    transformer.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):  # the adapters' first values from the seed, the reader's RNG untouched
        torch.manual_seed(recipe.seed)
        transformer.add_adapter(LoraConfig(r=recipe.rank, lora_alpha=recipe.rank, init_lora_weights="gaussian",
                                           target_modules=list(TARGETS)), adapter_name=TRAINING_ADAPTER)
    try:
        parameters = [parameter for parameter in transformer.parameters() if parameter.requires_grad]
        for parameter in parameters:
            parameter.data = parameter.data.float()
        if recipe.optimizer == "adamw-8bit":
            import bitsandbytes

            optimizer = bitsandbytes.optim.AdamW8bit(parameters, lr=recipe.lr, weight_decay=0.0)
        else:
            optimizer = torch.optim.AdamW(parameters, lr=recipe.lr, weight_decay=0.0)
        if recipe.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        yield parameters, optimizer
    finally:
        if recipe.gradient_checkpointing and not was_checkpointing:
            transformer.disable_gradient_checkpointing()
        transformer.unload_lora()  # the peft layers out again, the base layers back in their places
        for name, parameter in transformer.named_parameters():
            parameter.requires_grad_(grads.get(name, False))
        transformer.train(was_training)


def lora_step(pipe, recipe: LoraRecipe, step: int, latents, embeddings, optimizer, parameters):
    """One update of the adapters: the flow-matching loss of `latents` with `recipe`'s weighting, on prompts encoded
    beforehand (`embeddings`: prompt embeddings and pooled ones), its gradients clipped and applied. Returns the
    loss."""
    import torch

    from helpers.training import _optimizer_step, flow_matching_loss

    loss = flow_matching_loss(pipe, recipe, step, latents, [""] * len(latents),
                              torch.zeros(len(latents), dtype=torch.bool), embeddings=embeddings,
                              weighting_scheme=recipe.weighting_scheme, mode_scale=recipe.mode_scale,
                              precondition_outputs=recipe.precondition_outputs)
    _optimizer_step(optimizer, loss.float(), parameters)
    return loss


@checked(pipe=pipeline, out=check_path, recipe=instance(LoraRecipe, "a helpers.lora.LoraRecipe"),
         pictures=optional(instance(TrainingPictures, "what check_training_folder() returns")),
         work=optional(check_path), show_progress=flag)
def train_lora(pipe, out: str | Path, recipe: LoraRecipe = LoraRecipe(), *, pictures: TrainingPictures | None = None,
               work: str | Path | None = None, show_progress: bool = True) -> Path:
    """Train LoRA adapters on `pipe`'s transformer by `recipe` and save them to the folder `out` in diffusers'
    format (`pytorch_lora_weights.safetensors`), with `lora.json` beside them: the recipe and the losses.

    It learns from the toy world's pictures of `recipe.concept`, or from `pictures`, a reader's folder checked by
    `check_training_folder` (then `recipe.concept` and `recipe.pool` are not used).

    `pipe` is left as it was: the adapter layers are taken out when training ends, however it ends. Checkpoints go to
    `work` (default: `out` + '.work'); run the same call again after a stop to resume.
    """
    import numpy as np
    import torch
    from diffusers import StableDiffusion3Pipeline
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from tqdm.auto import tqdm

    from helpers.training import (
        _curve,
        _learning_rate,
        claim_work_folder,
        encode_captions,
        encode_pool,
        load_checkpoint,
        sample_latents,
        save_checkpoint,
    )

    _check_pipeline(pipe)
    if pictures is not None:
        from helpers.experiments import max_side

        if recipe.prior_share:
            raise ValueError(f"recipe.prior_share={recipe.prior_share} keeps known scenes of the toy world in each "
                             "batch, which only the toy knows; with your own pictures use "
                             "LoraRecipe(prior_share=0).")
        largest = max_side(pipe)
        if largest and pictures.size > largest:
            raise ValueError(f"pictures are {pictures.size} px a side, more than this pipeline's largest "
                             f"({largest}); check the folder again with a smaller size=.")
    out = check_path(out, "out")
    _check_out(out)
    output_folder(out.parent, "out")
    work = output_folder(work if work is not None else out.with_name(out.name + ".work"), "work")
    checkpoint = work / "checkpoint.safetensors"
    claim_work_folder(work, {"recipe": asdict(recipe), **({"pictures": pictures.listing()} if pictures else {})},
                      "another recipe or other pictures", "work")

    if pictures is None:
        concept, prior = training_scenes(recipe)
        drawn = np.stack([np.asarray(spec.draw()) for spec in concept + prior])
    else:
        concept, prior = [_Captioned(caption) for caption in pictures.captions], []
        drawn = pictures.arrays()
    scenes = concept + prior
    index = {id(spec): number for number, spec in enumerate(scenes)}
    means, stds = encode_pool(pipe.vae, drawn)
    # the text encoders stay frozen: every caption a batch can hold is encoded once, without gradients (running
    # them in every step, and backpropagating through them, made 1000 steps of the toy 192 s against 166 s)
    texts = sorted({spec.caption for spec in scenes} | {""})
    rows = {text: row for row, text in enumerate(texts)}
    with torch.no_grad():
        encoded = [encode_captions(pipe, texts[start:start + 64], pipe.transformer.device)
                   for start in range(0, len(texts), 64)]
    text_embeds, text_pooled = (torch.cat(parts) for parts in zip(*encoded))

    transformer = pipe.transformer
    with training_adapters(transformer, recipe) as (parameters, optimizer):
        progress = LoraProgress()
        saved = load_checkpoint(checkpoint)
        if saved is not None:
            set_peft_model_state_dict(transformer, saved["lora"], adapter_name=TRAINING_ADAPTER)
            optimizer.load_state_dict(saved["optimizer"])
            progress = LoraProgress(**saved["progress"])
        transformer.train()
        bar = tqdm(total=recipe.steps, initial=progress.step, desc="LoRA", disable=not show_progress)
        started = time.monotonic()
        while progress.step < recipe.steps:
            step = progress.step
            chosen, captions = batch(recipe, step, concept, prior)
            indices = [index[id(spec)] for spec in chosen]
            generator = torch.Generator().manual_seed(random.Random(f"{recipe.seed}-lora-noise-{step}").randrange(2**31))
            latents = sample_latents(pipe.vae, means, stds, indices, generator).to(transformer.dtype)
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(recipe, step, recipe.lr, recipe.steps)
            chosen_rows = torch.tensor([rows[text] for text in captions])
            loss = lora_step(pipe, recipe, step, latents, (text_embeds[chosen_rows], text_pooled[chosen_rows]),
                             optimizer, parameters)
            progress.step += 1
            progress.loss.append(round(loss.item(), 6))
            bar.update(1)
            bar.set_postfix(loss=f"{sum(progress.loss[-20:]) / len(progress.loss[-20:]):.4f}")
            if progress.step % recipe.checkpoint_every == 0 or progress.step == recipe.steps:
                progress.seconds += time.monotonic() - started
                started = time.monotonic()
                save_checkpoint({"lora": get_peft_model_state_dict(transformer, adapter_name=TRAINING_ADAPTER),
                                 "optimizer": optimizer.state_dict(), "progress": asdict(progress)}, checkpoint)
        bar.close()
        import tempfile

        # a fresh folder beside `out`, renamed into place when complete (one left by a stop while saving is inert)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        layers = {name: tensor.detach().to(torch.float32).contiguous() for name, tensor in
                  get_peft_model_state_dict(transformer, adapter_name=TRAINING_ADAPTER).items()}
        StableDiffusion3Pipeline.save_lora_weights(staging, transformer_lora_layers=layers, safe_serialization=True)
        summary = {"recipe": asdict(recipe), **({"pictures": pictures.listing()} if pictures is not None else {}),
                   "targets": list(TARGETS), "steps": progress.step,
                   "loss_curve": _curve(progress.loss), "training_seconds": round(progress.seconds, 1),
                   "parameters": sum(tensor.numel() for tensor in layers.values()),
                   "base": _base_summary(pipe)}
        (staging / "lora.json").write_text(json.dumps(summary, indent=1) + "\n")
        if out.exists():
            import shutil

            _check_out(out)
            shutil.rmtree(out)
        os.replace(staging, out)
        return out


def _base_summary(pipe) -> dict[str, Any]:
    """What the adapter was trained on: the transformer's sizes, which a pipeline loading it must have."""
    config = pipe.transformer.config
    return {name: config[name] for name in ("num_layers", "attention_head_dim", "num_attention_heads",
                                            "joint_attention_dim", "caption_projection_dim") if name in config}


# --- Loading ---------------------------------------------------------------------------------------------------


PARTS = ("transformer", "text_encoder", "text_encoder_2")
"""The parts of an SD3 pipeline `load_lora_weights` gives adapters to, by the prefix of their keys in the file."""


@dataclass(frozen=True)
class LoraFile:
    """What a LoRA file adapts, as `check_lora` found it matching the pipeline."""

    path: Path
    layers: dict[str, int]
    """Adapted layers per part of the pipeline."""
    ranks: tuple[int, ...]

    def __str__(self) -> str:
        parts = ", ".join(f"{count} layers of the {part}" for part, count in self.layers.items() if count)
        ranks = "/".join(map(str, self.ranks))
        return f"{self.path.name}: {parts}, rank {ranks}"


def lora_file(source: str | Path) -> Path:
    """The safetensors file of a LoRA: `source` itself, or the one file diffusers would read in the folder
    `source`. Only safetensors: a `.bin` file could run code when loaded, and is refused."""
    path = check_path(source, "source")
    if path.is_dir():
        candidates = [path / WEIGHTS_NAME] if (path / WEIGHTS_NAME).is_file() else sorted(path.glob("*.safetensors"))
        if len(candidates) != 1:
            found = ", ".join(item.name for item in sorted(path.iterdir())[:8]) or "nothing"
            raise ValueError(f"source={str(path)!r} holds {len(candidates)} .safetensors files (it holds: {found}); "
                             f"a LoRA folder holds {WEIGHTS_NAME}, or name the file itself.")
        path = candidates[0]
    if not path.is_file():
        raise ValueError(f"source={str(path)!r} does not exist; give the folder train_lora or save_lora_weights "
                         "wrote, or a .safetensors file.")
    if path.suffix != ".safetensors":
        raise ValueError(f"source={str(path)!r} is not a .safetensors file. Only safetensors are loaded here: other "
                         "formats (.bin, .pt, .ckpt) are pickles, which can run code when opened.")
    return path


@checked(pipe=pipeline, source=check_path)
def check_lora(pipe, source: str | Path) -> LoraFile:
    """Check, before loading, that a LoRA file fits `pipe`: every layer it adapts exists in the pipeline with the
    sizes the file's matrices need. Raises, naming the first layer that does not fit, where diffusers would load
    a file meant for another model without a word (keys it does not know are skipped) or fail deep in peft."""
    path = lora_file(source)
    try:
        state = pipe.lora_state_dict(str(path.parent), weight_name=path.name, use_safetensors=True)
    except Exception as error:  # noqa: BLE001 - any failure to read the file gets the same advice
        raise ValueError(f"{path} does not read as a LoRA file ({type(error).__name__}: {error}).") from None
    layers = {part: 0 for part in PARTS}
    ranks: set[int] = set()
    for key, tensor in state.items():
        part, _, rest = key.partition(".")
        if part not in PARTS:
            raise ValueError(f"{path.name} is not a LoRA for SD3: its key {key!r} names no part of an SD3 "
                             f"pipeline ({', '.join(PARTS)}). It was made for another model (keys such as 'unet' "
                             "or 'lora_unet' are SDXL's and SD 1.5's): use a LoRA trained for SD3 or SD3.5.")
        if ".lora_A." not in f".{rest}" and ".lora_B." not in f".{rest}":
            continue  # alphas and other values beside the matrices
        module_name, which = rest.rsplit(".lora_", 1)
        module = getattr(pipe, part, None)
        try:
            layer = module.get_submodule(module_name) if module is not None else None
        except AttributeError:
            layer = None
        if layer is None or not hasattr(layer, "in_features"):
            raise ValueError(f"{path.name} adapts {part}.{module_name}, which this pipeline's {part} does not have: "
                             "the LoRA was trained for another model. Load it into the pipeline it was trained for.")
        base = getattr(layer, "base_layer", layer)  # a layer already adapted keeps its own inside
        expected = (tensor.shape[0], base.in_features) if which.startswith("A") else (base.out_features,
                                                                                       tensor.shape[1])
        if tuple(tensor.shape) != expected:
            raise ValueError(f"{path.name} adapts {part}.{module_name} with a {tuple(tensor.shape)} matrix, where this "
                             f"pipeline's layer takes {base.in_features} and gives {base.out_features} values: the "
                             "LoRA was trained for another size of model (SD3.5 Large and Medium differ). Load it "
                             "into the model it was trained for.")
        if which.startswith("A"):
            layers[part] += 1
            ranks.add(int(tensor.shape[0]))
    if not any(layers.values()):
        raise ValueError(f"{path.name} holds no LoRA matrices (lora_A / lora_B) for this pipeline: loading it would "
                         "change nothing. Use the file train_lora or save_lora_weights wrote.")
    return LoraFile(path, {part: count for part, count in layers.items() if count}, tuple(sorted(ranks)))


def measure(out: str | Path, recipe: LoraRecipe = LoraRecipe(), *, count: int = 64) -> dict[str, Any]:
    """Train `recipe` on the offline toy model into `out` (or reuse a finished run there) and judge, seed by seed
    over `count` seeds, whether the ring prompts drew rings and whether the old prompts were followed, with the
    adapter and without. On one thread, as the times in this module's notes were measured."""
    import torch

    from helpers.evaluation import evaluation_scenes, generate_batch, judged
    from helpers.loading import load_pipeline
    from helpers.models import get_model

    whole(1, 10_000)(count, "count")
    torch.set_num_threads(1)
    pipe = load_pipeline("toy", machine=None)
    pipe.set_progress_bar_config(disable=True)
    folder = train_lora(pipe, out, recipe, show_progress=False)
    settings = get_model("toy").recommended()
    rings = [concept_scene(seed, recipe.concept) for seed in range(count)]
    old = evaluation_scenes(count)
    found: dict[str, Any] = {}
    for state in ("without", "with"):
        if state == "with":
            pipe.load_lora_weights(folder, adapter_name=TRAINING_ADAPTER)
        drawn = judged(generate_batch(pipe, [item.caption for item in rings], list(range(count)), **settings), rings)
        kept = judged(generate_batch(pipe, [item.caption for item in old], list(range(count)), **settings), old)
        found[f"rings_{state}"] = [int(reading.shape == recipe.concept) for reading in drawn.readings]
        found[f"old_followed_{state}"] = [int(reading.follows(item.colour, item.shape, item.background))
                                          for reading, item in zip(kept.readings, old)]
    pipe.delete_adapters(TRAINING_ADAPTER)
    record = json.loads((Path(folder) / "lora.json").read_text())
    return {"recipe": asdict(recipe), "seeds": count, **found, "training_seconds": record["training_seconds"]}


VARIANTS = {
    "logit_normal (the default)": {},
    "mode": {"weighting_scheme": "mode"},
    "cosmap": {"weighting_scheme": "cosmap"},
    "none": {"weighting_scheme": "none"},
    "logit_normal, preconditioned": {"precondition_outputs": True},
    "sigma_sqrt, preconditioned": {"weighting_scheme": "sigma_sqrt", "precondition_outputs": True},
    "no prior preservation": {"prior_share": 0.0},
}
"""Changes to the default recipe compared on the toy: the weighting options of diffusers' SD3 scripts, and
training without prior preservation."""
VARIANTS_FILE = Path(__file__).parent / "configs" / "lora-variants.json"
"""What `python -m helpers.lora variants` measured: per seed, for each of VARIANTS."""


def measure_variants(folder: str | Path, *, count: int = 64, record: Path = VARIANTS_FILE) -> dict[str, Any]:
    """Train and judge each of VARIANTS into `folder` (one adapter each), saving the results to `record` after
    each: a stopped run goes on where it stopped, and results for the recipes of now are kept."""
    folder = output_folder(folder, "folder")
    results = json.loads(record.read_text()) if record.is_file() else {}
    for label, change in VARIANTS.items():
        recipe = LoraRecipe(**change)
        if results.get(label, {}).get("recipe") == asdict(recipe) and results[label]["seeds"] == count:
            continue
        results[label] = measure(folder / re.sub(r"[^a-z0-9]+", "-", label).strip("-"), recipe, count=count)
        record.write_text(json.dumps(results, indent=1) + "\n")
    return results


@checked(record=check_path)
def variants_table(record: str | Path = VARIANTS_FILE) -> list[dict[str, str]]:
    """The committed comparison as table rows: rings drawn and old prompts followed with each variant's adapter,
    each compared seed by seed with the default's (helpers.experiments.paired_change)."""
    from helpers.experiments import paired_change

    if not record.is_file():
        raise ValueError(f"record={str(record)!r} does not exist: `python -m helpers.lora variants --out FOLDER` "
                         "writes it.")
    results = json.loads(record.read_text())
    missing = [label for label in VARIANTS if label not in results]
    if missing:
        raise ValueError(f"record={str(record)!r} has no results for {', '.join(missing)}: run "
                         "`python -m helpers.lora variants --out FOLDER` to measure them.")
    first = next(iter(VARIANTS))

    def against(key: str, what: str, label: str) -> str:
        if label == first:
            return ""
        change = paired_change(results[first][key], results[label][key])
        verdict = ({"lower": f"fewer {what}", "higher": f"more {what}"}[change.direction] if change.direction
                   else "no evidence of a change")
        return f"{verdict}: fewer in {change.lower}, more in {change.higher}, p = {change.p:.2g}"

    return [{"recipe": label,
             "rings": f"{sum(results[label]['rings_with'])} of {results[label]['seeds']}",
             "against the default": against("rings_with", "rings", label),
             "old prompts followed": f"{sum(results[label]['old_followed_with'])} of {results[label]['seeds']}",
             "old prompts against the default": against("old_followed_with", "prompts followed", label)}
            for label in VARIANTS]


def _true_or_false(value: str) -> bool:
    if value not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"{value!r}: use true or false")
    return value == "true"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.lora", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a LoRA on the offline toy model (resumes a stopped run)")
    train.add_argument("--work", help="folder for checkpoints (default: OUT.work)")
    count = commands.add_parser("measure", help="train on the toy, then count rings and old prompts followed")
    count.add_argument("--count", type=int, default=64, help="paired seeds per count (default 64)")
    variants = commands.add_parser("variants", help=f"measure each of VARIANTS into {VARIANTS_FILE.name}")
    variants.add_argument("--out", required=True, help="folder for the adapters (one per variant)")
    defaults = LoraRecipe()
    for command in (train, count):
        command.add_argument("--out", required=True, help="folder to save the adapter to")
        for name, default in asdict(defaults).items():
            kind = {bool: _true_or_false}.get(type(default), type(default))
            command.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default,
                                 metavar="true|false" if isinstance(default, bool) else None)
    arguments = parser.parse_args(argv)
    try:
        if arguments.command == "variants":
            measure_variants(arguments.out)
            for row in variants_table():
                print(row)
            return 0
        recipe = LoraRecipe(**{name: getattr(arguments, name) for name in asdict(defaults)})
        if arguments.command == "measure":
            print(json.dumps(measure(arguments.out, recipe, count=arguments.count)))
            return 0
        from helpers.loading import load_pipeline

        out = train_lora(load_pipeline("toy", machine=None), arguments.out, recipe, work=arguments.work)
    except ValueError as error:
        parser.error(str(error))
    print(f"saved the adapter to {out}: load it with pipe.load_lora_weights({str(out)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
