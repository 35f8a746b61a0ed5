"""Where an SD3.5 pipeline's GPU memory goes, and which loading strategy fits which machine.

Introduced in notebook 02. Machines come from helpers.machines; the estimates follow the dtype a machine computes
in (bf16, or float16 below compute capability 8.0) and the kernels it has for it. Weight sizes are exact: every tensor of the full-size models is counted on the `meta`
device, and the bytes of each storage format follow bitsandbytes' layouts. Working memory is estimated from tensor
shapes, with the two terms that dominate it (the VAE decode, and attention on GPUs without fused bf16 kernels)
calibrated on an H100 by `python -m helpers.gpu_check` (helpers/gpu_runs/). GPU figures estimate
`torch.cuda.max_memory_allocated()`: what nvidia-smi shows adds the CUDA context on top. Host figures estimate the
Python process's largest resident memory (RSS), which CPU offload fills with the weights it keeps there.

    python -m helpers.memory --model large [--size 1024] [--machine colab-t4 | --gpu-gb 16 --host-gb 12.7
                             --compute-capability 7.5] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, replace
from functools import cache

from helpers.architecture import stored_tensors
from helpers.checks import check_max_sequence_length, checked, flag, function, one_of, optional, shown, side
from helpers.machines import MACHINES, Machine, get_machine, machine_rule
from helpers.models import full_size_model, get_model

FORMATS = ("fp32", "bf16", "fp16", "int8", "nf4")
FLOAT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
NF4_BLOCK = 64
"""bitsandbytes 4-bit: two weights per byte, plus one float32 scale (absmax) per block of 64 weights."""

# Layers a quantizer leaves alone. diffusers' bitsandbytes quantizer converts every nn.Linear of the SD3
# transformer; transformers keeps T5's feed-forward output layers (`wo`, its `_keep_in_fp32_modules`) unquantized.
# Everything that is not an nn.Linear (embeddings, norms, convolutions, biases, buffers) stays in bf16.
UNQUANTIZED_LINEAR_SUFFIXES = {"text_encoder_3": (".wo",)}
QUANTIZABLE = ("transformer", "text_encoder_3")
FLOAT32_IN_FLOAT16 = {"text_encoder_3": (".wo",)}
"""Layers transformers keeps in float32 when a model loads in float16 (T5's `_keep_in_fp32_modules`; in bf16 they
stay bf16): `transformers/modeling_utils.py`, the dtype plan."""
STORAGE_OF_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}



RESERVE_GB = 1.5
"""Assumed unusable part of a GPU's memory (CUDA context, driver, allocator fragmentation): an assumption, not measured."""
HOST_RESERVE_GB = 1.0
"""Assumed part of the host's memory taken by the system and Jupyter: an assumption, not measured."""

VAE_DECODE_BYTES_PER_PIXEL = 2_480
"""Working memory of the VAE decode per output pixel (bf16, one image): 2.60 GB at 1024x1024, measured on an H100
as the peak minus the weights on the GPU, the same for Medium and Large (helpers/gpu_runs/h100-run1.json)."""
MATH_ATTENTION_BYTES_PER_SCORE = 9
"""Extra working memory per attention score (batch x heads x tokens x tokens) when PyTorch runs attention with its
math kernel, as it does for bf16 on GPUs without fused bf16 kernels (T4, V100): 8.95 bytes for Medium and 8.99 for
Large at 1024x1024, measured on an H100 with the math kernel forced. It computes in float32."""
HOST_BASE_GB = 2.1
"""Resident memory of a process that has imported torch and diffusers and started CUDA, weights aside: 2.1 GB
measured on the H100 machine (helpers/gpu_runs/)."""
HOST_COPIES = {"none": 0.0, "embeddings-once": 0.0, "model": 1.26, "sequential": 1.03, "group": 1.43}
"""Host memory per byte of weights kept in CPU memory, by offload: measured on the H100 machine (Medium with model,
sequential and group offload, NF4 Large with model offload). Model offload copies each part back to fresh CPU memory
after every image; group offload with a CUDA stream also pins a copy for fast transfers."""
VAE_TILE = 512
"""Pixels per side of a VAE tile when a route tiles the decode. diffusers' own default tile for SD3's VAE is its
`sample_size`, 1024 (`AutoencoderKL.tile_sample_min_size`), so `enable_tiling()` alone never tiles a 1024x1024
decode; the route sets the tile to this size (helpers.routes.tile_vae_decode)."""
VAE_TILE_OVERLAP = 0.25
"""diffusers' `tile_overlap_factor` for AutoencoderKL: neighbouring tiles share a quarter of a tile."""
ATTENTION_KINDS = ("fused", "math", "bounded")
CONVOLUTION_KINDS = ("cudnn", "im2col")
OFFLOAD_MODES = (None, "model", "sequential", "group", "embeddings-once")


@dataclass(frozen=True)
class Strategy:
    """A way to load a pipeline, in load_pipeline's words: the transformer's storage (`quantize`: None keeps the
    route's 16-bit dtype, 'nf4'), T5's (`t5`: 'keep', 'drop', 'nf4', 'int8') and what is offloaded (`offload`: None,
    'model', 'sequential', 'group'; 'embeddings-once' is estimated only)."""

    description: str
    quantize: str | None = None
    t5: str = "keep"
    offload: str | None = None


STRATEGIES = {
    "gpu": Strategy("everything on the GPU, in 16 bits"),
    "model-offload": Strategy("model CPU offload: one whole model on the GPU at a time", offload="model"),
    "sequential-offload": Strategy("sequential CPU offload: one layer on the GPU at a time", offload="sequential"),
    "group-offload": Strategy("group offload: one block of each model at a time, from CPU memory", offload="group"),
    "no-t5": Strategy("T5 dropped (text_encoder_3=None), the rest on the GPU", t5="drop"),
    "t5-int8": Strategy("T5 in 8-bit, the rest on the GPU", t5="int8"),
    "t5-nf4": Strategy("T5 in NF4, the rest on the GPU", t5="nf4"),
    "nf4": Strategy("transformer in NF4, everything on the GPU", quantize="nf4"),
    "nf4-model-offload": Strategy("transformer in NF4 with model CPU offload (the seed's setup)", quantize="nf4",
                                  offload="model"),
    "nf4-t5-nf4": Strategy("transformer and T5 in NF4, everything on the GPU", quantize="nf4", t5="nf4"),
    "nf4-no-t5": Strategy("transformer in NF4, T5 dropped, the rest on the GPU", quantize="nf4", t5="drop"),
    "embeddings-once": Strategy("prompt encoded first, text encoders freed, then transformer and VAE",
                                offload="embeddings-once"),
    "nf4-t5-nf4-embeddings-once": Strategy("transformer and T5 in NF4; prompt encoded first, text encoders freed, "
                                           "then transformer and VAE", quantize="nf4", t5="nf4",
                                           offload="embeddings-once"),
}
LOW_MEMORY_LARGE = "nf4-t5-nf4-embeddings-once"
"""The route for Large in at most 11 GB of GPU memory without offload, keeping T5 (the seed's low-memory goal):
with the text encoders on the GPU while the transformer runs, nf4-t5-nf4 needs 11.5 GB at the denoising stage
alone, so tiling the decode cannot bring it under 11 GB; freeing the encoders once the prompt is encoded can.
Estimated only: gpu_check's low-memory-large measures it."""


def strategy_named(options: dict) -> str | None:
    """The name in STRATEGIES of these load_pipeline options (quantize, t5, offload), or None."""
    wanted = Strategy("", options.get("quantize"), options.get("t5", "keep"), options.get("offload"))
    return next((name for name, strategy in STRATEGIES.items() if replace(strategy, description="") == wanted), None)


@dataclass(frozen=True)
class Breakdown:
    """A component's tensors split into what a quantizer converts and what it leaves in 16 bits, and the values
    that load in float32 when the model loads in float16."""

    quantizable_values: int
    quantizable_rows: int
    other_values: int
    float32_in_float16: int = 0
    """Of other_values: those kept in float32 by transformers in a float16 load (T5's `wo`)."""

    def bytes(self, storage: str) -> int:
        """Bytes of the component's weights when the quantizable layers are stored as `storage`, the rest in 16
        bits (in fp16 loads, float32 where transformers keeps it)."""
        if storage not in FORMATS:
            raise ValueError(f"storage={shown(storage)} is not a format. Use one of: {', '.join(FORMATS)}.")
        if storage in FLOAT_BYTES:
            total = (self.quantizable_values + self.other_values) * FLOAT_BYTES[storage]
            return total + (self.float32_in_float16 * 2 if storage == "fp16" else 0)
        if storage == "nf4":
            quantized = self.quantizable_values // 2 + -(-self.quantizable_values // NF4_BLOCK) * 4
        else:  # int8: one byte per weight plus one float32 scale per output row (LLM.int8)
            quantized = self.quantizable_values + self.quantizable_rows * 4
        return quantized + self.other_values * FLOAT_BYTES["bf16"]

    def quantized_bytes(self, storage: str, dtype: str) -> int:
        """`bytes(storage)` for a quantized load in `dtype`: the unquantized rest in that dtype."""
        extra = self.float32_in_float16 * 2 if dtype == "float16" else 0
        return self.bytes(storage) + extra


def breakdown_module(component: str, module) -> Breakdown:
    """Split a module's parameters and persistent buffers by the quantizers' rules."""
    import torch

    skipped = UNQUANTIZED_LINEAR_SUFFIXES.get(component, ())
    upcast = FLOAT32_IN_FLOAT16.get(component, ())
    quantizable_values = quantizable_rows = float32_values = 0
    counted: set[int] = set()
    for name, layer in module.named_modules():
        if type(layer) is not torch.nn.Linear:
            continue
        if component in QUANTIZABLE and not name.endswith(skipped):
            quantizable_values += layer.weight.numel()
            quantizable_rows += layer.out_features
            counted.add(id(layer.weight))
        elif upcast and name.endswith(upcast):
            float32_values += sum(p.numel() for p in layer.parameters())
    parameters, buffers = stored_tensors(module)
    other_values = sum(t.numel() for t in parameters + buffers if id(t) not in counted)
    return Breakdown(quantizable_values, quantizable_rows, other_values, float32_values)


@cache
def breakdown(model: str, component: str) -> Breakdown:
    """The Breakdown of a full-size component of `model`, counted on the meta device."""
    from helpers.architecture import meta_component

    return breakdown_module(component, meta_component(model, component))


@cache
def tiled_decode_pixels(size: int, tile: int = VAE_TILE) -> int:
    """Pixels the VAE decodes for one `size` x `size` picture in `tile`-pixel tiles, as diffusers' `tiled_decode`
    steps: a tile starts every (1 - VAE_TILE_OVERLAP) of a tile, and the last ones are cut at the edge. At 1024 with
    512-pixel tiles: 1280 x 1280, 1.56 times the picture (the decode's time grows alike)."""
    latent, tile_latent = size // 8, tile // 8
    step = int(tile_latent * (1 - VAE_TILE_OVERLAP))
    side = sum(min(tile_latent, latent - start) for start in range(0, latent, step)) * 8
    return side * side


@dataclass(frozen=True)
class Activations:
    """Estimated working memory (bytes) of each stage, for one image of `size` x `size` with CFG."""

    text_encoding: int
    denoising: int
    vae_decode: int


@cache
def im2col_bytes(size: int, bytes_per_value: int = 2) -> int:
    """The largest column buffer of the SD3 VAE decoder at `size` x `size` where cuDNN does not run its
    convolutions (bf16 below compute capability 8.0): PyTorch's fallback (`slow_conv2d_forward`,
    aten/src/ATen/native/cuda/ConvolutionMM2d.cu) allocates in_channels x kernel area x output pixels values for
    each convolution that is not 1x1. Counted on the meta device, one image."""
    import torch

    from helpers.architecture import meta_component

    vae = meta_component("large", "vae")
    largest = [0]

    def record(layer, inputs, output):
        if layer.kernel_size != (1, 1):
            area = layer.kernel_size[0] * layer.kernel_size[1]
            largest[0] = max(largest[0], layer.in_channels * area * output.shape[-2] * output.shape[-1])

    hooks = [layer.register_forward_hook(record) for layer in vae.decoder.modules()
             if isinstance(layer, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            vae.decoder(torch.empty(1, vae.config.latent_channels, size // 8, size // 8, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return largest[0] * bytes_per_value


@checked(model=full_size_model, size=side, max_sequence_length=check_max_sequence_length,
         attention=one_of(*ATTENTION_KINDS), convolutions=one_of(*CONVOLUTION_KINDS), vae_tiling=flag)
def activations(model: str, size: int = 1024, max_sequence_length: int = 256, attention: str = "fused",
                convolutions: str = "cudnn", vae_tiling: bool = False) -> Activations:
    """Estimate each stage's live activations from tensor shapes.

    - Denoising: one transformer block holds about 15 tensors of tokens x hidden size (residual stream, norms,
      q, k, v, attention output, and the 4x-wide MLP twice) for a batch of 2 (prompt and negative prompt).
      MMDiT-X blocks add q, k, v again. `attention`: 'fused' kernels never store the tokens x tokens matrix;
      'math' does, in float32 (MATH_ATTENTION_BYTES_PER_SCORE); 'bounded' (helpers.attention) does for one chunk
      of queries at a time.
    - VAE decode: VAE_DECODE_BYTES_PER_PIXEL, measured with cuDNN; with `convolutions='im2col'` (bf16 below compute
      capability 8.0) the largest column buffer comes on top (`im2col_bytes`, inferred from PyTorch's source, not
      measured). With `vae_tiling` (tiles of VAE_TILE pixels, where the picture is larger) the same figures hold for
      one tile, and the decoded tiles (3 channels, 16 bits, `tiled_decode_pixels`) are kept until they are blended,
      twice over while the rows are joined: an estimate from diffusers' `tiled_decode`, not yet measured.
    - Text encoding: T5's feed-forward (3 tensors of tokens x d_ff), batch 2.
    """
    from helpers.architecture import reference_config
    from helpers.attention import QUERY_CHUNK

    spec = get_model(model)
    transformer = reference_config(spec.transformer_config)
    t5 = reference_config("text_encoder_3-t5xxl")
    bytes_per_value, batch = 2, 2
    hidden = transformer["num_attention_heads"] * transformer["attention_head_dim"]
    image_tokens = (size // 16) ** 2
    tokens = image_tokens + 77 + max_sequence_length
    per_block = 15 * tokens * hidden
    if transformer.get("dual_attention_layers"):
        per_block += 3 * image_tokens * hidden
    denoising = batch * per_block * bytes_per_value
    if attention != "fused":
        queries = tokens if attention == "math" else min(tokens, QUERY_CHUNK)
        denoising += MATH_ATTENTION_BYTES_PER_SCORE * batch * transformer["num_attention_heads"] * queries * tokens
    decoded = min(size, VAE_TILE) if vae_tiling else size  # the side of one decode
    vae_decode = VAE_DECODE_BYTES_PER_PIXEL * decoded * decoded
    if vae_tiling and decoded < size:
        vae_decode += 2 * 3 * bytes_per_value * tiled_decode_pixels(size)
    if convolutions == "im2col":
        vae_decode += im2col_bytes(decoded)
    if attention != "fused":  # the VAE's own attention: one head over every latent pixel, batch 1
        latent_pixels = (decoded // 8) ** 2
        queries = latent_pixels if attention == "math" else min(latent_pixels, QUERY_CHUNK)
        vae_decode += MATH_ATTENTION_BYTES_PER_SCORE * queries * latent_pixels
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
    host_gb: float
    """The process's largest resident memory on the host (GB)."""


def _gb(value: float) -> float:
    """Bytes as GB (10^9), to two places: the unit of every estimate here and in helpers.lora_memory."""
    return round(value / 1e9, 2)


def strategy_rule(value: object, name: str = "strategy") -> str | Strategy:
    """A strategy's name in STRATEGIES, or a Strategy: a rule for `helpers.checks`."""
    if isinstance(value, Strategy) or (isinstance(value, str) and value in STRATEGIES):
        return value
    raise ValueError(f"{name}={shown(value)} is not a strategy. Use one of: {', '.join(STRATEGIES)}.")


def machines_rule(value: object, name: str = "machines") -> dict[str, Machine]:
    """A dict of machines by name (as MACHINES is, or a part of it)."""
    if not isinstance(value, dict) or not value or not all(
            isinstance(key, str) and isinstance(machine, Machine) for key, machine in value.items()):
        raise ValueError(f"{name} must be a non-empty dict of catalogue machines, e.g. {{'colab-t4': "
                         "MACHINES['colab-t4']}.")
    return value


DTYPE = one_of(*STORAGE_OF_DTYPE)


def _strategy_object(value: object, name: str) -> Strategy:
    strategy = strategy_rule(value, name)
    return STRATEGIES[strategy] if isinstance(strategy, str) else strategy


@checked(model=full_size_model, strategy=_strategy_object, dtype=DTYPE)
def weights(model: str, strategy: Strategy, dtype: str = "bfloat16") -> dict[str, int]:
    """Bytes of each component's weights under `strategy`, loaded in `dtype` (T5 dropped: 0). In float16, T5's
    `wo` layers load in float32, as transformers does it."""
    from helpers.architecture import COMPONENTS

    storage = STORAGE_OF_DTYPE[dtype]
    chosen = {"transformer": strategy.quantize, "text_encoder_3": {"keep": None}.get(strategy.t5, strategy.t5)}
    sizes = {}
    for part in COMPONENTS:
        kind = chosen.get(part)
        if kind == "drop":
            sizes[part] = 0
        elif kind is None:
            sizes[part] = breakdown(model, part).bytes(storage)
        else:
            sizes[part] = breakdown(model, part).quantized_bytes(kind, dtype)
    return sizes


@cache
def _largest_piece_bytes(model: str, component: str, level: str) -> int:
    """Bytes (bf16) of the most a component holds on the GPU at once under sequential ('layer') or group
    ('block') offload.

    - Sequential: its largest layer. (Its buffers stay on the GPU throughout: see `_buffer_bytes`.)
    - Group, as diffusers 0.42 applies it (`_apply_group_offloading_block_level`): only a ModuleList or Sequential
      that is a *direct* child of the model is split into blocks; everything else is one group, on the GPU for the
      whole forward pass. So T5 and the CLIP encoders, whose layers sit deeper, move whole. With a CUDA stream the
      next block is loaded while the current one runs: two blocks at once.
    """
    import torch

    from helpers.architecture import meta_component

    module = meta_component(model, component)
    if level == "layer":
        return 2 * max(sum(p.numel() for p in layer.parameters(recurse=False)) for layer in module.modules())
    block_lists = [child for child in module.children() if isinstance(child, torch.nn.ModuleList | torch.nn.Sequential)]
    in_blocks = {id(p) for blocks in block_lists for p in blocks.parameters()}
    outside = sum(p.numel() for p in module.parameters() if id(p) not in in_blocks)
    largest = max((sum(p.numel() for p in block.parameters()) for blocks in block_lists for block in blocks), default=0)
    return 2 * (outside + 2 * largest)


@cache
def _buffer_bytes(model: str) -> int:
    """Bytes (bf16) of every part's buffers: sequential offload leaves them on the GPU (diffusers offloads buffers
    only for a model with parameters of its own, which no SD3.5 part has)."""
    from helpers.architecture import COMPONENTS, meta_component

    return 2 * sum(buffer.numel() for part in COMPONENTS for buffer in meta_component(model, part).buffers())




@checked(model=full_size_model, strategy=strategy_rule, size=side, attention=one_of(*ATTENTION_KINDS),
         dtype=DTYPE, convolutions=one_of(*CONVOLUTION_KINDS), vae_tiling=flag)
def estimate(model: str, strategy: str | Strategy, size: int = 1024, attention: str = "fused",
             dtype: str = "bfloat16", convolutions: str = "cudnn", vae_tiling: bool = False) -> Estimate:
    """Estimated peak GPU memory and host memory of `model` loaded with `strategy` (a name in STRATEGIES) at
    `size` x `size` in `dtype`, one image with classifier-free guidance. `attention`: 'fused' (a fused kernel for
    the dtype), 'bounded' (what the helpers run where there is none), or 'math' (PyTorch's own fallback);
    `convolutions`: 'cudnn' or 'im2col' (bf16 below compute capability 8.0). `estimate_on` takes both from a
    machine. `vae_tiling`: the VAE decodes in VAE_TILE-pixel tiles."""
    spec = get_model(model)
    if isinstance(strategy, str):
        name, strategy = strategy, STRATEGIES[strategy]
    else:
        name = strategy_named({"quantize": strategy.quantize, "t5": strategy.t5, "offload": strategy.offload}) or "custom"
    if strategy.offload not in OFFLOAD_MODES:
        raise ValueError(f"offload={strategy.offload!r} is not an offload mode: {', '.join(map(str, OFFLOAD_MODES))}.")
    act = activations(spec.name, size, attention=attention, convolutions=convolutions, vae_tiling=vae_tiling)
    w = weights(spec.name, strategy, dtype)
    text = [part for part in ("text_encoder", "text_encoder_2", "text_encoder_3") if w[part]]
    if strategy.offload is None:
        on_gpu = {stage: sum(w.values()) for stage in ("text encoding", "denoising", "VAE decode")}
    elif strategy.offload == "model":
        # diffusers chains the hooks text_encoder -> text_encoder_2 -> text_encoder_3 -> transformer: a part leaves
        # the GPU when the next one in the chain starts. The last encoder is still there when the negative prompt
        # is encoded, so it shares the GPU with each of the others in turn (measured: T5 + CLIP-G).
        last, others = text[-1], text[:-1]
        on_gpu = {"text encoding": w[last] + max((w[p] for p in others), default=0),
                  "denoising": w["transformer"], "VAE decode": w["vae"]}
    elif strategy.offload in ("sequential", "group"):
        level = "layer" if strategy.offload == "sequential" else "block"
        piece = {p: _largest_piece_bytes(spec.name, p, level) if w[p] else 0 for p in w}
        resident = _buffer_bytes(spec.name) if level == "layer" else 0
        on_gpu = {"text encoding": resident + max(piece[p] for p in text),
                  "denoising": resident + piece["transformer"], "VAE decode": resident + piece["vae"]}
    else:  # embeddings-once
        on_gpu = {"text encoding": sum(w[p] for p in text), "denoising": w["transformer"] + w["vae"],
                  "VAE decode": w["transformer"] + w["vae"]}
    working = {"text encoding": act.text_encoding, "denoising": act.denoising, "VAE decode": act.vae_decode}
    stage = max(on_gpu, key=lambda s: on_gpu[s] + working[s])
    host = HOST_BASE_GB + HOST_COPIES[strategy.offload or "none"] * sum(w.values()) / 1e9
    return Estimate(
        strategy=name,
        description=strategy.description,
        peak_gb=_gb(on_gpu[stage] + working[stage]),
        weights_on_gpu_gb=_gb(on_gpu[stage]),
        activations_gb=_gb(working[stage]),
        peak_stage=stage,
        host_gb=round(host, 1),
    )


def kernels(machine: Machine, dtype: str | None = None) -> dict[str, str]:
    """The attention and convolution kinds a machine runs in `dtype` (default: the dtype it computes in), with the
    helpers' bounded attention where it has no fused kernel."""
    dtype = dtype or machine.dtype
    return {"attention": "fused" if machine.fused_attention(dtype) else "bounded",
            "convolutions": "cudnn" if machine.cudnn_convolutions(dtype) else "im2col"}


@checked(model=full_size_model, strategy=strategy_rule, machine=machine_rule, size=side, dtype=optional(DTYPE),
         vae_tiling=flag)
def estimate_on(model: str, strategy: str | Strategy, machine: str | Machine, size: int = 1024,
                dtype: str | None = None, vae_tiling: bool = False) -> Estimate:
    """`estimate` with the dtype and kernels of `machine` (a name in helpers.machines.MACHINES, or a Machine)."""
    machine = get_machine(machine)
    dtype = dtype or machine.dtype
    return estimate(model, strategy, size, dtype=dtype, vae_tiling=vae_tiling, **kernels(machine, dtype))


def fits(peak_gb: float, gpu_gb: float) -> bool:
    """Whether an estimated peak fits a card of `gpu_gb` GB, keeping RESERVE_GB free."""
    if gpu_gb <= 0:
        raise ValueError(f"gpu_gb={gpu_gb} must be a positive number of GB, e.g. 24.")
    return peak_gb + RESERVE_GB <= gpu_gb


@checked(model=full_size_model, strategy=strategy_rule, machine=machine_rule, size=side, dtype=optional(DTYPE),
         vae_tiling=flag)
def fits_machine(model: str, strategy: str | Strategy, machine: str | Machine, size: int = 1024,
                 dtype: str | None = None, vae_tiling: bool = False) -> bool:
    """Whether `strategy` fits `machine`: its GPU peak (with the kernels it has for the dtype) and, where its RAM is
    known, the host memory, each keeping its reserve free."""
    machine = get_machine(machine)
    result = estimate_on(model, strategy, machine, size, dtype, vae_tiling)
    host_ok = machine.host_gb is None or result.host_gb + HOST_RESERVE_GB <= machine.host_gb
    return fits(result.peak_gb, machine.gpu_gb) and host_ok


def load_options(strategy: str | Strategy) -> dict[str, str | None]:
    """The `load_pipeline` arguments of a strategy (quantize and t5 only where they differ from the defaults)."""
    strategy = STRATEGIES[strategy] if isinstance(strategy, str) else strategy
    options: dict[str, str | None] = {}
    if strategy.quantize:
        options["quantize"] = strategy.quantize
    if strategy.t5 != "keep":
        options["t5"] = strategy.t5
    options["offload"] = strategy.offload
    return options


def routes_that_fit(model: str, machine: str | Machine, size: int = 1024, dtype: str | None = None) -> list[str]:
    """The strategies `load_pipeline` can load that fit `machine`, in the order of STRATEGIES: as they are, or with
    the VAE decoding in tiles, which a route turns on where only that fits (`needs_tiles` says which)."""
    return [name for name, strategy in STRATEGIES.items()
            if strategy.offload != "embeddings-once" and any(fits_machine(model, name, machine, size, dtype, tiles)
                                                            for tiles in (False, True))]


def needs_tiles(model: str, strategy: str, machine: str | Machine, size: int = 1024, dtype: str | None = None) -> bool:
    """Whether `strategy` fits `machine` only with the VAE decoding in tiles."""
    return not fits_machine(model, strategy, machine, size, dtype) and fits_machine(model, strategy, machine, size,
                                                                                   dtype, True)


@checked(model=full_size_model, size=side, machines=optional(machines_rule))
def fit_table(model: str, size: int = 1024, machines: dict[str, Machine] | None = None) -> list[dict]:
    """One row per strategy: estimated GPU peak (bf16, fused attention) and host memory, and which machines it fits
    (each with its own dtype and kernels)."""
    machines = machines or MACHINES
    rows = []
    for strategy in STRATEGIES:
        result = estimate(model, strategy, size)
        rows.append(
            {
                **asdict(result),
                "fits": {name: fits_machine(model, strategy, machine, size) for name, machine in machines.items()},
            }
        )
    return rows


@checked(model=full_size_model, strategy=strategy_rule)
def offload_traffic_gb(model: str, strategy: str | Strategy = "model-offload") -> float:
    """GB copied between CPU and GPU per image under model offload: each model goes to the GPU and back once."""
    chosen = _strategy_object(strategy, "strategy")
    if chosen.offload != "model":
        raise ValueError(f"strategy={shown(strategy)} does not use model offload; use one whose offload is 'model'.")
    return _gb(2 * sum(weights(model, chosen).values()))


@checked(function=function)
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




@checked(model=full_size_model, size=side, machines=optional(machines_rule))
def plot_strategies(model: str, size: int = 1024, machines: dict[str, Machine] | None = None):
    """Bar chart of the estimated peak of each strategy (bf16, fused attention), with the usable GPU memory of the
    catalogue's machines marked."""
    from helpers.images import unshown_subplots

    machines = machines or MACHINES
    results = [estimate(model, name, size) for name in STRATEGIES]
    figure, axis = unshown_subplots(figsize=(8, 0.4 * len(results) + 1.5))
    names = [result.strategy for result in results]
    axis.barh(names, [r.weights_on_gpu_gb for r in results], label="weights on the GPU", color="tab:blue")
    axis.barh(names, [r.activations_gb for r in results], left=[r.weights_on_gpu_gb for r in results],
              label="working memory (estimate)", color="tab:orange")
    limits = sorted({machine.gpu_gb for machine in machines.values()})
    for memory in limits:
        axis.axvline(memory - RESERVE_GB, color="grey", linestyle=":", linewidth=1)
    gpus = axis.secondary_xaxis("top")
    gpus.set_xticks([memory - RESERVE_GB for memory in limits],
                    ["\n".join(sorted({m.gpu.removeprefix("NVIDIA ").split()[0] for m in machines.values()
                                       if m.gpu_gb == memory})) for memory in limits], fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel(f"estimated peak GPU memory (GB); dotted lines: each GPU's memory less {RESERVE_GB} GB reserve")
    axis.set_title(f"{get_model(model).title}, {size}x{size}, bf16: peak by strategy")
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return figure


@checked(model=full_size_model)
def format_table(model: str) -> list[dict]:
    """For each component a quantizer can convert: its weights in every storage format, and what stays 16-bit."""
    rows = []
    for part in QUANTIZABLE:
        split = breakdown(model, part)
        total = split.quantizable_values + split.other_values
        rows.append({
            "component": part,
            **{storage: f"{split.bytes(storage) / 1e9:.2f} GB" for storage in FORMATS},
            "left in 16 bits": f"{split.other_values / total:.1%} of values",
        })
    return rows


@checked(model=full_size_model, size=side, machines=optional(machines_rule))
def strategy_table(model: str, size: int = 1024, machines: dict[str, Machine] | None = None):
    """The estimated GPU peak and host memory of each strategy and which machines it fits, as a Table."""
    from helpers.display import Table

    rows = [
        {
            "strategy": row["strategy"],
            "peak (GB)": f"{row['peak_gb']:.1f}",
            "weights": f"{row['weights_on_gpu_gb']:.1f}",
            "working": f"{row['activations_gb']:.1f}",
            "peak during": row["peak_stage"],
            "host (GB)": f"{row['host_gb']:.1f}",
            **{name: "fits" if ok else "-" for name, ok in row["fits"].items()},
        }
        for row in fit_table(model, size, machines)
    ]
    return Table(rows, title=f"{get_model(model).title}, {size}x{size}, one image with CFG: estimated peak memory "
                             "(bf16; each machine checked in its own dtype)")


def main(argv: list[str] | None = None) -> int:
    """Print, for each strategy, the estimated peak GPU and host memory and which machines it fits."""
    from helpers.models import MODELS

    parser = argparse.ArgumentParser(prog="python -m helpers.memory", description=main.__doc__)
    full_size = [name for name, spec in MODELS.items() if not spec.is_stand_in]
    parser.add_argument("--model", default="large", choices=full_size)
    parser.add_argument("--size", type=int, default=1024, help="image height and width in pixels (default 1024)")
    parser.add_argument("--machine", help=f"one machine of the catalogue: {', '.join(MACHINES)}")
    parser.add_argument("--gpu-gb", type=float, help="check one GPU of this many GB instead of the catalogue")
    parser.add_argument("--host-gb", type=float, help="with --gpu-gb: the machine's memory (RAM) in GB")
    parser.add_argument("--compute-capability", type=float,
                        help="with --gpu-gb: the GPU's compute capability (default 8.0; a T4 is 7.5, a V100 7.0)")
    parser.add_argument("--json", action="store_true", help="print the same as JSON data")
    args = parser.parse_args(argv)
    try:
        if args.machine is not None:
            if args.gpu_gb is not None or args.host_gb is not None or args.compute_capability is not None:
                raise ValueError("--machine names a whole machine: leave out --gpu-gb, --host-gb and "
                                 "--compute-capability.")
            machine = get_machine(args.machine)
            machines = {machine.name: machine}
        elif args.gpu_gb is None:
            for flag, value in (("--host-gb", args.host_gb), ("--compute-capability", args.compute_capability)):
                if value is not None:
                    raise ValueError(f"{flag} describes one machine: give its --gpu-gb too.")
            machines = dict(MACHINES)
        else:
            for flag, value in (("--gpu-gb", args.gpu_gb), ("--host-gb", args.host_gb)):
                if value is not None and not 0 < value < 10_000:
                    raise ValueError(f"{flag} {value:g}: give the memory in GB, a positive number such as 16.")
            if args.compute_capability is None:
                args.compute_capability = 8.0
            if not 3.0 <= args.compute_capability < 20:
                raise ValueError(f"--compute-capability {args.compute_capability:g}: give it as NVIDIA lists it, "
                                 "e.g. 7.5 for a T4 or 8.6 for an A10G.")
            major, minor = divmod(round(args.compute_capability * 10), 10)
            name = f"{args.gpu_gb:g} GB" + (f", {args.host_gb:g} GB host" if args.host_gb else "")
            machines = {name: Machine(name, name, "GPU", (major, minor), args.gpu_gb, args.host_gb)}
        rows = fit_table(args.model, args.size, machines)
    except ValueError as error:
        parser.error(str(error))
    if args.json:
        print(json.dumps({"model": args.model, "size": args.size, "reserve_gb": RESERVE_GB,
                          "host_reserve_gb": HOST_RESERVE_GB,
                          "machines": {name: asdict(machine) for name, machine in machines.items()},
                          "strategies": rows}, indent=2))
        return 0
    print(strategy_table(args.model, args.size, machines))
    print(f"\n'fits': estimated GPU peak + {RESERVE_GB} GB <= the GPU's memory and, where the RAM is known, estimated "
          f"host memory + {HOST_RESERVE_GB} GB <= the RAM, each machine in the dtype it computes in (float16 below "
          "compute capability 8.0) with the attention and convolutions it has for it. Peaks above are for bf16 with "
          "fused attention, the VAE decoding whole (a route tiles it where only that fits). Estimates: weights are "
          "exact, working and host memory are calibrated on an H100 (helpers/memory.py).")
    if len(machines) == 1:
        (machine,) = machines.values()
        fitting = [name + (" (with VAE tiles)" if needs_tiles(args.model, name, machine, args.size) else "")
                   for name in routes_that_fit(args.model, machine, args.size)]
        print(f"{machine.name} computes in {machine.dtype}. Fits: "
              + (", ".join(fitting) if fitting else "nothing: try a smaller --size or another model."))
        from helpers.routes import plan_route

        if fitting:
            route = plan_route(args.model, machine=machine, size=args.size)
            print(f"load_pipeline takes: {route.strategy} ({route.describe()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
