"""GPU memory for LoRA training of SD3.5 (notebook 11): estimates per recipe, picture size and card.

What one training step holds on the GPU, batch 1, with the prompts encoded and the pictures' latents computed
before training (the text encoders and the VAE then leave the GPU, as diffusers' SD3 LoRA script can arrange):

- the transformer's weights, counted exactly (helpers.memory), in 16 bits or NF4 (QLoRA);
- the adapters in float32 with their gradients, and the optimizer's two moments per value: float32 for AdamW,
  8 bits for bitsandbytes' 8-bit AdamW;
- the activations autograd keeps for the backward pass. These are *measured*, not guessed: the real transformer,
  with the adapters of helpers.lora.TARGETS, runs on PyTorch's `meta` device (shapes, no memory) and every tensor
  autograd saves is added up. Attention is counted as a fused kernel keeps it (its inputs, its output and one
  float32 statistic per query, as FlashAttention and PyTorch's flash and memory-efficient kernels do), not as the
  math kernel's N x N scores. With gradient checkpointing only each block's inputs are kept, and one block's
  activations are made again during the backward pass; its gradients need as much once more (an assumption).

The measured activations are in helpers/configs/lora-activations.json (`python -m helpers.lora_memory` measures
them again, about a minute). These are estimates: no GPU has run a training step of this series yet, and
`helpers.fits` keeps RESERVE_GB free on each card for what they leave out.

    python -m helpers.lora_memory        measures the activations again and prints the table
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from helpers.checks import checked, one_of, pipeline, side, whole
from helpers.models import full_size_model

ACTIVATIONS_FILE = Path(__file__).parent / "configs" / "lora-activations.json"
SIZES = (512, 768, 1024)
CARDS = ("colab-t4", "sagemaker-g5-xlarge", "colab-l4", "colab-a100", "h100")
"""One machine per card of the table: T4 16 GB, A10G 24 GB, L4 24 GB, A100 40 GB, H100 80 GB."""
TEXT_TOKENS = 154
"""Text tokens per caption assumed: 77 from the CLIP encoders and 77 from T5."""
RANK = 16
OPTIMIZER_BYTES = {"adamw": 8, "adamw-8bit": 2}
"""Optimizer state per trained value: two float32 moments, or two 8-bit ones (their per-block scales left out)."""


@dataclass(frozen=True)
class TrainingRecipe:
    title: str
    base: str
    """'bf16' (16-bit weights; float16 on a T4) or 'nf4' (QLoRA)."""
    checkpointing: bool
    optimizer: str


RECIPES = {
    "lora": TrainingRecipe("16-bit base, AdamW", "bf16", False, "adamw"),
    "lora-checkpointing": TrainingRecipe("16-bit base, gradient checkpointing, 8-bit AdamW", "bf16", True,
                                         "adamw-8bit"),
    "qlora": TrainingRecipe("NF4 base (QLoRA), gradient checkpointing, 8-bit AdamW", "nf4", True, "adamw-8bit"),
}


def _flash_like_attention():
    """scaled_dot_product_attention as a fused kernel keeps it for backward: q, k, v, the output and a float32
    log-sum-exp per query. Only ever run on the meta device, for counting."""
    import torch

    class FusedAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, query, key, value):
            out = torch.empty_like(query)
            ctx.save_for_backward(query, key, value, out,
                                  torch.empty(query.shape[:-1], device=query.device, dtype=torch.float32))
            return out

    def attention(query, key, value, *args, **kwargs):
        return FusedAttention.apply(query, key, value)

    return attention


def measure_activations(model: str, size: int, *, checkpointing: bool, rank: int = RANK) -> dict:
    """Bytes autograd keeps for one picture of `size` through `model`'s transformer with LoRA adapters of `rank`,
    counted on the meta device; also the adapters' value count and the number of blocks."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig

    from helpers.architecture import build_component
    from helpers.lora import TARGETS

    transformer = build_component(model, "transformer", device="meta", dtype=torch.bfloat16)
    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(TARGETS)))
    adapters = [parameter for parameter in transformer.parameters() if parameter.requires_grad]
    for parameter in adapters:
        parameter.data = parameter.data.float()
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    kept: dict[int, int] = {}

    def pack(tensor):
        kept[id(tensor)] = tensor.numel() * tensor.element_size()
        return tensor

    config = transformer.config
    latents = torch.empty(1, config.in_channels, size // 8, size // 8, device="meta", dtype=torch.bfloat16)
    text = torch.empty(1, TEXT_TOKENS, config.joint_attention_dim, device="meta", dtype=torch.bfloat16)
    pooled = torch.empty(1, config.pooled_projection_dim, device="meta", dtype=torch.bfloat16)
    exact = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _flash_like_attention()  # diffusers' processors look it up on each call
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            transformer(hidden_states=latents, timestep=torch.ones(1, device="meta"), encoder_hidden_states=text,
                        pooled_projections=pooled, return_dict=False)
    finally:
        F.scaled_dot_product_attention = exact
    return {"kept_bytes": sum(kept.values()), "adapter_values": sum(p.numel() for p in adapters),
            "blocks": config.num_layers}


def measure_all(models=("large", "medium"), sizes=SIZES) -> dict:
    return {model: {str(size): {"checkpointed": measure_activations(model, size, checkpointing=True),
                                "full": measure_activations(model, size, checkpointing=False)}
                    for size in sizes} for model in models}


@cache
def _activations() -> dict:
    return json.loads(ACTIVATIONS_FILE.read_text())


@dataclass(frozen=True)
class TrainingEstimate:
    model: str
    size: int
    recipe: str
    weights_gb: float
    adapters_gb: float
    """The adapters, their gradients and the optimizer's state."""
    activations_gb: float
    peak_gb: float


@checked(model=full_size_model, size=side, recipe=one_of(*RECIPES))
def training_estimate(model: str, size: int = 1024, recipe: str = "qlora") -> TrainingEstimate:
    """GPU memory of one LoRA training step of `model` at `size` x `size` by `recipe` (RECIPES), batch 1."""
    from helpers.memory import _gb, breakdown

    if size not in SIZES:
        raise ValueError(f"size={size} is not one the activations were measured at: use one of "
                         f"{', '.join(map(str, SIZES))}.")
    chosen, measured = RECIPES[recipe], _activations()[get_base(model)][str(size)]
    transformer = breakdown(model, "transformer")
    weights = transformer.bytes("bf16") if chosen.base == "bf16" else transformer.quantized_bytes("nf4", "bfloat16")
    adapters = measured["full"]["adapter_values"] * (4 + 4 + OPTIMIZER_BYTES[chosen.optimizer])
    full = measured["full"]["kept_bytes"]
    one_block = full / measured["full"]["blocks"]
    activations = measured["checkpointed"]["kept_bytes"] + 2 * one_block if chosen.checkpointing else full + one_block
    return TrainingEstimate(model, size, recipe, _gb(weights), _gb(adapters), _gb(activations),
                            _gb(weights + adapters + activations))


def get_base(model: str) -> str:
    """The architecture whose activations `model` shares (Large Turbo is Large's)."""
    return "large" if model.startswith("large") else model


@checked(model=full_size_model)
def training_table(model: str) -> list[dict]:
    """For each recipe and size: the estimated peak, and which cards of CARDS it fits (RESERVE_GB kept free)."""
    from helpers.machines import get_machine
    from helpers.memory import fits

    cards = [get_machine(name) for name in CARDS]
    rows = []
    for name, recipe in RECIPES.items():
        for size in SIZES:
            found = training_estimate(model, size, name)
            rows.append({"recipe": recipe.title, "size": f"{size} px", "estimated peak": f"{found.peak_gb:.1f} GB",
                         **{f"{card.gpu.removeprefix('NVIDIA ').split()[0]} {card.gpu_gb:g} GB":
                            "fits" if fits(found.peak_gb, card.gpu_gb) else "-" for card in cards}})
    return rows


@checked(pipe=pipeline, recipe=one_of(*RECIPES), size=side, steps=whole(1, 1000))
def measure_training_step(pipe, recipe: str, size: int, *, steps: int = 3) -> dict:
    """Run `steps` LoRA training steps of RECIPES[`recipe`] on `pipe`'s transformer as helpers.lora trains (its
    adapters, loss and update), batch 1 at `size` x `size`, on random latents and random prompt embeddings of
    TEXT_TOKENS tokens: what `training_estimate` counts. Returns the seconds per step (the median after the first)
    and the CUDA allocator's peak in GB, which counts everything on the GPU (None on a CPU). A QLoRA recipe needs
    the transformer in NF4 already (helpers.quantization); the transformer is left as it was."""
    import statistics
    import time

    import torch

    from helpers.lora import LoraRecipe, lora_step, training_adapters
    from helpers.quantization import count_4bit_layers

    chosen, transformer = RECIPES[recipe], pipe.transformer
    nf4 = bool(count_4bit_layers(transformer))
    if (chosen.base == "nf4") != nf4:
        raise ValueError(f"recipe={recipe!r} trains a {'NF4' if chosen.base == 'nf4' else '16-bit'} transformer, and "
                         f"this one is {'NF4' if nf4 else 'not'}: quantize it first "
                         "(helpers.quantization.quantize_linear_layers_nf4), or pick the recipe of its weights.")
    config, device, dtype = transformer.config, transformer.device, transformer.dtype
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, config.in_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor,
                          generator=generator).to(device, dtype)
    embeddings = (torch.randn(1, TEXT_TOKENS, config.joint_attention_dim, generator=generator).to(device, dtype),
                  torch.randn(1, config.pooled_projection_dim, generator=generator).to(device, dtype))
    cuda = device.type == "cuda"
    settings = LoraRecipe(rank=RANK, batch=1, gradient_checkpointing=chosen.checkpointing, optimizer=chosen.optimizer)
    seconds = []
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with training_adapters(transformer, settings) as (parameters, optimizer):
        transformer.train()
        for step in range(steps):
            started = time.perf_counter()
            lora_step(pipe, settings, step, latents, embeddings, optimizer, parameters)
            if cuda:
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
    return {"recipe": recipe, "size": size, "steps": steps,
            "seconds_per_step": round(statistics.median(seconds[1:] or seconds), 3),
            "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        print(__doc__)
        return 0 if argv in (["-h"], ["--help"]) else 2
    ACTIVATIONS_FILE.write_text(json.dumps(measure_all(), indent=1, sort_keys=True) + "\n")
    _activations.cache_clear()
    for model in ("large", "medium"):
        for row in training_table(model):
            print(model, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())

