"""Training the offline model: a small SD3 pipeline that learns the toy world of helpers.world on a CPU.

Introduced in notebook 09. The model is built from the same diffusers and transformers classes as SD3.5
(SD3Transformer2DModel, a 16-channel AutoencoderKL, two CLIPTextModelWithProjection, T5EncoderModel,
FlowMatchEulerDiscreteScheduler), only much smaller, and saved with `save_pretrained` so that it loads like
any SD3.5 model. Training has two stages:

1. the VAE learns to squeeze 64x64 pictures into 8x8x16 latents and back (reconstruction loss, a small KL term);
2. the transformer and the three text encoders learn, together, to turn noise into the latents of a scene
   described by its caption: flow matching, as SD3 was trained, with captions dropped 10% of the time so that
   classifier-free guidance has an unconditional prediction to push away from, and an exponential moving
   average (EMA) of the weights as the model that ships.

Every random choice (scenes, captions, noise, noise levels) is drawn from the seed and the step number, so a run
that is stopped resumes from its last checkpoint where it was, and on one CPU thread (`torch.set_num_threads(1)`)
the same recipe gives the same weights bit for bit. With two threads, about one process in three of the short test
recipe came out different in the last bits of float32 (measured here: the first transformer step's gradients
differ in about the seventh digit), so tests that compare weights bit for bit train on one thread.

    python -m helpers.training train --out my-model       # the shipped recipe; minutes on a GPU, ~1 h on a CPU
    python -m helpers.training train --out quick --vae-steps 50 --steps 50    # a short run that shows the loop
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers import world
from helpers.checks import check_path, checked, flag, instance, number, one_of, optional, output_folder, whole

if TYPE_CHECKING:
    import numpy as np
    import torch

CLIP_MAX_LENGTH = 16
"""Tokens per prompt the toy's CLIP encoders read (SD3.5's read 77); captions of the toy world need at most 9."""
T5_MAX_LENGTH = 16
"""Tokens per prompt the toy's T5 encoder reads (`max_sequence_length`; diffusers' default is 256)."""
EXTRA_WORDS = ["circle", "square", "triangle", "shape", "background"]

TOY_CONFIGS: dict[str, dict[str, Any]] = {
    # Two CLIP encoders of width 64 (their hidden states side by side make T5's width, 128, as 768 + 1280 pad
    # to 4096 in SD3.5); projections of 64 each make the pooled vector of 128.
    "text_encoder": {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "projection_dim": 64, "max_position_embeddings": CLIP_MAX_LENGTH, "hidden_act": "gelu",
    },
    "text_encoder_3": {
        "d_model": 128, "d_ff": 256, "d_kv": 32, "num_heads": 4, "num_layers": 2,
        "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 16, "dropout_rate": 0.0,
    },
    # 64 px pictures / VAE factor 8 = 8x8 latents; patch 2 gives 16 image tokens. pos_embed_max_size 16 allows
    # up to 256 px. qk RMS-norm as in SD3.5.
    "transformer": {
        "sample_size": 8, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 6,
        "attention_head_dim": 32, "num_attention_heads": 4, "joint_attention_dim": 128,
        "caption_projection_dim": 128, "pooled_projection_dim": 128, "pos_embed_max_size": 16,
        "qk_norm": "rms_norm",
    },
    # Four levels give SD3.5's scale factor 8; 16 latent channels as in SD3.5.
    "vae": {
        "in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": [16, 32, 32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 1, "norm_num_groups": 8, "sample_size": world.SIZE, "use_quant_conv": False,
        "use_post_quant_conv": False,
    },
    "scheduler": {"num_train_timesteps": 1000, "shift": 3.0},
}


SHARES = ("caption_dropout", "t5_dropout", "attribute_dropout", "ema_decay")
"""Recipe values that are shares (from 0 to 1)."""
RECIPE_BOUNDS = {"seed": whole(0, 2**32 - 1), "vae_steps": whole(1, 1_000_000), "steps": whole(1, 1_000_000),
                 "batch": whole(1, 4096), "vae_batch": whole(1, 4096), "checkpoint_every": whole(1, 1_000_000)}
"""What the command line accepts for each recipe value: far beyond the recipe's own, short of filling the memory
(a batch of 64 pictures of 64 px takes about 1 GB here) or running for months."""


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights. The defaults are the shipped model's recipe."""

    seed: int = 0
    pool: int = 30000
    """How many scenes are drawn for training (each seen many times, with different captions and noise)."""
    vae_steps: int = 1500
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    steps: int = 8000
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    """Share of captions replaced by "" (so the model also learns the unconditional prediction CFG needs)."""
    t5_dropout: float = 0.1
    """Share of examples whose T5 embeddings are zeroed, as the pipeline does when T5 is left out."""
    attribute_dropout: float = 0.3
    """Chance that each of colour, shape and background is left out of a caption."""
    logit_mean: float = 0.0
    logit_std: float = 1.0
    checkpoint_every: int = 250

    def __post_init__(self) -> None:
        """Every value checked when a recipe is made: whole numbers in their bounds, rates and shares finite."""
        from dataclasses import fields

        for item in fields(self):
            value = getattr(self, item.name)
            if item.type == "int":
                RECIPE_BOUNDS.get(item.name, whole(0, 10_000_000))(value, item.name)
            elif item.name in SHARES:
                number(0, 1)(value, item.name)
            else:
                number(-10, 10)(value, item.name)


@dataclass
class Progress:
    """What a run has done so far: saved in its checkpoints, and with the model when it is finished."""

    vae_step: int = 0
    step: int = 0
    vae_loss: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    latent_shift: float | None = None
    latent_scale: float | None = None


def code_version() -> str:
    """A digest of the code that defines the toy world and the training: it changes when either changes."""
    digest = hashlib.sha256()
    for module in (world, sys.modules[__name__]):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:12]


def toy_tokenizers():
    """The tokenizers of the toy: the stand-in's, knowing the toy world's words, with the toy's CLIP length."""
    from helpers.tiny import _clip_tokenizer, _t5_tokenizer

    clip, t5 = _clip_tokenizer(EXTRA_WORDS), _t5_tokenizer(EXTRA_WORDS)
    clip.model_max_length = CLIP_MAX_LENGTH
    return clip, t5


def build_toy_pipeline(seed: int = 0):
    """The untrained toy pipeline: SD3.5's classes at the toy's sizes, weights drawn from `seed`."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    from helpers.tiny import text_encoder_configs

    clip_tokenizer, t5_tokenizer = toy_tokenizers()
    clip, t5 = text_encoder_configs(TOY_CONFIGS, clip_tokenizer, t5_tokenizer)
    parts = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts["transformer"] = SD3Transformer2DModel(**TOY_CONFIGS["transformer"])
        parts["vae"] = AutoencoderKL(**TOY_CONFIGS["vae"])
        parts["text_encoder"] = CLIPTextModelWithProjection(clip)
        parts["text_encoder_2"] = CLIPTextModelWithProjection(clip)
        parts["text_encoder_3"] = T5EncoderModel(t5)
    return StableDiffusion3Pipeline(
        **parts, tokenizer=clip_tokenizer, tokenizer_2=clip_tokenizer, tokenizer_3=t5_tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(**TOY_CONFIGS["scheduler"]),
    )


# --- Data ------------------------------------------------------------------------------------------------------


def training_caption(spec: world.Scene, rng: random.Random, recipe: Recipe) -> str:
    """The caption a training example gets: empty at the caption-dropout rate, else the scene's caption with
    each attribute left out at the attribute-dropout rate (never all three)."""
    if rng.random() < recipe.caption_dropout:
        return ""
    while True:
        keep = [rng.random() >= recipe.attribute_dropout for _ in range(3)]
        if any(keep):
            break
    return world.caption(spec.colour if keep[0] else None, spec.shape if keep[1] else None,
                         spec.background if keep[2] else None)


def pictures_to_tensor(pictures) -> torch.Tensor:
    """uint8 pictures (N, H, W, 3) as the VAE's input: float (N, 3, H, W) in [-1, 1]."""
    import torch

    return torch.from_numpy(pictures).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


POOL_SEEDS_START = 10_000_000
"""Training scenes are those of seeds from here on; evaluations use seeds below it, scenes the model never saw."""


def pool_seeds(recipe: Recipe) -> range:
    start = POOL_SEEDS_START + recipe.seed * recipe.pool
    return range(start, start + recipe.pool)


def scene_pool(recipe: Recipe, work: Path | None = None):
    """The training scenes and their pictures (uint8, N x 64 x 64 x 3), kept in `work` once drawn."""
    import numpy as np

    seeds = pool_seeds(recipe)
    cached = None if work is None else work / "pool.npy"
    if cached is not None and cached.is_file():
        scenes = [world.scene(seed) for seed in seeds]
        return scenes, _checked_pool(cached, scenes)
    scenes, pictures = world.dataset(seeds)
    if cached is not None:
        staging = cached.with_name(".pool.partial.npy")
        np.save(staging, pictures)
        os.replace(staging, cached)
    return scenes, pictures


def _checked_pool(path: Path, scenes: list) -> np.ndarray:
    """The pictures kept in `path`, if they are this recipe's pool: uint8 of the right shape (never unpickled), and
    64 pictures spread through it drawn again and compared pixel for pixel. Else a clear error: a pool that is
    damaged or replaced would train the model on other pictures without a word."""
    import numpy as np

    def refuse(why: str) -> ValueError:
        return ValueError(f"{path} is not the picture pool of this recipe ({why}): move it away, and the next run "
                          "draws the pool again.")

    try:
        pictures = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise refuse(f"it does not read as a NumPy array: {error}") from None
    expected = (len(scenes), world.SIZE, world.SIZE, 3)
    if pictures.dtype != np.uint8 or pictures.shape != expected:
        raise refuse(f"{pictures.dtype} {pictures.shape} where uint8 {expected} was drawn")
    for index in np.linspace(0, len(scenes) - 1, 64).astype(int):
        if not np.array_equal(pictures[index], np.asarray(scenes[index].draw())):
            raise refuse(f"picture {index} is not the scene of its seed")
    return pictures


def batch_indices(recipe: Recipe, stage: str, step: int, size: int) -> list[int]:
    """Which pool scenes one batch holds: different for every stage and step, the same on every run."""
    return step_rng(recipe, f"{stage}-batch", step).sample(range(recipe.pool), size)


def step_rng(recipe: Recipe, stage: str, step: int) -> random.Random:
    """The random choices of one step (captions, dropouts), the same on every run."""
    return random.Random(f"{recipe.seed}-{stage}-{step}")


def step_seed(recipe: Recipe, stage: str, step: int) -> int:
    """A torch seed for one step's noise, the same on every run (Python's own hash() of text is not)."""
    return int(hashlib.sha256(f"{recipe.seed}-{stage}-{step}-noise".encode()).hexdigest()[:8], 16)


# --- Checkpoints -----------------------------------------------------------------------------------------------


CHECKPOINT = "checkpoint.safetensors"
"""A run's checkpoint: its tensors in safetensors, the structure around them (stage, progress, optimizer settings)
as JSON in the file's metadata. Nothing is unpickled, so a planted file cannot run code."""


def _flatten(value: Any, prefix: str, tensors: dict) -> Any:
    """`value` with every tensor replaced by {"tensor": key}, the tensors collected in `tensors`."""
    import torch

    if isinstance(value, torch.Tensor):
        # tied weights (T5's embeddings) appear twice in a state dict: stored once, referenced by both
        same = (value.data_ptr(), value.dtype, tuple(value.shape), value.stride()) if value.numel() else None
        seen = tensors.setdefault("__seen__", {})
        if same is not None and same in seen:
            return {"tensor": seen[same]}
        tensors[prefix] = value.detach().clone().contiguous()
        if same is not None:
            seen[same] = prefix
        return {"tensor": prefix}
    if isinstance(value, dict):
        return {"dict": [[key, _flatten(item, f"{prefix}/{key}", tensors)] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"list": [_flatten(item, f"{prefix}/{index}", tensors) for index, item in enumerate(value)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(f"a checkpoint cannot hold {type(value).__name__} at {prefix!r}")


def _unflatten(node: dict, tensors: dict) -> Any:
    if "tensor" in node:
        return tensors[node["tensor"]]
    if "dict" in node:
        return {key: _unflatten(item, tensors) for key, item in node["dict"]}
    if "list" in node:
        return [_unflatten(item, tensors) for item in node["list"]]
    return node["value"]


def save_checkpoint(payload: dict, path: Path) -> None:
    from safetensors.torch import save_file

    tensors: dict = {}
    structure = _flatten(payload, "", tensors)
    tensors.pop("__seen__", None)
    staging = path.with_name(f".{path.name}.partial")
    save_file(tensors, staging, metadata={"structure": json.dumps(structure)})
    os.replace(staging, path)


def load_checkpoint(path: Path) -> dict | None:
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="pt") as file:
            structure = json.loads(file.metadata()["structure"])
            tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 - safe_open is no dict
        return _unflatten(structure, tensors)
    except Exception as error:  # noqa: BLE001 - any damage to the file ends in the same advice
        raise ValueError(f"The checkpoint {path} is damaged or not one of helpers.training's ({type(error).__name__}: "
                         f"{error}). Delete it to train that stage again from its start.") from None


def saved_by_us(out: Path, summary: str, beside: str, keys: set[str]) -> bool:
    """Whether the folder `out` holds what a run of ours saved: a JSON `summary` naming `keys`, with `beside` next to
    it (a folder that is a link, or whose summary does not read, is not)."""
    if not out.is_dir() or out.is_symlink() or not (out / summary).is_file() or not (out / beside).is_file():
        return False
    try:
        return keys <= set(json.loads((out / summary).read_text()))
    except (OSError, ValueError):
        return False


def claim_work_folder(work: Path, wanted: dict, differs: str, option: str) -> None:
    """Mark `work` as holding checkpoints of `wanted` (a recipe and what else decides them), refusing a folder that
    holds checkpoints of something else (`differs` names what, `option` the parameter that picks another)."""
    recipe_file = work / "recipe.json"
    try:
        found = json.loads(recipe_file.read_text()) if recipe_file.is_file() else wanted
    except (OSError, ValueError):
        found = None  # damaged: not the recipe wanted
    if found != wanted:
        raise ValueError(f"work={str(work)!r} holds checkpoints of {differs}: delete that folder to start again, or "
                         f"pass another {option} folder.")
    recipe_file.write_text(json.dumps(wanted, indent=1))


def _check_out(out: Path) -> None:
    """`out` may be written: it does not exist, or it is a pipeline an earlier run of this command saved (its
    training.json names a recipe and a code version). Anything else is the reader's: refused, never removed."""
    if (out.exists() or out.is_symlink()) and not saved_by_us(out, "training.json", "model_index.json",
                                                              {"recipe", "code_version"}):
        raise ValueError(f"--out {str(out)!r} exists and is not a model this command trained: it is left as it is. "
                         "Choose a folder that does not exist yet, or move that one away yourself.")


# --- Stage 1: the VAE ------------------------------------------------------------------------------------------


def _learning_rate(recipe: Recipe, step: int, base: float, total: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the base rate."""
    if step < recipe.warmup:
        return base * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, total - recipe.warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _optimizer_step(optimizer, loss, parameters) -> None:
    """One update: gradients of `loss`, clipped to norm 1, applied."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()


def train_vae(vae, pictures, recipe: Recipe, progress: Progress, checkpoint: Path, *,
              show_progress: bool = True) -> None:
    """Train the VAE to `recipe.vae_steps`, resuming from `checkpoint` and saving to it as it goes."""
    import torch
    from tqdm.auto import tqdm

    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    saved = load_checkpoint(checkpoint)
    if saved is not None and saved["stage"] == "vae":
        vae.load_state_dict(saved["vae"])
        optimizer.load_state_dict(saved["optimizer"])
    vae.train()
    bar = tqdm(total=recipe.vae_steps, initial=progress.vae_step, desc="VAE", disable=not show_progress)
    started = time.monotonic()
    while progress.vae_step < recipe.vae_steps:
        step = progress.vae_step
        images = pictures_to_tensor(pictures[batch_indices(recipe, "vae", step, recipe.vae_batch)])
        torch.manual_seed(step_seed(recipe, "vae", step))
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(recipe, step, recipe.vae_lr, recipe.vae_steps)
        posterior = vae.encode(images).latent_dist
        decoded = vae.decode(posterior.sample()).sample
        reconstruction = torch.nn.functional.mse_loss(decoded, images) + 0.1 * (decoded - images).abs().mean()
        kl = posterior.kl().mean() / images[0].numel()
        _optimizer_step(optimizer, reconstruction + recipe.vae_kl_weight * kl, vae.parameters())
        progress.vae_step += 1
        progress.vae_loss.append(round(reconstruction.item(), 6))
        bar.update(1)
        bar.set_postfix(loss=f"{progress.vae_loss[-1]:.4f}")
        if progress.vae_step % recipe.checkpoint_every == 0 or progress.vae_step == recipe.vae_steps:
            progress.seconds += time.monotonic() - started
            started = time.monotonic()
            save_checkpoint({"stage": "vae", "vae": vae.state_dict(), "optimizer": optimizer.state_dict(),
                          "progress": asdict(progress)}, checkpoint)
    bar.close()
    vae.eval()


def latent_statistics(vae, pictures, count: int = 2048) -> tuple[float, float]:
    """The shift and scale that make the VAE's latents of the toy world mean 0 and standard deviation 1, as
    SD3.5's VAE config holds them (its `shift_factor` and `scaling_factor`)."""
    latents, _ = encode_pool(vae, pictures[:count], chunk=128)
    shift = float(latents.mean())
    return round(shift, 4), round(1.0 / float((latents - shift).std()), 4)


# --- Stage 2: the transformer and the text encoders ------------------------------------------------------------


TRAINED_PARTS = ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3")


def _trained_parameters(pipe) -> list:
    return [parameter for part in TRAINED_PARTS for parameter in getattr(pipe, part).parameters()]


def encode_captions(pipe, captions: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt embeddings and pooled embeddings of `captions` as training feeds them to the transformer."""
    prompt_embeds, _, pooled, _ = pipe.encode_prompt(
        captions, captions, captions, do_classifier_free_guidance=False, max_sequence_length=T5_MAX_LENGTH,
        device=device,
    )
    return prompt_embeds, pooled


def flow_matching_loss(pipe, recipe: Recipe, step: int, latents: torch.Tensor, captions: list[str],
                       drop_t5: torch.Tensor, *, embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                       weighting_scheme: str = "logit_normal", mode_scale: float = 1.29,
                       precondition_outputs: bool = False) -> torch.Tensor:
    """The loss of one batch: noise the latents to random levels, ask the transformer for the velocity
    (noise minus latent) that leads back, compare with the truth.

    Noise levels follow SD3's recipe: a logit-normal draw, then the scheduler's shift (3.0), which puts more of
    the training on high noise where the composition is decided. `embeddings` (of `captions`, by
    `encode_captions`) skips the text encoders: for training with them frozen, where they can be run once.

    `weighting_scheme`, `mode_scale` and `precondition_outputs` are the options of diffusers' SD3 training scripts,
    computed by diffusers' own `compute_density_for_timestep_sampling` and `compute_loss_weighting_for_sd3`
    (diffusers.training_utils): "logit_normal" and "mode" draw the noise levels from those densities; "sigma_sqrt",
    "cosmap" and "none" draw them uniformly, and the first two weight each picture's loss by its noise level
    instead. `precondition_outputs` compares the clean latent the prediction implies (noisy - sigma * velocity)
    with the true one, which is the velocity loss times sigma squared.
    """
    import torch
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

    generator = torch.Generator().manual_seed(step_seed(recipe, "transformer", step))  # on the CPU: any device
    shift = pipe.scheduler.config.shift
    u = compute_density_for_timestep_sampling(weighting_scheme, len(latents), recipe.logit_mean, recipe.logit_std,
                                              mode_scale, generator=generator)
    sigmas = (shift * u / (1 + (shift - 1) * u)).to(latents.device, latents.dtype)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    noisy = (1 - sigmas[:, None, None, None]) * latents + sigmas[:, None, None, None] * noise
    if embeddings is None:
        embeddings = encode_captions(pipe, captions, latents.device)
    prompt_embeds, pooled = embeddings
    t5_start = prompt_embeds.shape[1] - T5_MAX_LENGTH
    keep = (~drop_t5).to(prompt_embeds.device, prompt_embeds.dtype)[:, None, None]
    prompt_embeds = torch.cat([prompt_embeds[:, :t5_start], prompt_embeds[:, t5_start:] * keep], dim=1)
    velocity = pipe.transformer(hidden_states=noisy, timestep=sigmas * 1000, encoder_hidden_states=prompt_embeds,
                                pooled_projections=pooled, return_dict=False)[0]
    prediction, target = velocity, noise - latents
    if precondition_outputs:
        prediction, target = noisy - sigmas[:, None, None, None] * velocity, latents
    if weighting_scheme not in ("sigma_sqrt", "cosmap"):  # weights of 1: the plain mean, summed as it always was
        return torch.nn.functional.mse_loss(prediction, target)
    weighting = compute_loss_weighting_for_sd3(weighting_scheme, sigmas)
    return (weighting * ((prediction - target).float() ** 2).mean(dim=(1, 2, 3))).mean()


def encode_pool(vae, pictures, *, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's latent distribution (mean, standard deviation) of every picture, computed once."""
    import torch

    means, stds = [], []
    with torch.no_grad():
        for start in range(0, len(pictures), chunk):
            dist = vae.encode(pictures_to_tensor(pictures[start : start + chunk]).to(vae.device, vae.dtype)).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def sample_latents(vae, means, stds, indices, generator) -> torch.Tensor:
    """A draw from the latent distribution of each picture, scaled as the SD3 pipelines scale latents:
    (sample - shift_factor) * scaling_factor."""
    import torch

    noise = torch.randn(means[indices].shape, generator=generator).to(means.device, means.dtype)
    sample = means[indices] + stds[indices] * noise
    return (sample - vae.config.shift_factor) * vae.config.scaling_factor


def train_transformer(pipe, ema, scenes, pictures, recipe: Recipe, progress: Progress, checkpoint: Path, *,
                      show_progress: bool = True) -> None:
    """Train the transformer and text encoders to `recipe.steps`, updating the EMA copy `ema` (a dict of
    tensors), resuming from `checkpoint` and saving to it as it goes."""
    import torch
    from tqdm.auto import tqdm

    parameters = _trained_parameters(pipe)
    names = [name for part in TRAINED_PARTS for name, _ in getattr(pipe, part).named_parameters(prefix=part)]
    optimizer = torch.optim.AdamW(parameters, lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.99))
    saved = load_checkpoint(checkpoint)
    if saved is not None and saved["stage"] == "transformer":
        for part in TRAINED_PARTS:
            getattr(pipe, part).load_state_dict(saved[part])
        optimizer.load_state_dict(saved["optimizer"])
        ema.update(saved["ema"])
    for part in TRAINED_PARTS:
        getattr(pipe, part).train()
    means, stds = encode_pool(pipe.vae, pictures)
    bar = tqdm(total=recipe.steps, initial=progress.step, desc="transformer", disable=not show_progress)
    started = time.monotonic()
    while progress.step < recipe.steps:
        step = progress.step
        rng = step_rng(recipe, "transformer", step)
        indices = batch_indices(recipe, "transformer", step, recipe.batch)
        captions = [training_caption(scenes[index], rng, recipe) for index in indices]
        drop_t5 = torch.tensor([rng.random() < recipe.t5_dropout for _ in indices])
        latents = sample_latents(pipe.vae, means, stds, indices, torch.Generator().manual_seed(rng.randrange(2**31)))
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(recipe, step, recipe.lr, recipe.steps)
        loss = flow_matching_loss(pipe, recipe, step, latents, captions, drop_t5)
        _optimizer_step(optimizer, loss, parameters)
        # The EMA warms up: early on it follows the weights closely, later it averages over ~1/(1-decay) steps.
        decay = min(recipe.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, parameter in zip(names, parameters, strict=True):
                ema[name].mul_(decay).add_(parameter.detach(), alpha=1 - decay)
        progress.step += 1
        progress.loss.append(round(loss.item(), 6))
        bar.update(1)
        bar.set_postfix(loss=f"{sum(progress.loss[-50:]) / len(progress.loss[-50:]):.4f}")
        if progress.step % recipe.checkpoint_every == 0 or progress.step == recipe.steps:
            progress.seconds += time.monotonic() - started
            started = time.monotonic()
            save_checkpoint({"stage": "transformer", **{part: getattr(pipe, part).state_dict() for part in TRAINED_PARTS},
                          "vae": pipe.vae.state_dict(), "optimizer": optimizer.state_dict(), "ema": ema,
                          "progress": asdict(progress)}, checkpoint)
    bar.close()


def _apply_ema(pipe, ema: dict) -> None:
    import torch

    with torch.no_grad():
        for part in TRAINED_PARTS:
            for name, parameter in getattr(pipe, part).named_parameters(prefix=part):
                parameter.copy_(ema[name])


# --- The whole run ---------------------------------------------------------------------------------------------


@checked(out=check_path, recipe=instance(Recipe, "a helpers.training.Recipe"), work=optional(check_path),
         show_progress=flag, save_dtype=one_of("float16", "bfloat16", "float32"))
def train(out: str | Path, recipe: Recipe = Recipe(), *, work: str | Path | None = None,
          show_progress: bool = True, save_dtype: str = "float16") -> Path:
    """Train the toy pipeline by `recipe` and save it to `out` (the EMA weights, in `save_dtype`), with
    `training.json` beside it: the recipe, the code version, the losses and how long it took.

    Checkpoints go to `work` (default: `out` + '.work'); run the same command again after a stop to resume.
    """
    import torch

    out = check_path(out, "--out")
    _check_out(out)  # before any work: an hour of training must not end in a refusal
    output_folder(out.parent, "--out")  # its folder can be written (the result is renamed into place there)
    work = output_folder(work if work is not None else out.with_name(out.name + ".work"), "--work")
    checkpoint = work / CHECKPOINT
    claim_work_folder(work, {"recipe": asdict(recipe), "code": code_version()}, "another recipe or code version",
                      "--work")

    pipe = build_toy_pipeline(recipe.seed)
    scenes, pictures = scene_pool(recipe, work)
    saved = load_checkpoint(checkpoint)
    progress = Progress(**saved["progress"]) if saved else Progress()
    if saved and saved["stage"] == "transformer":
        pipe.vae.load_state_dict(saved["vae"])
    else:
        train_vae(pipe.vae, pictures, recipe, progress, checkpoint, show_progress=show_progress)
    pipe.vae.eval()
    if progress.latent_shift is None:
        progress.latent_shift, progress.latent_scale = latent_statistics(pipe.vae, pictures)
    pipe.vae.register_to_config(shift_factor=progress.latent_shift, scaling_factor=progress.latent_scale)
    pipe.vae.requires_grad_(False)

    ema = {name: parameter.detach().clone() for part in TRAINED_PARTS
           for name, parameter in getattr(pipe, part).named_parameters(prefix=part)}
    train_transformer(pipe, ema, scenes, pictures, recipe, progress, checkpoint, show_progress=show_progress)
    _apply_ema(pipe, ema)
    for part in (*TRAINED_PARTS, "vae"):
        getattr(pipe, part).eval().requires_grad_(False)

    staging = out.with_name(f".{out.name}.partial")
    pipe.to(getattr(torch, save_dtype)).save_pretrained(staging, safe_serialization=True)
    load_text_encoders_in_float32(staging)
    summary = {
        "code_version": code_version(),
        "recipe": asdict(recipe),
        "configs": TOY_CONFIGS,
        "clip_max_length": CLIP_MAX_LENGTH,
        "t5_max_length": T5_MAX_LENGTH,
        "saved_dtype": save_dtype,
        "vae_steps": progress.vae_step,
        "steps": progress.step,
        "final_vae_loss": _tail_mean(progress.vae_loss),
        "final_loss": _tail_mean(progress.loss),
        "loss_curve": _curve(progress.loss),
        "vae_loss_curve": _curve(progress.vae_loss),
        "latent_shift": progress.latent_shift,
        "latent_scale": progress.latent_scale,
        "training_seconds": round(progress.seconds),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
    }
    (staging / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
    from helpers.manifest import write_manifest

    write_manifest(staging)  # checked whenever the helpers load this folder
    if out.exists():  # an earlier run's model (checked again: the folder may have changed during training)
        import shutil

        _check_out(out)
        shutil.rmtree(out)
    os.replace(staging, out)
    return out


TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def load_text_encoders_in_float32(folder: Path) -> None:
    """Let the plain call, `StableDiffusion3Pipeline.from_pretrained(folder)` with no dtype, run. Given no dtype,
    transformers 5 loads a text encoder in the dtype its config names (`save_pretrained` writes the weights' own,
    float16 here) while diffusers loads the transformer and the VAE in float32: the first picture then stops with
    "Input type (c10::Half) and bias type (float) should be the same". Naming float32 in the encoders' configs
    loads every part in float32, the toy's dtype on a CPU; the weights on disk keep `saved_dtype`."""
    for name in TEXT_ENCODERS:
        path = folder / name / "config.json"
        config = json.loads(path.read_text())
        config["dtype"] = "float32"
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _tail_mean(values: list[float], count: int = 100) -> float | None:
    tail = values[-count:]
    return round(sum(tail) / len(tail), 5) if tail else None


def _curve(values: list[float], points: int = 40) -> list[tuple[int, float]]:
    """The loss every len/points steps, each the mean of the steps since the previous point."""
    if not values:
        return []
    every = max(1, len(values) // points)
    return [(end, round(sum(values[end - every : end]) / every, 5)) for end in range(every, len(values) + 1, every)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.training", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("train", help="train the toy pipeline (resumes where a stopped run left off)")
    run.add_argument("--out", required=True, help="folder to save the trained pipeline to")
    run.add_argument("--work", help="folder for checkpoints (default: OUT.work)")
    defaults = Recipe()
    for name in ("seed", "vae_steps", "steps", "batch", "vae_batch", "checkpoint_every"):
        run.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    arguments = parser.parse_args(argv)
    recipe_values = {name: getattr(arguments, name)
                     for name in ("seed", "vae_steps", "steps", "batch", "vae_batch", "checkpoint_every")}
    for name, value in recipe_values.items():
        try:
            RECIPE_BOUNDS[name](value, f"--{name.replace('_', '-')}")
        except ValueError as error:
            parser.error(str(error))
    try:
        out = train(arguments.out, Recipe(**recipe_values), work=arguments.work)
    except ValueError as error:
        parser.error(str(error))
    print(f"saved the trained pipeline to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
