"""helpers.routes: every catalogue machine's route applied to the stand-in on this CPU, the NaN check, and fused
q/k/v on the routes that cannot take it."""

import numpy as np
import pytest
import torch

from helpers.bench import fuse_qkv_projections, unfuse_qkv_projections
from helpers.loading import load_pipeline
from helpers.machines import MACHINES
from helpers.models import get_model
from helpers.quantization import count_4bit_layers
from helpers.routes import NonFiniteError, route_of

TINY = get_model("tiny")


def run(pipe, **extra):
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt="a cat", num_inference_steps=2, height=64, width=64, output_type="np",
                generator=torch.Generator("cpu").manual_seed(0), **extra).images[0]


@pytest.mark.parametrize("machine", list(MACHINES))
def test_each_machines_route_runs_on_the_stand_in(machine):
    """The route planned for Large on each machine, applied here: dtype, NF4 and 8-bit parts, attention, tiling."""
    pipe = load_pipeline(TINY.playing("large"), machine=machine)
    route = route_of(pipe)
    assert route.machine.name == machine and route.emulated and pipe.device.type == "cpu"
    assert pipe.dtype == route.torch_dtype == getattr(torch, MACHINES[machine].dtype)
    assert (count_4bit_layers(pipe.transformer) > 0) == (route.quantize == "nf4")
    assert (pipe.text_encoder_3 is None) == (route.t5 == "drop")
    assert pipe.vae.use_tiling == route.vae_tiling
    assert np.isfinite(run(pipe)).all()


def test_a_transformer_that_returns_nan_stops_with_the_part_named():
    pipe = load_pipeline("tiny", dtype=torch.float64)
    original = pipe.transformer.proj_out.weight.detach().clone()
    try:
        with torch.no_grad():
            pipe.transformer.proj_out.weight.fill_(float("nan"))
        with pytest.raises(NonFiniteError, match="the transformer's final latents hold NaN or infinite values"):
            run(pipe)
    finally:
        with torch.no_grad():
            pipe.transformer.proj_out.weight.copy_(original)
    assert np.isfinite(run(pipe)).all()


def test_nan_prompt_embeddings_name_t5_and_the_float16_fix():
    pipe = load_pipeline("tiny", dtype=torch.float16)
    handle = pipe.text_encoder_3.encoder.final_layer_norm.register_forward_hook(
        lambda module, args, output: output * float("inf"))
    try:
        with pytest.raises(NonFiniteError, match=r"T5's prompt embeddings .*float16.*Fix: load that part in bfloat16"):
            run(pipe)
    finally:
        handle.remove()


def test_fusing_an_nf4_transformer_is_refused_before_anything_changes():
    pipe = load_pipeline("tiny", quantize="nf4")
    assert "NF4" in route_of(pipe).cannot_fuse_qkv()
    with pytest.raises(ValueError, match="stored in NF4"):
        fuse_qkv_projections(pipe.transformer)
    assert not hasattr(pipe.transformer.transformer_blocks[0].attn, "to_qkv")


def test_fused_qkv_keeps_bounded_attention():
    pipe = load_pipeline(TINY.playing("medium"), machine="colab-t4", dtype=torch.bfloat16, t5="drop", quantize=None)
    assert route_of(pipe).attention == "bounded"
    before = run(pipe)
    fuse_qkv_projections(pipe.transformer)
    try:
        assert pipe.transformer.transformer_blocks[0].attn.processor.query_chunk == 512
        assert np.abs(run(pipe) - before).max() < 0.02
    finally:
        unfuse_qkv_projections(pipe.transformer)


def test_long_work_says_how_many_pictures_and_how_long(tmp_path, capsys):
    from helpers.experiments import run_sweep

    pipe = load_pipeline(TINY.playing("large"), machine="colab-t4")
    fixed = {"prompt": "a cat", "num_inference_steps": 2, "height": 64, "width": 64, "guidance_scale": 4.5}
    run_sweep(pipe, "tiny", fixed, {"seed": [0, 1, 2]}, folder=tmp_path)
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert "3 pictures to make" in text and "SD3.5 Large at 1024x1024 would take about" in text
    assert "on NVIDIA T4 with this route (estimate" in text
    assert "The first picture took" in text and "for the 2 left (measured)" in text


def test_time_estimates_scale_with_the_machines_throughput():
    from helpers.bench import estimated_seconds_per_image
    from helpers.routes import plan_route

    h100 = estimated_seconds_per_image(plan_route("large", machine="h100"), steps=28, guidance_scale=4.5, size=1024)
    t4 = estimated_seconds_per_image(plan_route("large", machine="colab-t4"), steps=28, guidance_scale=4.5, size=1024)
    assert h100 == pytest.approx(5.58, rel=0.01)  # calibrated on the H100's measurement
    assert t4 == pytest.approx(5.58 * 989 / 65 * 1.02, rel=0.01)  # the same share of a T4's fp16 peak, NF4's 2%


def test_another_task_reuses_a_loaded_pipeline_without_planning_again(monkeypatch):
    """On a GPU, planning again after a load would see less free memory and might find the model no longer fits
    beside itself: a second task of the same request reuses the pipeline's parts instead."""
    from helpers import loading

    pipe = load_pipeline("tiny", dtype=torch.float64, t5="keep")

    def plan_again(*args, **kwargs):
        raise MemoryError("planned again")

    monkeypatch.setattr(loading, "plan_route", plan_again)
    other = load_pipeline("tiny", "image-to-image", dtype=torch.float64, t5="keep")
    assert other.transformer is pipe.transformer and route_of(other) == route_of(pipe)
    monkeypatch.undo()
    spelled_otherwise = load_pipeline("tiny", "image-to-image", dtype=torch.float64, t5="auto")
    assert spelled_otherwise is other
