"""Slider explorers: change a setting, press Generate, see the image and the settings that made it.

Introduced in notebook 05. Explorers generate through the sweep cache of helpers.experiments, so an image seen once
comes back instantly, and images made by sweeps appear without being generated again. Each explorer draws its
first image when it is created, so a notebook run top to bottom (in CI too) shows a picture without any click.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from helpers.experiments import generate


class TextToImageExplorer:
    """Prompt and negative prompt boxes, sliders for guidance scale, steps and seed, a Generate button."""

    def __init__(self, pipe, model: str, *, prompt: str, negative_prompt: str = "", guidance_scale: float,
                 num_inference_steps: int, seed: int = 0, height: int, width: int,
                 folder: str | Path | None = None, max_steps: int = 60):
        import ipywidgets as widgets

        self.pipe, self.model, self.folder = pipe, model, folder
        self.size = {"height": height, "width": width}
        style = {"description_width": "9em"}
        layout = widgets.Layout(width="32em")
        self.prompt = widgets.Textarea(value=prompt, description="prompt", style=style, layout=layout)
        self.negative_prompt = widgets.Textarea(value=negative_prompt, description="negative prompt", style=style,
                                                layout=layout)
        self.guidance_scale = widgets.FloatSlider(value=guidance_scale, min=1.0, max=10.0, step=0.5,
                                                  description="guidance scale", style=style, layout=layout)
        self.steps = widgets.IntSlider(value=num_inference_steps, min=1, max=max(max_steps, num_inference_steps),
                                       description="steps", style=style, layout=layout)
        self.seed = widgets.BoundedIntText(value=seed, min=0, max=2**31 - 1, description="seed", style=style)
        self.button = widgets.Button(description="Generate", button_style="primary")
        self.progress = widgets.IntProgress(value=0, min=0, max=num_inference_steps, description="progress",
                                            style=style)
        self.image = widgets.Image(format="png", layout=widgets.Layout(width=f"{min(width, 512)}px"))
        self.settings = widgets.HTML()
        self.button.on_click(self.generate)
        controls = [self.prompt, self.negative_prompt, self.guidance_scale, self.steps, self.seed]
        self.widget = widgets.HBox([
            widgets.VBox([*controls, widgets.HBox([self.button, self.progress])]),
            widgets.VBox([self.image, self.settings]),
        ])
        self.generate()

    def current_settings(self) -> dict[str, Any]:
        """The pipeline settings the controls show now."""
        return {
            "prompt": self.prompt.value,
            "negative_prompt": self.negative_prompt.value,
            "guidance_scale": float(self.guidance_scale.value),
            "num_inference_steps": int(self.steps.value),
            "seed": int(self.seed.value),
            **self.size,
        }

    def _on_step(self, step: int, total: int) -> None:
        self.progress.max, self.progress.value = total, step

    def generate(self, *_: Any) -> Path | None:
        """Make (or fetch) the image for the current settings and show it. The button calls this."""
        settings = self.current_settings()
        self.button.disabled = True
        self.progress.value = 0
        try:
            path, made = generate(self.pipe, self.model, settings, self.folder, on_step=self._on_step)
        except ValueError as error:  # a setting the pipeline cannot use: say which, keep the last image
            self.settings.value = f"<b>Not generated:</b> {html.escape(str(error))}"
            return None
        finally:
            self.button.disabled = False
        self.progress.value = self.progress.max
        self.image.value = path.read_bytes()
        shown = ", ".join(f"{name}={value!r}" for name, value in settings.items() if name != "prompt")
        origin = "generated now" if made else "from the cache"
        self.settings.value = (f"<b>{html.escape(self.model)}</b>: {html.escape(settings['prompt'])}<br>"
                               f"{html.escape(shown)}<br><i>{origin}: {html.escape(path.name)}</i>")
        return path

    def _repr_mimebundle_(self, **kwargs: Any):
        return self.widget._repr_mimebundle_(**kwargs)

