"""Loading SD3.5 pipelines: the real models from the hub, or an offline model, through the same diffusers calls.

Introduced in notebook 01; quantization and offload options in notebook 02. `load_pipeline` returns a plain
diffusers pipeline; notebooks call it themselves (`pipe(prompt=..., guidance_scale=...)`). Weights load from
safetensors only, in bf16 on a GPU.
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from helpers.access import check_access, require_token
from helpers.models import ModelSpec, get_model
from helpers.quantization import QUANTIZE_CHOICES, T5_CHOICES

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

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


def gpu_memory_gb(device: str = "cuda") -> float | None:
    """Total memory of the GPU in GB (10^9 bytes), or None without one."""
    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.device(device)).total_memory / 1e9


def placement(
    model: str | ModelSpec, memory_gb: float, *, quantize: str | None = None, t5: str = "keep"
) -> str | None:
    """Where `model` fits on a GPU of `memory_gb` GB at its recommended size: 'gpu' (everything on it),
    'model-offload' (one model at a time, the rest in CPU memory) or None (not even that).

    Uses the estimated peaks of helpers.memory, keeping its reserve free.
    """
    from helpers.memory import Strategy, estimate, fits

    spec = get_model(model)
    if spec.is_stand_in:
        return "gpu"
    storage = {"transformer": "nf4" if quantize else "bf16", "t5": {"keep": "bf16"}.get(t5, t5)}
    for offload, answer in (("none", "gpu"), ("model", "model-offload")):
        peak = estimate(spec.name, Strategy("", offload=offload, **storage), spec.height).peak_gb
        if fits(peak, memory_gb):
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


def check_options(spec: ModelSpec, device: str, offload, quantize, t5) -> str | None:
    """The offload to use (None for none). Raises, naming the value and the fix, before anything loads."""
    if offload not in OFFLOAD_CHOICES:
        raise ValueError(f"offload={offload!r} is not supported. Use one of: {', '.join(map(repr, OFFLOAD_CHOICES))}.")
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize={quantize!r} is not supported. Use quantize='nf4' (4-bit) or None (bf16).")
    if t5 not in T5_CHOICES:
        raise ValueError(f"t5={t5!r} is not supported. Use one of: {', '.join(map(repr, T5_CHOICES))}.")
    quantized = quantize is not None or t5 in ("nf4", "int8")
    if quantized and offload in ("sequential", "group"):
        raise ValueError(
            f"offload={offload!r} does not work with bitsandbytes 4-bit or 8-bit layers (quantize={quantize!r}, "
            f"t5={t5!r}): their weights cannot be moved layer by layer. Use offload='model' with quantization, "
            "or drop the quantization to use this offload."
        )
    memory_gb = gpu_memory_gb(device)
    if memory_gb is None:
        if offload not in ("auto", None):
            raise ValueError(f"offload={offload!r} needs a CUDA GPU; device={device!r}. Use offload=None on a CPU.")
        return None
    if offload != "auto":
        return offload
    where = placement(spec, memory_gb, quantize=quantize, t5=t5)
    if where is None:
        raise MemoryError(
            f"{spec.title} does not fit on this {memory_gb:.1f} GB GPU with quantize={quantize!r}, t5={t5!r}, "
            "even with model CPU offload. On a 16 GB card use quantize='nf4' with offload='model', or SD3.5 "
            "Medium (SD35_MODEL=medium). `python -m helpers.memory --gpu-gb "
            f"{memory_gb:.0f}` lists what fits."
        )
    return "model" if where == "model-offload" else None


def load_pipeline(
    model: str | ModelSpec,
    task: str = "text-to-image",
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    offload: str | None = "auto",
    quantize: str | None = None,
    t5: str = "keep",
) -> DiffusionPipeline:
    """The diffusers pipeline of `model` for `task` ('text-to-image', 'image-to-image' or 'inpainting').

    - Real models come from the hub (a token and an accepted licence are checked first, with clear steps if
      missing); the offline models load from their folders (the toy's ships with the helpers, the random stand-in
      is built locally). All through `from_pretrained`.
    - Asking for another task of a model already loaded the same way reuses its components (`from_pipe`).
    - `quantize='nf4'` stores the transformer in 4-bit NF4 (bitsandbytes, computing in bf16).
    - `t5`: 'keep' (bf16), 'drop' (no T5: less memory, weaker prompt following), 'nf4' or 'int8'.
    - `offload`: 'auto' keeps everything on the GPU where it fits and uses model CPU offload where only one model
      at a time fits; None, 'model', 'sequential' (one layer at a time) and 'group' (one block at a time) force it.
    Bad values and combinations that cannot work raise before anything loads.
    """
    spec = get_model(model)
    pipeline_class = _pipeline_class(task)
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    use_offload = check_options(spec, device, offload, quantize, t5)

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
"""The trained offline model, shipped inside the helpers package (notebook 08 shows how it was trained)."""


def toy_model_dir() -> Path:
    """The folder of the shipped toy model; a clear error if this installation of the helpers lacks it."""
    if not (TOY_MODEL_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"The offline toy model is missing from {TOY_MODEL_DIR}: this installation of the helpers is incomplete. "
            "Reinstall them (`pip install --force-reinstall git+https://github.com/sd35-notebooks/sd35-notebooks`), "
            "or retrain it with `python -m helpers.training train --out MY_FOLDER` (see notebook 08)."
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


def _from_pretrained(pipeline_class, spec: ModelSpec, source, **options):
    if spec.is_stand_in:
        from helpers.tiny import quiet_transformers_progress

        with quiet_transformers_progress():
            return pipeline_class.from_pretrained(source, **options)
    return pipeline_class.from_pretrained(source, **options)
