"""Loading SD3.5 pipelines: the real models from the hub, or an offline model, through the same diffusers calls.

Introduced in notebook 01; quantization and offload options in notebook 02. `load_pipeline` returns a plain
diffusers pipeline; notebooks call it themselves (`pipe(prompt=..., guidance_scale=...)`). Weights load from
safetensors only, in bf16 on a GPU.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from helpers.access import check_access, require_token
from helpers.models import ModelSpec, get_model
from helpers.quantization import QUANTIZE_CHOICES, T5_CHOICES

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

    from helpers.memory import Card

TASKS = {
    "text-to-image": "StableDiffusion3Pipeline",
    "image-to-image": "StableDiffusion3Img2ImgPipeline",
    "inpainting": "StableDiffusion3InpaintPipeline",
}
OFFLOAD_CHOICES = ("auto", None, "model", "sequential", "group")

# The pipelines handed out, by how they were loaded: a new task reuses their components through `from_pipe`.
# Weak references, so the memory is freed once the reader holds none of them.
_loaded: dict[tuple, weakref.WeakSet] = {}


def default_device() -> str:
    """'cuda' where a CUDA GPU is present, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    """bfloat16 on a GPU (the checkpoints' format), float32 on a CPU (the stand-in runs 5x faster in float32).

    GPUs without native bf16 (T4, V100) still get bf16: PyTorch emulates it, slower but correct. float16 is not
    an option for SD3: it overflows in T5 and the VAE and gives black images.
    """
    import torch

    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def check_device(device: object) -> str:
    """'cpu', 'cuda' or 'cuda:N' for a GPU PyTorch can use here; else ValueError saying what is available."""
    import torch

    text = str(device) if isinstance(device, (str, torch.device)) else None
    kind, _, index = (text or "").partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise ValueError(f"device={device!r} is not a device of this series: use 'cuda' (or 'cuda:1', ...) for a "
                         "GPU, 'cpu', or leave it out to pick the GPU where there is one.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}, but PyTorch sees no CUDA GPU on this machine (torch "
                         f"{torch.__version__}). Leave device out to run on the CPU; setup() says why a GPU is not "
                         "seen where there is one.")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0.")
    return text


def gpu_memory_gb(device: str = "cuda") -> float | None:
    """Total memory of the GPU in GB (10^9 bytes), or None without one."""
    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.device(device)).total_memory / 1e9


def this_machine(device: str = "cuda") -> Card | None:
    """This machine as helpers.memory describes cards: the GPU's *free* memory (another notebook's kernel, or a
    pipeline this one still holds, takes its share), whether it has fused bf16 attention, and the host's memory.
    None without a CUDA GPU."""
    import psutil
    import torch

    from helpers.attention import needs_bounded_attention
    from helpers.memory import Card

    if gpu_memory_gb(device) is None:
        return None
    free_bytes, _ = torch.cuda.mem_get_info(torch.device(device))
    return Card(free_bytes / 1e9, fused_bf16_attention=not needs_bounded_attention(device),
                host_gb=host_share_gb(psutil.virtual_memory().total / 1e9))


def host_share_gb(total_gb: float) -> float:
    """This process's share of the machine's RAM: all of it, or 1/N for each of N processes launched together on
    one machine (torchrun, under `accelerate launch`, sets LOCAL_WORLD_SIZE), which all load at once."""
    import os

    try:
        processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        processes = 1
    return total_gb / processes


def placement(
    model: str | ModelSpec, card: Card | float, *, quantize: str | None = None, t5: str = "keep"
) -> str | None:
    """Where `model` fits on `card` (a helpers.memory Card, or a GPU's memory in GB) at its recommended size:
    'gpu' (everything on it), 'model-offload' (one model at a time, the rest in CPU memory) or None (neither).

    Uses the estimates of helpers.memory: the GPU peak with the attention the card gets and, where the card's host
    memory is known, the host memory CPU offload needs, each keeping its reserve free.
    """
    from helpers.memory import Card, Strategy, fits_card

    spec = get_model(model)
    if spec.is_stand_in:
        return "gpu"
    card = card if isinstance(card, Card) else Card(card)
    storage = {"transformer": "nf4" if quantize else "bf16", "t5": {"keep": "bf16"}.get(t5, t5)}
    for offload, answer in (("none", "gpu"), ("model", "model-offload")):
        if fits_card(spec.name, Strategy("", offload=offload, **storage), card, spec.height):
            return answer
    return None


def _without_irrelevant_notices(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    # Importing diffusers' SD3 pipelines touches transformers' image processors (for IP-adapters, unused here),
    # which warn when torchvision is missing; SD3.5 never needs it. And diffusers 0.42 warns on every cast to a
    # dtype that modules "should be kept in float32" even when that list is empty, as it is for SD3.5.
    return "requires torchvision" not in message and "should be kept in float32: []." not in message


def _pipeline_class(task: str):
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not a task of this series. Use one of: {', '.join(TASKS)}.")
    for name in ("transformers.utils.import_utils", "diffusers.models.modeling_utils"):
        notices = logging.getLogger(name)
        if _without_irrelevant_notices not in notices.filters:
            notices.addFilter(_without_irrelevant_notices)
    import diffusers

    return getattr(diffusers, TASKS[task])


AUTO_ROUTES = ("gpu", "model-offload", "t5-int8", "t5-nf4", "nf4", "nf4-model-offload", "nf4-t5-nf4", "no-t5")
"""The strategies of helpers.memory that 'auto' options try, in order: full precision first, then offload (slower),
then 8- and 4-bit weights, T5 dropped last (weaker prompt following). Sequential and group offload are never
chosen for you: they copy every weight to the GPU at every step."""


@dataclass(frozen=True)
class Route:
    """How a pipeline is loaded: the strategy of helpers.memory and the load_pipeline options it stands for."""

    strategy: str | None
    offload: str | None
    quantize: str | None
    t5: str


def choose_route(spec: ModelSpec, card: Card, *, offload="auto", quantize="auto", t5="auto") -> Route | None:
    """The first of AUTO_ROUTES that fits `card` and agrees with every option that is not 'auto' (None: none)."""
    from helpers.memory import fits_card

    for name in AUTO_ROUTES:
        route = route_of(name)
        asked = ((offload, route.offload), (quantize, route.quantize), (t5, route.t5))
        if all(value in ("auto", chosen) for value, chosen in asked) and fits_card(spec.name, name, card, spec.height):
            return route
    return None


def check_options(spec: ModelSpec, device: str, offload, quantize, t5) -> Route:
    """The offload, quantization and T5 storage to load with, each 'auto' resolved for this machine. Raises, naming
    the value and the fix, before anything loads."""
    if offload not in OFFLOAD_CHOICES:
        raise ValueError(f"offload={offload!r} is not supported. Use one of: {', '.join(map(repr, OFFLOAD_CHOICES))}.")
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize={quantize!r} is not supported. Use quantize='nf4' (4-bit), None (bf16) or "
                         "'auto' (bf16 where it fits).")
    if t5 not in T5_CHOICES:
        raise ValueError(f"t5={t5!r} is not supported. Use one of: {', '.join(map(repr, T5_CHOICES))}.")
    quantized = quantize == "nf4" or t5 in ("nf4", "int8")
    if quantized and offload in ("sequential", "group"):
        raise ValueError(
            f"offload={offload!r} does not work with bitsandbytes 4-bit or 8-bit layers (quantize={quantize!r}, "
            f"t5={t5!r}): their weights cannot be moved layer by layer. Use offload='model' with quantization, "
            "or drop the quantization to use this offload."
        )
    from helpers.memory import fits_card

    card = this_machine(device)
    if card is None or spec.is_stand_in or offload != "auto":
        if card is None and offload not in ("auto", None):
            raise ValueError(f"offload={offload!r} needs a CUDA GPU; device={device!r}. Use offload=None on a CPU.")
        route = Route(None, None if offload == "auto" else offload, None if quantize == "auto" else quantize,
                      "keep" if t5 == "auto" else t5)
        strategy = None if card is None or spec.is_stand_in else _strategy_of(route)
        if strategy is not None and not fits_card(spec.name, strategy, card, spec.height):
            raise _does_not_fit(spec, card, f"offload={offload!r}, quantize={quantize!r}, t5={t5!r}")
        return route
    route = choose_route(spec, card, quantize=quantize, t5=t5)
    if route is None:
        raise _does_not_fit(spec, card, f"quantize={quantize!r}, t5={t5!r}")
    return route


def route_of(strategy: str) -> Route:
    """The load_pipeline options a strategy of helpers.memory stands for."""
    from helpers.memory import load_options

    options = load_options(strategy)
    return Route(strategy, options["offload"], options.get("quantize"), options.get("t5", "keep"))


def _strategy_of(route: Route) -> str | None:
    """The strategy of helpers.memory that loading options stand for (None: a combination it does not estimate)."""
    from helpers.memory import STRATEGIES

    return next((name for name in STRATEGIES if route_of(name) == replace(route, strategy=name)), None)


def _does_not_fit(spec: ModelSpec, card: Card, options: str) -> MemoryError:
    """The error for a model that does not fit this machine with `options`, listing the options that fit."""
    from helpers.memory import load_options, routes_that_fit

    routes = [", ".join(f"{key}={value!r}" for key, value in load_options(name).items())
              for name in routes_that_fit(spec.name, card, spec.height)]
    host = "" if card.host_gb is None else f", {card.host_gb:.1f} GB of RAM"
    return MemoryError(
        f"{spec.title} does not fit this machine ({card.memory_gb:.1f} GB of GPU memory free{host}) with "
        f"{options}. "
        + (f"Loading options that fit: {'; '.join(routes)}. " if routes else
           "No loading option fits it; use SD3.5 Medium (SD35_MODEL=medium) or a larger GPU. ")
        + "A pipeline loaded earlier takes its share: `del` it first. `python -m helpers.memory --gpu-gb "
        f"{card.memory_gb:.0f}" + ("" if card.host_gb is None else f" --host-gb {card.host_gb:.0f}")
        + (" --no-fused-attention" if not card.fused_bf16_attention else "") + "` shows every estimate."
    )


def load_pipeline(
    model: str | ModelSpec,
    task: str = "text-to-image",
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    offload: str | None = "auto",
    quantize: str | None = "auto",
    t5: str = "auto",
) -> DiffusionPipeline:
    """The diffusers pipeline of `model` for `task` ('text-to-image', 'image-to-image' or 'inpainting').

    - Real models come from the hub (a token and an accepted licence are checked first, with clear steps if
      missing); the offline models load from their folders (the toy's ships with the helpers, the random stand-in
      is built locally). All through `from_pretrained`.
    - Asking for another task of a model already loaded the same way reuses its components (`from_pipe`).
    - `quantize='nf4'` stores the transformer in 4-bit NF4 (bitsandbytes, computing in bf16); None keeps bf16.
    - `t5`: 'keep' (bf16), 'drop' (no T5: less memory, weaker prompt following), 'nf4' or 'int8'.
    - `offload`: None, 'model', 'sequential' (one layer at a time) or 'group' (one block at a time).
    - 'auto' (the default of all three) keeps everything on the GPU in bf16 where it fits, and otherwise takes
      the first route of AUTO_ROUTES that fits this GPU's free memory and this machine's RAM (helpers.memory), with
      the options you did set. Without a GPU: no offload, bf16 (float32 on a CPU), T5 kept.
    Bad values and combinations that cannot work raise before anything loads.
    """
    spec = get_model(model)
    pipeline_class = _pipeline_class(task)
    device = check_device(device or default_device())
    dtype = dtype or default_dtype(device)
    route = check_options(spec, device, offload, quantize, t5)
    use_offload, quantize, t5 = route.offload, route.quantize, route.t5

    alive = _loaded.setdefault((spec.name, str(device), str(dtype), use_offload, quantize, t5), weakref.WeakSet())
    for pipe in list(alive):
        if type(pipe) is pipeline_class:
            return pipe
    if alive:
        # dtype must be passed: diffusers' from_pipe otherwise casts the shared parts to float32.
        pipe = pipeline_class.from_pipe(next(iter(alive)), dtype=dtype)
    else:
        pipe = _load(pipeline_class, spec, device, dtype, use_offload, quantize, t5)
    alive.add(pipe)
    return pipe


def _load(pipeline_class, spec: ModelSpec, device: str, dtype, offload: str | None, quantize, t5):
    from helpers import quantization
    from helpers.attention import bound_attention_memory, needs_bounded_attention

    on_gpu = str(device).startswith("cuda")
    source, token = _weights_source(spec)
    weights = {"dtype": dtype, "use_safetensors": True, "token": token}  # for every part loaded on its own too
    options = dict(weights)
    if t5 == "drop":
        options.update(text_encoder_3=None, tokenizer_3=None)
    elif t5 in ("nf4", "int8"):
        from transformers import T5EncoderModel

        quantization.quiet_int8_cast_warning()
        options["text_encoder_3"] = T5EncoderModel.from_pretrained(
            source, subfolder="text_encoder_3", quantization_config=quantization.transformers_config(t5, dtype),
            device_map=str(device), **weights,
        )
    if quantize and on_gpu:
        from diffusers import SD3Transformer2DModel

        options["transformer"] = SD3Transformer2DModel.from_pretrained(
            source, subfolder="transformer", quantization_config=quantization.diffusers_nf4_config(dtype), **weights,
        )
    has_quantized_parts = quantize is not None and on_gpu or t5 in ("nf4", "int8")
    # Without offload, weights load straight onto the device, never all at once into CPU memory (Colab's T4
    # machines have 13 GB of it). Offload keeps them in CPU memory; quantized parts are placed by their loaders.
    device_map = str(device) if offload is None and not has_quantized_parts else None
    pipe = _from_pretrained(pipeline_class, spec, source, device_map=device_map, **options)
    if quantize and not on_gpu:  # diffusers' quantizer needs a GPU: build the same NF4 layers directly
        quantization.quantize_linear_layers_nf4(pipe.transformer, compute_dtype=dtype)
    if needs_bounded_attention(device):
        bound_attention_memory(pipe)  # a T4's math attention would otherwise need GBs (helpers.attention)
    if offload is not None:
        apply_offload(pipe, offload, device)
    elif device_map is None:
        pipe.to(device)  # moves the parts not yet there; diffusers moves 4-bit parts as they are
    return pipe


def apply_offload(pipe, offload: str, device: str) -> None:
    """Turn on diffusers' CPU offload of one kind: 'model', 'sequential' or 'group' (one block per group)."""
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif offload == "group":
        import torch

        pipe.enable_group_offload(onload_device=torch.device(device), num_blocks_per_group=1, use_stream=True)
    else:
        raise ValueError(f"offload={offload!r} is not an offload; use 'model', 'sequential' or 'group'.")


TOY_MODEL_DIR = Path(__file__).resolve().parent / "toy_model"
"""The trained offline model, shipped inside the helpers package (notebook 09 shows how it was trained)."""


def toy_model_dir() -> Path:
    """The folder of the shipped toy model; a clear error if this installation of the helpers lacks it."""
    if not (TOY_MODEL_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"The offline toy model is missing from {TOY_MODEL_DIR}: this installation of the helpers is incomplete. "
            "Reinstall them (`pip install --force-reinstall git+https://github.com/sd35-notebooks/sd35-notebooks`), "
            "or retrain it with `python -m helpers.training train --out MY_FOLDER` (see notebook 09)."
        )
    return TOY_MODEL_DIR


def _weights_source(spec: ModelSpec) -> tuple[object, str | None]:
    """Where the weights come from, and the token to use: an offline model's folder, or the hub after access
    checks."""
    if spec.is_toy:
        return toy_model_dir(), None
    if spec.is_stand_in:
        from helpers.tiny import tiny_pipeline_dir

        return tiny_pipeline_dir(), None
    from huggingface_hub.constants import is_offline_mode

    if is_offline_mode():  # HF_HUB_OFFLINE=1: weights already in the local cache, no network asked
        return spec.hub_id, None
    token = require_token(spec.hub_id)
    check_access(spec.hub_id, token)
    return spec.hub_id, token


def check_can_load(model: str | ModelSpec) -> None:
    """The checks load_pipeline makes before loading `model` from the hub (a token, an accepted licence), made now:
    for code that loads it in other processes later, such as a distributed sweep."""
    _weights_source(get_model(model))


def _from_pretrained(pipeline_class, spec: ModelSpec, source, **options):
    if spec.is_stand_in:
        from helpers.tiny import quiet_transformers_progress

        with quiet_transformers_progress():
            return pipeline_class.from_pretrained(source, **options)
    return pipeline_class.from_pretrained(source, **options)
