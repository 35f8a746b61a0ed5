"""Every public entry point of helpers, fed generated values (Hypothesis): each call ends in a correct result or in
a ValueError/TypeError raised by helpers that names the parameter, never in an exception from inside torch,
diffusers, PIL or the standard library, and never in a hang.

One parameter of a call that works is replaced by a generated value: odd types, NaN and infinities, NumPy
scalars, huge and negative numbers, empty and very long text, paths to nowhere, pictures of the wrong mode. The
table ENTRIES names every callable that `helpers` exports (a test fails when one is missing) and the explorers.
Examples are derandomized and the database is off, so a run is the same on every machine and writes nothing.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import helpers

LIMIT_S = 60
"""No call may take longer: a hang fails the test instead of stalling CI."""
EXAMPLES = int(os.environ.get("SD35_FUZZ_EXAMPLES", "15"))
"""Generated calls per entry point (each replaces one parameter): 15 take about 15 s in all here. For a deeper
search: SD35_FUZZ_EXAMPLES=300 SD35_FUZZ_RANDOM=1 (new examples each run)."""


# --- Values a careless reader, a damaged file or a hostile caller could pass -------------------------------------

def _pictures() -> list[Image.Image]:
    return [Image.new("RGB", (64, 64), "red"), Image.new("RGBA", (64, 64)), Image.new("L", (64, 64), 255),
            Image.new("F", (48, 48), 0.5), Image.new("I;16", (32, 32), 40000), Image.new("RGB", (17, 9)),
            Image.new("1", (64, 64)), Image.new("P", (64, 64))]


ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([16, 64, 100, 2**31, 2**63, 2**64, -2**63, 10**12]),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([np.int64(2), np.int32(-1), np.float32(np.nan), np.float64(0.5), np.bool_(True),
                     np.uint8(255), np.array([1.0, 2.0]), np.zeros((2, 2))]),
    st.text(max_size=12),
    st.sampled_from(["", " ", "auto", "none", "nf4", "cuda", "cpu", "tiny", "large", "x" * 30_000, "\x00",
                     "/", "/proc/sd35-nowhere/x", "../escape", "~", "1e309", "nan"]),
    st.binary(max_size=8),
    st.lists(st.integers(-2, 70), max_size=4),
    st.tuples(st.floats(-1, 2), st.floats(-1, 2), st.floats(-1, 2), st.floats(-1, 2)),
    st.dictionaries(st.text(max_size=4), st.integers(-2, 2), max_size=2),
    st.sampled_from([object(), Path("/"), Path("/proc/sd35-nowhere"), print, range(0), range(3), b"\x89PNG\r\n",
                     slice(1)]),
    st.sampled_from(range(len(_pictures()))).map(lambda index: _pictures()[index]),
)


# --- What the calls work on: built once, cheap ---------------------------------------------------------------------

_made: dict[str, Any] = {}


def made(name: str) -> Any:
    """The tiny stand-in's pipelines (text-to-image, image-to-image, inpainting, and text-to-image with a LoRA),
    built on first use."""
    if name not in _made:
        from helpers.loading import load_pipeline

        if name == "t2i-lora":  # a pipeline of its own (load_pipeline shares one per route), with an adapter
            from peft import LoraConfig

            from helpers.tiny import build_tiny_pipeline

            pipe = build_tiny_pipeline()
            pipe.transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"]), adapter_name="fuzz")
        else:
            pipe = load_pipeline("tiny", {"t2i": "text-to-image", "i2i": "image-to-image",
                                          "inpaint": "inpainting"}[name])
        pipe.set_progress_bar_config(disable=True)
        _made[name] = pipe
    return _made[name]


def scratch() -> Path:
    """A fresh folder for outputs of one call, inside the session's scratch folder (conftest.py removes it)."""
    return Path(tempfile.mkdtemp(prefix="fuzz-", dir=Path(os.environ["SD35_OUTPUT_DIR"]).parent))


def saved_picture() -> Path:
    from helpers.images import save_image

    return save_image(Image.new("RGB", (16, 16)), model="tiny", prompt="p", seed=0, num_inference_steps=1,
                      guidance_scale=1.0, folder=scratch())


def bench_result():
    from helpers.bench import BenchResult

    return BenchResult(model="tiny", weights="stand-in", device="cpu", dtype="float32", steps=1, size=64,
                       guidance_scale=1.0, options={}, runs=[0.1], peak_memory_gb=0.1, memory_kind="process RSS")


SMALL = {"num_inference_steps": 1, "guidance_scale": 2.0, "height": 32, "width": 32}
"""Settings that make a tiny picture quickly."""


@dataclass(frozen=True)
class Entry:
    """A public callable and arguments with which it works; `settings` is a `**settings` parameter (fuzzed by
    adding one setting), `aliases` other words its messages use for a parameter."""

    name: str
    call: Callable[..., Any]
    arguments: Callable[[], dict[str, Any]]
    settings: str | None = None
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _linear():
    import torch

    return torch.nn.Sequential(torch.nn.Linear(64, 64))


def _h(name: str) -> Callable[..., Any]:
    return getattr(helpers, name)


def _explorer(kind: str) -> Callable[..., Any]:
    def build(**arguments):
        from helpers import widgets

        return getattr(widgets, kind)(**arguments)
    return build


PROMPTING = {"prompt": "a red circle", "negative_prompt": "", "guidance_scale": 2.0, "num_inference_steps": 1,
             "seed": 0}
UNSEEDED = {name: value for name, value in PROMPTING.items() if name != "seed"}
RGB = Image.new("RGB", (32, 32), "blue")
MASK = Image.new("L", (32, 32), 255)

ENTRIES = [
    Entry("setup", _h("setup"), lambda: {"about": "large", "seed": 0, "verbose": False}),
    Entry("get_model", _h("get_model"), lambda: {"model": "large"}),
    Entry("load_pipeline", _h("load_pipeline"), lambda: {"model": "tiny", "task": "text-to-image", "device": "cpu",
                                                          "dtype": None, "offload": "auto", "quantize": "auto",
                                                          "t5": "auto", "machine": None}),
    Entry("plan_route", _h("plan_route"), lambda: {"model": "large", "machine": "colab-t4", "offload": "auto",
                                                    "quantize": "auto", "t5": "auto", "size": 1024}),
    Entry("route_of", _h("route_of"), lambda: {"pipe": made("t2i")}),
    Entry("catalogue_table", _h("catalogue_table"), dict),
    Entry("component_sizes", _h("component_sizes"), lambda: {"model": "medium"}),
    Entry("pipeline_sizes", _h("pipeline_sizes"), lambda: {"pipe": made("t2i")}),
    Entry("plot_component_sizes", _h("plot_component_sizes"), lambda: {"models": ("large",)}),
    Entry("estimate", _h("estimate"), lambda: {"model": "large", "strategy": "nf4", "size": 1024,
                                                "attention": "fused", "dtype": "bfloat16", "convolutions": "cudnn"}),
    Entry("estimate_on", _h("estimate_on"), lambda: {"model": "medium", "strategy": "gpu", "machine": "colab-t4",
                                                      "size": 512, "dtype": None, "vae_tiling": True}),
    Entry("fit_table", _h("fit_table"), lambda: {"model": "medium", "size": 512}),
    Entry("format_table", _h("format_table"), lambda: {"model": "medium"}),
    Entry("strategy_table", _h("strategy_table"), lambda: {"model": "large", "size": 1024}),
    Entry("plot_strategies", _h("plot_strategies"), lambda: {"model": "large", "size": 1024}),
    Entry("offload_traffic_gb", _h("offload_traffic_gb"), lambda: {"model": "large", "strategy": "model-offload"}),
    Entry("measure_peak_gb", _h("measure_peak_gb"), lambda: {"function": lambda: 1}),
    Entry("weights", _h("weights"), lambda: {"model": "large", "strategy": "gpu", "dtype": "float16"}),
    Entry("count_4bit_layers", _h("count_4bit_layers"), lambda: {"module": made("t2i").transformer}),
    Entry("quantize_linear_layers_nf4", _h("quantize_linear_layers_nf4"),
          lambda: {"module": _linear(), "compute_dtype": "float32", "skip": ()}),
    Entry("footprint_bytes", _h("footprint_bytes"), lambda: {"module": made("t2i").vae}),
    Entry("unquantized_bytes", _h("unquantized_bytes"), lambda: {"module": made("t2i").vae}),
    Entry("benchmark", _h("benchmark"), lambda: {"pipe": made("t2i"), "model": "tiny", "steps": 1, "size": 32,
                                                  "guidance_scale": 1.0, "runs": 1, "warmup": 0, "prompt": "p",
                                                  "progress": False}),
    Entry("compare_times", _h("compare_times"), lambda: {"first": lambda: None, "second": lambda: None,
                                                          "labels": ["a", "b"], "device": "cpu", "rounds": 2,
                                                          "warmup": 0}),
    Entry("time_call", _h("time_call"), lambda: {"call": lambda: None, "device": "cpu", "warmup": 0, "runs": 2,
                                                  "progress": False}),
    Entry("flops_per_step", _h("flops_per_step"), lambda: {"model": "medium", "size": 256, "batch": 1,
                                                            "max_sequence_length": 77}),
    Entry("measured_cases", _h("measured_cases"), dict),
    Entry("measured_case", _h("measured_case"), lambda: {"check": "large", "case": "bf16 on the GPU"}),
    Entry("plot_results", _h("plot_results"), lambda: {"results": [bench_result()], "labels": ["one"]}),
    Entry("fuse_qkv_projections", _h("fuse_qkv_projections"), lambda: {"transformer": None}),
    Entry("unfuse_qkv_projections", _h("unfuse_qkv_projections"), lambda: {"transformer": None}),
    Entry("run_sweep", _h("run_sweep"), lambda: {"pipe": made("t2i"), "model": "tiny",
                                                  "fixed": {**UNSEEDED, **SMALL}, "vary": {"seed": [0, 1]},
                                                  "folder": scratch(), "progress": False},
          aliases={"fixed": ("setting",), "vary": ("setting",)}),
    Entry("generate", _h("generate"), lambda: {"pipe": made("t2i"), "model": "tiny",
                                                "settings": {**PROMPTING, **SMALL}, "folder": scratch()}),
    Entry("colour_share", _h("colour_share"), lambda: {"image": RGB, "colour": "blue", "min_saturation": 0.2,
                                                        "min_value": 0.2}),
    Entry("mean_difference", _h("mean_difference"), lambda: {"first": RGB, "second": RGB}),
    Entry("summarise", _h("summarise"), lambda: {"values": [1.0, 2.0]}),
    Entry("paired_change", _h("paired_change"), lambda: {"before": [1.0, 2.0], "after": [2.0, 2.0], "tolerance": 0.1, "unit": "seeds"}),
    Entry("mean_saturation", _h("mean_saturation"), lambda: {"image": RGB}),
    Entry("region_difference", _h("region_difference"),
          lambda: {"first": RGB, "second": Image.new("RGB", (32, 32)), "mask": helpers.rectangle_mask(
              (32, 32), (0.2, 0.2, 0.6, 0.6))}, aliases={"mask": ("sizes differ",)}),
    Entry("TextToImageExplorer", _explorer("TextToImageExplorer"),
          lambda: {"pipe": made("t2i"), "model": "tiny", **PROMPTING, "height": 32, "width": 32, "folder": scratch(),
                   "max_steps": 4}),
    Entry("ImageToImageExplorer", _explorer("ImageToImageExplorer"),
          lambda: {"pipe": made("i2i"), "model": "tiny", "image": RGB, **PROMPTING, "num_inference_steps": 2,
                   "strength": 0.5, "folder": scratch(), "max_steps": 4}, aliases={"image": ("RGB",)}),
    Entry("InpaintingExplorer", _explorer("InpaintingExplorer"),
          lambda: {"pipe": made("inpaint"), "model": "tiny", "image": RGB, **PROMPTING, "box": (0.2, 0.2, 0.8, 0.8),
                   "strength": 1.0, "folder": scratch(), "max_steps": 4}, aliases={"image": ("RGB",)}),
    Entry("LoraScaleExplorer", _explorer("LoraScaleExplorer"),
          lambda: {"pipe": made("t2i-lora"), "model": "tiny", **PROMPTING, "scale": 0.5, "height": 32, "width": 32,
                   "folder": scratch(), "max_steps": 4}),
    Entry("BlindRating", _h("BlindRating"), lambda: {"first": [RGB, RGB], "second": [RGB, RGB], "question": "Red?",
                                                      "names": ("without", "with"), "seed": 0}),
    Entry("prepare_image", _h("prepare_image"), lambda: {"source": RGB, "longest": 64},
          aliases={"source": ("image",)}),
    Entry("prepare_mask", _h("prepare_mask"), lambda: {"source": MASK, "image_size": (32, 32), "grow": 2,
                                                        "original_size": None},
          aliases={"source": ("mask",), "image_size": ("mask is",), "original_size": ("mask is",)}),
    Entry("blend", _h("blend"), lambda: {"original": RGB, "painted": Image.new("RGB", (32, 32)), "mask": MASK,
                                          "soften": 2},
          aliases={name: ("sizes differ",) for name in ("original", "painted", "mask")}),
    Entry("load_image", _h("load_image"), lambda: {"source": RGB, "name": "image"}, aliases={"source": ("image",)}),
    Entry("rectangle_mask", _h("rectangle_mask"), lambda: {"size": (32, 16), "box": (0.1, 0.1, 0.5, 0.9)}),
    Entry("ellipse_mask", _h("ellipse_mask"), lambda: {"size": (32, 16), "box": (0.1, 0.1, 0.5, 0.9)}),
    Entry("mask_from_alpha", _h("mask_from_alpha"), lambda: {"image": Image.new("RGBA", (8, 8)), "paint": "opaque"},
          aliases={"image": ("alpha channel",)}),
    Entry("background_mask", _h("background_mask"), lambda: {"subject": helpers.sample("subject"), "margin": 3},
          aliases={"subject": ("alpha channel",)}),
    Entry("sample", _h("sample"), lambda: {"name": "scene"}),
    Entry("save_image", _h("save_image"), lambda: {"image": RGB, "model": "tiny", "prompt": "p", "seed": 1,
                                                    "num_inference_steps": 2, "guidance_scale": 3.0,
                                                    "negative_prompt": None, "folder": scratch()},
          settings="settings"),
    Entry("enlarged", _h("enlarged"), lambda: {"image": RGB, "at_least": 100}),
    Entry("read_metadata", _h("read_metadata"), lambda: {"path": saved_picture()}),
    Entry("image_grid", _h("image_grid"), lambda: {"images": [RGB, MASK], "column_labels": ["a", "b"],
                                                    "row_labels": ["r"], "title": "t", "cell_inches": 1.0},
          aliases={"column_labels": ("labels for",), "row_labels": ("labels for",)}),
    Entry("Table", _h("Table"), lambda: {"rows": [{"a": 1}], "title": None}),
    Entry("judge", _h("judge"), lambda: {"image": RGB}),
    Entry("adherence", _h("adherence"), lambda: {"pipe": made("t2i"), "scenes": [helpers.world.scene(1)], **SMALL},
          settings="settings"),
    Entry("generate_batch", _h("generate_batch"),
          lambda: {"pipe": made("t2i"), "prompts": ["a", "b"], "seeds": [0, 1], "batch_size": 2, "progress": False,
                   "drop_t5": False, **SMALL}, settings="settings", aliases={"seeds": ("prompts",),
                                                                            "prompts": ("seeds",)}),
]


def _variants_file() -> Path:
    from helpers.lora import VARIANTS_FILE

    return VARIANTS_FILE


def _from(module: str, name: str) -> Callable[..., Any]:
    def call(**arguments):
        import importlib

        return getattr(importlib.import_module(f"helpers.{module}"), name)(**arguments)
    call.target = (module, name)
    return call


def _plan():
    from helpers.distributed import make_plan

    return make_plan("tiny", {**UNSEEDED, **SMALL}, {"seed": [0, 1]}, scratch())


def _launched(processes: int):
    from helpers.distributed import LaunchResult

    events = [{"event": "made", "file": f"{index}.png", "rank": index % processes, "began": index / processes,
               "time": index / processes + 1.0} for index in range(4)]
    return LaunchResult("test", processes, 0, 5.0, events, planned=4)


def _embeddings():
    return made("t2i").encode_prompt("a", None, None, max_sequence_length=16)[0]


def _rows():
    from helpers.encoders import encoder_rows

    return encoder_rows(made("t2i"), 16)


MODULE_ENTRIES = [  # what the notebooks import from the modules themselves
    Entry("encoders.default_max_sequence_length", _from("encoders", "default_max_sequence_length"),
          lambda: {"pipe": made("t2i")}),
    Entry("encoders.encoder_rows", _from("encoders", "encoder_rows"),
          lambda: {"pipe": made("t2i"), "max_sequence_length": 16}),
    Entry("encoders.prompt_shapes", _from("encoders", "prompt_shapes"), lambda: {"rows": _rows()}),
    Entry("encoders.token_rows", _from("encoders", "token_rows"),
          lambda: {"pipe": made("t2i"), "prompt": "a red circle", "max_sequence_length": 16}),
    Entry("encoders.embeddings_without_t5", _from("encoders", "embeddings_without_t5"),
          lambda: {"pipe": made("t2i"), "prompts": ["a"], "max_sequence_length": 16, "negative_prompt": ""},
          aliases={"prompts": ("negative_prompt",), "negative_prompt": ("prompts",)}),
    Entry("encoders.plot_prompt_embeddings", _from("encoders", "plot_prompt_embeddings"),
          lambda: {"prompt_embeds": _embeddings(), "rows": _rows(), "title": "t"}),
    Entry("evaluation.evaluation_scenes", _from("evaluation", "evaluation_scenes"), lambda: {"count": 3, "start": 5},
          aliases={"count": ("evaluation seeds",), "start": ("evaluation seeds",)}),
    Entry("evaluation.judged", _from("evaluation", "judged"),
          lambda: {"pictures": [RGB], "scenes": [helpers.world.scene(1)]},
          aliases={"pictures": ("scenes",), "scenes": ("pictures",)}),
    Entry("evaluation.vae_round_trip", _from("evaluation", "vae_round_trip"), lambda: {"pipe": made("t2i"),
                                                                                        "image": RGB}),
    Entry("distributed.make_plan", _from("distributed", "make_plan"),
          lambda: {"model": "tiny", "fixed": {**UNSEEDED, **SMALL}, "vary": {"seed": [0, 1]}, "folder": scratch()},
          aliases={"fixed": ("setting",), "vary": ("setting",)}),
    Entry("distributed.folder_report", _from("distributed", "folder_report"), lambda: {"plan": _plan()}),
    Entry("distributed.per_gpu_rows", _from("distributed", "per_gpu_rows"),
          lambda: {"models": ["medium"], "machine": "sagemaker-g5-12xlarge"}),
    Entry("distributed.throughput_finding", _from("distributed", "throughput_finding"),
          lambda: {"one": _launched(1), "many": _launched(2)}),
    Entry("distributed.shown_command", _from("distributed", "shown_command"), lambda: {"command": ["a", "b c"]}),
    Entry("world.scene", _from("world", "scene"), lambda: {"seed": 3}),
    Entry("lora.variants_table", _from("lora", "variants_table"), lambda: {"record": _variants_file()}),
    Entry("speed.attention_kernel_used", _from("speed", "attention_kernel_used"),
          lambda: {"pipe": made("t2i"), "size": 64, "text_tokens": 16, "batch": 1}),
    Entry("speed.attention_cached", _from("speed", "attention_cached"),
          lambda: {"transformer": made("t2i").transformer, "every": 2}),
]
NOT_FUZZED = {
    "distributed.RunningSweep": "starts processes: its door is checked, and tests/test_distributed.py runs it",
    "distributed.launch": "starts processes: as RunningSweep",
    "distributed.work": "run by each launched process on a plan make_plan wrote",
    "training.train": "trains for minutes: its door is checked; tests/test_training.py runs it",
    "lora.train_lora": "trains for minutes: its door is checked; tests/test_lora.py runs it and refuses bad input",
    "lora.LoraRecipe": "checked in __post_init__ (tests/test_lora.py)",
    "lora.check_lora": "reads a LoRA file against a pipeline: tests/test_lora.py gives it files that do not fit",
    "lora.concept_scene": "its door checks the seed and the concept; tests/test_lora.py draws with it",
    "lora.check_training_folder": "reads a folder: tests/test_lora.py gives it folders with each problem it names",
    "lora_memory.training_table": "reads committed measurements for a model its door checks (tests/test_lora.py)",
    "lora_memory.training_estimate": "as training_table, for one size and recipe its door checks",
    "training.Recipe": "checked in __post_init__ (tests/test_training.py)",
    "training.flow_matching_loss": "notebook 09 shows it as the training code, with the recipe's own values",
    "training.step_rng": "as flow_matching_loss",
    "training.training_caption": "as flow_matching_loss",
    "world.Scene": "a record the world draws; its own checks name the shape or colour",
    "loading.toy_model_dir": "takes no argument",
    "encoders.quiet_truncation_warnings": "takes no argument",
    "speed.recorded_costs": "takes no argument",
}
ENTRIES += MODULE_ENTRIES
BY_NAME = {entry.name: entry for entry in ENTRIES}
SETTING_NAMES = ["guidance_scale", "num_inference_steps", "height", "width", "negative_prompt", "strength",
                 "max_sequence_length", "image", "mask_image", "skip_guidance_layers", "skip_layer_guidance_start",
                 "prompt_3", "joint_attention_kwargs", "sampler"]
"""What is added to a `**settings` parameter: the settings a pipeline takes, and one it does not."""


def test_every_exported_callable_is_fuzzed():
    exported = {name for name in helpers.__all__ if callable(getattr(helpers, name))
                and not (isinstance(getattr(helpers, name), type) and issubclass(getattr(helpers, name), Exception))}
    not_entry_points = {"Session", "ModelSpec", "Strategy"}  # results and records, made by the helpers
    assert exported - not_entry_points - set(BY_NAME) == set()


def test_every_helper_a_notebook_imports_is_fuzzed_or_says_why_not():
    import json
    import re

    imported = set()
    for path in sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb")):
        code = "\n".join("".join(cell["source"]) for cell in json.loads(path.read_text())["cells"]
                         if cell["cell_type"] == "code")
        for module, listed_names, names in re.findall(
                r"from helpers\.(\w+) import (?:\(([^)]*)\)|([\w, ]+))", code):
            imported |= {f"{module}.{name.strip()}" for name in (listed_names or names).split(",") if name.strip()}
        for module, name in re.findall(r"\b(training|world)\.([a-z_]\w*)\(", code):
            imported.add(f"{module}.{name}")
    fuzzed = set(BY_NAME) | {f"{module}.{name}" for name in BY_NAME for module in ("evaluation", "experiments")}
    assert imported - fuzzed - set(NOT_FUZZED) == set()


NO_DOOR = {
    "get_model": "it is the check of its one argument (UnknownModelError lists the models)",
    "route_of": "it takes any object and answers None for one the helpers did not load",
}


def test_every_fuzzed_function_checks_all_its_arguments_at_one_door():
    """Each entry point declares a rule for every parameter with @checked, next to its signature."""
    import importlib
    import inspect

    for entry in ENTRIES:
        module, _, name = entry.name.rpartition(".")
        if module:
            target = getattr(importlib.import_module(f"helpers.{module}"), name)
        else:
            target = getattr(helpers, entry.name, None) or getattr(helpers.widgets, entry.name)
        door = target.__init__ if inspect.isclass(target) else target
        parameters = set(inspect.signature(door).parameters) - {"self"}
        if parameters and entry.name not in NO_DOOR:
            assert set(getattr(door, "checks", {})) == parameters, (entry.name, parameters)


@contextlib.contextmanager
def time_limit(seconds: int):
    def stop(*_):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def raised_by_helpers(error: BaseException) -> bool:
    frame = traceback.extract_tb(error.__traceback__)[-1]
    return Path(frame.filename).parent.name == "helpers"


def check_outcome(entry: Entry, parameter: str, value: Any, arguments: dict[str, Any]) -> None:
    import matplotlib.pyplot as plt

    folder = scratch()
    try:
        with contextlib.chdir(folder), time_limit(LIMIT_S):  # relative paths land in a throwaway folder
            entry.call(**arguments)
    except (ValueError, TypeError, FileNotFoundError, MemoryError) as error:  # MemoryError: a route that cannot fit
        message = str(error)
        assert raised_by_helpers(error), (f"{entry.name}({parameter}={value!r}) raised from inside a library:\n"
                                          + "".join(traceback.format_exception(error)))
        words = (parameter, *entry.aliases.get(parameter, ()), *(("setting",) if parameter == "settings" else ()))
        assert any(word in message for word in words), f"{entry.name}({parameter}={value!r}): {message!r}"
        assert len(message) < 2000, f"a message repeats what it was given: {message[:300]!r}"
    except TimeoutError:
        pytest.fail(f"{entry.name}({parameter}={value!r}) ran for over {LIMIT_S} s")
    finally:
        plt.close("all")


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda entry: entry.name)
@settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("SD35_FUZZ_RANDOM"), database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_values_get_a_result_or_a_clear_error(entry: Entry, data, monkeypatch):
    monkeypatch.delenv("SD35_MACHINE", raising=False)
    arguments = entry.arguments()
    names = list(arguments) + ([entry.settings] if entry.settings else [])
    if not names:
        entry.call()
        return
    parameter = data.draw(st.sampled_from(names), label="parameter")
    value = data.draw(ODD, label="value")
    if parameter == entry.settings:  # one more setting, of a generated value
        parameter = data.draw(st.sampled_from(SETTING_NAMES), label="setting")
    arguments[parameter] = value
    check_outcome(entry, parameter, value, arguments)


def test_a_numpy_number_is_the_python_number_it_holds():
    from helpers.checks import check_guidance_scale, check_seed, check_steps

    assert check_steps(np.int64(4)) == 4 and type(check_steps(np.int64(4))) is int
    assert check_guidance_scale(np.float32(4.0)) == check_guidance_scale(4) == 4.0
    assert check_seed(np.uint8(7)) == 7
    for value in (math.nan, np.float64(math.inf), np.bool_(True)):
        with pytest.raises(ValueError):
            check_guidance_scale(value)


def test_the_suite_writes_nothing_into_the_project():
    assert not (Path(__file__).resolve().parent.parent / ".hypothesis").exists()
    assert os.environ.get("SD35_OUTPUT_DIR"), "outputs go to the tests' scratch folder"


# --- Command lines: generated flags and values stop with a usage error naming the flag, or reach the work ---------

class Reached(Exception):
    """Raised where a command's work begins: every check before it passed."""


def _reached(*_args, **_kwargs):
    raise Reached


WORDS = st.one_of(st.sampled_from(["0", "-1", "1", "2", "16", "64", "100", "1000", "nan", "inf", "-inf", "1e309",
                                   "2.5", "", " ", "x", "large", "tiny", "colab-t4", "/", "/proc/sd35-nowhere/x",
                                   "out", "../up", "--", "99999999999999999999", "7.5", "model"]),
                  st.text(alphabet="abc01-./", max_size=6))
COMMANDS = {
    # module: (fixed leading words, {flag: takes a value?}, the function where its work begins)
    "helpers.bench": ([], {"--model": True, "--quantize": True, "--offload": True, "--drop-t5": False,
                           "--compile": False, "--fuse-qkv": False, "--steps": True, "--size": True,
                           "--guidance": True, "--runs": True, "--warmup": True, "--weights": True, "--json": True,
                           "--overhead": False, "--compile-vae": False, "--attention-kernel": True, "--fp8": False,
                           "--cache": True, "--cache-every": True}, "load_for_bench"),
    "helpers.speed": (["costs"], {"--out": True, "--count": True}, "picture_costs"),
    "helpers.memory": ([], {"--model": True, "--size": True, "--machine": True, "--gpu-gb": True, "--host-gb": True,
                            "--compute-capability": True, "--json": False}, None),
    "helpers.gpu_check": ([], {"--budget-s": True, "--out": True, "--only": True, "--lease": False,
                               "--dry-run": False}, "environment"),
    "helpers.evaluation": ([], {"--count": True}, "evaluate"),
    "helpers.training": (["train", "--out", "trained"], {"--out": True, "--work": True, "--seed": True,
                                                         "--vae-steps": True, "--steps": True, "--batch": True,
                                                         "--vae-batch": True, "--checkpoint-every": True},
                         "build_toy_pipeline"),
    "helpers.architecture": ([], {"--figure": True}, "component_sizes"),
}


@pytest.mark.parametrize("module", list(COMMANDS))
@settings(max_examples=EXAMPLES * 2, deadline=None, derandomize=not os.environ.get("SD35_FUZZ_RANDOM"),
          database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_command_lines_stop_with_the_flag_named_or_reach_the_work(module, data, monkeypatch, capsys):
    import importlib

    lead, flags, work = COMMANDS[module]
    loaded = importlib.import_module(module)
    if work:
        monkeypatch.setattr(loaded, work, _reached)
    chosen = data.draw(st.lists(st.sampled_from(sorted(flags)), min_size=1, max_size=3, unique=True), label="flags")
    argv = list(lead)
    for flag in chosen:
        argv += [flag, data.draw(WORDS, label=flag)] if flags[flag] else [flag]
    capsys.readouterr()
    try:
        with contextlib.chdir(scratch()), time_limit(LIMIT_S):
            loaded.main(argv)
    except SystemExit as stop:
        message = capsys.readouterr().err
        assert stop.code == 2, (argv, stop.code, message)
        named = [flag for flag in chosen if flag in message or flag.lstrip("-").replace("-", "_") in message]
        assert named or "the following arguments" in message, (argv, message)
    except Reached:
        pass
    except TimeoutError:
        pytest.fail(f"python -m {module} {' '.join(argv)} ran for over {LIMIT_S} s")
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
