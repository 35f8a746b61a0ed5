"""The plain diffusers code the notebooks show gives the pixels `load_pipeline` gives (issue 19).

Each test runs a notebook's own cells, as committed: its setup cell, then the cell that loads a pipeline with
`from_pretrained` (or makes one with `from_pipe`), on the toy model and on machines the readers use, emulated here.
Then one picture from each, same seed, must be equal pixel for pixel.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
QUICK = {"num_inference_steps": 2, "guidance_scale": 3.0, "height": 64, "width": 64}


def cell(notebook: str, containing: str) -> str:
    """The source of the one code cell of `notebook` that contains `containing`."""
    cells = [
        "".join(found["source"]) for found in json.loads((NOTEBOOKS / notebook).read_text())["cells"]
        if found["cell_type"] == "code" and containing in "".join(found["source"])
    ]
    assert len(cells) == 1, f"{notebook}: {len(cells)} code cells contain {containing!r}"
    return cells[0]


def run_cells(notebook: str, *containing: str, edit: tuple[str, str] = ("", "")) -> dict:
    """Run the setup cell of `notebook` and then the cells containing each string, in one namespace; `edit`
    (old, new) replaces text in the setup cell first."""
    namespace = {"display": lambda *objects: None}
    for needle in ("run = setup(", *containing):
        source = cell(notebook, needle)
        if needle == "run = setup(" and edit[0]:
            assert edit[0] in source, f"{notebook}'s setup cell has no {edit[0]!r}"
            source = source.replace(*edit)
        exec(compile(source, f"{notebook}: {needle}", "exec"), namespace)  # noqa: S102
    return namespace


def picture(pipe, **arguments) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(3)
    return np.asarray(pipe(prompt="a red circle on a green background", generator=generator, output_type="pil",
                           **QUICK, **arguments).images[0])


@pytest.fixture
def machine(request, monkeypatch):
    """The machine a test plans for: None (this CPU) or a catalogue machine, emulated."""
    if request.param is None:
        monkeypatch.delenv("SD35_MACHINE", raising=False)
    else:
        monkeypatch.setenv("SD35_MACHINE", request.param)
    return request.param


@pytest.mark.parametrize("machine", [None, "colab-l4"], indirect=True)
def test_notebook_01s_from_pretrained_gives_load_pipelines_pixels(machine):
    from helpers import load_pipeline

    found = run_cells("01_loading_sd35.ipynb", "StableDiffusion3Pipeline.from_pretrained(")
    run, route, pipe = found["run"], found["route"], found["pipe"]
    assert found["plain"], f"{machine}: the plain cell left the loading to load_pipeline ({route.strategy})"
    assert route.offload == ("model" if machine == "colab-l4" else None)  # the offload branch, planned
    assert pipe.dtype == route.torch_dtype and type(pipe).__name__ == "StableDiffusion3Pipeline"
    assert np.array_equal(picture(pipe), picture(load_pipeline(run.model)))


NF4_CELLS = ("quantization_config=BitsAndBytesConfig(**nf4)", "T5EncoderModel.from_pretrained(", "**parts, **files)")
"""Notebook 02's cells that load the NF4 route in plain diffusers: the transformer, T5, then the pipeline."""


@pytest.mark.parametrize("machine", [None, "colab-t4"], indirect=True)
def test_notebook_02s_nf4_code_gives_load_pipelines_pixels(machine):
    from helpers import count_4bit_layers, load_pipeline

    found = run_cells("02_nf4_quantization_and_offload.ipynb", *NF4_CELLS)
    run, route, pipe = found["run"], found["route"], found["pipe"]
    assert count_4bit_layers(pipe.transformer) > 0 and pipe.dtype == route.torch_dtype
    assert (pipe.text_encoder_3 is None) == (route.t5 == "drop")
    assert (route.t5 == "nf4") == pipe.vae.use_tiling == route.vae_tiling == (machine == "colab-t4")
    if route.vae_tiling:  # as load_pipeline tiles it
        assert (pipe.vae.tile_sample_min_size, pipe.vae.tile_latent_min_size) == (512, 64)
    assert np.array_equal(picture(pipe), picture(load_pipeline(run.model, quantize="nf4")))


def test_notebook_02s_nf4_code_quantizes_t5_where_the_route_does(monkeypatch):
    """Medium on a T4 keeps T5 in NF4: the cell's transformers branch, run on the same notebook code."""
    import bitsandbytes as bnb

    from helpers import load_pipeline

    monkeypatch.setenv("SD35_MACHINE", "colab-t4")
    namespace = run_cells("02_nf4_quantization_and_offload.ipynb", *NF4_CELLS,
                          edit=('setup(about="large")', 'setup(about="medium")'))
    route, pipe = namespace["route"], namespace["pipe"]
    assert route.t5 == "nf4"
    assert any(isinstance(layer, bnb.nn.Linear4bit) for layer in pipe.text_encoder_3.modules())
    assert np.array_equal(picture(pipe), picture(load_pipeline(namespace["run"].model, quantize="nf4")))


@pytest.mark.parametrize("machine", [None, "colab-t4"], indirect=True)
@pytest.mark.parametrize(("notebook", "needle", "task"), [
    ("06_image_to_image.ipynb", "StableDiffusion3Img2ImgPipeline.from_pipe(", "image-to-image"),
    ("07_inpainting.ipynb", "StableDiffusion3InpaintPipeline.from_pipe(", "inpainting"),
])
def test_from_pipe_in_notebooks_06_and_07_gives_load_pipelines_pixels(machine, notebook, needle, task):
    """The task pipeline made from the text-to-image one by `from_pipe`, as the notebooks write it, equals the one
    load_pipeline loads from scratch (float16 on a T4: without `dtype`, from_pipe would cast to float32)."""
    import gc

    from PIL import Image

    from helpers import load_pipeline

    found = run_cells(notebook, *(["object_box = run.pick("] if task == "inpainting" else []), needle)
    pipe, run = found["pipe"], found["run"]
    assert type(pipe).__name__ == f"StableDiffusion3{'Inpaint' if task == 'inpainting' else 'Img2Img'}Pipeline"
    assert pipe.dtype == run.dtype and pipe.transformer is found["text_to_image"].transformer
    image = Image.new("RGB", (64, 64), "blue")
    task_arguments = {"image": image, "strength": 0.5}
    if task == "inpainting":
        task_arguments["mask_image"] = Image.new("L", (64, 64), 255)
    plain = picture(pipe, **task_arguments)
    del pipe, found
    gc.collect()  # the text-to-image pipeline gone, load_pipeline loads the task's class with from_pretrained
    assert np.array_equal(plain, picture(load_pipeline(run.model, task=task), **task_arguments))


def test_the_toy_runs_with_the_plain_call_from_diffusers_docs():
    """`from_pretrained(folder)` with no dtype, then `pipe(prompt)`, as diffusers' docs write it: every part loads
    in float32 and the picture comes out (before, the text encoders loaded in their stored float16 and the first
    step stopped on a float16 input against a float32 bias)."""
    from diffusers import StableDiffusion3Pipeline

    from helpers.loading import toy_model_dir

    pipe = StableDiffusion3Pipeline.from_pretrained(toy_model_dir())
    parts = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
    assert {getattr(pipe, part).dtype for part in parts} == {torch.float32}
    image = pipe("a red circle on a blue background", num_inference_steps=2, height=64, width=64).images[0]
    assert image.size == (64, 64) and np.asarray(image).std() > 0
