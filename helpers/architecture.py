"""The parts of an SD3.5 pipeline and their sizes: the full-size models built from their published configs.

Introduced in notebook 01. The configs in helpers/configs/ are the `config.json` files published with
stabilityai/stable-diffusion-3.5-large (also Large Turbo) and -medium. Built on PyTorch's `meta` device, a model
has every parameter's shape but no data, so exact counts of an 8B-parameter model take a fraction of a second and
no download.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from helpers.checks import checked, listed, pipeline, shown
from helpers.models import MODELS, full_size_model, get_model

CONFIG_DIR = Path(__file__).parent / "configs"

# Pipeline attribute -> (config file, short name, what it is). The transformer's file depends on the model.
COMPONENTS: dict[str, tuple[str | None, str, str]] = {
    "transformer": (None, "transformer", "MMDiT: denoises the latent image, step by step"),
    "text_encoder": (
        "text_encoder-clip-l", "CLIP-L",
        "CLIP text encoder (SD3.5: ViT-L/14): prompt embedding and pooled vector",
    ),
    "text_encoder_2": (
        "text_encoder_2-clip-g", "CLIP-G",
        "second CLIP encoder (SD3.5: OpenCLIP bigG/14): embedding and pooled vector",
    ),
    "text_encoder_3": (
        "text_encoder_3-t5xxl", "T5-XXL", "T5 encoder (SD3.5: T5 v1.1 XXL): the long, detailed prompt embedding"
    ),
    "vae": ("vae", "VAE", "autoencoder: turns the 16-channel latent into pixels (and back)"),
}


@dataclass(frozen=True)
class ComponentSize:
    """One part of a pipeline: what it is and how many numbers it holds."""

    component: str
    class_name: str
    parameters: int
    buffers: int
    bytes_per_value: float
    role: str = ""

    @property
    def values(self) -> int:
        """Parameters plus persistent buffers (the transformer's positional embedding is a buffer)."""
        return self.parameters + self.buffers

    @property
    def gigabytes(self) -> float:
        """Memory the weights take, in GB (10^9 bytes)."""
        return self.values * self.bytes_per_value / 1e9

    def row(self) -> dict[str, Any]:
        """A table row for display."""
        return {
            "component": self.component,
            "class": self.class_name,
            "parameters": f"{self.parameters:,}",
            "buffers": f"{self.buffers:,}",
            "weights": f"{self.gigabytes:.2f} GB" if self.gigabytes >= 0.01 else f"{self.gigabytes * 1e3:.2f} MB",
            "role": self.role,
        }


def reference_config(name: str) -> dict[str, Any]:
    """One published config from helpers/configs/ (e.g. 'transformer-large', 'vae')."""
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


def build_component(model: str, component: str, *, device: str = "meta", dtype=None):
    """The full-size `component` of `model` ('large', 'large-turbo', 'medium') with uninitialised weights.

    On 'meta' it holds shapes only. On a GPU it allocates real (random) memory, for timing runs.
    """
    import torch
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    spec = get_model(model)
    if spec.transformer_config is None:
        raise ValueError(f"model={shown(model)} has no full-size architecture; use 'large', 'large-turbo' or 'medium'.")
    if component not in COMPONENTS:
        raise ValueError(f"component={shown(component)} is not a pipeline part; use one of: {', '.join(COMPONENTS)}.")
    config = reference_config(COMPONENTS[component][0] or spec.transformer_config)
    config.pop("architectures", None)
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype or previous_dtype)  # create the weights in `dtype` directly, no float32 copy
    try:
        with torch.device(device):
            if component == "transformer":
                return SD3Transformer2DModel.from_config(config)
            if component == "vae":
                return AutoencoderKL.from_config(config)
            if component == "text_encoder_3":
                return T5EncoderModel(T5Config(**config))
            return CLIPTextModelWithProjection(CLIPTextConfig(**config))
    finally:
        torch.set_default_dtype(previous_dtype)


def stored_tensors(module) -> tuple[list, list]:
    """A module's parameters and the buffers its checkpoint stores (persistent ones), each shared tensor once."""
    persistent = set(module.state_dict(keep_vars=True))
    return list(module.parameters()), [buffer for name, buffer in module.named_buffers() if name in persistent]


def measure_module(component: str, module, role: str = "", *, dtype=None) -> ComponentSize:
    """Count a module's parameters and persistent buffers (shared tensors once), as its checkpoint stores them.

    Bytes are those of the tensors as they are, or, with `dtype`, as they would be once loaded in that dtype.
    """
    parameters, buffers = stored_tensors(module)
    tensors = parameters + buffers
    total_values = sum(t.numel() for t in tensors)
    total_bytes = total_values * dtype.itemsize if dtype else sum(t.numel() * t.element_size() for t in tensors)
    return ComponentSize(
        component=component,
        class_name=type(module).__name__,
        parameters=sum(p.numel() for p in parameters),
        buffers=sum(b.numel() for b in buffers),
        bytes_per_value=total_bytes / total_values if total_values else 0.0,
        role=role,
    )


def meta_component(model: str, component: str):
    """The full-size `component` of `model` on the meta device, built once and shared (treat it as read-only)."""
    spec = get_model(model)
    if component == "transformer" and spec.transformer_config is None:
        raise ValueError(f"model={shown(model)} has no full-size architecture; use 'large', 'large-turbo' or 'medium'.")
    # Models that share a config (Large and Large Turbo; every model's text encoders and VAE) share one build.
    return _meta_build(spec.transformer_config if component == "transformer" else "shared", component)


@cache
def _meta_build(config_key: str, component: str):
    model = next(name for name, spec in MODELS.items() if spec.transformer_config and (
        component != "transformer" or spec.transformer_config == config_key))
    return build_component(model, component)


@checked(model=full_size_model)
@cache
def component_sizes(model: str) -> tuple[ComponentSize, ...]:
    """Exact sizes of the full-size parts of `model`, with weights in bf16 (the checkpoints' format)."""
    import torch

    return tuple(
        measure_module(component, meta_component(model, component), role, dtype=torch.bfloat16)
        for component, (_, _, role) in COMPONENTS.items()
    )


@checked(pipe=pipeline)
def pipeline_sizes(pipe) -> tuple[ComponentSize, ...]:
    """Sizes of the parts of a loaded pipeline, in the dtype it was loaded in."""
    return tuple(
        measure_module(component, getattr(pipe, component), role)
        for component, (_, _, role) in COMPONENTS.items()
        if getattr(pipe, component, None) is not None
    )


@checked(models=listed(full_size_model, 1, 10))
def plot_component_sizes(models: tuple[str, ...] = ("large", "medium")):
    """A stacked bar chart of each model's bf16 weights by part: where the memory goes."""
    import matplotlib.pyplot as plt

    from helpers.images import unshown_subplots

    figure, axis = unshown_subplots(figsize=(7, 2.2 + 0.5 * len(models)))
    labels = [get_model(name).title for name in models]
    left = [0.0] * len(models)
    for index, (component, (_, short_name, _)) in enumerate(COMPONENTS.items()):
        widths = [next(p.gigabytes for p in component_sizes(name) if p.component == component) for name in models]
        axis.barh(labels, widths, left=left, label=short_name, color=plt.cm.tab10(index))
        left = [start + width for start, width in zip(left, widths, strict=True)]
    for row, total in enumerate(left):
        axis.text(total + 0.3, row, f"{total:.1f} GB", va="center")
    axis.set_xlabel("weights in bf16 (GB)")
    axis.set_xlim(0, max(left) * 1.15)
    axis.invert_yaxis()
    axis.legend(loc="lower right", fontsize=8)
    axis.set_title("SD3.5 weights by part (from the published configs)")
    figure.tight_layout()
    return figure


CHART_MAKER = "python -m helpers.architecture"
"""Recorded in the chart's PNG, so that --figure replaces only a chart it drew."""


def _is_our_chart(path: Path) -> bool:
    from helpers.images import drawn_by

    return drawn_by(path, CHART_MAKER)


def main(argv: list[str] | None = None) -> None:
    """Print each model's parts and sizes, and save the chart: `python -m helpers.architecture [--figure PATH]`."""
    import argparse

    from helpers.display import Table

    parser = argparse.ArgumentParser(prog="python -m helpers.architecture", description=main.__doc__)
    parser.add_argument("--figure", type=Path, help="also save the bar chart of weights by part to this PNG")
    args = parser.parse_args(argv)
    if args.figure:
        from helpers.checks import check_output_file

        try:
            args.figure = check_output_file(args.figure, "--figure", suffix=".png", ours=_is_our_chart)
        except ValueError as error:
            parser.error(str(error))
    for name in ("large", "medium"):
        print(Table([part.row() for part in component_sizes(name)], title=get_model(name).title), end="\n\n")
    if args.figure:
        from helpers.images import save_figure

        save_figure(plot_component_sizes(), args.figure, CHART_MAKER, dpi=120)
        print(f"saved {args.figure}")


if __name__ == "__main__":
    main()
