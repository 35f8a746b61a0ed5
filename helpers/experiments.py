"""Sweeps over generation settings that survive interruption, and simple image measurements you can trust.

Introduced in notebook 04. Every image of a sweep is stored as a PNG named by a hash of everything that determines
it (model, how its weights are stored, task, prompt, negative prompt, guidance, steps, size, seed, scheduler
settings, input images), with those settings in its metadata. A sweep that is stopped (Ctrl-C, kernel restart,
killed process) keeps every image it finished; run again, it makes only the missing ones. A file appears
complete or not at all.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import numbers
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from helpers.checks import (
    MAX_COUNT,
    MAX_SIDE,
    SIZE_MULTIPLE,
    check_guidance_scale,
    check_max_sequence_length,
    check_prompt,
    check_seed,
    check_side,
    check_steps,
    check_strength,
    check_strength_for_steps,
    checked,
    flag,
    function,
    instance,
    is_whole,
    listed,
    number,
    one_of,
    optional,
    output_folder,
    picture,
    pipeline,
    shown,
    text,
    whole,
)
from helpers.images import STAGING_PREFIX, default_folder, image_grid, read_metadata, write_png
from helpers.models import model_name

PARAMETERS = {
    "prompt", "negative_prompt", "guidance_scale", "num_inference_steps", "height", "width", "seed",
    "max_sequence_length", "strength", "image", "mask_image", "joint_attention_kwargs",
    "skip_guidance_layers", "skip_layer_guidance_scale", "skip_layer_guidance_start", "skip_layer_guidance_stop",
}
"""The settings a sweep can fix or vary: the pipeline's arguments, and `seed` for its generator."""
REQUIRED = ("prompt", "num_inference_steps", "guidance_scale", "seed")
STALE_STAGING_S = 600


def _digest(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(buffer, format="PNG")
    return "sha256:" + hashlib.sha256(buffer.getvalue()).hexdigest()[:16]


def weights_signature(pipe) -> dict[str, str]:
    """How the pipeline's weights are stored (dtype, NF4, 8-bit, or a part left out): part of every image's key."""
    from helpers.quantization import count_4bit_layers

    signature = {}
    for part in ("transformer", "text_encoder_3"):
        module = getattr(pipe, part, None)
        if module is None:
            signature[part] = "none"
        elif count_4bit_layers(module):
            signature[part] = "nf4"
        elif any(type(layer).__name__ == "Linear8bitLt" for layer in module.modules()):
            signature[part] = "int8"
        else:
            signature[part] = str(next(module.parameters()).dtype).removeprefix("torch.")
    return signature


def check_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Raise, naming the setting, its value and the fix, for anything a pipeline would reject or misread. Returns
    the settings with numbers as Python's own (NumPy scalars accepted; guidance 7 and 7.0 are one setting, so one
    cache entry)."""
    if not isinstance(settings, dict):
        raise ValueError(f"settings must be a dict of pipeline settings, e.g. {{'prompt': 'a red circle', ...}}; "
                         f"got {type(settings).__name__}.")
    unknown = sorted(set(settings) - PARAMETERS, key=repr)
    if unknown:
        raise ValueError(f"unknown setting {shown(unknown[0])}. Settings a sweep knows: {', '.join(sorted(PARAMETERS))}.")
    missing = [name for name in REQUIRED if name not in settings]
    if missing:
        raise ValueError(f"setting {shown(missing[0])} is missing; give it a value, e.g. in `fixed`.")
    # An optional setting of None means "the pipeline's default", as leaving it out does: one setting, one key.
    checked = {name: value for name, value in settings.items() if value is not None or name in REQUIRED}
    checked["guidance_scale"] = check_guidance_scale(settings["guidance_scale"])
    checked["num_inference_steps"] = steps = check_steps(settings["num_inference_steps"])
    checked["seed"] = check_seed(settings["seed"])
    check_prompt(settings["prompt"])
    # None means no negative prompt, as in diffusers, which uses '' for it: one picture, one key for both
    if settings.get("negative_prompt") is not None and check_prompt(settings["negative_prompt"], "negative_prompt") == "":
        del checked["negative_prompt"]
    for name, modes, helper in (("image", ("RGB",), "prepare_image"), ("mask_image", ("L", "1"), "prepare_mask")):
        value = settings.get(name)
        if value is not None and (not isinstance(value, Image.Image) or value.mode not in modes):
            what = f"a {value.mode} image" if isinstance(value, Image.Image) else repr(type(value).__name__)
            raise ValueError(f"{name} is {what}; the pipeline takes {' or '.join(modes)}. Pass it through "
                             f"{helper}() first, which converts it faithfully and says what it did.")
        if value is not None and (value.width % SIZE_MULTIPLE or value.height % SIZE_MULTIPLE or not value.width or not value.height
                                  or value.width > MAX_SIDE or value.height > MAX_SIDE):
            raise ValueError(f"{name} is {value.width}x{value.height} pixels; SD3 needs sides that are multiples of "
                             f"{SIZE_MULTIPLE} up to {MAX_SIDE}. Pass it through {helper}() first.")
    for side in ("height", "width"):
        if settings.get(side) is not None:
            checked[side] = check_side(side, settings[side])
    if settings.get("strength") is not None:
        checked["strength"] = check_strength(settings["strength"])
        check_strength_for_steps(checked["strength"], steps)
    if settings.get("max_sequence_length") is not None:
        checked["max_sequence_length"] = check_max_sequence_length(settings["max_sequence_length"])
    if settings.get("mask_image") is not None and settings.get("image") is None:
        raise ValueError("mask_image is given without image: inpainting needs the picture to paint in as `image`.")
    _check_skip_layer_guidance(settings, checked)
    if settings.get("joint_attention_kwargs") is not None:
        scale = _check_lora_scale(settings["joint_attention_kwargs"])
        if scale == 1.0:  # the LoRA as loaded: the same picture as without the setting, so the same key
            del checked["joint_attention_kwargs"]
        else:
            checked["joint_attention_kwargs"] = {"scale": scale}
    return checked


LORA_SCALE = (-10.0, 10.0)
"""The LoRA scales a sweep takes (`joint_attention_kwargs={"scale": ...}`): 0 is the base model, 1 the LoRA as
loaded; negative scales push away from what it learned."""


def _check_lora_scale(value: Any) -> float:
    if not isinstance(value, dict) or set(value) != {"scale"}:
        raise ValueError(f"joint_attention_kwargs={shown(value)}: here it carries only the LoRA scale, as "
                         "{'scale': 0.5}.")
    return number(*LORA_SCALE)(value["scale"], "joint_attention_kwargs['scale']")


def is_lora_layer(layer) -> bool:
    """Whether `layer` is a LoRA layer with adapters (peft's, as `load_lora_weights` adds them): its `scaling` maps
    adapter names to scales."""
    scaling = getattr(layer, "scaling", None)
    return isinstance(scaling, dict) and bool(scaling)


def has_lora(pipe) -> bool:
    """Whether `pipe`'s transformer has LoRA layers."""
    transformer = getattr(pipe, "transformer", None)
    return transformer is not None and any(is_lora_layer(layer) for layer in transformer.modules())


PER_PICTURE = ("negative_prompt", "image", "mask_image", "prompt_2", "prompt_3", "negative_prompt_2",
               "negative_prompt_3")
"""Settings a batch may give one value per picture of (as a list)."""
ENCODER_TEXTS = ("prompt_2", "prompt_3", "negative_prompt_2", "negative_prompt_3")
"""Text for one text encoder alone (CLIP-G, T5), which a batch may give besides `prompt` and `negative_prompt`."""


def batch_settings(settings: dict[str, Any], name: str = "settings") -> dict[str, Any]:
    """The settings of a batch of pictures (`helpers.evaluation.generate_batch`): what `check_settings` accepts, less
    `prompt` and `seed` (given per picture), with `negative_prompt`, `image` and `mask_image` either one value or a
    list of one per picture (each checked). Returns them normalised."""
    settings = dict(settings)
    for taken in ("prompt", "seed"):
        if taken in settings:
            raise ValueError(f"{taken} is given per picture (the prompts and seeds lists), not as a setting.")
    base = {"prompt": "", "seed": 0, "num_inference_steps": 1, "guidance_scale": 1.0}
    texts = {key: settings.pop(key) for key in ENCODER_TEXTS if key in settings}
    for key, value in texts.items():
        for index, item in enumerate(value if isinstance(value, list) else [value]):
            if item is not None:
                check_prompt(item, f"{key}[{index}]" if isinstance(value, list) else key)
    shared = {key: value for key, value in settings.items() if not (key in PER_PICTURE and isinstance(value, list))}
    checked_shared = check_settings({**base, **shared})
    normalised = {key: checked_shared[key] for key in shared if key in checked_shared} | texts
    lists = {key: settings[key] for key in PER_PICTURE if isinstance(settings.get(key), list)}
    for index in range(max(map(len, lists.values()), default=0)):  # lengths are compared with the prompts later
        picture = {key: values[index] for key, values in lists.items() if index < len(values)}
        try:
            check_settings({**base, **shared, **picture})
        except ValueError as error:
            raise ValueError(f"picture {index} of the batch: {error}") from None
    return {**normalised, **{key: list(values) for key, values in lists.items()}}


def _check_skip_layer_guidance(settings: dict[str, Any], checked: dict[str, Any]) -> None:
    """diffusers' SD3 skip-layer guidance: the layers to skip, how strongly, and from when to when (fractions of the
    steps). Layer numbers are checked against the transformer in `check_for_pipeline`."""
    layers = settings.get("skip_guidance_layers")
    if layers is not None:
        if isinstance(layers, (str, bytes, dict)) or not isinstance(layers, Sequence) or not layers or not all(
                is_whole(layer) and layer >= 0 for layer in layers):
            raise ValueError(f"skip_guidance_layers={shown(layers)} must be a non-empty list of layer numbers (0 or more), "
                             "e.g. [7, 8, 9] as Stability AI uses for Medium.")
        checked["skip_guidance_layers"] = [int(layer) for layer in layers]
    for name in ("skip_layer_guidance_scale", "skip_layer_guidance_start", "skip_layer_guidance_stop"):
        value = settings.get(name)
        if value is None:
            continue
        high = math.inf if name == "skip_layer_guidance_scale" else 1
        if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
                and 0 <= value <= high):
            bound = "0 or more, e.g. 2.8" if high == math.inf else "from 0 to 1 (a fraction of the steps)"
            raise ValueError(f"{name}={shown(value)} must be a finite number {bound}.")
        checked[name] = float(value)
    start = checked.get("skip_layer_guidance_start")
    stop = checked.get("skip_layer_guidance_stop")
    start, stop = 0.01 if start is None else start, 0.2 if stop is None else stop
    if start >= stop:  # diffusers' defaults are 0.01 and 0.2
        raise ValueError(f"skip_layer_guidance_start={shown(start)} must be below skip_layer_guidance_stop={shown(stop)}: "
                         "layers are skipped between the two.")


def max_side(pipe) -> int | None:
    """The largest height or width this pipeline's transformer has positions for (its `pos_embed_max_size` patches,
    each `patch_size` latent pixels of `vae_scale_factor` image pixels); None where the pipeline does not say."""
    config = getattr(getattr(pipe, "transformer", None), "config", None)
    table, patch = getattr(config, "pos_embed_max_size", None), getattr(config, "patch_size", None)
    factor = getattr(pipe, "vae_scale_factor", None)
    if not all(isinstance(value, int) for value in (table, patch, factor)):
        return None
    return table * patch * factor


def check_for_pipeline(pipe, settings: dict[str, Any]) -> None:
    """What checked settings must also meet on this pipeline: sizes inside its position table, skipped layers that
    exist, inputs its task takes."""
    import inspect

    largest = max_side(pipe)
    for side in ("height", "width"):
        if largest is not None and settings.get(side) is not None and settings[side] > largest:
            raise ValueError(f"{side}={settings[side]} is more than this model draws: its transformer has positions "
                             f"for at most {largest} px. Use {largest} or less.")
    layers = settings.get("skip_guidance_layers")
    count = getattr(getattr(getattr(pipe, "transformer", None), "config", None), "num_layers", None)
    if layers and isinstance(count, int) and max(layers) >= count:
        raise ValueError(f"skip_guidance_layers={shown(layers)}: this transformer has layers 0 to {count - 1}.")
    if settings.get("joint_attention_kwargs") is not None and not has_lora(pipe):
        raise ValueError(f"joint_attention_kwargs={settings['joint_attention_kwargs']} scales a LoRA, but this "
                         "pipeline has none loaded: the picture would be the base model's. Load one first with "
                         "pipe.load_lora_weights(folder).")
    accepted = inspect.signature(pipe.__call__).parameters
    for name in ("image", "mask_image", "strength", *(n for n in settings if n.startswith("skip_"))):
        if settings.get(name) is not None and name not in accepted:
            raise ValueError(f"{name} is given, but this {type(pipe).__name__} does not take it: load the pipeline "
                             "for the task (load_pipeline(model, 'image-to-image') or 'inpainting').")


PIPELINE_PARTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
SAMPLES_PER_TENSOR = 256


def pipeline_fingerprint(pipe) -> str:
    """A digest of what the pipeline is: each part's class, every tensor's name, shape and dtype, and 256 values
    spread through each tensor, and the adapters of LoRA layers that act and their scales. It changes when the
    weights change in place (a LoRA loaded, fused or scaled, a fine-tune, another dtype), and costs a few thousand
    small reads, not a pass over the weights."""
    import torch

    digest = hashlib.sha256()
    for part in PIPELINE_PARTS:
        module = getattr(pipe, part, None)
        digest.update(f"{part}={type(module).__name__};".encode())
        if module is None:
            continue
        for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype};".encode())
            if tensor.device.type == "meta" or tensor.numel() == 0:  # offloaded layer by layer: no values here
                continue
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // SAMPLES_PER_TENSOR)][:SAMPLES_PER_TENSOR].contiguous()
            digest.update(sample.view(torch.uint8).cpu().numpy().tobytes())
        for name, layer in module.named_modules():
            if is_lora_layer(layer):  # which adapters act, at what scale
                digest.update(f"{name}:{sorted(layer.scaling.items())}{list(layer.active_adapters)}"
                              f"{list(getattr(layer, 'merged_adapters', []))}{bool(layer.disable_adapters)};".encode())
    return digest.hexdigest()[:24]


def pixels_digest(image: Image.Image) -> str:
    """A digest of a picture's decoded pixels (mode and size included)."""
    return hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()[:24]


def image_key(pipe, model: str, settings: dict[str, Any], fingerprint: str | None = None) -> dict[str, Any]:
    """Everything that determines an image, as plain data (input images by their digest, the pipeline by
    `pipeline_fingerprint`, which `fingerprint` passes in when it is already known)."""
    from helpers.speed import speed_signature

    scheduler = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
    speed = speed_signature(pipe)  # left out where none: the keys of plain pipelines stay as they were
    return {
        **({"speed": speed} if speed else {}),
        "model": model,
        "weights": weights_signature(pipe),
        "fingerprint": fingerprint or pipeline_fingerprint(pipe),
        "task": type(pipe).__name__,
        "scheduler": {type(pipe.scheduler).__name__: scheduler},
        "settings": {
            name: _digest(value) if isinstance(value, Image.Image) else value
            for name, value in sorted(settings.items())
        },
    }


def key_name(key: dict[str, Any]) -> str:
    """The file name of an image: a hash of its key."""
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24] + ".png"


def _intact(path: Path, key: dict[str, Any]) -> bool:
    """Whether a cached picture decodes in full and its stored settings and pixel digest match `key`."""
    from helpers.images import METADATA_KEY

    try:
        with Image.open(path) as image:
            image.load()
            record = json.loads(image.text[METADATA_KEY])
            pixels = pixels_digest(image)
    except (OSError, ValueError, KeyError, AttributeError, SyntaxError):  # truncated, not a PNG, no record
        return False
    stored = {name: value for name, value in record.items() if name not in ("file", "pixels")}
    return stored == json.loads(json.dumps(key, default=str)) and record.get("pixels") == pixels


@checked(pipe=pipeline, model=model_name, settings=instance(dict, "a dict of pipeline settings"),
         folder=optional(output_folder), on_step=optional(function), fingerprint=optional(text),
         repaired=optional(instance(list, "a list that damaged paths are added to")))
def generate(
    pipe, model: str, settings: dict[str, Any], folder: str | Path | None = None, *, on_step=None,
    fingerprint: str | None = None, repaired: list[Path] | None = None,
) -> tuple[Path, bool]:
    """The image for `settings`, from the cache folder if it is there and intact, else generated and stored.

    Returns its path, and whether it was generated now. `on_step(step, total)` is called after each denoising step.
    A cached file that does not decode, or whose stored settings or pixels do not match, is made again (and added
    to `repaired`). `fingerprint`: the pipeline's, when the caller has computed it for many images.
    """
    import torch

    settings = check_settings(settings)
    check_for_pipeline(pipe, settings)
    folder = folder if folder is not None else default_folder("sweeps")
    key = image_key(pipe, model, settings, fingerprint)
    path = folder / key_name(key)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        kind = "a link" if path.is_symlink() else "a folder" if path.is_dir() else "not a regular file"
        raise OSError(f"{path} is {kind}, where this sweep keeps the picture of these settings: the picture could not "
                      "be stored. It is left as it is: move it away, or sweep into another folder.")
    if path.is_file():
        if _intact(path, key):
            return path, False
        try:
            path.unlink()
        except OSError as error:
            raise OSError(f"{path} is damaged (it does not decode, or it is not the picture its name stands for) and "
                          f"cannot be replaced ({error.strerror}): delete it, or sweep into another folder.") from None
        if repaired is not None:
            repaired.append(path)
    arguments = with_prompt_embeddings(pipe, {name: value for name, value in settings.items() if name != "seed"},
                                       key["fingerprint"])
    generator = torch.Generator("cpu").manual_seed(settings["seed"])
    if on_step is not None:
        def step_end(_pipe, step, _timestep, tensors):
            on_step(step + 1, settings["num_inference_steps"])
            return tensors

        arguments["callback_on_step_end"] = step_end
    # Callers show their own progress (a sweep's bar, an explorer's); the pipeline's bar per image would be noise.
    previous = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(**{**previous, "disable": True})
    try:
        image = pipe(**arguments, generator=generator).images[0]
    finally:
        pipe.set_progress_bar_config(**previous)
    written = write_png(image, {**key, "file": path.name, "pixels": pixels_digest(image)}, folder, [path.name])
    if written is None and not (path.is_file() and not path.is_symlink() and _intact(path, key)):
        raise OSError(f"The picture for {path.name} was made but could not be stored in {folder}: something else took "
                      "its name meanwhile. Move that away, or sweep into another folder.")
    return path, written is not None


EMBEDDINGS_KEPT = 8
"""Prompts whose embeddings `with_prompt_embeddings` keeps per pipeline (a few MB each at SD3.5's size)."""
_embeddings: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Each pipeline's kept embeddings, dropped with the pipeline (they can be GPU tensors)."""


def with_prompt_embeddings(pipe, arguments: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    """The pipeline call's `arguments` with the prompt and negative prompt replaced by their embeddings, computed
    once per prompt and kept for the next pictures (the EMBEDDINGS_KEPT prompts used last): a sweep over seeds, or
    a slider moved, runs the three text encoders once per prompt instead of once per picture. Under model offload
    that also spares T5's trip to the GPU. The pictures are the same to the bit: the embeddings come from the
    pipeline's own `encode_prompt`, with the settings its call would use. `fingerprint` (the pipeline's, from
    `pipeline_fingerprint`) keeps embeddings of changed weights (a LoRA loaded) apart."""
    import torch

    guided = arguments["guidance_scale"] > 1
    scale = (arguments.get("joint_attention_kwargs") or {}).get("scale")
    length = arguments.get("max_sequence_length", 256)  # the SD3 pipelines' default
    key = (fingerprint, arguments["prompt"], arguments.get("negative_prompt"), guided, length, scale,
           str(pipe._execution_device))
    kept = _embeddings.setdefault(pipe, OrderedDict())
    if key not in kept:
        with torch.no_grad():  # as inside the pipeline's call
            kept[key] = pipe.encode_prompt(
                prompt=arguments["prompt"], prompt_2=None, prompt_3=None,
                negative_prompt=arguments.get("negative_prompt"), do_classifier_free_guidance=guided,
                device=pipe._execution_device, num_images_per_prompt=1, max_sequence_length=length,
                lora_scale=scale)
        while len(kept) > EMBEDDINGS_KEPT:
            kept.popitem(last=False)
    kept.move_to_end(key)
    prompt_embeds, negative_embeds, pooled, negative_pooled = kept[key]
    embedded = {name: value for name, value in arguments.items() if name not in ("prompt", "negative_prompt")}
    embedded.update(prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled)
    if guided:
        embedded.update(negative_prompt_embeds=negative_embeds, negative_pooled_prompt_embeds=negative_pooled)
    return embedded


@dataclass
class Sweep:
    """The images of a sweep, each with the settings that made it."""

    fixed: dict[str, Any]
    vary: dict[str, list]
    entries: list[tuple[dict[str, Any], Path]]
    generated: int
    reused: int
    seconds: float
    repaired: int = 0
    """Cached pictures found damaged (or not what their name stands for) and made again."""

    def _matching(self, match: dict[str, Any]) -> list[Path]:
        unknown = [name for name in match if name not in self.vary]
        if unknown:
            raise ValueError(f"{shown(unknown[0])} is not varied in this sweep; choose from: {', '.join(self.vary)}.")
        return [path for settings, path in self.entries if all(settings[k] == v for k, v in match.items())]

    def image(self, **match: Any) -> Image.Image:
        """The one image whose varied settings equal `match`, e.g. `sweep.image(seed=1, guidance_scale=7.0)`."""
        found = self._matching(match)
        if len(found) != 1:
            raise KeyError(f"{len(found)} images match {shown(match)}; name a value for each of: "
                           f"{', '.join(self.vary)}.")
        with Image.open(found[0]) as image:
            return image.copy()

    def images(self, **match: Any) -> list[Image.Image]:
        """Every image whose settings equal `match`, in sweep order."""
        return [Image.open(path).copy() for path in self._matching(match)]

    @checked(rows=text, columns=text, title=optional(text), label=function, first=optional(whole(1, MAX_COUNT)),
             names=optional(listed(text)))
    def figure(self, rows: str, columns: str, title: str | None = None, label=str, first: int | None = None,
               names: Sequence[str] | None = None):
        """A grid: one row per value of `rows`, one column per value of `columns` (the others must be single); only
        the `first` columns where given, and `names` as the rows' labels in place of 'setting = value'."""
        for name in (rows, columns):
            if name not in self.vary:
                raise ValueError(f"{shown(name)} is not varied in this sweep; choose from: {', '.join(self.vary)}.")
        others = {name: values for name, values in self.vary.items() if name not in (rows, columns)}
        if any(len(values) > 1 for values in others.values()):
            raise ValueError(f"the grid shows {rows} x {columns}; fix the other varied settings: {', '.join(others)}.")
        shown_columns = self.vary[columns][:first]
        if names is not None and len(names) != len(self.vary[rows]):
            raise ValueError(f"names has {len(names)} labels for {len(self.vary[rows])} rows: give one per row.")
        grid = [[self.image(**{rows: r, columns: c}) for c in shown_columns] for r in self.vary[rows]]
        return image_grid(
            grid,
            row_labels=list(names) if names else [f"{rows} =\n{label(value)}" for value in self.vary[rows]],
            column_labels=[f"{columns} = {label(value)}" for value in shown_columns],
            title=title,
        )


def sweep_combinations(fixed: dict[str, Any], vary: dict[str, Sequence]) -> list[dict[str, Any]]:
    """Every combination of `vary`'s values, in order (the last setting varies fastest), each checked on top of
    `fixed` with `check_settings`: a bad value raises before the first image."""
    for name, value in (("fixed", fixed), ("vary", vary)):
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a dict of settings, e.g. {{'seed': [0, 1]}}; got {type(value).__name__}.")
    if not vary:
        raise ValueError("vary is empty: name at least one setting and its values, e.g. vary={'seed': [0, 1, 2]}.")
    for name, values in vary.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"vary[{shown(name)}]={shown(values)} must be a non-empty list of values.")
    overlap = set(fixed) & set(vary)
    if overlap:
        raise ValueError(f"{shown(min(overlap, key=repr))} is both fixed and varied; keep it in one of the two.")
    count = math.prod(len(values) for values in vary.values())
    if count > MAX_COUNT:
        raise ValueError(f"vary makes {count:,} combinations, more than {MAX_COUNT:,}: sweep fewer values at once.")
    combinations = [dict(zip(vary, values, strict=True)) for values in itertools.product(*vary.values())]
    for combination in combinations:
        check_settings({**fixed, **combination})
    return combinations


@checked(pipe=pipeline, model=model_name, fixed=instance(dict, "a dict of settings"),
         vary=instance(dict, "a dict of settings and their lists of values"), folder=optional(output_folder),
         progress=flag)
def run_sweep(
    pipe,
    model: str,
    fixed: dict[str, Any],
    vary: dict[str, Sequence],
    *,
    folder: str | Path | None = None,
    progress: bool = True,
) -> Sweep:
    """Generate every combination of `vary` on top of `fixed`, reusing what earlier runs stored in `folder`.

    All settings are checked before the first image: an unknown name, an empty list, guidance below 0 or 0 steps
    raise at once. Interrupting loses only the image in progress.
    """
    from tqdm.auto import tqdm

    combinations = sweep_combinations(fixed, vary)
    for combination in combinations:  # each checked by sweep_combinations; now against this pipeline
        check_for_pipeline(pipe, {**fixed, **combination})
    folder = folder if folder is not None else default_folder("sweeps")
    _remove_stale_staging(folder)
    start = time.perf_counter()
    fingerprint = pipeline_fingerprint(pipe)  # once: the pipeline does not change during a sweep
    entries, generated, repaired = [], 0, []
    clock = TimeTeller(pipe, len(combinations), fixed, verbose=progress)
    bar = tqdm(combinations, desc="sweep", disable=not progress)
    for combination in bar:
        began = time.perf_counter()
        path, made = generate(pipe, model, {**fixed, **combination}, folder, fingerprint=fingerprint,
                              repaired=repaired)
        if made and not generated:
            clock.first_made(time.perf_counter() - began, len(combinations) - len(entries) - 1)
        generated += made
        entries.append((combination, path))
        bar.set_postfix(generated=generated, reused=len(entries) - generated)
    if repaired:
        print(f"{len(repaired)} cached picture(s) in {folder} were damaged or not what their names stand for, and "
              "were made again.")
    return Sweep(
        fixed=dict(fixed), vary={name: list(values) for name, values in vary.items()}, entries=entries,
        generated=generated, reused=len(entries) - generated, seconds=time.perf_counter() - start,
        repaired=len(repaired),
    )


class TimeTeller:
    """Says, before long work, how many pictures it makes and about how long that takes: before the first, from the
    machine catalogue for the full-size model the route was planned for (an estimate, helpers.bench); after the
    first, measured here."""

    def __init__(self, pipe, count: int, settings: dict[str, Any], *, verbose: bool = True):
        self.verbose = verbose
        if not verbose:
            return
        from helpers.bench import estimated_seconds_per_image
        from helpers.models import get_model
        from helpers.routes import route_of

        line = f"{count} picture{'s' if count != 1 else ''} to make (any already in the folder are reused)."
        route = route_of(pipe)
        if route is not None and route.machine is not None and not get_model(route.model).is_stand_in:
            spec = get_model(route.model)
            seconds = estimated_seconds_per_image(
                route, steps=settings.get("num_inference_steps", spec.num_inference_steps),
                guidance_scale=settings.get("guidance_scale", spec.guidance_scale), size=spec.height)
            if seconds is not None:
                line += (f" {spec.title} at {spec.height}x{spec.height} would take about {duration(seconds * count)} "
                         f"on {route.machine.gpu} with this route (estimate from the H100's measured speed).")
        print(line)

    def first_made(self, seconds: float, left: int) -> None:
        """The first picture took `seconds` here; `left` more are to come."""
        if self.verbose and left > 0:
            print(f"The first picture took {seconds:.1f} s here: about {duration(seconds * left)} for the {left} "
                  "left (measured).")


def duration(seconds: float) -> str:
    """Seconds as a reader reads them: 4.2 s, 70 s, 17 min, 1.5 h."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _remove_stale_staging(folder: Path) -> None:
    """Temporary files left by a killed process; recent ones may belong to a sweep still running, so stay."""
    if folder.is_dir():
        for leftover in folder.glob(f"{STAGING_PREFIX}*"):
            try:
                if time.time() - leftover.stat().st_mtime > STALE_STAGING_S:
                    leftover.unlink(missing_ok=True)
            except OSError:  # a read-only folder: harmless, the leftover is never read
                continue


def settings_of(path: str | Path) -> dict[str, Any]:
    """The settings stored in a sweep image."""
    return read_metadata(path)["settings"]


# Measurements -------------------------------------------------------------------------------------------------

COLOURS = {
    "green": (75, 165),
    "red": (-20, 20),
    "yellow": (40, 70),
    "blue": (190, 260),
}
"""Hue ranges in degrees (HSV) for colour_share."""


def _hue_range(value: Any, name: str) -> str | tuple[float, float]:
    if isinstance(value, str):
        if value not in COLOURS:
            raise ValueError(f"{name}={shown(value)} is not named; use one of {', '.join(COLOURS)} or a (low, high) range.")
        return value
    low, high = listed(number(-360, 360), 2, 2)(value, name)
    if low > high:
        raise ValueError(f"{name}={shown(value)}: a hue range is (low, high) in degrees with low <= high, e.g. (-20, 20).")
    return low, high


@checked(image=picture, colour=_hue_range, min_saturation=number(0, 1), min_value=number(0, 1))
def colour_share(image: Image.Image, colour: str | tuple[float, float], min_saturation: float = 0.25,
                 min_value: float = 0.2) -> float:
    """The share of pixels (0 to 1) whose hue is in `colour`'s range and that are not grey or dark.

    `colour` is a name in COLOURS or a (low, high) hue range in degrees; a range may start below 0 (red wraps).
    """
    import numpy as np

    low, high = COLOURS[colour] if isinstance(colour, str) else colour
    hsv = np.asarray(image.convert("RGB").convert("HSV"), dtype=float) / 255.0
    hue, saturation, value = hsv[..., 0] * 360.0, hsv[..., 1], hsv[..., 2]
    in_range = ((hue - low) % 360.0) <= (high - low)
    return float((in_range & (saturation >= min_saturation) & (value >= min_value)).mean())


@checked(first=picture, second=picture)
def mean_difference(first: Image.Image, second: Image.Image) -> float:
    """Mean absolute difference of two images' pixels, from 0 (identical) to 255."""
    import numpy as np

    if first.size != second.size:
        raise ValueError(f"first is {first.width}x{first.height} and second {second.width}x{second.height}: compare "
                         "pictures of one size.")
    a = np.asarray(first.convert("RGB"), dtype=float)
    b = np.asarray(second.convert("RGB"), dtype=float)
    return float(np.abs(a - b).mean())


@checked(first=picture, second=picture, mask=picture)
def region_difference(first: Image.Image, second: Image.Image, mask: Image.Image) -> dict[str, float]:
    """Mean pixel difference (0 to 255) inside the mask's painted (white) area and outside it."""
    import numpy as np

    if not first.size == second.size == mask.size:
        raise ValueError(f"sizes differ: first {first.size}, second {second.size} and mask {mask.size}; use one size "
                         "for all.")
    difference = np.abs(np.asarray(first.convert("RGB"), dtype=float) - np.asarray(second.convert("RGB"), dtype=float))
    painted = np.asarray(mask.convert("L")) >= 128
    if painted.all() or not painted.any():
        raise ValueError("mask must have both painted (white) and kept (black) pixels to compare the two regions.")
    return {"inside": float(difference[painted].mean()), "outside": float(difference[~painted].mean())}


@checked(image=picture)
def mean_saturation(image: Image.Image) -> float:
    """Mean colour saturation (HSV, 0 grey to 1 pure colour): a check of the claim that high guidance pushes colours
    to extremes (notebook 05 measures whether it does)."""
    import numpy as np

    return float(np.asarray(image.convert("RGB").convert("HSV"), dtype=float)[..., 1].mean() / 255.0)


def sign_test_p(agree: int, total: int) -> float:
    """Two-sided exact sign test: the chance of a split at least this uneven if each way were equally likely."""
    from math import comb

    if total == 0:
        return 1.0
    extreme = max(agree, total - agree)
    return min(1.0, 2 * sum(comb(total, k) for k in range(extreme, total + 1)) / 2**total)


EVIDENCE = 0.05
"""The sign test's p below which a paired change is reported as one: at or above it, 'no evidence either way'."""


@dataclass(frozen=True)
class PairedChange:
    """How a measurement changed seed by seed (pairs from the same seed), with an exact two-sided sign test on the
    seeds that changed by more than `tolerance`."""

    lower: int
    higher: int
    same: int
    mean_change: float
    tolerance: float
    unit: str = "seeds"
    """What the pairs are: seeds, or prompts."""

    @property
    def pairs(self) -> int:
        return self.lower + self.higher + self.same

    @property
    def p(self) -> float:
        return sign_test_p(self.lower, self.lower + self.higher)

    @property
    def direction(self) -> str | None:
        """'lower' or 'higher' where the sign test finds it (p < EVIDENCE); None when the seeds cannot tell."""
        if self.p >= EVIDENCE:
            return None
        return "lower" if self.lower > self.higher else "higher"

    def __str__(self) -> str:
        same = "same" if self.tolerance == 0 else f"within {self.tolerance:g}"
        return (f"lower in {self.lower}, higher in {self.higher}, {same} in {self.same} of {self.pairs} {self.unit}; mean "
                f"change {self.mean_change:+.3f}; sign test p = {self.p:.2g}")

    def finding(self, measure: str) -> str:
        """A sentence for `measure` ('the green share') that says only what the sign test supports."""
        counts = f"lower in {self.lower}, higher in {self.higher} of {self.pairs} {self.unit}, sign test p = {self.p:.2g}"
        if self.direction is None:
            changed = self.lower + self.higher
            one = self.unit.removesuffix("s")
            why = (f" (no {one} changed)" if changed == 0 else
                   f" (only {changed} {one if changed == 1 else self.unit} changed: too few to tell)"
                   if sign_test_p(changed, changed) >= EVIDENCE else "")
            return f"no evidence that {measure} differs, either way{why} ({counts})."
        return f"{measure} was {self.direction}, {self.unit.removesuffix('s')} by {self.unit.removesuffix('s')} ({counts})."


@checked(before=listed(number()), after=listed(number()), tolerance=number(0), unit=one_of("seeds", "prompts"))
def paired_change(before: Sequence[float], after: Sequence[float], tolerance: float = 0.0,
                  unit: str = "seeds") -> PairedChange:
    """How a measurement changed seed by seed: 'lower in 12, higher in 1, same in 3 of 16 seeds; mean change -0.62;
    sign test p = 0.0034'. A change of at most `tolerance` counts as the same (for continuous measures).

    `before[i]` and `after[i]` must come from the same seed (or prompt, `unit='prompts'`): a paired comparison,
    which a spread over seeds is not.
    """
    if len(before) != len(after):
        raise ValueError(f"before has {len(before)} values and after {len(after)}: give one pair per seed.")
    changes = [b - a for a, b in zip(before, after, strict=True)]
    lower, higher = sum(c < -tolerance for c in changes), sum(c > tolerance for c in changes)
    return PairedChange(lower, higher, len(changes) - lower - higher, sum(changes) / len(changes), tolerance, unit)


@checked(values=listed(number()))
def summarise(values: Sequence[float]) -> str:
    """'mean ± standard deviation (n = N)', the form in which the notebooks report measurements over seeds."""
    import statistics

    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f} (n = {len(values)})"
