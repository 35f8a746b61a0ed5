"""setup(): model choice, report and seeding; load_pipeline's checks; exact sizes of the real architectures."""

import pytest
import torch

from helpers.architecture import component_sizes, pipeline_sizes
from helpers.loading import load_pipeline
from helpers.machines import MACHINES, Machine, UnknownMachineError
from helpers.models import MODELS, UnknownModelError
from helpers.routes import plan_route
from helpers.session import NO_GPU_BANNER, _choose_models, setup

ABOUT_ALL = (MODELS["large"], MODELS["large-turbo"], MODELS["medium"])


def gpu(memory_gb: float, compute_capability=(8, 0), host_gb=None) -> Machine:
    return Machine("test", "test machine", "test GPU", compute_capability, memory_gb, host_gb)


def test_setup_on_this_machine_runs_the_toy_model(capsys):
    run = setup(about=("large", "medium"))
    report = capsys.readouterr().out
    assert run.model is MODELS["toy"] and run.models == (MODELS["toy"],)
    assert run.device == "cpu" and run.dtype == torch.float32
    assert "Offline toy model" in report and "HF token   not found" in report
    assert "diffusers" in report
    assert run.pick(sd35="elves", toy="a red circle") == "a red circle"


def test_setup_asks_for_a_restart_when_a_package_in_memory_is_not_the_one_installed():
    """As on Colab when a cell imported diffusers before the install cell upgraded it: the module in memory says
    0.39.0, the installed distribution says otherwise. setup() stops before any work, naming both and the menu path."""
    import types
    from importlib import metadata

    from helpers.session import RestartNeededError, check_restart_not_needed, stale_imports

    old = types.ModuleType("diffusers")
    old.__version__ = "0.39.0"
    installed = metadata.version("diffusers")
    assert stale_imports({"diffusers": old}) == {"diffusers": ("0.39.0", installed)}
    with pytest.raises(RestartNeededError, match=rf"diffusers 0\.39\.0 is in memory but {installed} is installed.*"
                                                 r"Colab: Runtime → Restart session"):
        check_restart_not_needed({"diffusers": old, "torch": torch})
    check_restart_not_needed()  # this process: every package in memory is the installed one


def test_setup_never_shows_the_token(monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_SecretValueThatMustNotPrint")
    run = setup(about="large")
    assert run.token_present
    assert "hf_SecretValueThatMustNotPrint" not in capsys.readouterr().out + repr(run)


def test_setup_seeds_torch():
    setup(about="large", seed=11, verbose=False)
    first = torch.rand(3)
    setup(about="large", seed=11, verbose=False)
    assert torch.equal(first, torch.rand(3))


def test_setup_rejects_a_bad_model_setting_before_anything_else(monkeypatch):
    monkeypatch.setenv("SD35_MODEL", "sdxl")
    with pytest.raises(UnknownModelError, match="SD35_MODEL='sdxl'"):
        setup(about="large")


def test_setup_rejects_an_unknown_notebook_model():
    with pytest.raises(UnknownModelError, match="'larger'"):
        setup(about="larger")


def test_auto_without_gpu_runs_the_toy_model_with_the_banner():
    models, notes = _choose_models(ABOUT_ALL, "auto", None)
    assert models == (MODELS["toy"],)
    assert notes == [NO_GPU_BANNER]
    assert NO_GPU_BANNER.startswith("No GPU found: running the offline toy model, a small SD3 pipeline trained")


def test_auto_on_an_80_gb_gpu_runs_every_model_the_notebook_is_about():
    models, notes = _choose_models(ABOUT_ALL, "auto", gpu(80))
    assert models == ABOUT_ALL and notes == []


def test_auto_on_a_16_gb_gpu_takes_the_routes_that_fit():
    models, notes = _choose_models(ABOUT_ALL, "auto", gpu(15.8))
    assert models == ABOUT_ALL and notes == []
    assert plan_route("large", machine=gpu(15.8)).strategy == "nf4-model-offload"  # RAM not counted
    assert plan_route("medium", machine=gpu(15.8)).strategy == "model-offload"


def test_auto_on_free_colab_takes_the_4_bit_routes_that_fit_its_ram_in_float16():
    models, notes = _choose_models(ABOUT_ALL, "auto", MACHINES["colab-t4"])
    assert models == ABOUT_ALL and notes == []
    assert plan_route("large", machine="colab-t4").strategy == "nf4-t5-nf4"  # with the decode in tiles
    assert plan_route("medium", machine="colab-t4").strategy == "t5-nf4"


def test_auto_falls_back_to_medium_when_nothing_the_notebook_wants_fits():
    models, notes = _choose_models((MODELS["large"],), "auto", gpu(8))
    assert models == (MODELS["medium"],)
    assert "SD3.5 Large does not fit this machine (8.0 GB of GPU memory free)" in notes[0]
    assert "Running SD3.5 Medium instead" in notes[-1]


def test_an_explicit_setting_wins_over_the_notebook():
    models, _ = _choose_models(ABOUT_ALL, "medium", gpu(80))
    assert models == (MODELS["medium"],)


@pytest.mark.parametrize(
    ("model", "machine", "options", "expected"),
    [
        ("large", "h100", {}, "gpu"),
        ("large", "colab-a100", {}, "gpu"),
        ("large", gpu(24), {}, "model-offload"),  # host memory not counted
        ("large", "sagemaker-g5-2xlarge", {}, "nf4"),  # model offload would keep 27.6 GB of weights in 34.4 GB
        ("large", "sagemaker-g5-xlarge", {"quantize": "nf4", "t5": "nf4"}, "nf4-t5-nf4"),
        ("large", "colab-t4", {"quantize": "nf4", "offload": "model"}, None),  # the seed's route: RAM too small
        ("large", "colab-t4", {"quantize": "nf4"}, "nf4-t5-nf4"),  # with the decode in tiles
        ("large", "colab-t4", {"quantize": "nf4", "t5": "drop"}, "nf4-no-t5"),
        ("large", "colab-t4", {"quantize": None}, None),
        ("medium", "sagemaker-g5-xlarge", {}, "gpu"),
        ("medium", gpu(15.8), {}, "model-offload"),
        ("medium", "colab-t4", {"quantize": None}, "t5-nf4"),  # with the decode in tiles
        ("medium", "colab-t4", {"quantize": None, "t5": "nf4"}, "t5-nf4"),
        ("medium", "colab-t4", {"t5": "drop"}, "no-t5"),
        ("medium", "colab-t4", {"dtype": "bfloat16", "t5": "nf4"}, "t5-nf4"),  # with the decode in tiles
        ("tiny", gpu(1), {}, None),  # an offline model fits anything: no strategy needed
    ],
)
def test_routes_take_the_first_that_fits_and_keep_what_was_asked(model, machine, options, expected):
    try:
        route = plan_route(model, machine=machine, **options)
    except MemoryError:
        assert expected is None and model != "tiny"
        return
    assert route.strategy == expected
    for key, value in options.items():
        assert getattr(route, key) == value


def test_a_t4_computes_in_float16_and_a_bf16_t4_route_bounds_attention_and_tiles_the_decode():
    fp16 = plan_route("large", machine="colab-t4")
    assert (fp16.dtype, fp16.attention, fp16.vae_tiling) == ("float16", "fused", True)  # T5 kept, in NF4
    bf16 = plan_route("medium", machine="colab-t4", dtype="bfloat16")
    assert (bf16.dtype, bf16.attention) == ("bfloat16", "bounded")
    assert plan_route("large", machine="h100").dtype == "bfloat16"


def test_an_unknown_machine_is_a_clear_error_listing_the_machines(monkeypatch):
    monkeypatch.setenv("SD35_MACHINE", "colab-t5")
    with pytest.raises(UnknownMachineError, match=r"SD35_MACHINE='colab-t5'.*colab-t4, colab-l4"):
        setup(about="large")
    with pytest.raises(UnknownMachineError, match="machine='p3'"):
        load_pipeline("tiny", machine="p3")


def test_setup_plans_as_the_emulated_machine(monkeypatch, capsys):
    monkeypatch.setenv("SD35_MACHINE", "colab-t4")
    run = setup(about=("large", "medium"))
    report = capsys.readouterr().out
    assert run.dtype == torch.float16 and run.device == "cpu" and run.emulated
    assert [spec.plays for spec in run.models] == ["large", "medium"] and run.model.is_toy
    assert "colab-t4: free Colab: NVIDIA T4" in report and "emulated on this CPU" in report
    assert "nf4-t5-nf4 (float16, transformer NF4, T5 NF4, fused attention, VAE tiles" in report
    monkeypatch.setenv("SD35_MACHINE", "h100")
    run = setup(about="large", verbose=False)
    assert run.dtype == torch.bfloat16 and run.routes[0].strategy == "gpu"
    monkeypatch.setenv("SD35_MODEL", "large")
    with pytest.raises(ValueError, match="an emulated machine runs the offline models"):
        setup(about="large")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"model": "xl"}, "model='xl'"),
        ({"model": "tiny", "task": "text2img"}, "task='text2img' is not a task of this series"),
        ({"model": "tiny", "offload": "disk"}, "offload='disk' is not supported"),
        ({"model": "tiny", "offload": "model"}, "offload='model' needs a CUDA GPU"),
        ({"model": "tiny", "offload": "group"}, "offload='group' needs a CUDA GPU"),
        ({"model": "tiny", "quantize": "int4"}, "quantize='int4' is not supported"),
        ({"model": "tiny", "t5": "fp8"}, "t5='fp8' is not supported"),
        ({"model": "tiny", "quantize": "nf4", "offload": "sequential"}, "Use offload='model' with quantization"),
        ({"model": "tiny", "t5": "int8", "offload": "group"}, "does not work with bitsandbytes"),
    ],
)
def test_load_pipeline_rejects_bad_input_by_name(arguments, message):
    with pytest.raises(ValueError, match=message):
        load_pipeline(**arguments)


# Parameter counts of the published checkpoints: CLIP-L 123.65M, OpenCLIP bigG 694.66M, T5-XXL encoder 4.76B,
# SD3 VAE 83.82M; transformer weights plus the positional-embedding buffer (pos_embed_max_size^2 x hidden size).
@pytest.mark.parametrize(
    ("model", "transformer_parameters", "position_buffer"),
    [
        ("large", 8_056_627_520, 192 * 192 * 38 * 64),
        ("large-turbo", 8_056_627_520, 192 * 192 * 38 * 64),
        ("medium", 2_243_171_520, 384 * 384 * 24 * 64),
    ],
)
def test_full_size_component_counts(model, transformer_parameters, position_buffer):
    sizes = {part.component: part for part in component_sizes(model)}
    assert (sizes["transformer"].parameters, sizes["transformer"].buffers) == (transformer_parameters, position_buffer)
    assert sizes["text_encoder"].parameters == 123_650_304
    assert sizes["text_encoder_2"].parameters == 694_659_840
    assert sizes["text_encoder_3"].parameters == 4_762_310_656
    assert sizes["vae"].parameters == 83_819_683
    assert all(part.bytes_per_value == 2 for part in sizes.values())  # bf16


def test_loaded_pipeline_sizes_count_every_part():
    pipe = load_pipeline("tiny")
    sizes = {part.component: part for part in pipeline_sizes(pipe)}
    assert set(sizes) == {"transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae"}
    assert sizes["vae"].parameters == sum(p.numel() for p in pipe.vae.parameters())
    assert sizes["transformer"].bytes_per_value == 4  # float32 on the CPU


def test_architecture_command_prints_sizes_and_draws_the_chart(tmp_path, capsys):
    from helpers.architecture import main

    main(["--figure", str(tmp_path / "chart.png")])
    printed = capsys.readouterr().out
    assert "8,056,627,520" in printed and "2,243,171,520" in printed
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_auto_options_without_a_gpu_load_float32_with_t5():
    route = plan_route(MODELS["toy"])
    assert (route.offload, route.quantize, route.t5, route.dtype, route.machine) == (None, None, "keep", "float32",
                                                                                    None)


def test_setup_says_when_pytorch_cannot_use_the_machines_gpu(monkeypatch, capsys):
    from helpers import session

    monkeypatch.setattr(session, "_nvidia_gpu_present", lambda: True)  # a driver that this torch build cannot use
    run = setup(about="large")
    report = capsys.readouterr().out
    assert run.device == "cpu" and run.model is MODELS["toy"]
    assert "An NVIDIA GPU is here, but PyTorch cannot use it" in report and torch.__version__ in report


def test_deleting_a_pipeline_that_has_run_frees_it():
    """Notebooks switch models with `del pipe`: nothing else may keep the pipeline or its parts alive (on an H100,
    helpers/gpu_runs/ measured a Medium pipeline's 17.5 GB freed by `del pipe` alone)."""
    import gc
    import weakref

    # float64: a way of loading no other test uses, so no other pipeline shares these parts
    pipe = load_pipeline("tiny", "image-to-image", dtype=torch.float64)
    pipe.set_progress_bar_config(disable=True)
    pipe(prompt="a", image=torch.zeros(1, 3, 64, 64, dtype=torch.float64), strength=0.5, num_inference_steps=2,
         height=64, width=64)
    parts = [weakref.ref(pipe), weakref.ref(pipe.transformer), weakref.ref(pipe.vae)]
    gc.disable()  # no help from the collector: reference counting alone must free it
    try:
        del pipe
        assert [part() for part in parts] == [None, None, None]
    finally:
        gc.enable()


def test_fitting_keeps_every_variant_without_a_gpu(capsys):
    run = setup(about="large", verbose=False)
    variants = [(MODELS["toy"], None), (MODELS["toy"], "nf4")]
    assert run.fitting(variants) == variants and capsys.readouterr().out == ""


def test_fitting_leaves_out_what_does_not_fit_and_says_so(monkeypatch, capsys):
    monkeypatch.setenv("SD35_MACHINE", "colab-t4")
    run = setup(about="large", verbose=False)
    kept = run.fitting([(MODELS["large"], None), (MODELS["large"], "nf4")])
    assert kept == [(MODELS["large"], "nf4")]
    assert "SD3.5 Large with quantize=None does not fit this machine: skipped here." in capsys.readouterr().out


def test_options_given_explicitly_are_checked_against_gpu_and_ram(capsys, monkeypatch):
    """The seed's route (NF4 + model offload) keeps T5 and the rest in RAM: 22 GB, which free Colab's 12.7 GB
    cannot hold. It is refused before loading (a Colab kernel would be killed), with the options that fit."""
    with pytest.raises(MemoryError, match=r"offload='model', quantize='nf4'.*Loading options that fit: "):
        plan_route("large", machine="colab-t4", offload="model", quantize="nf4")
    monkeypatch.setenv("SD35_MACHINE", "colab-t4")
    run = setup(about="large", verbose=False)
    assert not run.fits(MODELS["large"], offload="model", quantize="nf4")
    assert "SD3.5 Large with offload='model', quantize='nf4' does not fit this machine" in capsys.readouterr().out
    assert run.fits(MODELS["large"], quantize="nf4", t5="drop")
    route = plan_route("large", machine="h100", offload="model", quantize="nf4")
    assert (route.offload, route.quantize, route.t5, route.strategy) == ("model", "nf4", "keep", "nf4-model-offload")
    assert plan_route("large", machine="h100", offload="model", quantize="nf4", t5="int8").t5 == "int8"  # not refused


def test_a_notebook_about_the_toy_runs_it_as_itself_on_the_emulated_machine(monkeypatch):
    monkeypatch.setenv("SD35_MACHINE", "colab-t4")
    run = setup(about="toy", verbose=False)
    assert run.model is MODELS["toy"] and run.dtype == torch.float16 and run.routes[0].machine.name == "colab-t4"


def test_sd35_experiments_get_the_seeds_a_finding_needs_and_say_what_they_cost(monkeypatch, capsys):
    """On SD3.5, `run.seeds` sizes an experiment to about 10 minutes of this machine's route, never under the 6
    pairs with which a sign test can reach p < 0.05, and says so before anything is made; the toy keeps its count."""
    import dataclasses

    from helpers.experiments import sign_test_p
    from helpers.session import EVIDENCE_SEEDS

    monkeypatch.setenv("SD35_MACHINE", "h100")
    run = setup(about="large", verbose=False)
    assert run.seeds(toy=20, per_seed=4) == list(range(20)) and capsys.readouterr().out == ""
    assert sign_test_p(EVIDENCE_SEEDS, EVIDENCE_SEEDS) < 0.05 <= sign_test_p(EVIDENCE_SEEDS - 1, EVIDENCE_SEEDS - 1)
    counts = {}
    for machine in ("h100", "colab-t4"):
        sd35 = dataclasses.replace(run, models=(MODELS["large"],), routes=(plan_route("large", machine=machine),))
        counts[machine] = len(sd35.seeds(toy=20, per_seed=4))
        said = capsys.readouterr().out
        assert f"{counts[machine]} seeds, {4 * counts[machine]} pictures, about " in said and "(estimate)" in said
    assert counts["colab-t4"] == EVIDENCE_SEEDS < counts["h100"] <= 20  # the floor on a T4, more on an H100
    with pytest.raises(ValueError, match="per_seed=0"):
        run.seeds(toy=20, per_seed=0)
