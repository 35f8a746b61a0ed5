"""Loading SD3.5 pipelines: the real models from the hub, or an offline model, through the same diffusers calls.

Introduced in notebook 01; quantization and offload options in notebook 02. `load_pipeline` returns a plain
diffusers pipeline; notebooks call it themselves (`pipe(prompt=..., guidance_scale=...)`). Weights load from
safetensors only, in the dtype of the route helpers.routes plans for the machine.
"""

from __future__ import annotations

import logging
import os
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from helpers.access import check_access, require_token
from helpers.checks import checked, optional, shown
from helpers.machines import emulated_machine, machine_rule
from helpers.models import ModelSpec, get_model, model_spec
from helpers.routes import Route, build_pipeline, device_rule, dtype_rule, option, plan_route, remember
from helpers.speed import Speedups, speedups_rule

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

TASKS = {
    "text-to-image": "StableDiffusion3Pipeline",
    "image-to-image": "StableDiffusion3Img2ImgPipeline",
    "inpainting": "StableDiffusion3InpaintPipeline",
}

# The pipelines handed out, by what was asked (with the route they were loaded with): a new task reuses their
# components through `from_pipe`. Weak references, so the memory is freed once the reader holds none of them.
_loaded: dict[tuple, weakref.WeakSet] = {}
_requested: dict[tuple, Route] = {}


def _pipeline_class(task: str):
    if task not in TASKS:
        raise ValueError(f"task={shown(task)} is not a task of this series. Use one of: {', '.join(TASKS)}.")
    quiet_irrelevant_notices()
    import diffusers

    return getattr(diffusers, TASKS[task])


def quiet_irrelevant_notices() -> None:
    """Hide the library notices that never apply to SD3.5 (below), wherever a pipeline is loaded: `setup()` calls
    this, so a notebook's own `from_pretrained` cells are as quiet as `load_pipeline`."""
    for name in ("transformers.utils.import_utils", "diffusers.models.modeling_utils",
                 "diffusers.pipelines.pipeline_utils", "diffusers.loaders.lora_base"):
        notices = logging.getLogger(name)
        if _without_irrelevant_notices not in notices.filters:
            notices.addFilter(_without_irrelevant_notices)
    # peft warns on every LoRA loaded under a second name that the model "will have multiple adapters": that is
    # what loading under names is for (set_adapters mixes them, notebook 11).
    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute in the model",
                            category=UserWarning)


def _without_irrelevant_notices(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    # Importing diffusers' SD3 pipelines touches transformers' image processors (for IP-adapters, unused here),
    # which warn when torchvision is missing; SD3.5 never needs it. And diffusers 0.42 warns on every cast to a
    # dtype that modules "should be kept in float32" even when that list is empty, as it is for SD3.5.
    # It also warns that a float16 pipeline "cannot run with `cpu` device": torch 2.13 runs float16 on a CPU (the
    # emulated T4 routes do, tests/test_routes.py), only slowly.
    # Loading an SD3 LoRA that adapts the transformer only (trained without text-encoder layers) notes
    # that the CLIP encoders got nothing; helpers.lora.check_lora says which parts a file adapts. The same notice for
    # the transformer, which means the file changed nothing, stays.
    return ("requires torchvision" not in message and "should be kept in float32: []." not in message
            and "cannot run with `cpu` device" not in message
            and not message.startswith("No LoRA keys associated to CLIPTextModelWithProjection"))


def task_rule(value: object, name: str = "task") -> str:
    """One of TASKS: a rule for `helpers.checks`."""
    if not isinstance(value, str) or value not in TASKS:
        raise ValueError(f"{name}={shown(value)} is not a task of this series. Use one of: {', '.join(TASKS)}.")
    return value


@checked(model=model_spec, task=task_rule, device=optional(device_rule), dtype=optional(dtype_rule), offload=option,
         quantize=option, t5=option, machine=optional(machine_rule), speed=speedups_rule)
def load_pipeline(
    model: str | ModelSpec,
    task: str = "text-to-image",
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    offload: str | None = "auto",
    quantize: str | None = "auto",
    t5: str = "auto",
    machine: str | None = None,
    speed: Speedups | dict | None = None,
) -> DiffusionPipeline:
    """The diffusers pipeline of `model` for `task` ('text-to-image', 'image-to-image' or 'inpainting').

    - Real models come from the hub (a token and an accepted licence are checked first, with clear steps if
      missing); the offline models load from their folders (the toy's ships with the helpers, the random stand-in
      is built locally). All through `from_pretrained`.
    - Asking for another task of a model already loaded the same way reuses its components (`from_pipe`).
    - `quantize='nf4'` stores the transformer in 4-bit NF4 (bitsandbytes); None keeps it in 16 bits.
    - `t5`: 'keep', 'drop' (no T5: less memory, weaker prompt following), 'nf4' or 'int8'.
    - `offload`: None, 'model', 'sequential' (one layer at a time) or 'group' (one block at a time).
    - `dtype`: the machine's own by default: bf16 on GPUs with bf16 tensor cores, float16 below compute
      capability 8.0 (T4, V100), float32 on a CPU.
    - 'auto' (the default of the three options) keeps everything on the GPU where it fits, and otherwise takes
      the first route of AUTO_ROUTES that fits this GPU's free memory and this machine's RAM (helpers.routes).
    - `machine` (or SD35_MACHINE): plan as that catalogue machine (helpers.machines) and run that route here, on
      the CPU, with an offline model; what needs a GPU is reported, not run.
    - `speed`: rungs of the speed ladder (helpers.speed, notebook 03), e.g. `{'compile': 'regional'}`,
      `{'attention_kernel': 'flash'}`, `{'fp8': True}`, `{'cache': 'pab'}`; refused where the route cannot run them.
    Bad values and combinations that cannot work raise before anything loads.
    """
    spec = get_model(model)
    pipeline_class = _pipeline_class(task)
    # Looked up first by what was asked: once a model is loaded the GPU's free memory is smaller, and planning again
    # would find that the model no longer fits beside itself. Then by the route, so that options spelled another way
    # ('auto' or the value it resolves to) share one pipeline.
    origin = os.environ.get(TOY_DIR_VARIABLE, "").strip() if spec.is_toy or spec.plays else ""  # which toy folder
    request = (spec, machine or emulated_machine(), device, dtype, offload, quantize, t5, origin, speed)
    route = _requested.get(request)
    if route is None or not _loaded.get((route.key, origin)):
        route = plan_route(spec, machine=machine, device=device, dtype=dtype, offload=offload, quantize=quantize,
                           t5=t5, speed=speed)
    alive = _loaded.setdefault((route.key, origin), weakref.WeakSet())
    for pipe in list(alive):
        if type(pipe) is pipeline_class:
            _requested[request] = route
            return pipe
    if alive:
        # dtype must be passed: diffusers' from_pipe otherwise casts the shared parts to float32.
        pipe = pipeline_class.from_pipe(next(iter(alive)), dtype=route.torch_dtype)
    else:
        if route.not_run_here():
            print(route.report())
        pipe = build_pipeline(route, pipeline_class)
    alive.add(pipe)
    _requested[request] = route
    remember(pipe, route)
    return pipe


def load_weights(pipeline_class, route: Route):
    """The weights of `route.runs` through `from_pretrained`, each part in the route's dtype and storage: T5
    quantized by transformers, the transformer by diffusers' bitsandbytes quantizer on a GPU (on a CPU,
    helpers.routes builds the same NF4 layers afterwards)."""
    from helpers import quantization

    spec, device, dtype = get_model(route.runs), route.device, route.torch_dtype
    on_gpu = str(device).startswith("cuda")
    source, token = _weights_source(spec)
    # for every part loaded on its own too; the token stays hidden (a Token) until each call that sends it
    weights = {"dtype": dtype, "use_safetensors": True}
    options = dict(weights)
    if route.t5 == "drop":
        options.update(text_encoder_3=None, tokenizer_3=None)
    elif route.t5 in ("nf4", "int8"):
        from transformers import T5EncoderModel

        quantization.quiet_int8_cast_warning()
        options["text_encoder_3"] = T5EncoderModel.from_pretrained(
            source, subfolder="text_encoder_3", quantization_config=quantization.transformers_config(route.t5, dtype),
            device_map=str(device), **weights, token=_revealed(token),
        )
    if route.quantize and on_gpu:
        from diffusers import SD3Transformer2DModel

        options["transformer"] = SD3Transformer2DModel.from_pretrained(
            source, subfolder="transformer", quantization_config=quantization.diffusers_nf4_config(dtype), **weights,
            token=_revealed(token),
        )
    has_quantized_parts = route.quantize is not None and on_gpu or route.t5 in ("nf4", "int8")
    # Without offload, weights load straight onto the device, never all at once into CPU memory (Colab's T4
    # machines have 13 GB of it). Offload keeps them in CPU memory; quantized parts are placed by their loaders.
    device_map = str(device) if not route.offloads_here and not has_quantized_parts else None
    pipe = _from_pretrained(pipeline_class, spec, source, token, device_map=device_map, **options)
    if device_map is None and not route.offloads_here:
        pipe.to(device)  # moves the parts not yet there; diffusers moves 4-bit parts as they are
    return pipe


TOY_MODEL_DIR = Path(__file__).resolve().parent / "toy_model"
"""The trained offline model, shipped inside the helpers package (notebook 09 shows how it was trained)."""
TOY_DIR_VARIABLE = "SD35_TOY_DIR"
"""Set to a folder saved by `python -m helpers.training train --out FOLDER` to run that toy model instead."""


def toy_model_dir() -> Path:
    """The folder of the toy model ($SD35_TOY_DIR, else the shipped one), checked file by file against the list
    saved with it: a clear error naming the file and the fix if it is incomplete or damaged."""
    from helpers.manifest import check_model_folder

    configured = os.environ.get(TOY_DIR_VARIABLE, "").strip()
    if configured:
        folder = Path(configured).expanduser()
        fix = (f"Train it again with `python -m helpers.training train --out {folder}-new` and point "
               f"{TOY_DIR_VARIABLE} there, or unset {TOY_DIR_VARIABLE} to use the toy model shipped with the helpers.")
    else:
        folder = TOY_MODEL_DIR
        fix = ("This installation of the helpers is incomplete or damaged: reinstall them (`pip install "
               "--force-reinstall git+https://github.com/sd35-notebooks/sd35-notebooks`), or retrain the toy with "
               f"`python -m helpers.training train --out MY_FOLDER` (notebook 09) and set {TOY_DIR_VARIABLE}=MY_FOLDER.")
    check_model_folder(folder, fix)
    return folder


def _revealed(token):
    return None if token is None else token.reveal()


def _weights_source(spec: ModelSpec) -> tuple[object, object]:
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


@checked(model=model_spec)
def weights_location(model: str | ModelSpec) -> str:
    """What to pass to diffusers' `from_pretrained` for `model`: its hub repository (after the token and licence
    checks load_pipeline makes, so a missing one stops with the steps to fix it; `from_pretrained` then finds the
    token itself), or the folder of an offline model (the toy's checked file by file)."""
    source, _token = _weights_source(get_model(model))
    return str(source)


def check_can_load(model: str | ModelSpec) -> None:
    """The checks load_pipeline makes before loading `model` from the hub (a token, an accepted licence), made now:
    for code that loads it in other processes later, such as a distributed sweep."""
    _weights_source(get_model(model))


def _from_pretrained(pipeline_class, spec: ModelSpec, source, token=None, **options):
    """`from_pretrained`, the token revealed only inside the call (no frame of ours holds its text)."""
    if spec.is_stand_in:
        from helpers.tiny import quiet_transformers_progress

        with quiet_transformers_progress():
            return pipeline_class.from_pretrained(source, **options, token=_revealed(token))
    return pipeline_class.from_pretrained(source, **options, token=_revealed(token))
