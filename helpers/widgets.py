"""Slider explorers: change a setting, press Generate, see the image and the settings that made it.

Introduced in notebook 05 (text to image); notebooks 06 and 07 add image-to-image and inpainting, notebook 11
a LoRA's scale. Explorers generate through the sweep cache of helpers.experiments, so an image seen once comes back
instantly, and images made by sweeps appear without being generated again. Each explorer draws its first image
when it is created, so a notebook run top to bottom (in CI too) shows a picture without any click.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from PIL import Image

from helpers.checks import (
    MAX_STEPS,
    check_guidance_scale,
    check_max_sequence_length,
    check_prompt,
    check_seed,
    check_steps,
    check_strength,
    checked,
    number,
    optional,
    output_folder,
    picture,
    pipeline,
    side,
    whole,
)
from helpers.experiments import LORA_SCALE, check_for_pipeline, check_settings, generate, has_lora
from helpers.inputs import fractions_box, rectangle_mask
from helpers.models import model_name

MAX_SEED_BOX = 2**53 - 1
"""The largest whole number a browser's seed box holds exactly (JavaScript numbers are 64-bit floats)."""
COMMON = {"pipe": pipeline, "model": model_name, "prompt": check_prompt, "negative_prompt": check_prompt,
          "guidance_scale": check_guidance_scale, "num_inference_steps": check_steps,
          "seed": lambda value, name: check_seed(value, name, maximum=MAX_SEED_BOX),
          "max_sequence_length": optional(check_max_sequence_length), "folder": optional(output_folder),
          "max_steps": whole(1, MAX_STEPS)}
"""The checks of every explorer's arguments: what a sweep checks, and the bounds of the controls."""

STYLE = {"description_width": "9em"}


def _layout(width: str = "33em"):
    import ipywidgets as widgets

    return widgets.Layout(width=width)


class Explorer:
    """Controls on the left, the image and its settings on the right, a Generate button and a progress bar.

    Subclasses say which controls there are (`controls`) and may add settings that are not controls (`fixed`);
    a control that is not a pipeline setting itself is turned into one by the subclass's `current_settings`.
    """

    def __init__(self, pipe, model: str, controls: dict[str, Any], fixed: dict[str, Any], *,
                 folder: str | Path | None = None, width: int = 512):
        import ipywidgets as widgets

        self.pipe, self.model, self.folder = pipe, model, folder
        self.last_error: Exception | None = None
        self.controls, self.fixed = controls, fixed
        # What a sweep would refuse, the explorer refuses before it draws anything (not a clamped slider).
        check_for_pipeline(pipe, check_settings(self.current_settings()))
        self.button = widgets.Button(description="Generate", button_style="primary")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="progress", style=STYLE)
        # Small pictures (the toy model's are 64 px) are shown enlarged, large ones at most 512 px wide.
        self.image = widgets.Image(format="png", layout=widgets.Layout(width=f"{min(max(width, 256), 512)}px"))
        self.settings = widgets.HTML()
        self.button.on_click(self.generate)
        self.widget = widgets.HBox([
            widgets.VBox([*controls.values(), widgets.HBox([self.button, self.progress])],
                         layout=widgets.Layout(flex="0 0 auto", width="34em")),
            widgets.VBox([self.image, self.settings], layout=widgets.Layout(flex="1 1 auto", margin="0 0 0 1em")),
        ])
        self.generate()

    def current_settings(self) -> dict[str, Any]:
        """The pipeline settings the controls show now, with the fixed ones. A slider's value is the number it
        shows: the browser's steps of 0.5 add up to 3.9999999999999996 where the slider reads 4.0, which would be
        another picture, and another cache entry."""
        return {**self.fixed, **{name: round(control.value, 6) if isinstance(control.value, float) else control.value
                                 for name, control in self.controls.items()}}

    def _on_step(self, step: int, total: int) -> None:
        self.progress.max, self.progress.value = total, step

    def generate(self, *_: Any) -> Path | None:
        """Make (or fetch) the image for the current settings and show it. The button calls this."""
        self.button.disabled = True
        self.progress.value = 0
        try:
            settings = self.current_settings()
            path, made = generate(self.pipe, self.model, settings, self.folder, on_step=self._on_step)
        except Exception as error:  # noqa: BLE001 - a button's callback has nowhere else to show it
            # A setting the pipeline cannot use, or anything else (out of GPU memory, ...): say so where the
            # reader looks, and that the picture shown is not of these settings. `last_error` keeps the traceback.
            self.last_error = error
            what = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
            self.settings.value = (f"<b>Not generated:</b> {html.escape(what)}<br><i>The picture shown is from "
                                   "earlier settings.</i>")
            return None
        finally:
            self.button.disabled = False
        self.last_error = None
        self.progress.value = self.progress.max
        self.image.value = path.read_bytes()
        shown = ", ".join(f"{name}={self._describe(value)}" for name, value in settings.items() if name != "prompt")
        origin = "generated now" if made else "from the cache"
        self.settings.value = (f"<b>{html.escape(self.model)}</b>: {html.escape(settings['prompt'])}<br>"
                               f"{html.escape(shown)}<br><i>{origin}: {html.escape(path.name)}</i>")
        return path

    @staticmethod
    def _describe(value: Any) -> str:
        return f"<{value.width}x{value.height} image>" if isinstance(value, Image.Image) else repr(value)

    def _ipython_display_(self) -> None:
        # display() of the widget itself works with ipywidgets 7 (Colab's) and 8 alike
        from IPython.display import display

        display(self.widget)


def _prompt_controls(prompt: str, negative_prompt: str, guidance_scale: float, num_inference_steps: int,
                     seed: int, max_steps: int) -> dict[str, Any]:
    import ipywidgets as widgets

    return {
        "prompt": widgets.Textarea(value=prompt, description="prompt", style=STYLE, layout=_layout()),
        "negative_prompt": widgets.Textarea(value=negative_prompt, description="negative prompt", style=STYLE,
                                            layout=_layout()),
        "guidance_scale": widgets.FloatSlider(value=guidance_scale, min=min(1.0, guidance_scale),
                                              max=max(10.0, guidance_scale), step=0.5,
                                              description="guidance scale", style=STYLE, layout=_layout()),
        "num_inference_steps": widgets.IntSlider(value=num_inference_steps, min=1,
                                                 max=max(max_steps, num_inference_steps), description="steps",
                                                 style=STYLE, layout=_layout()),
        "seed": widgets.BoundedIntText(value=seed, min=0, max=MAX_SEED_BOX, description="seed", style=STYLE),
    }


def _fixed(settings: dict[str, Any], max_sequence_length: int | None) -> dict[str, Any]:
    """The settings that are not controls; `max_sequence_length` only where the model needs its own (the toy)."""
    return settings if max_sequence_length is None else {**settings, "max_sequence_length": max_sequence_length}


def _strength_control(strength: float):
    import ipywidgets as widgets

    return widgets.FloatSlider(value=strength, min=min(0.05, strength), max=1.0, step=0.05, description="strength",
                               style=STYLE, layout=_layout())


class TextToImageExplorer(Explorer):
    """Prompt and negative prompt boxes, sliders for guidance scale and steps, a seed box."""

    @checked(**COMMON, height=side, width=side)
    def __init__(self, pipe, model: str, *, prompt: str, negative_prompt: str = "", guidance_scale: float,
                 num_inference_steps: int, seed: int = 0, height: int, width: int,
                 max_sequence_length: int | None = None, folder: str | Path | None = None, max_steps: int = 60):
        controls = _prompt_controls(prompt, negative_prompt, guidance_scale, num_inference_steps, seed, max_steps)
        fixed = _fixed({"height": height, "width": width}, max_sequence_length)
        super().__init__(pipe, model, controls, fixed, folder=folder, width=width)


class ImageToImageExplorer(Explorer):
    """The text-to-image controls plus a strength slider, for one prepared input image."""

    @checked(**COMMON, image=picture, strength=check_strength)
    def __init__(self, pipe, model: str, image: Image.Image, *, prompt: str, negative_prompt: str = "",
                 strength: float = 0.75, guidance_scale: float, num_inference_steps: int, seed: int = 0,
                 max_sequence_length: int | None = None, folder: str | Path | None = None, max_steps: int = 60):
        controls = _prompt_controls(prompt, negative_prompt, guidance_scale, num_inference_steps, seed, max_steps)
        controls["strength"] = _strength_control(strength)
        fixed = _fixed({"image": image, "height": image.height, "width": image.width}, max_sequence_length)
        super().__init__(pipe, model, controls, fixed, folder=folder, width=image.width)


class InpaintingExplorer(Explorer):
    """Sliders for the painted rectangle's position and size, strength and guidance, on one prepared image."""

    @checked(**COMMON, image=picture, box=fractions_box, strength=check_strength)
    def __init__(self, pipe, model: str, image: Image.Image, *, prompt: str, negative_prompt: str = "",
                 box: tuple[float, float, float, float] = (0.3, 0.3, 0.7, 0.7), strength: float = 1.0,
                 guidance_scale: float, num_inference_steps: int, seed: int = 0,
                 max_sequence_length: int | None = None, folder: str | Path | None = None, max_steps: int = 60):
        import ipywidgets as widgets

        controls = _prompt_controls(prompt, negative_prompt, guidance_scale, num_inference_steps, seed, max_steps)
        left, top, right, bottom = box
        for name, value, low, high in (("mask left", left, 0.0, max(0.95, left)), ("mask top", top, 0.0, max(0.95, top)),
                                       ("mask width", right - left, min(0.05, right - left), 1.0),
                                       ("mask height", bottom - top, min(0.05, bottom - top), 1.0)):
            controls[name] = widgets.FloatSlider(value=value, min=low, max=high, step=0.05, description=name,
                                                 style=STYLE, layout=_layout())
        controls["strength"] = _strength_control(strength)
        self.source = image
        fixed = _fixed({"image": image, "height": image.height, "width": image.width}, max_sequence_length)
        super().__init__(pipe, model, controls, fixed, folder=folder, width=image.width)

    def mask_box(self) -> tuple[float, float, float, float]:
        """The painted rectangle as fractions (left, top, right, bottom), clipped to the image."""
        left, top = self.controls["mask left"].value, self.controls["mask top"].value
        right = min(1.0, left + self.controls["mask width"].value)
        bottom = min(1.0, top + self.controls["mask height"].value)
        return left, top, right, bottom

    def current_settings(self) -> dict[str, Any]:
        settings = {name: value for name, value in super().current_settings().items() if not name.startswith("mask ")}
        settings["mask_image"] = rectangle_mask(self.source.size, self.mask_box())
        return settings


class LoraScaleExplorer(Explorer):
    """The text-to-image controls plus a slider for the scale of the LoRA loaded into `pipe`, which each picture
    passes to the pipeline as `joint_attention_kwargs={"scale": ...}`: the pipeline itself is left as it is."""

    @checked(**COMMON, height=side, width=side, scale=number(*LORA_SCALE))
    def __init__(self, pipe, model: str, *, prompt: str, negative_prompt: str = "", scale: float = 1.0,
                 guidance_scale: float, num_inference_steps: int, seed: int = 0, height: int, width: int,
                 max_sequence_length: int | None = None, folder: str | Path | None = None, max_steps: int = 60):
        import ipywidgets as widgets

        if not has_lora(pipe):
            raise ValueError("pipe has no LoRA loaded, so the LoRA scale would change nothing: load one first with "
                             "pipe.load_lora_weights(folder).")
        controls = _prompt_controls(prompt, negative_prompt, guidance_scale, num_inference_steps, seed, max_steps)
        controls["lora scale"] = widgets.FloatSlider(value=scale, min=min(0.0, scale), max=max(1.5, scale),
                                                     step=0.05, description="LoRA scale", style=STYLE,
                                                     layout=_layout())
        fixed = _fixed({"height": height, "width": width}, max_sequence_length)
        super().__init__(pipe, model, controls, fixed, folder=folder, width=width)

    def current_settings(self) -> dict[str, Any]:
        settings = super().current_settings()
        return {**{name: value for name, value in settings.items() if name != "lora scale"},
                "joint_attention_kwargs": {"scale": settings["lora scale"]}}
