"""The models of the series, the settings recommended for each, and the one setting that picks a model.

Introduced in notebook 01. Every notebook takes steps, guidance and size from here instead of hard-coding them.
Importing this module is cheap: it does not import torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from helpers.checks import MAX_SIDE, SIZE_MULTIPLE, check_side, shown  # noqa: F401 - also part of this module

MODEL_VARIABLE = "SD35_MODEL"
"""The environment variable that chooses the model every notebook runs."""

AUTO = "auto"


class UnknownModelError(ValueError):
    """A model name that is not in the registry."""


@dataclass(frozen=True)
class SkipLayerGuidance:
    """Skip-layer guidance (SLG) settings, as Stability AI's reference code uses them for SD3.5 Medium."""

    guidance_scale: float
    scale: float
    layers: tuple[int, ...]
    start: float
    stop: float

    def pipeline_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `StableDiffusion3Pipeline.__call__` that turn SLG on."""
        return {
            "guidance_scale": self.guidance_scale,
            "skip_guidance_layers": list(self.layers),
            "skip_layer_guidance_scale": self.scale,
            "skip_layer_guidance_start": self.start,
            "skip_layer_guidance_stop": self.stop,
        }


@dataclass(frozen=True)
class ModelSpec:
    """One model of the series and the settings recommended for it."""

    name: str
    title: str
    hub_id: str | None
    """The Hugging Face repository; None for the offline stand-in, which is built locally."""
    summary: str
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    transformer_config: str | None = None
    """Which full-size transformer config in helpers/configs/ the model uses (None for the offline models)."""
    skip_layer_guidance: SkipLayerGuidance | None = None
    max_sequence_length: int | None = None
    """T5 tokens per prompt, where the model needs another value than diffusers' default (256)."""
    plays: str | None = None
    """For an offline model on an emulated machine (SD35_MACHINE): the full-size model whose route it loads with."""

    def playing(self, model: str) -> ModelSpec:
        """This offline model standing in for `model`: loaded with the route planned for `model`."""
        from dataclasses import replace

        played = get_model(model)
        if not self.is_stand_in or played.is_stand_in:
            raise ValueError(f"{self.title} cannot play {played.title}: an offline model plays a full-size one.")
        return replace(self, plays=played.name, title=f"{self.title} as {played.title}")

    @property
    def is_stand_in(self) -> bool:
        """True for the offline models (the toy and the random stand-in), which run without a GPU or a token."""
        return self.hub_id is None

    @property
    def is_toy(self) -> bool:
        """True for the offline model trained on the toy world of helpers.world: its pictures can be judged."""
        return self.name == "toy"

    @property
    def page_url(self) -> str | None:
        """The model page, where the licence is accepted."""
        return None if self.hub_id is None else f"https://huggingface.co/{self.hub_id}"

    def recommended(self, *, skip_layer_guidance: bool = False) -> dict[str, Any]:
        """The recommended settings as keyword arguments for the pipeline call: `pipe(prompt, **settings)`.

        With `skip_layer_guidance=True` (SD3.5 Medium only), the SLG settings replace the plain guidance scale.
        """
        settings: dict[str, Any] = {
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "height": self.height,
            "width": self.width,
        }
        if self.max_sequence_length is not None:
            settings["max_sequence_length"] = self.max_sequence_length
        if skip_layer_guidance:
            if self.skip_layer_guidance is None:
                raise ValueError(
                    f"skip_layer_guidance=True: model {self.name!r} has no skip-layer guidance settings. "
                    "SLG is an SD3.5 Medium setting (it breaks Large's images); use model 'medium' or leave it off."
                )
            settings.update(self.skip_layer_guidance.pipeline_kwargs())
        return settings


# Steps and guidance: Stability AI's reference implementation (sd3_infer.py in Stability-AI/sd3.5).
# Large Turbo runs without classifier-free guidance; diffusers expresses that as guidance_scale=0.0.
MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="large",
            title="SD3.5 Large",
            hub_id="stabilityai/stable-diffusion-3.5-large",
            summary="8B-parameter MMDiT; the highest quality of the three.",
            num_inference_steps=40,
            guidance_scale=4.5,
            height=1024,
            width=1024,
            transformer_config="transformer-large",
        ),
        ModelSpec(
            name="large-turbo",
            title="SD3.5 Large Turbo",
            hub_id="stabilityai/stable-diffusion-3.5-large-turbo",
            summary="Large distilled to sample in 4 steps without classifier-free guidance.",
            num_inference_steps=4,
            guidance_scale=0.0,
            height=1024,
            width=1024,
            transformer_config="transformer-large",
        ),
        ModelSpec(
            name="medium",
            title="SD3.5 Medium",
            hub_id="stabilityai/stable-diffusion-3.5-medium",
            summary="2.5B-parameter MMDiT-X (extra self-attention in its first 13 blocks); fits smaller GPUs.",
            num_inference_steps=50,
            guidance_scale=5.0,
            height=1024,
            width=1024,
            transformer_config="transformer-medium",
            skip_layer_guidance=SkipLayerGuidance(
                guidance_scale=4.0, scale=2.5, layers=(7, 8, 9), start=0.01, stop=0.20
            ),
        ),
        ModelSpec(
            name="toy",
            title="Offline toy model",
            hub_id=None,
            summary="A small SD3 pipeline trained on drawn shapes (notebook 09); ships with the helpers.",
            num_inference_steps=20,
            guidance_scale=3.0,  # where `python -m helpers.evaluation` found prompts best followed
            height=64,
            width=64,
            max_sequence_length=16,
        ),
        ModelSpec(
            name="tiny",
            title="Tiny random stand-in",
            hub_id=None,
            summary="SD3 pipeline with random weights, built locally: real code paths, images are noise. For tests.",
            num_inference_steps=4,
            guidance_scale=4.5,
            height=128,
            width=128,
        ),
    )
}


def get_model(model: str | ModelSpec) -> ModelSpec:
    """The registry entry for a model name (a ModelSpec is passed through)."""
    if isinstance(model, ModelSpec):
        return model
    spec = MODELS.get(model.strip().lower()) if isinstance(model, str) else None
    if spec is None:
        raise UnknownModelError(
            f"model={shown(model)} is not a model of this series. Use one of: {', '.join(MODELS)}."
        )
    return spec


def model_name(value: object, name: str = "model") -> str:
    """The registry name of a model given by name (any case) or as a ModelSpec: a rule for `helpers.checks`."""
    if not isinstance(value, (str, ModelSpec)):
        raise UnknownModelError(f"{name}={shown(value)} must be a model name, one of: {', '.join(MODELS)}.")
    try:
        return get_model(value).name
    except UnknownModelError:
        raise UnknownModelError(f"{name}={shown(value)} is not a model of this series. Use one of: "
                                f"{', '.join(MODELS)}.") from None


def model_spec(value: object, name: str = "model") -> ModelSpec:
    """The registry entry of a model given by name, or a ModelSpec as it is (one that plays another model
    included): a rule for `helpers.checks`."""
    return value if isinstance(value, ModelSpec) else get_model(model_name(value, name))


def full_size_model(value: object, name: str = "model") -> str:
    """A model with a published full-size architecture (Large, Large Turbo, Medium), by name: a rule for
    `helpers.checks`."""
    model = model_name(value, name)
    if get_model(model).transformer_config is None:
        full = [key for key, spec in MODELS.items() if spec.transformer_config]
        raise UnknownModelError(f"{name}={shown(value)} has no full-size architecture; use one of: {', '.join(full)}.")
    return model


def model_setting(environ: dict[str, str] | None = None) -> str:
    """The value of SD35_MODEL (default 'auto'), checked: an unknown value raises before anything loads."""
    environ = os.environ if environ is None else environ
    raw = environ.get(MODEL_VARIABLE, "")
    value = raw.strip().lower() or AUTO
    if value != AUTO and value not in MODELS:
        raise UnknownModelError(
            f"{MODEL_VARIABLE}={shown(raw)} is not a model. Set it to one of: {AUTO}, {', '.join(MODELS)} "
            f"(for example `export {MODEL_VARIABLE}=medium`), or unset it for '{AUTO}'."
        )
    return value
