"""Where an SD3.5 pipeline's GPU memory goes, and which loading strategy fits which GPU.

Introduced in notebook 02. Weight sizes are exact: every tensor of the full-size models is counted on the `meta`
device, and the bytes of each storage format follow bitsandbytes' layouts. Activation sizes are estimates from
the tensor shapes of one denoising step and of the VAE decode; `python -m helpers.bench` measures real peaks on a
GPU. Every figure is an estimate of `torch.cuda.max_memory_allocated()`: what nvidia-smi shows adds the CUDA
context on top.

    python -m helpers.memory --model large [--size 1024] [--gpu-gb 24] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from functools import cache

from helpers.architecture import stored_tensors
from helpers.models import check_side, get_model

FORMATS = ("fp32", "bf16", "fp16", "int8", "nf4")
FLOAT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
NF4_BLOCK = 64
"""bitsandbytes 4-bit: two weights per byte, plus one float32 scale (absmax) per block of 64 weights."""

# Layers a quantizer leaves alone. diffusers' bitsandbytes quantizer converts every nn.Linear of the SD3
# transformer; transformers keeps T5's feed-forward output layers (`wo`, its `_keep_in_fp32_modules`) unquantized.
# Everything that is not an nn.Linear (embeddings, norms, convolutions, biases, buffers) stays in bf16.
UNQUANTIZED_LINEAR_SUFFIXES = {"text_encoder_3": (".wo",)}
QUANTIZABLE = ("transformer", "text_encoder_3")

GPUS = {"T4": 16, "L4": 24, "A10G": 24, "A100 40GB": 40, "A100/H100 80GB": 80}
"""Cards readers use, by their nominal memory in GB."""
RESERVE_GB = 1.5
"""Assumed unusable part of a card (CUDA context, driver, allocator fragmentation): an assumption, not measured."""

OFFLOAD_MODES = ("none", "model", "sequential", "group", "embeddings-once")


@dataclass(frozen=True)
class Strategy:
    """A way to load a pipeline: how the transformer and T5 are stored, and what is offloaded."""

    description: str
    transformer: str = "bf16"
    t5: str = "bf16"
    """bf16, int8, nf4, or 'drop' (text_encoder_3=None)"""
    offload: str = "none"


STRATEGIES = {
    "gpu": Strategy("everything on the GPU in bf16"),
    "model-offload": Strategy("model CPU offload: one whole model on the GPU at a time", offload="model"),
    "sequential-offload": Strategy("sequential CPU offload: one layer on the GPU at a time", offload="sequential"),
    "group-offload": Strategy("group offload: one block of each model at a time, from CPU memory", offload="group"),
    "no-t5": Strategy("T5 dropped (text_encoder_3=None), the rest on the GPU", t5="drop"),
    "t5-int8": Strategy("T5 in 8-bit, the rest on the GPU", t5="int8"),
    "t5-nf4": Strategy("T5 in NF4, the rest on the GPU", t5="nf4"),
    "nf4": Strategy("transformer in NF4, everything on the GPU", transformer="nf4"),
    "nf4-model-offload": Strategy("transformer in NF4 with model CPU offload (the seed's setup)", transformer="nf4",
                                  offload="model"),
    "nf4-t5-nf4": Strategy("transformer and T5 in NF4, everything on the GPU", transformer="nf4", t5="nf4"),
    "embeddings-once": Strategy("prompt encoded first, text encoders freed, then transformer and VAE",
                                offload="embeddings-once"),
}


@dataclass(frozen=True)
class Breakdown:
    """A component's tensors split into what a quantizer converts and what it leaves in bf16."""

    quantizable_values: int
    quantizable_rows: int
    other_values: int

    def bytes(self, storage: str) -> int:
        """Bytes of the component's weights when the quantizable layers are stored as `storage`."""
        if storage not in FORMATS:
            raise ValueError(f"storage={storage!r} is not a format. Use one of: {', '.join(FORMATS)}.")
        if storage in FLOAT_BYTES:
            return (self.quantizable_values + self.other_values) * FLOAT_BYTES[storage]
        if storage == "nf4":
            quantized = self.quantizable_values // 2 + -(-self.quantizable_values // NF4_BLOCK) * 4
        else:  # int8: one byte per weight plus one float32 scale per output row (LLM.int8)
            quantized = self.quantizable_values + self.quantizable_rows * 4
        return quantized + self.other_values * FLOAT_BYTES["bf16"]


def breakdown_module(component: str, module) -> Breakdown:
    """Split a module's parameters and persistent buffers by the quantizers' rules."""
    import torch

    skipped = UNQUANTIZED_LINEAR_SUFFIXES.get(component, ())
    quantizable_values = quantizable_rows = 0
    counted: set[int] = set()
    if component in QUANTIZABLE:
        for name, layer in module.named_modules():
            if type(layer) is torch.nn.Linear and not name.endswith(skipped):
                quantizable_values += layer.weight.numel()
                quantizable_rows += layer.out_features
                counted.add(id(layer.weight))
    parameters, buffers = stored_tensors(module)
    other_values = sum(t.numel() for t in parameters + buffers if id(t) not in counted)
    return Breakdown(quantizable_values, quantizable_rows, other_values)


@cache
def breakdown(model: str, component: str) -> Breakdown:
    """The Breakdown of a full-size component of `model`, counted on the meta device."""
    from helpers.architecture import meta_component

    return breakdown_module(component, meta_component(model, component))


@dataclass(frozen=True)
class Activations:
    """Estimated working memory (bytes, bf16) of each stage, for one image of `size` x `size` with CFG."""

    text_encoding: int
    denoising: int
    vae_decode: int


def activations(model: str, size: int = 1024, max_sequence_length: int = 256) -> Activations:
    """Estimate each stage's live activations from tensor shapes.

    - Denoising: one transformer block holds about 15 tensors of tokens x hidden size (residual stream, norms,
      q, k, v, attention output, and the 4x-wide MLP twice) for a batch of 2 (prompt and negative prompt).
      PyTorch's fused attention never stores the tokens x tokens matrix. MMDiT-X blocks add q, k, v again.
    - VAE decode: about 6 full-resolution tensors of 128 channels (the last decoder stage), batch 1.
    - Text encoding: T5's feed-forward (3 tensors of tokens x d_ff), batch 2.
    """
    from helpers.architecture import reference_config

    spec = get_model(model)
    transformer = reference_config(spec.transformer_config)
    t5 = reference_config("text_encoder_3-t5xxl")
    vae = reference_config("vae")
    bytes_per_value, batch = 2, 2
    hidden = transformer["num_attention_heads"] * transformer["attention_head_dim"]
    image_tokens = (size // 16) ** 2
    tokens = image_tokens + 77 + max_sequence_length
    per_block = 15 * tokens * hidden
    if transformer.get("dual_attention_layers"):
        per_block += 3 * image_tokens * hidden
    denoising = batch * per_block * bytes_per_value
    vae_decode = 6 * vae["block_out_channels"][0] * size * size * bytes_per_value
    text = batch * 3 * (77 + max_sequence_length) * t5["d_ff"] * bytes_per_value
    return Activations(text_encoding=text, denoising=denoising, vae_decode=vae_decode)


@dataclass(frozen=True)
class Estimate:
    """Estimated peak GPU memory of one strategy, and what it is made of (GB = 10^9 bytes)."""

    strategy: str
    description: str
    peak_gb: float
    weights_on_gpu_gb: float
    activations_gb: float
    peak_stage: str


def _gb(value: int) -> float:
    return round(value / 1e9, 2)


def weights(model: str, strategy: Strategy) -> dict[str, int]:
    """Bytes of each component's weights under `strategy` (T5 dropped: 0)."""
    from helpers.architecture import COMPONENTS

    storage = {"transformer": strategy.transformer, "text_encoder_3": strategy.t5}
    return {
        part: 0 if storage.get(part) == "drop" else breakdown(model, part).bytes(storage.get(part, "bf16"))
        for part in COMPONENTS
    }


@cache
def _largest_piece_bytes(model: str, component: str, level: str) -> int:
    """Bytes (bf16) of the most a component holds on the GPU at once under sequential ('layer') or group
    ('block') offload: its largest layer, or its largest repeated block plus the layers outside its blocks."""
    import torch

    from helpers.architecture import meta_component

    module = meta_component(model, component)
    if level == "layer":
        return 2 * max(sum(p.numel() for p in layer.parameters(recurse=False)) for layer in module.modules())
    block_lists = [m for m in module.modules() if isinstance(m, torch.nn.ModuleList)]
    in_blocks = {id(p) for blocks in block_lists for p in blocks.parameters()}
    outside = sum(p.numel() for p in module.parameters() if id(p) not in in_blocks)
    largest = max((sum(p.numel() for p in block.parameters()) for blocks in block_lists for block in blocks), default=0)
    return 2 * (outside + largest)


def estimate(model: str, strategy: str | Strategy, size: int = 1024) -> Estimate:
    """Estimated peak GPU memory of `model` loaded with `strategy` (a name in STRATEGIES) at `size` x `size`."""
    spec = get_model(model)
    if spec.is_stand_in:
        raise ValueError(f"model={spec.name!r} is an offline model; estimate a full-size model: large, large-turbo or "
                         "medium.")
    if isinstance(strategy, str):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy={strategy!r} is not a strategy. Use one of: {', '.join(STRATEGIES)}.")
        name, strategy = strategy, STRATEGIES[strategy]
    else:
        name = "custom"
    if strategy.offload not in OFFLOAD_MODES:
        raise ValueError(f"offload={strategy.offload!r} is not an offload mode: {', '.join(OFFLOAD_MODES)}.")
    check_side("size", size)
    act = activations(spec.name, size)
    w = weights(spec.name, strategy)
    text = ("text_encoder", "text_encoder_2", "text_encoder_3")
    if strategy.offload == "none":
        on_gpu = {stage: sum(w.values()) for stage in ("text encoding", "denoising", "VAE decode")}
    elif strategy.offload == "model":
        on_gpu = {"text encoding": max(w[p] for p in text), "denoising": w["transformer"], "VAE decode": w["vae"]}
    elif strategy.offload in ("sequential", "group"):
        level = "layer" if strategy.offload == "sequential" else "block"
        piece = {p: _largest_piece_bytes(spec.name, p, level) if w[p] else 0 for p in w}
        on_gpu = {"text encoding": max(piece[p] for p in text), "denoising": piece["transformer"],
                  "VAE decode": piece["vae"]}
    else:  # embeddings-once
        on_gpu = {"text encoding": sum(w[p] for p in text), "denoising": w["transformer"] + w["vae"],
                  "VAE decode": w["transformer"] + w["vae"]}
    working = {"text encoding": act.text_encoding, "denoising": act.denoising, "VAE decode": act.vae_decode}
    stage = max(on_gpu, key=lambda s: on_gpu[s] + working[s])
    return Estimate(
        strategy=name,
        description=strategy.description,
        peak_gb=_gb(on_gpu[stage] + working[stage]),
        weights_on_gpu_gb=_gb(on_gpu[stage]),
        activations_gb=_gb(working[stage]),
        peak_stage=stage,
    )


def fits(peak_gb: float, gpu_gb: float) -> bool:
    """Whether an estimated peak fits a card of `gpu_gb` GB, keeping RESERVE_GB free."""
    if gpu_gb <= 0:
        raise ValueError(f"gpu_gb={gpu_gb} must be a positive number of GB, e.g. 24.")
    return peak_gb + RESERVE_GB <= gpu_gb


def fit_table(model: str, size: int = 1024, gpus: dict[str, float] | None = None) -> list[dict]:
    """One row per strategy: estimated peak and, for each GPU, whether it fits."""
    gpus = gpus or GPUS
    rows = []
    for strategy in STRATEGIES:
        result = estimate(model, strategy, size)
        rows.append(
            {
                **asdict(result),
                "fits": {name: fits(result.peak_gb, memory) for name, memory in gpus.items()},
            }
        )
    return rows


def offload_traffic_gb(model: str, strategy: str = "model-offload") -> float:
    """GB copied between CPU and GPU per image under model offload: each model goes to the GPU and back once."""
    if STRATEGIES[strategy].offload != "model":
        raise ValueError(f"strategy={strategy!r} does not use model offload; use one whose offload is 'model'.")
    return _gb(2 * sum(weights(model, STRATEGIES[strategy]).values()))


def measure_peak_gb(function):
    """Run `function()`; return its result and the peak GPU memory it allocated in GB (None without a GPU)."""
    import torch

    if not torch.cuda.is_available():
        return function(), None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    result = function()
    torch.cuda.synchronize()
    return result, _gb(torch.cuda.max_memory_allocated())


def plot_strategies(model: str, size: int = 1024, gpus: dict[str, float] | None = None):
    """Bar chart of the estimated peak of each strategy, with the usable memory of common GPUs marked."""
    from helpers.images import unshown_subplots

    gpus = gpus or GPUS
    results = [estimate(model, name, size) for name in STRATEGIES]
    figure, axis = unshown_subplots(figsize=(8, 0.4 * len(results) + 1.5))
    names = [result.strategy for result in results]
    axis.barh(names, [r.weights_on_gpu_gb for r in results], label="weights on the GPU", color="tab:blue")
    axis.barh(names, [r.activations_gb for r in results], left=[r.weights_on_gpu_gb for r in results],
              label="working memory (estimate)", color="tab:orange")
    limits = sorted(set(gpus.values()))
    for memory in limits:
        axis.axvline(memory - RESERVE_GB, color="grey", linestyle=":", linewidth=1)
    cards = axis.secondary_xaxis("top")
    cards.set_xticks([memory - RESERVE_GB for memory in limits],
                     ["\n".join(name for name, value in gpus.items() if value == memory) for memory in limits],
                     fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel(f"estimated peak GPU memory (GB); dotted lines: each card's memory less {RESERVE_GB} GB reserve")
    axis.set_title(f"{get_model(model).title}, {size}x{size}: peak by strategy")
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return figure


def format_table(model: str) -> list[dict]:
    """For each component a quantizer can convert: its weights in every storage format, and what stays bf16."""
    rows = []
    for part in QUANTIZABLE:
        split = breakdown(model, part)
        total = split.quantizable_values + split.other_values
        rows.append({
            "component": part,
            **{storage: f"{split.bytes(storage) / 1e9:.2f} GB" for storage in FORMATS},
            "left in bf16": f"{split.other_values / total:.1%} of values",
        })
    return rows


def strategy_table(model: str, size: int = 1024, gpus: dict[str, float] | None = None):
    """The estimated peak of each strategy and which GPUs it fits, as a Table."""
    from helpers.display import Table

    rows = [
        {
            "strategy": row["strategy"],
            "peak (GB)": f"{row['peak_gb']:.1f}",
            "weights": f"{row['weights_on_gpu_gb']:.1f}",
            "working": f"{row['activations_gb']:.1f}",
            "peak during": row["peak_stage"],
            **{name: "fits" if ok else "-" for name, ok in row["fits"].items()},
        }
        for row in fit_table(model, size, gpus)
    ]
    return Table(rows, title=f"{get_model(model).title}, {size}x{size}, one image with CFG: estimated peak GPU memory")


def main(argv: list[str] | None = None) -> int:
    """Print, for each strategy, the estimated peak GPU memory and whether it fits common GPUs."""
    from helpers.models import MODELS

    parser = argparse.ArgumentParser(prog="python -m helpers.memory", description=main.__doc__)
    full_size = [name for name, spec in MODELS.items() if not spec.is_stand_in]
    parser.add_argument("--model", default="large", choices=full_size)
    parser.add_argument("--size", type=int, default=1024, help="image height and width in pixels (default 1024)")
    parser.add_argument("--gpu-gb", type=float, help="check one card of this many GB instead of the common ones")
    parser.add_argument("--json", action="store_true", help="print the same as JSON data")
    args = parser.parse_args(argv)
    gpus = {f"{args.gpu_gb:g} GB": args.gpu_gb} if args.gpu_gb is not None else dict(GPUS)
    try:
        rows = fit_table(args.model, args.size, gpus)
    except ValueError as error:
        parser.error(str(error))
    if args.json:
        print(json.dumps({"model": args.model, "size": args.size, "reserve_gb": RESERVE_GB, "gpus": gpus,
                          "strategies": rows}, indent=2))
        return 0
    print(strategy_table(args.model, args.size, gpus))
    print(f"\n'fits': estimated peak + {RESERVE_GB} GB reserve <= the card's memory. Estimates, not measurements:")
    print("weights are exact, working memory is estimated from tensor shapes (see helpers/memory.py).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
