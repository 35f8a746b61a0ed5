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
