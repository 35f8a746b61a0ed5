"""Loading SD3.5 pipelines: the real models from the hub, or the tiny stand-in, through the same diffusers calls.

Introduced in notebook 01. `load_pipeline` returns a plain diffusers pipeline; notebooks call it themselves
(`pipe(prompt=..., guidance_scale=...)`). Weights load from safetensors only, in bf16 on a GPU.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING

from helpers.access import check_access, require_token
from helpers.models import ModelSpec, get_model

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

TASKS = {
    "text-to-image": "StableDiffusion3Pipeline",
    "image-to-image": "StableDiffusion3Img2ImgPipeline",
    "inpainting": "StableDiffusion3InpaintPipeline",
}
OFFLOAD_CHOICES = ("auto", "none", "model")

WORKING_MEMORY_GB = 4.0
"""Rough allowance, on top of the weights, for activations and the VAE decode at 1024x1024.
An estimate used to decide placement, not a measurement; notebook 02 measures peaks."""

# The pipelines handed out, by (model, device, dtype, offload): a new task reuses their components through
# `from_pipe`. Weak references, so the memory is freed once the reader holds none of them.
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


def placement(model: str | ModelSpec, memory_gb: float) -> str | None:
    """Where `model` fits in bf16 on a GPU of `memory_gb`: 'gpu' (everything on it), 'model-offload' (one part at
    a time, the rest in CPU memory) or None (its largest part alone does not fit)."""
    from helpers.architecture import component_sizes

    spec = get_model(model)
    if spec.is_stand_in:
        return "gpu"
    sizes = [part.gigabytes for part in component_sizes(spec.name)]
    if sum(sizes) + WORKING_MEMORY_GB <= memory_gb:
        return "gpu"
    if max(sizes) + WORKING_MEMORY_GB <= memory_gb:
        return "model-offload"
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


def _resolve_offload(spec: ModelSpec, device: str, offload: str) -> bool:
    """Whether to use model CPU offload; raises before loading if the model cannot fit."""
    if offload not in OFFLOAD_CHOICES:
        raise ValueError(f"offload={offload!r} is not supported. Use one of: {', '.join(OFFLOAD_CHOICES)}.")
    memory_gb = gpu_memory_gb(device)
    if memory_gb is None:
        if offload == "model":
            raise ValueError(f"offload='model' needs a CUDA GPU; device={device!r}. Use offload='none' on a CPU.")
        return False
    if offload != "auto":
        return offload == "model"
    where = placement(spec, memory_gb)
    if where is None:
        from helpers.architecture import component_sizes

        largest = max(component_sizes(spec.name), key=lambda part: part.gigabytes)
        raise MemoryError(
            f"{spec.title} does not fit on this {memory_gb:.1f} GB GPU in bf16: its {largest.component} alone "
            f"takes {largest.gigabytes:.1f} GB, plus about {WORKING_MEMORY_GB:.0f} GB to work in. "
            "Use SD3.5 Medium (SD35_MODEL=medium), or a GPU with more memory."
        )
    return where == "model-offload"


def load_pipeline(
    model: str | ModelSpec,
    task: str = "text-to-image",
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    offload: str = "auto",
) -> DiffusionPipeline:
    """The diffusers pipeline of `model` for `task` ('text-to-image', 'image-to-image' or 'inpainting').

    - Real models come from the hub (a token and an accepted licence are checked first, with clear steps if
      missing); the stand-in is built locally and loaded from its folder. Both through `from_pretrained`.
    - Asking for another task of a model already loaded reuses its components (`from_pipe`): no second load.
    - `offload='auto'` keeps everything on the GPU where it fits and uses model CPU offload where only one part
      at a time fits; 'none' and 'model' force the choice.
    """
    spec = get_model(model)
    pipeline_class = _pipeline_class(task)
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    use_offload = _resolve_offload(spec, device, offload)

    alive = _loaded.setdefault((spec.name, str(device), str(dtype), use_offload), weakref.WeakSet())
    for pipe in list(alive):
        if type(pipe) is pipeline_class:
            return pipe
    if alive:
        # dtype must be passed: diffusers' from_pipe otherwise casts the shared parts to float32.
        pipe = pipeline_class.from_pipe(next(iter(alive)), dtype=dtype)
    else:
        # Without offload, weights load straight onto the device, never all at once into CPU memory
        # (Colab's T4 machines have 13 GB of it). With offload they stay in CPU memory until needed.
        pipe = _from_pretrained(pipeline_class, spec, dtype, device_map=None if use_offload else device)
        if use_offload:
            pipe.enable_model_cpu_offload(device=device)
    alive.add(pipe)
    return pipe


def _from_pretrained(pipeline_class, spec: ModelSpec, dtype, device_map: str | None):
    options = {"dtype": dtype, "use_safetensors": True, "device_map": device_map}
    if spec.is_stand_in:
        from helpers.tiny import quiet_transformers_progress, tiny_pipeline_dir

        with quiet_transformers_progress():
            return pipeline_class.from_pretrained(tiny_pipeline_dir(), **options)
    from huggingface_hub.constants import is_offline_mode

    if is_offline_mode():  # HF_HUB_OFFLINE=1: weights already in the local cache, no network asked
        return pipeline_class.from_pretrained(spec.hub_id, **options)
    token = require_token(spec.hub_id)
    check_access(spec.hub_id, token)
    return pipeline_class.from_pretrained(spec.hub_id, token=token, **options)
