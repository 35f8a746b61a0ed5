"""NF4 and 8-bit loading on the stand-in, and the memory estimates checked against real bitsandbytes layers."""

import json

import numpy as np
import pytest
import torch

from helpers.loading import load_pipeline
from helpers.machines import MACHINES
from helpers.memory import STRATEGIES, Breakdown, Strategy, breakdown_module, estimate, fits, main, weights
from helpers.quantization import count_4bit_layers, footprint_bytes, transformers_config, unquantized_bytes


@pytest.fixture(scope="module")
def bf16_pipe():
    return load_pipeline("tiny", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def nf4_pipe():
    return load_pipeline("tiny", dtype=torch.bfloat16, quantize="nf4")


def finite_image(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(0)
    images = pipe(prompt="a cat", num_inference_steps=2, height=64, width=64, generator=generator, output_type="np")
    return images.images[0]


def test_nf4_transformer_holds_bitsandbytes_4bit_layers(bf16_pipe, nf4_pipe):
    linear_layers = sum(type(m) is torch.nn.Linear for m in bf16_pipe.transformer.modules())
    assert count_4bit_layers(nf4_pipe.transformer) == linear_layers > 0
    assert count_4bit_layers(nf4_pipe.text_encoder_3) == 0  # T5 stays as it was unless asked
    assert nf4_pipe.text_encoder_3 is not bf16_pipe.text_encoder_3  # a separate load, not a changed shared model


def test_nf4_pipeline_generates_a_finite_image(nf4_pipe):
    image = finite_image(nf4_pipe)
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()


def test_nf4_transformer_is_smaller_than_bf16(bf16_pipe, nf4_pipe):
    assert footprint_bytes(nf4_pipe.transformer) < footprint_bytes(bf16_pipe.transformer)


def test_quantized_transformer_knows_its_size_before_quantization(bf16_pipe, nf4_pipe):
    assert unquantized_bytes(nf4_pipe.transformer) == footprint_bytes(bf16_pipe.transformer)
    assert unquantized_bytes(bf16_pipe.transformer) == footprint_bytes(bf16_pipe.transformer)


def test_estimated_nf4_bytes_equal_the_real_layers(bf16_pipe, nf4_pipe):
    rule = breakdown_module("transformer", bf16_pipe.transformer)
    assert rule.bytes("bf16") == footprint_bytes(bf16_pipe.transformer)
    assert rule.bytes("nf4") == footprint_bytes(nf4_pipe.transformer)


@pytest.mark.parametrize("storage", ["nf4", "int8"])
def test_estimated_t5_bytes_equal_transformers_quantized_t5(bf16_pipe, storage):
    from transformers import T5EncoderModel

    from helpers.tiny import tiny_pipeline_dir

    quantized = T5EncoderModel.from_pretrained(
        tiny_pipeline_dir() / "text_encoder_3",
        quantization_config=transformers_config(storage, torch.bfloat16),
        dtype=torch.bfloat16,
        device_map="cpu",
    )
    assert breakdown_module("text_encoder_3", bf16_pipe.text_encoder_3).bytes(storage) == footprint_bytes(quantized)


@pytest.mark.parametrize("t5", ["nf4", "int8"])
def test_quantized_t5_pipeline_runs(t5):
    pipe = load_pipeline("tiny", t5=t5)
    assert np.isfinite(finite_image(pipe)).all()


def test_pipeline_without_t5_runs():
    pipe = load_pipeline("tiny", t5="drop")
    assert pipe.text_encoder_3 is None
    assert np.isfinite(finite_image(pipe)).all()


def test_storage_formats_follow_bitsandbytes_layouts():
    layer = Breakdown(quantizable_values=128, quantizable_rows=2, other_values=10)
    assert layer.bytes("fp32") == 138 * 4
    assert layer.bytes("bf16") == layer.bytes("fp16") == 138 * 2
    assert layer.bytes("nf4") == 64 + 2 * 4 + 10 * 2  # half a byte per weight, a float32 scale per 64
    assert layer.bytes("int8") == 128 + 2 * 4 + 10 * 2  # a byte per weight, a float32 scale per output row
    with pytest.raises(ValueError, match="storage='fp8'"):
        layer.bytes("fp8")


def test_nf4_keeps_t5_feed_forward_outputs_in_bf16():
    t5 = weights("large", STRATEGIES["t5-nf4"])["text_encoder_3"]
    wo_values = 24 * 4096 * 10240  # transformers keeps T5's `wo` layers out of quantization
    assert t5 > wo_values * 2


@pytest.mark.parametrize("model", ["large", "medium"])
def test_estimates_relate_as_the_strategies_do(model):
    peak = {name: estimate(model, name).peak_gb for name in STRATEGIES}
    for lighter in ("model-offload", "sequential-offload", "group-offload", "no-t5", "t5-nf4", "nf4",
                    "nf4-model-offload", "embeddings-once"):
        assert peak[lighter] < peak["gpu"], lighter
    assert peak["sequential-offload"] <= peak["group-offload"] <= peak["model-offload"]
    assert peak["t5-nf4"] < peak["t5-int8"]
    gpu = estimate(model, "gpu")
    assert gpu.weights_on_gpu_gb == pytest.approx(sum(weights(model, STRATEGIES["gpu"]).values()) / 1e9, abs=0.01)


def test_estimates_grow_with_image_size():
    assert estimate("large", "gpu", 512).peak_gb < estimate("large", "gpu", 1024).peak_gb


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("large", "turbo-mode"), "strategy='turbo-mode' is not a strategy"),
        (("large", "gpu", 1000), "size=1000 must be a positive multiple of 16"),
        (("tiny", "gpu"), "model='tiny' has no full-size architecture"),
    ],
)
def test_bad_estimate_input_names_the_value(arguments, message):
    with pytest.raises(ValueError, match=message):
        estimate(*arguments)


def test_bad_gpu_size_names_the_value():
    with pytest.raises(ValueError, match="gpu_gb=0"):
        fits(1.0, 0)


def test_memory_command_as_json(capsys):
    assert main(["--model", "medium", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [row["strategy"] for row in data["strategies"]] == list(STRATEGIES)
    assert set(data["strategies"][0]["fits"]) == set(MACHINES) == set(data["machines"])
    assert data["strategies"][0]["host_gb"] > 0


def test_memory_command_for_one_gpu(capsys):
    main(["--model", "large", "--gpu-gb", "16"])
    printed = capsys.readouterr().out
    assert "16 GB" in printed and "Estimates: weights are exact" in printed
    assert "Fits: sequential-offload, group-offload, nf4-model-offload, nf4-t5-nf4, nf4-no-t5" in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "huge"], "invalid choice: 'huge'"),
        (["--gpu-gb", "-4"], "--gpu-gb -4: give the memory in GB"),
        (["--size", "1000"], "size=1000"),
    ],
)
def test_memory_command_rejects_bad_input(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


# What `python -m helpers.gpu_check` measured on an H100 (helpers/gpu_runs/), and the estimate each case is
# compared with: (check, case) -> (model, strategy, attention).
MEASURED = {
    ("medium", "bf16 on the GPU"): ("medium", "gpu", "fused"),
    ("medium", "math attention (T4 path)"): ("medium", "gpu", "math"),
    ("large", "bf16 on the GPU"): ("large", "gpu", "fused"),
    ("large", "Turbo's settings"): ("large-turbo", "gpu", "fused"),
    ("large", "math attention (T4 path)"): ("large", "gpu", "math"),
    ("large", "NF4 transformer on the GPU"): ("large", "nf4", "fused"),
    ("large", "NF4 transformer, T5 dropped"): ("large", Strategy("", quantize="nf4", t5="drop"), "fused"),
    ("large-nf4-model-offload", "model offload"): ("large", "nf4-model-offload", "fused"),
    ("medium-model-offload", "model offload"): ("medium", "model-offload", "fused"),
    ("medium-group-offload", "group offload"): ("medium", "group-offload", "fused"),
    ("medium-sequential-offload", "sequential offload"): ("medium", "sequential-offload", "fused"),
}


def measured_cases():
    from helpers.measured import reports

    for _, report in reports():
        for check in report["checks"]:
            for case in check["cases"]:
                if "estimate_strategy" in case:
                    yield check["check"], case


def test_every_measured_case_is_compared():
    assert {(check, case["case"]) for check, case in measured_cases()} == set(MEASURED)


@pytest.mark.parametrize(("check", "case"), list(measured_cases()), ids=lambda value: str(value)[:40])
def test_estimates_are_within_15_percent_of_the_h100_measurements(check, case):
    model, strategy, attention = MEASURED[check, case["case"]]
    result = estimate(model, strategy, case["size"], attention)
    assert result.peak_gb == pytest.approx(case["gpu_peak_gb"], rel=0.15)
    assert result.host_gb == pytest.approx(case["host_rss_max_gb"], rel=0.15)


def test_bounded_attention_keeps_attention_scores_small():
    fused, bounded, math = (estimate("large", "gpu", 1024, kind).peak_gb for kind in ("fused", "bounded", "math"))
    assert fused <= bounded < fused + 2.5 and math > fused + 10


def test_memory_command_names_what_fits_a_free_colab_t4(capsys):
    assert main(["--model", "large", "--machine", "colab-t4"]) == 0
    output = capsys.readouterr().out
    assert "colab-t4 computes in float16. Fits: nf4-t5-nf4 (with VAE tiles), nf4-no-t5" in output
    assert "load_pipeline takes: nf4-t5-nf4 (float16, transformer NF4, T5 NF4, fused attention, VAE tiles)" in output
    assert "host (GB)" in output
    assert main(["--model", "large", "--gpu-gb", "15.8", "--host-gb", "12.7", "--compute-capability", "7.5"]) == 0
    assert "computes in float16. Fits: nf4-t5-nf4 (with VAE tiles), nf4-no-t5" in capsys.readouterr().out


def test_a_tiled_decode_decodes_the_pixels_the_estimate_counts():
    """diffusers' tiled decode, run on the stand-in's VAE with the route's tiles at 1024x1024: the pixels its
    decoder makes, tile by tile, are those `tiled_decode_pixels` counts (1280 x 1280, overlaps included)."""
    from helpers.loading import load_pipeline
    from helpers.memory import VAE_TILE, tiled_decode_pixels
    from helpers.routes import tile_vae_decode

    vae = load_pipeline("tiny").vae
    tile_vae_decode(vae)
    decoded = []
    vae.decoder.register_forward_hook(lambda module, args, output: decoded.append(output.shape[-2] * output.shape[-1]))
    with torch.no_grad():
        picture = vae.decode(torch.zeros(1, vae.config.latent_channels, 128, 128)).sample
    assert picture.shape[-2:] == (1024, 1024) and max(decoded) == VAE_TILE ** 2
    assert sum(decoded) == tiled_decode_pixels(1024) == 1280 ** 2


def test_a_tiled_decode_needs_one_tiles_working_memory_and_the_tiles_it_keeps():
    from helpers.memory import VAE_DECODE_BYTES_PER_PIXEL, VAE_TILE, activations, tiled_decode_pixels

    whole, tiled = (activations("large", 1024, vae_tiling=tiling).vae_decode for tiling in (False, True))
    assert whole == VAE_DECODE_BYTES_PER_PIXEL * 1024 ** 2
    assert tiled == VAE_DECODE_BYTES_PER_PIXEL * VAE_TILE ** 2 + 2 * 3 * 2 * tiled_decode_pixels(1024)
    assert activations("large", 512, vae_tiling=True) == activations("large", 512)  # one tile: nothing changes
    bf16_t4 = [activations("large", 1024, convolutions="im2col", vae_tiling=tiling).vae_decode for tiling in (False, True)]
    assert bf16_t4[1] < bf16_t4[0] - 2e9  # the column buffers shrink with the tile too


def test_the_low_memory_large_route_meets_11_gb_and_nothing_less_does():
    """The seed's goal, Large with T5 in at most 11 GB without offload: with the text encoders on the GPU while the
    transformer runs, NF4 for both is above it even with a tiled decode (the denoising stage alone), so the route
    frees them once the prompt is encoded."""
    from helpers.memory import LOW_MEMORY_LARGE, STRATEGIES

    for tiling in (False, True):
        assert estimate("large", "nf4-t5-nf4", vae_tiling=tiling).peak_gb > 11
    low = estimate("large", LOW_MEMORY_LARGE)
    assert low.peak_gb <= 11 and STRATEGIES[LOW_MEMORY_LARGE].t5 == "nf4"
    assert estimate("large", LOW_MEMORY_LARGE, vae_tiling=True).peak_gb < low.peak_gb


def test_free_colab_routes_use_the_tiled_decode_and_keep_t5():
    """On the free Colab T4 the tiled decode is what lets both models keep T5 (in NF4) on the GPU, within the T4's
    memory less the reserve."""
    from helpers.machines import get_machine
    from helpers.memory import RESERVE_GB, estimate_on
    from helpers.routes import plan_route

    t4 = get_machine("colab-t4")
    for model, strategy in (("large", "nf4-t5-nf4"), ("medium", "t5-nf4")):
        route = plan_route(model, machine=t4)
        assert (route.strategy, route.t5, route.vae_tiling) == (strategy, "nf4", True)
        assert estimate_on(model, strategy, t4, vae_tiling=True).peak_gb + RESERVE_GB <= t4.gpu_gb
        assert estimate_on(model, strategy, t4).peak_gb + RESERVE_GB > t4.gpu_gb  # whole, it would not fit


def test_float16_counts_t5s_float32_feed_forward_outputs():
    wo_values = 24 * 4096 * 10240
    for strategy in ("gpu", "t5-nf4"):
        bf16 = weights("large", STRATEGIES[strategy], "bfloat16")["text_encoder_3"]
        fp16 = weights("large", STRATEGIES[strategy], "float16")["text_encoder_3"]
        assert fp16 - bf16 == 2 * wo_values


def test_transformers_keeps_t5s_wo_in_float32_in_a_float16_load():
    """What the estimate above relies on, read off a real float16 load (plain and NF4) of the toy's T5."""
    from transformers import T5EncoderModel

    from helpers.loading import toy_model_dir

    for config in (None, transformers_config("nf4", torch.float16)):
        t5 = T5EncoderModel.from_pretrained(toy_model_dir() / "text_encoder_3", dtype=torch.float16,
                                            quantization_config=config, device_map="cpu")
        feed_forward = t5.encoder.block[0].layer[1].DenseReluDense
        assert feed_forward.wo.weight.dtype == torch.float32 and t5.shared.weight.dtype == torch.float16


def test_a_bf16_decode_without_cudnn_adds_the_largest_column_buffer():
    from helpers.memory import activations, im2col_bytes

    assert im2col_bytes(1024) == 256 * 9 * 1024 * 1024 * 2  # the 256-channel 3x3 convolutions at full size
    assert activations("large", convolutions="im2col").vae_decode - activations("large").vae_decode == im2col_bytes(
        1024)


@pytest.mark.parametrize(("argv", "message"), [
    (["--host-gb", "12.7"], "give its --gpu-gb too"),
    (["--machine", "t4"], "machine='t4' is not a machine of the catalogue"),
    (["--gpu-gb", "16", "--compute-capability", "75"], "--compute-capability 75"),
    (["--gpu-gb", "nan"], "--gpu-gb nan: give the memory in GB"),
    (["--gpu-gb", "16", "--host-gb", "-1"], "--host-gb -1: give the memory in GB"),
])
def test_memory_command_refuses_bad_cards(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err
