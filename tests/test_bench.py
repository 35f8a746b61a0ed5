"""The benchmark harness, checked on the stand-in (timings are measured by it, never asserted)."""

import json

import pytest

from helpers import loading
from helpers.bench import BenchResult, benchmark, main, time_call
from helpers.loading import load_pipeline


def test_time_call_warms_up_then_times_each_run():
    calls = []
    seconds, peak, kind = time_call(lambda: calls.append(1), device="cpu", warmup=2, runs=3, progress=False)
    assert len(calls) == 5 and len(seconds) == 3
    assert all(value >= 0 for value in seconds)
    assert kind == "process RSS" and peak > 0


@pytest.mark.parametrize(("arguments", "message"), [({"runs": 0}, "runs=0"), ({"warmup": -1}, "warmup=-1")])
def test_time_call_rejects_bad_counts(arguments, message):
    with pytest.raises(ValueError, match=message):
        time_call(lambda: None, device="cpu", progress=False, **arguments)


def test_benchmark_splits_the_time_into_stages():
    pipe = load_pipeline("tiny")
    result = benchmark(pipe, model="tiny", steps=2, size=64, guidance_scale=4.5, runs=2,
                       progress=False)
    assert len(result.runs) == 2 and result.weights == "stand-in"
    assert set(result.stages) == {"prompt encoding", "denoising", "VAE decode", "other"}
    assert all(result.stages[stage] > 0 for stage in ("prompt encoding", "denoising", "VAE decode"))
    assert sum(result.stages.values()) == pytest.approx(result.median, rel=0.05)
    row = result.row()
    assert row["steps"] == "2" and row["size"] == "64x64" and row["device"] == "cpu" and row["dtype"] == "float32"
    assert "process RSS" in row["peak memory"]


def test_command_prints_a_row_and_writes_json(tmp_path, capsys):
    assert main(["--model", "tiny", "--runs", "2", "--steps", "2", "--size", "64", "--json",
                 str(tmp_path / "r.json")]) == 0
    assert "stand-in" in capsys.readouterr().out
    data = json.loads((tmp_path / "r.json").read_text())
    result = BenchResult(**data)
    assert (result.model, result.weights, result.steps, result.size, len(result.runs)) == ("tiny", "stand-in", 2,
                                                                                          64, 2)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "steps=0"),
        (["--runs", "0"], "runs=0"),
        (["--model", "sdxl"], "invalid choice: 'sdxl'"),
        (["--size", "100"], "--size=100 must be a positive multiple of 16"),
        (["--quantize", "nf4", "--offload", "sequential"], "does not work with bitsandbytes"),
        (["--quantize", "nf4", "--fuse-qkv"], "--fuse-qkv cannot be used here: this route stores the transformer in NF4"),
        (["--fuse-qkv", "--offload", "group"], "--fuse-qkv cannot be used here: group offload moves the separate"),
        (["--compile", "--offload", "model"], "cannot run: compile with model offload: the offload hooks"),
        (["--compile", "--cache", "pab"], "compile with cache='pab': the cache's hooks sit inside the compiled blocks"),
        (["--fp8"], "fp8=True on a CPU: FP8 needs a GPU with FP8 tensor cores"),
        (["--attention-kernel", "cudnn"], "attention_kernel='cudnn' on a CPU: PyTorch has only 'flash' and 'math'"),
        (["--cache", "pab", "--cache-every", "1"], "--cache-every=1 must be a whole number from 2"),
        (["--compile", "fast"], "invalid choice: 'fast'"),
        (["--offload", "model"], "needs a CUDA GPU"),
        (["--model", "large", "--weights", "random"], "--weights random needs a CUDA GPU"),
        (["--weights", "random"], "use it with --model large"),
    ],
)
def test_command_rejects_bad_input_before_loading(argv, message, capsys):
    loaded_before = dict(loading._loaded)
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err
    assert loading._loaded.keys() == loaded_before.keys()  # no pipeline was loaded or even looked up


def test_fused_qkv_gives_the_same_image_on_dual_attention_blocks():
    import numpy as np
    import torch

    from helpers.bench import fuse_qkv_projections, unfuse_qkv_projections

    pipe = load_pipeline("tiny")
    assert pipe.transformer.config.dual_attention_layers  # MMDiT-X blocks, as in SD3.5 Medium
    pipe.set_progress_bar_config(disable=True)

    def image():
        generator = torch.Generator("cpu").manual_seed(0)
        return pipe(prompt="a cat", num_inference_steps=2, height=64, width=64, generator=generator,
                    output_type="np").images[0]

    plain = image()
    fuse_qkv_projections(pipe.transformer)
    try:
        assert hasattr(pipe.transformer.transformer_blocks[0].attn, "to_qkv")
        np.testing.assert_allclose(image(), plain, atol=1e-4)
    finally:
        unfuse_qkv_projections(pipe.transformer)
    assert not any(hasattr(block.attn, name) for block in pipe.transformer.transformer_blocks
                   for name in ("to_qkv", "to_added_qkv"))  # the fused weights are gone, not just unused
    np.testing.assert_allclose(image(), plain, atol=1e-6)


def test_random_weights_pipeline_has_the_full_size_parts():
    from helpers.machines import MACHINES
    from helpers.routes import Route, _random_weights

    route = Route("medium", "medium", MACHINES["colab-t4"], False, "meta", "float16")
    pipe = _random_weights(route)  # shapes only: the GPU build, without memory
    wo = pipe.text_encoder_3.encoder.block[0].layer[1].DenseReluDense.wo
    assert wo.weight.dtype.itemsize == 4 and pipe.transformer.dtype.itemsize == 2  # T5's wo as transformers loads it
    assert pipe.transformer.config.num_layers == 24 and pipe.transformer.config.dual_attention_layers
    assert pipe.text_encoder_3.config.d_model == 4096 and pipe.vae.config.latent_channels == 16
    assert pipe.scheduler.config.shift == 3.0
    assert pipe.tokenizer.model_max_length == 77
    ids = pipe.tokenizer_3("A group of elves hunting a dragon").input_ids
    assert max(ids) < pipe.text_encoder_3.config.vocab_size  # the stand-in's ids are valid in the real vocabulary


def test_bench_leaves_a_shared_pipeline_as_it_found_it(capsys):
    from helpers.bench import fuse_qkv_projections, unfuse_qkv_projections

    pipe = load_pipeline("tiny")  # the pipeline `python -m helpers.bench --model tiny` gets in this process
    blocks = pipe.transformer.transformer_blocks

    def as_loaded():
        return (not any(hasattr(block.attn, "to_qkv") for block in blocks)
                and {type(block.attn.processor).__name__ for block in blocks} == {"JointAttnProcessor2_0"})

    assert as_loaded()
    assert main(["--model", "tiny", "--runs", "1", "--warmup", "0", "--steps", "2", "--size", "64",
                 "--fuse-qkv"]) == 0
    assert as_loaded()
    fuse_qkv_projections(pipe.transformer)
    fuse_qkv_projections(pipe.transformer)  # twice: the processors from before the first are what comes back
    unfuse_qkv_projections(pipe.transformer)
    assert as_loaded()


def test_interleaved_timing_reads_a_ratio_only_where_the_rounds_agree():
    from helpers.bench import Comparison, compare_times
    from helpers.experiments import sign_test_p

    assert sign_test_p(6, 6) == sign_test_p(0, 6) == 2 / 64 and sign_test_p(3, 6) == 1.0
    steady = Comparison(("one", "two"), ([1.0] * 6, [1.2, 1.1, 1.3, 1.2, 1.15, 1.25]))
    assert steady.finding().startswith("two took 1.20x the time of one") and "6 of 6 rounds" in steady.finding()
    noisy = Comparison(("one", "two"), ([1.0] * 6, [0.02, 1.5, 0.9, 1.4, 0.3, 2.0]))
    assert noisy.finding().startswith("Caution: no reading") and "slower in 3 of 6" in noisy.finding()
    calls = []
    timing = compare_times(lambda: calls.append("a"), lambda: calls.append("b"), labels=("a", "b"), device="cpu",
                           rounds=4, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then A B, B A, A B, B A
    assert [len(times) for times in timing.seconds] == [4, 4]
