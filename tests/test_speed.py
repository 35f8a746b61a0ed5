"""The speed ladder's rungs (helpers.speed), each checked on the CPU: compiled pictures equal eager ones within float
tolerance, the attention cache skips work and repeats exactly, the kernel asked for is the kernel that runs, and
what needs a GPU is refused (or, on an emulated machine, planned and reported) before anything loads."""

import json

import numpy as np
import pytest
import torch

from helpers.loading import load_pipeline
from helpers.routes import plan_route
from helpers.speed import Speedups, attention_kernel_used, recorded_costs, speed_report

CALL = {"prompt": "a red circle on a blue background", "height": 64, "width": 64, "output_type": "np"}


def picture(pipe, steps=2, seed=0):
    pipe.set_progress_bar_config(disable=True)
    return pipe(**CALL, num_inference_steps=steps, guidance_scale=4.5,
                generator=torch.Generator("cpu").manual_seed(seed)).images[0]


def test_bench_compiles_the_repeated_block_reports_the_compile_time_and_matches_eager(tmp_path, capsys):
    """One compile (about 20 s here): `bench --compile` with the math kernel inside the compiled blocks, then the
    same pipeline (load_pipeline shares it within a process) against the eager stand-in."""
    from helpers.bench import main

    out = tmp_path / "compiled.json"
    assert main(["--model", "tiny", "--compile", "--attention-kernel", "math", "--steps", "2", "--size", "64",
                 "--runs", "2", "--warmup", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["options"]["compile"] == "regional" and result["attention_kernel"] == "math"
    assert result["graphs_compiled"] >= 1 and result["recompiles"] == 0  # the timed runs compiled nothing
    assert result["first_call_s"] > max(result["runs"])  # the compile is in the first call, not the timed runs
    assert "graphs, 0 recompiled" in printed

    compiled = load_pipeline("tiny", speed={"compile": "regional", "attention_kernel": "math"})
    assert speed_report(compiled).applied == ["math attention kernel", "regional compile (JointTransformerBlock)"]
    blocks = compiled.transformer.transformer_blocks
    assert all(block._compiled_call_impl is not None for block in blocks)  # compiled in place, still the model
    np.testing.assert_allclose(picture(compiled), picture(load_pipeline("tiny")), atol=2e-3)


def test_the_attention_kernel_asked_for_is_the_one_that_runs():
    default = load_pipeline("tiny")
    assert attention_kernel_used(default, 64) == "flash (CPU)"  # PyTorch's own choice on this CPU
    math = load_pipeline("tiny", speed={"attention_kernel": "math"})
    assert attention_kernel_used(math, 64) == "math"
    assert {type(module.processor).__name__ for module in math.transformer.modules()
            if hasattr(module, "processor")} == {"JointAttention"}
    np.testing.assert_allclose(picture(math), picture(default), atol=1e-4)  # the same attention, another kernel


def test_the_attention_cache_skips_attention_inside_its_window_and_repeats_exactly():
    plain = load_pipeline("tiny")
    cached = load_pipeline("tiny", speed={"cache": "pab", "cache_every": 2})
    from diffusers.models.attention_processor import Attention

    # every attention of the blocks, MMDiT-X's extra self-attention (as in SD3.5 Medium) included
    attentions = sum(isinstance(module, Attention) for module in cached.transformer.modules())
    assert speed_report(cached).cached_attention == attentions > len(cached.transformer.transformer_blocks)
    computed = []
    handle = cached.transformer.transformer_blocks[0].attn.to_q.register_forward_hook(lambda *_: computed.append(1))
    try:
        first = picture(cached, steps=12)
    finally:
        handle.remove()
    # 12 steps: 3 outside the window (1000..800 and below 100) computed, and of the 9 inside every second one
    assert 6 <= len(computed) < 12
    picture(cached, steps=12, seed=5)  # another picture between: the cache's step count starts again
    np.testing.assert_array_equal(picture(cached, steps=12), first)
    assert not np.array_equal(first, picture(plain, steps=12))  # reuse changes the picture: its cost is measured


def test_what_needs_a_gpu_is_refused_here_and_planned_for_a_machine_that_has_it():
    with pytest.raises(ValueError, match="fp8=True on a CPU: FP8 needs a GPU with FP8 tensor cores"):
        plan_route("tiny", speed={"fp8": True})
    with pytest.raises(ValueError, match=r"fp8=True on the NVIDIA T4 \(compute capability 7.5\)"):
        plan_route("toy", machine="colab-t4", speed={"fp8": True})
    with pytest.raises(ValueError, match="compile in bfloat16 on the NVIDIA T4"):
        plan_route("toy", machine="colab-t4", dtype="bfloat16", speed={"compile": "regional"})
    with pytest.raises(ValueError, match="attention_kernel='flash' on the NVIDIA T4 in float16"):
        plan_route("toy", machine="colab-t4", speed={"attention_kernel": "flash"})
    with pytest.raises(ValueError, match="compile with model offload"):
        plan_route("large", machine="colab-t4", offload="model", speed={"compile": "full"})
    h100 = plan_route("toy", machine="h100", speed={"fp8": True, "attention_kernel": "cudnn"})
    assert h100.not_run_here() == ["FP8 linear layers (they need FP8 tensor cores)",
                                   "the cudnn attention kernel (a CUDA kernel; PyTorch chooses here)"]
    assert "FP8 transformer" in h100.report() and "cudnn attention kernel" in h100.describe()


def test_fp8_in_float16_is_refused_with_the_reason_and_float16_is_not_blamed_on_the_gpu():
    """An H100 asked for float16: the route says float16 was asked (an H100 has bf16 tensor cores), and FP8 on it is
    refused before loading, since torchao's per-row float8 quantizes bfloat16 weights only."""
    with pytest.raises(ValueError, match="fp8=True in float16: torchao's float8 with one scale per row quantizes "
                                         "bfloat16 weights only"):
        load_pipeline("tiny", dtype=torch.float16, speed={"fp8": True}, machine="h100")
    asked = plan_route("tiny", machine="h100", dtype=torch.float16).cost()
    assert "float16 as asked (the NVIDIA H100 80GB HBM3 would compute in bfloat16)" in asked
    assert "no bf16 tensor cores" not in asked
    assert "the NVIDIA T4 has no bf16 tensor cores" in plan_route("tiny", machine="colab-t4").cost()
    assert plan_route("tiny", machine="h100", speed={"fp8": True}).dtype == "bfloat16"  # the route's own dtype: planned


def test_a_full_compile_is_timed_stage_by_stage():
    """`compile='full'` (the README's `--compile full`) under helpers.bench's timing: the stage clocks time the
    compiled transformer from outside its graph (a clock read inside a full graph stops the compile). One compile,
    about 25 s here."""
    from helpers.bench import benchmark

    pipe = load_pipeline("tiny", speed={"compile": "full"})
    result = benchmark(pipe, model="tiny", steps=2, size=64, guidance_scale=4.5, runs=1, warmup=1, progress=False)
    assert result.graphs_compiled >= 1 and result.recompiles == 0
    assert result.stages["denoising"] > 0 and result.stages["VAE decode"] > 0
    assert pipe.transformer._compiled_call_impl is not None  # put back after timing, still compiled
    assert not any(pipe.transformer._forward_pre_hooks.values())


def test_a_vae_compile_that_fails_leaves_the_decoder_as_it_was():
    """Compiling fails for real here (inductor pointed at a C++ compiler that does not exist, as on a machine
    without one): the call says so and what to do, and the decoder is uncompiled again, so the next call decodes
    the same picture as a pipeline never compiled."""
    import torch._inductor.config as inductor

    pipe = load_pipeline("tiny", speed={"compile_vae": True})
    decoder = pipe.vae.decoder
    assert "forward" in vars(decoder) and "VAE decoder channels-last, compiled" in speed_report(pipe).applied
    with inductor.patch({"cpp.cxx": (None, "/nonexistent/g++")}), \
            pytest.raises(RuntimeError, match="Compiling the VAE decoder failed .*The decoder runs uncompiled again"):
        picture(pipe)
    assert "forward" not in vars(decoder) and decoder.conv_in.weight.is_contiguous()
    assert "VAE decoder channels-last, compiled" not in speed_report(pipe).applied
    np.testing.assert_array_equal(picture(pipe), picture(load_pipeline("tiny")))


def test_fp8_leaves_inductor_settings_as_they_were():
    """torchao's float8 config turns on coordinate-descent autotuning for the whole process unless told not to,
    which slows every later compile. On a CPU torchao then refuses float8 (its hardware check), after that point.
    Runs where torchao is installed (`pip install .[fast]`); CI's environment leaves it out."""
    pytest.importorskip("torchao")
    import torch._inductor.config as inductor

    from helpers.speed import quantize_fp8

    before = inductor.coordinate_descent_tuning
    with pytest.raises(AssertionError, match="Float8 dynamic quantization requires"):
        quantize_fp8(load_pipeline("tiny", dtype=torch.bfloat16).transformer)
    assert inductor.coordinate_descent_tuning == before


@pytest.mark.parametrize(("speed", "message"), [
    ({"compil": "regional"}, "speed has no setting 'compil'"),
    ({"compile": "max-autotune"}, "speed compile='max-autotune' is not a choice"),
    ({"attention_kernel": "fa3"}, "speed attention_kernel='fa3' is not a choice"),
    ({"cache": "teacache"}, "speed cache='teacache' is not a choice"),
    ({"fp8": "yes"}, "speed fp8='yes' must be True or False"),
    ({"cache": "pab", "cache_every": 1}, "cache_every=1 must be a whole number from 2"),
    ("regional", "must be a dict such as {'compile': 'regional'}"),
])
def test_bad_speed_settings_are_refused_before_loading(speed, message):
    from helpers import loading

    before = dict(loading._loaded)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_pipeline("tiny", speed=speed)
    assert loading._loaded.keys() == before.keys()


def test_the_committed_picture_costs_are_of_the_rungs_in_the_code():
    from dataclasses import asdict

    from helpers.speed import COSTED

    record = recorded_costs()
    assert {label: row["speed"] for label, row in record["rungs"].items()} == {
        label: asdict(speed) for label, speed in COSTED.items()}
    assert len(record["base_followed_by_seed"]) == record["count"]
    for row in record["rungs"].values():
        assert len(row["followed_by_seed"]) == record["count"] and set(row["followed_by_seed"]) <= {0, 1}
    assert Speedups(**record["rungs"]["regional compile"]["speed"]).compile == "regional"
