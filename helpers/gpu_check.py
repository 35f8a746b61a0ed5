"""One command that runs every GPU path of the series and measures it against helpers.memory's estimates.

    python -m helpers.gpu_check [--budget-s 360] [--out outputs/gpu_check] [--only CHECK ...]

Each check runs in its own Python process (a crash or an out-of-memory error ends that check, not the run; every
check starts with an empty GPU and its own peak memory counters) and records each case as soon as it is measured,
so a check stopped by the time budget keeps what it measured. Full-size models are built with random weights
straight on the GPU (no download: the same arithmetic, so the same time and memory as the real checkpoints).
Without a CUDA GPU only the offline stand-in checks run; the others are listed as skipped, with the reason.

Writes `gpu_check.json` (everything, with versions and the GPU), `gpu_check.md` (the table for
benchmarks/RESULTS.md) and `gpu_check.log` (each check's output) to the output folder.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from importlib import metadata
from io import StringIO
from pathlib import Path
from typing import Any

from helpers.checks import output_folder, shown, write_output_file

DEFAULT_OUT = Path("outputs/gpu_check")
SIZE = 1024
STEPS = 28
"""Full-size checks run 28 steps at 1024x1024 (the series' timing setting); memory checks run 2, which peak alike."""
MEMORY_STEPS = 2
TOLERANCE = 0.15
"""An estimate more than this far from the measured peak is flagged for correction."""


@dataclass(frozen=True)
class Check:
    name: str
    what: str
    needs_gpu: bool
    minimum_s: float
    """The check is skipped when less than this is left of the budget."""


CHECKS = (
    Check("stand-in-loading", "every load_pipeline option combination on the stand-in, each task through from_pipe",
          False, 20),
    Check("bench-options", "every python -m helpers.bench option combination on the stand-in", False, 15),
    # Not yet measured on a GPU: first, so the default budget reaches them. The speed ladder first of all.
    Check("ladder-large", "the speed ladder on SD3.5 Large (28 steps, CFG), rung by rung: attention kernels, the "
          "attention cache, regional compile, + VAE compile, + FP8; then Large Turbo (4 steps) at the top rung. Time, "
          "stage split, compile time, kernel, and pixel difference from bf16 eager", True, 150),
    Check("ladder-medium", "the speed ladder on SD3.5 Medium (28 steps, CFG), as for Large", True, 120),
    Check("low-memory-large", "the seed's low-memory case without offload: SD3.5 Large with its transformer and T5 "
          "in NF4, everything on the GPU (28 steps; against NF4 with model offload, 20.08 s and 11.0 GB measured)",
          True, 60),
    Check("t4-vae-decode", "the VAE decode at 1024x1024 as a T4 runs it: bf16 without cuDNN, float16 with it",
          True, 30),
    Check("fp16", "SD3.5 Medium and Large at full size in float16 (time and memory)", True, 60),
    Check("lora-training", "one LoRA training step of Medium and Large at 1024x1024 by each recipe of notebook "
          "11's memory table (16-bit, checkpointing + 8-bit AdamW, QLoRA): time and peak against the estimate",
          True, 120),
    Check("catalogue-routes", "each catalogue machine's route, at full size, in that machine's GPU memory", True, 90),
    Check("medium", "SD3.5 Medium, random weights: bf16 on the GPU, the math attention a T4 gets, fused q/k/v, "
          "bounded attention", True, 60),
    Check("large", "SD3.5 Large, random weights: bf16, Turbo's settings, math attention, NF4, NF4 without T5",
          True, 90),
    Check("large-nf4-model-offload", "SD3.5 Large, NF4 transformer with model CPU offload (the seed's T4 recipe)",
          True, 60),
    Check("medium-model-offload", "SD3.5 Medium with model CPU offload: GPU peak and host memory", True, 45),
    Check("medium-group-offload", "SD3.5 Medium with group offload (one block, CUDA stream)", True, 45),
    Check("medium-sequential-offload", "SD3.5 Medium with sequential CPU offload", True, 45),
    Check("compile", "torch.compile through python -m helpers.bench, alone and with model offload", False, 30),
)


# ---------------------------------------------------------------------------------------------------------------
# Inside a check's process: cases recorded one by one.


class Recorder:
    """Appends one JSON line per case to a file, so whatever was measured survives a timeout or a crash."""

    def __init__(self, path: Path):
        self.path = path

    def add(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")

    @contextmanager
    def case(self, name: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """Measure one case: what the block puts in the yielded dict is recorded; an exception is recorded as a
        failure (its type and message) and the check goes on with its next case."""
        record: dict[str, Any] = {"case": name, **fields}
        start = time.perf_counter()
        try:
            yield record
            record.setdefault("status", "ok")
        except Exception as error:  # noqa: BLE001 - a check reports every failure and goes on: that is its purpose
            record.update(status="failed", error=_describe(error))
            traceback.print_exc()
        finally:
            record["seconds"] = round(time.perf_counter() - start, 2)
            self.add(record)
            _free_memory()


def _describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    return text if len(text) <= 400 else text[:400] + "..."


def _free_memory() -> None:
    import torch

    gc.collect()  # a case that failed leaves its objects in the traceback's frames, a reference cycle
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure(pipe, *, steps: int, size: int, guidance_scale: float, runs: int = 1, warmup: int = 0,
            **call: Any) -> dict[str, Any]:
    """Seconds per image (median of `runs` after `warmup`, timed by helpers.bench's `time_call`), GPU peak
    (`max_memory_allocated`, timed runs) and the process's peak resident memory (all runs), in GB (10^9 bytes)."""
    import torch

    from helpers.bench import PROMPT, _PeakRss, time_call

    arguments = {"prompt": PROMPT, "num_inference_steps": steps, "height": size, "width": size,
                 "guidance_scale": guidance_scale, **call}
    pipe.set_progress_bar_config(disable=True)
    last = {}

    def run():
        last["output"] = pipe(**arguments, generator=torch.Generator("cpu").manual_seed(0))

    with _PeakRss() as rss:
        seconds, peak, kind = time_call(run, device=str(pipe._execution_device), warmup=warmup, runs=runs,
                                        progress=False)
    return {
        "steps": steps, "size": size, "guidance_scale": guidance_scale, "runs_s": [round(s, 4) for s in seconds],
        "median_s": round(statistics.median(seconds), 4),
        "gpu_peak_gb": round(peak, 2) if kind == "GPU allocated" else None,
        "host_peak_gb": round(rss.peak / 1e9, 2),
        "images": last["output"].images,
    }


def _measured(record: dict[str, Any], result: dict[str, Any], estimate=None) -> None:
    """Copy a measurement into a record (without its pictures), with the estimate it is compared with."""
    record.update({key: value for key, value in result.items() if key != "images"})
    if estimate is not None:
        record["estimate_gb"] = estimate.peak_gb
        record["estimate_strategy"] = estimate.strategy
        record["estimate_host_gb"] = estimate.host_gb
        if record.get("gpu_peak_gb"):
            record["measured_over_estimate"] = round(record["gpu_peak_gb"] / estimate.peak_gb, 3)
    record["host_rss_max_gb"] = round(_max_rss_bytes() / 1e9, 2)


def _max_rss_bytes() -> int:
    """The process's largest resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- offline stand-in checks (run on a CPU too) ----------------------------------------------------------------


def check_stand_in_loading(recorder: Recorder) -> None:
    """Every `load_pipeline` combination on the stand-in: either refused before loading, or loaded, run, and run
    again as image-to-image and inpainting through `from_pipe`."""
    from PIL import Image

    from helpers.loading import load_pipeline
    from helpers.models import get_model
    from helpers.routes import OFFLOAD_CHOICES, QUANTIZE_CHOICES, T5_CHOICES, plan_route

    spec = get_model("tiny")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    chosen = [[choice for choice in choices if choice != "auto"] for choices in (QUANTIZE_CHOICES, T5_CHOICES)]
    for offload, quantize, t5 in itertools.product(OFFLOAD_CHOICES, *chosen):
        options = {"offload": offload, "quantize": quantize, "t5": t5}
        with recorder.case(f"offload={offload} quantize={quantize} t5={t5}", **options) as record:
            try:
                record["offload_used"] = plan_route(spec, **options).offload
            except (ValueError, MemoryError) as refusal:
                record.update(status="refused", error=_describe(refusal))
                continue
            text = load_pipeline(spec, **options)
            first = measure(text, steps=2, size=64, guidance_scale=4.5)
            _measured(record, first)
            image = first["images"][0]
            for task, extra in (("image-to-image", {"image": image, "strength": 0.6}),
                                ("inpainting", {"image": image, "mask_image": mask, "strength": 1.0})):
                other = load_pipeline(spec, task, **options)
                shared = other.transformer is text.transformer
                picture = measure(other, steps=2, size=64, guidance_scale=4.5, **extra)["images"][0]
                record[task] = "ran, components shared" if shared else "ran, components NOT shared"
                if picture.size != (64, 64):
                    raise AssertionError(f"{task} returned a {picture.size} picture for 64x64")
            del text, other


# Every option of `python -m helpers.bench` but --compile (its own check) and the counts.
BENCH_FLAGS = {
    "--quantize nf4": (False, True),
    "--offload": (None, "model", "sequential", "group"),
    "--drop-t5": (False, True),
    "--fuse-qkv": (False, True),
}


def _bench(argv: list[str]) -> tuple[str, str]:
    """Run `python -m helpers.bench` in this process: ('ok' | 'refused' | 'failed', message)."""
    from helpers.bench import main

    errors = StringIO()
    try:
        with redirect_stdout(StringIO()), redirect_stderr(errors):
            main(argv)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            return "refused", errors.getvalue().strip().splitlines()[-1]
    except Exception as error:  # noqa: BLE001 - recorded as this combination's failure; the next one still runs
        traceback.print_exc()
        return "failed", _describe(error)
    return "ok", ""


def check_bench_options(recorder: Recorder) -> None:
    base = ["--model", "tiny", "--steps", "2", "--size", "64", "--runs", "1", "--warmup", "0"]
    for quantize, offload, drop_t5, fuse in itertools.product(*BENCH_FLAGS.values()):
        argv = base + (["--quantize", "nf4"] if quantize else []) + (["--offload", offload] if offload else [])
        argv += (["--drop-t5"] if drop_t5 else []) + (["--fuse-qkv"] if fuse else [])
        with recorder.case(" ".join(argv[len(base):]) or "(no options)") as record:
            record["status"], message = _bench(argv)
            if message:
                record["error"] = message


def check_compile(recorder: Recorder) -> None:
    base = ["--model", "tiny", "--steps", "2", "--size", "64", "--runs", "2", "--warmup", "2", "--compile"]
    for extra in ([], ["--offload", "model"]):
        with recorder.case(" ".join(["--compile", *extra])) as record:
            record["status"], message = _bench(base + extra)
            if message:
                record["error"] = message


# --- full-size checks (CUDA only) ------------------------------------------------------------------------------


def _full_size(model: str, **options):
    """A full-size pipeline with random weights, through the route `options` give on this GPU (helpers.routes)."""
    from helpers.routes import build_pipeline, plan_route

    options = {"offload": None, "quantize": None, "t5": "keep", "dtype": "bfloat16", **options}
    return build_pipeline(plan_route(model, **options), weights="random")


def _estimate(model: str, strategy, attention: str = "fused"):
    from helpers.memory import estimate

    return estimate(model, strategy, SIZE, attention)


@contextmanager
def _math_attention():
    """The attention kernel a GPU without bf16 fused kernels (T4, V100) falls back to."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


def check_medium(recorder: Recorder) -> None:
    from helpers.bench import fuse_qkv_projections
    from helpers.models import get_model

    guidance = get_model("medium").guidance_scale
    with recorder.case("build on the GPU") as record:
        pipe = _full_size("medium")
        record["weights_gb"] = round(_allocated_gb(), 2)
    with recorder.case("bf16 on the GPU", model="medium") as record:
        _measured(record, measure(pipe, steps=STEPS, size=SIZE, guidance_scale=guidance, runs=3, warmup=1),
                  _estimate("medium", "gpu"))
    with recorder.case("math attention (T4 path)", model="medium") as record, _math_attention():
        _measured(record, measure(pipe, steps=MEMORY_STEPS, size=SIZE, guidance_scale=guidance, runs=1, warmup=1),
                  _estimate("medium", "gpu", "math"))
    with recorder.case("fused q/k/v", model="medium") as record:
        fuse_qkv_projections(pipe.transformer)
        _measured(record, measure(pipe, steps=STEPS, size=SIZE, guidance_scale=guidance, runs=3, warmup=1))
    with recorder.case("bounded attention (what a T4 runs)", model="medium") as record, _math_attention():
        from helpers.attention import bound_attention_memory

        bound_attention_memory(pipe)
        _measured(record, measure(pipe, steps=MEMORY_STEPS, size=SIZE, guidance_scale=guidance, runs=1, warmup=1),
                  _estimate("medium", "gpu", "bounded"))
    with recorder.case("freeing a pipeline that has run") as record:
        record["allocated_gb"] = round(_allocated_gb(), 2)
        del pipe
        record["after_del_gb"] = round(_allocated_gb(), 2)
        gc.collect()
        record["after_gc_collect_gb"] = round(_allocated_gb(), 2)


def _allocated_gb() -> float:
    import torch

    return torch.cuda.memory_allocated() / 1e9


def check_large(recorder: Recorder) -> None:
    from helpers.memory import Strategy
    from helpers.models import get_model
    from helpers.quantization import quantize_linear_layers_nf4

    large, turbo = get_model("large"), get_model("large-turbo")
    with recorder.case("build on the GPU") as record:
        pipe = _full_size("large")
        record["weights_gb"] = round(_allocated_gb(), 2)
    with recorder.case("bf16 on the GPU", model="large") as record:
        _measured(record, measure(pipe, steps=STEPS, size=SIZE, guidance_scale=large.guidance_scale, runs=2,
                                  warmup=1), _estimate("large", "gpu"))
    with recorder.case("Turbo's settings", model="large-turbo") as record:
        _measured(record, measure(pipe, steps=turbo.num_inference_steps, size=SIZE,
                                  guidance_scale=turbo.guidance_scale, runs=3, warmup=1),
                  _estimate("large-turbo", "gpu"))
    with recorder.case("math attention (T4 path)", model="large") as record, _math_attention():
        _measured(record, measure(pipe, steps=MEMORY_STEPS, size=SIZE, guidance_scale=large.guidance_scale,
                                  warmup=1), _estimate("large", "gpu", "math"))
    with recorder.case("NF4 transformer on the GPU", model="large") as record:
        quantize_linear_layers_nf4(pipe.transformer, compute_dtype=pipe.dtype)
        _free_memory()
        record["weights_gb"] = round(_allocated_gb(), 2)
        _measured(record, measure(pipe, steps=STEPS, size=SIZE, guidance_scale=large.guidance_scale, runs=2,
                                  warmup=1), _estimate("large", "nf4"))
    with recorder.case("NF4 transformer, T5 dropped", model="large") as record:
        pipe.register_modules(text_encoder_3=None, tokenizer_3=None)
        _free_memory()
        record["weights_gb"] = round(_allocated_gb(), 2)
        _measured(record, measure(pipe, steps=STEPS, size=SIZE, guidance_scale=large.guidance_scale, runs=2,
                                  warmup=1), _estimate("large", Strategy("", transformer="nf4", t5="drop")))


def _offload_check(model: str, offload: str, strategy: str, *, nf4: bool = False, steps: int = MEMORY_STEPS):
    def check(recorder: Recorder) -> None:
        from helpers.models import get_model

        with recorder.case("build, move to CPU memory, offload") as record:
            pipe = _full_size(model, offload=offload, quantize="nf4" if nf4 else None)
            record["host_rss_gb"] = round(_rss_bytes() / 1e9, 2)
            record["gpu_allocated_gb"] = round(_allocated_gb(), 2)
        with recorder.case(f"{offload} offload", model=model) as record:
            _measured(record, measure(pipe, steps=steps, size=SIZE, guidance_scale=get_model(model).guidance_scale,
                                      runs=1, warmup=1), _estimate(model, strategy))

    return check


def check_t4_vae_decode(recorder: Recorder) -> None:
    """The VAE decode at 1024x1024 as a T4 runs it: bf16 without cuDNN (im2col), and float16 with cuDNN."""
    import torch

    from helpers.architecture import build_component
    from helpers.memory import activations, breakdown, im2col_bytes

    for dtype, cudnn in (("bfloat16", False), ("float16", True), ("bfloat16", True)):
        with recorder.case(f"VAE decode, {dtype}, cuDNN {'on' if cudnn else 'off'}", dtype=dtype) as record:
            vae = build_component("large", "vae", device="cuda", dtype=getattr(torch, dtype)).eval()
            latents = torch.randn(1, 16, SIZE // 8, SIZE // 8, device="cuda", dtype=getattr(torch, dtype))
            previous = torch.backends.cudnn.enabled
            torch.backends.cudnn.enabled = cudnn
            try:
                with torch.no_grad():
                    vae.decode(latents)  # warm-up
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    start = time.perf_counter()
                    vae.decode(latents)
                    torch.cuda.synchronize()
            finally:
                torch.backends.cudnn.enabled = previous
            weights = breakdown("large", "vae").bytes("bf16")
            record.update(median_s=round(time.perf_counter() - start, 3), steps=0, size=SIZE,
                          gpu_peak_gb=round(torch.cuda.max_memory_allocated() / 1e9, 2),
                          working_estimate_gb=round(activations("large", SIZE, convolutions="cudnn" if cudnn else
                                                                "im2col").vae_decode / 1e9, 2),
                          weights_gb=round(weights / 1e9, 2), im2col_largest_gb=round(im2col_bytes(SIZE) / 1e9, 2))
            del vae, latents


def check_fp16(recorder: Recorder) -> None:
    """Full-size Medium and Large in float16 (random weights: time and memory only, nothing about NaNs)."""
    from helpers.models import get_model

    for model, steps in (("medium", STEPS), ("large", STEPS)):
        with recorder.case("float16 on the GPU", model=model) as record:
            pipe = _full_size(model, dtype="float16")
            _measured(record, measure(pipe, steps=steps, size=SIZE, guidance_scale=get_model(model).guidance_scale,
                                      runs=1, warmup=1), _estimate(model, "gpu"))
            del pipe


def check_catalogue_routes(recorder: Recorder) -> None:
    """Each catalogue machine's route for Large and Medium, built at full size on this GPU with its memory capped
    at that machine's (set_per_process_memory_fraction): 2 steps, peak against the estimate."""
    from dataclasses import replace

    import torch

    from helpers.machines import MACHINES
    from helpers.memory import estimate_on
    from helpers.models import get_model
    from helpers.routes import build_pipeline, plan_route

    total = torch.cuda.get_device_properties(0).total_memory / 1e9
    for machine in MACHINES.values():
        if machine.gpu_gb > total:
            continue
        for model in ("large", "medium"):
            with recorder.case(f"{machine.name} route", model=model, machine=machine.name) as record:
                route = replace(plan_route(model, machine=machine), emulated=False, device="cuda")
                record.update(strategy=route.strategy, route=route.describe())
                if route.offload:
                    record["status"] = "skipped: offload routes are measured by their own checks"
                    continue
                torch.cuda.set_per_process_memory_fraction(min(1.0, machine.gpu_gb / total))
                try:
                    pipe = build_pipeline(route, weights="random")
                    _measured(record, measure(pipe, steps=MEMORY_STEPS, size=SIZE,
                                              guidance_scale=get_model(model).guidance_scale, warmup=1),
                              estimate_on(model, route.strategy, machine, SIZE, vae_tiling=route.vae_tiling))
                    del pipe
                finally:
                    torch.cuda.set_per_process_memory_fraction(1.0)


def check_lora_training(recorder: Recorder) -> None:
    """helpers.lora_memory's training step at full size with random weights: only the transformer stays on the
    GPU (prompts and latents are computed before training), the 16-bit recipes first, then the same transformer in
    NF4 for QLoRA. Each peak is compared with notebook 11's estimate."""
    from helpers.lora_memory import measure_training_step, training_estimate
    from helpers.quantization import quantize_linear_layers_nf4

    for model in ("medium", "large"):
        pipe = None
        with recorder.case("build the transformer on the GPU", model=model) as record:
            pipe = _full_size(model)
            pipe.register_modules(text_encoder=None, text_encoder_2=None, text_encoder_3=None, vae=None)
            _free_memory()
            record["weights_gb"] = round(_allocated_gb(), 2)
        if pipe is None:
            continue
        for recipe in ("lora", "lora-checkpointing", "qlora"):
            with recorder.case(f"LoRA training step, {recipe}", model=model) as record:
                if recipe == "qlora":
                    quantize_linear_layers_nf4(pipe.transformer, compute_dtype=pipe.transformer.dtype)
                    _free_memory()
                found = measure_training_step(pipe, recipe, SIZE)
                estimate = training_estimate(model, SIZE, recipe).peak_gb
                record.update(found, estimate_gb=estimate,
                              within_tolerance=abs(estimate - found["peak_gb"]) <= TOLERANCE * found["peak_gb"])
        del pipe
        _free_memory()


LADDER = ("bf16 eager", "regional compile", "regional compile + VAE compile", "regional compile + VAE compile + FP8",
          "cudnn attention", "flash attention", "attention cache (PAB, every 2 steps)")
"""The speed ladder's rungs in the order `check_speed_ladder` measures them, by value: eager first (the reference),
the compiled rungs, each adding to the one before, then the rungs of the uncompiled model (attention kernels, the
attention cache), on a second build with the same random weights."""


def _ladder_speeds():
    from helpers.speed import Speedups

    return dict(zip(LADDER, (
        Speedups(), Speedups(compile="regional"), Speedups(compile="regional", compile_vae=True),
        Speedups(compile="regional", compile_vae=True, fp8=True), Speedups(attention_kernel="cudnn"),
        Speedups(attention_kernel="flash"), Speedups(cache="pab"),
    ), strict=True))


def check_speed_ladder(recorder: Recorder, model: str, *, size: int = SIZE, steps: int = STEPS,
                       rungs: tuple[str, ...] = LADDER, runs: int = 2) -> None:
    """Each rung of `rungs` on one full-size pipeline with random weights: seconds per picture (`runs` after a
    first call timed apart, which compiles), the stage split, graphs compiled and recompiled, the attention kernel
    that ran, GPU peak, and the mean pixel difference (0 to 255) from the first rung's picture of the same seed (a
    lower bound on the drift real weights would show). The compiled rungs add to each other; a rung of the
    uncompiled model after them gets a new build, with the same random weights (the same seed). A rung the GPU
    cannot run is recorded as refused. Large's check measures Large Turbo's settings (4 steps, no CFG) after its
    last compiled rung. Without a GPU it runs on the stand-in (`model='tiny'`), for the tests."""
    import numpy as np
    import torch
    from diffusers import StableDiffusion3Pipeline

    from helpers.bench import benchmark
    from helpers.models import get_model
    from helpers.routes import build_pipeline, plan_route
    from helpers.speed import (
        Speedups,
        cache_attention,
        machine_refusal,
        quantize_fp8,
        remove_attention_cache,
        speed_up,
        use_attention_kernel,
    )

    spec = get_model(model)
    speeds = _ladder_speeds()
    with recorder.case("ladder planned", model=model) as record:
        record["rungs"] = list(rungs)

    route = (plan_route("tiny") if spec.is_stand_in else
             plan_route(model, offload=None, quantize=None, t5="keep", dtype="bfloat16"))  # as _full_size plans

    def build():
        torch.manual_seed(0)  # the same random weights at every build
        return build_pipeline(route, StableDiffusion3Pipeline, weights="pretrained" if spec.is_stand_in else "random")

    def picture(call_steps: int, guidance: float):
        output = pipe(prompt="A group of elves hunting a dragon, 4k cinema", num_inference_steps=call_steps,
                      height=size, width=size, guidance_scale=guidance, output_type="np",
                      generator=torch.Generator("cpu").manual_seed(0))
        return np.nan_to_num(output.images[0].astype(np.float64))

    def measured(record, call_model: str, call_steps: int, guidance: float, timed_runs: int, label: str) -> None:
        result = benchmark(pipe, model=call_model, weights="stand-in" if spec.is_stand_in else "random",
                           steps=call_steps, size=size, guidance_scale=guidance, runs=timed_runs, warmup=1,
                           progress=False, options={"rung": label})
        record.update(median_s=round(result.median, 4), runs_s=[round(value, 4) for value in result.runs],
                      stages={stage: round(value, 4) for stage, value in result.stages.items()},
                      first_call_s=round(result.first_call_s, 2), graphs_compiled=result.graphs_compiled,
                      recompiles=result.recompiles, attention_kernel=result.attention_kernel, steps=call_steps,
                      gpu_peak_gb=round(result.peak_memory_gb, 2) if result.memory_kind == "GPU allocated" else None)

    pipe = build()
    guidance = spec.guidance_scale if spec.guidance_scale > 1 else 7.0
    reference = None
    applied = Speedups()
    for rung in rungs:
        speed = speeds[rung]
        with recorder.case(rung, model=model) as record:
            why_not = machine_refusal(speed, machine=route.machine, dtype=route.dtype, emulated=False)
            if why_not:
                record.update(status="refused", error=why_not)
                continue
            compiled = bool(speed.compile or speed.compile_vae or speed.fp8)
            if applied.any and not compiled:  # an uncompiled rung after compiled ones: build again
                del pipe
                _free_memory()
                pipe, applied = build(), Speedups()
            if speed.attention_kernel:
                use_attention_kernel(pipe.transformer, speed.attention_kernel)
            elif speed.cache:
                cache_attention(pipe.transformer, every=speed.cache_every)
            elif compiled:  # only what this rung adds to the one before
                if speed.fp8 and not applied.fp8:
                    quantize_fp8(pipe.transformer)
                added = Speedups(compile=None if applied.compile else speed.compile,
                                 compile_vae=speed.compile_vae and not applied.compile_vae)
                if added.any:
                    speed_up(pipe, added)
                applied = speed
            try:
                measured(record, spec.name, steps, guidance, runs, rung)
                made = picture(steps, guidance)
                reference = made if reference is None else reference
                record["pixel_difference"] = round(float(np.abs(made - reference).mean() * 255), 3)
            finally:
                if speed.attention_kernel:  # back to PyTorch's choice for the rungs after
                    use_attention_kernel(pipe.transformer, None)
                if speed.cache:
                    remove_attention_cache(pipe.transformer)
        if model == "large" and compiled and rung == max((name for name in rungs if speeds[name].compile),
                                                         key=rungs.index, default=None):
            turbo = get_model("large-turbo")
            with recorder.case(f"Large Turbo's settings at {applied.describe()}", model="large-turbo") as record:
                measured(record, "large-turbo", turbo.num_inference_steps, turbo.guidance_scale, 3, "Turbo")


def check_low_memory(recorder: Recorder) -> None:
    """Large with an NF4 transformer and an NF4 T5, all on the GPU: the route that needs no offload for the seed's
    low-memory case (goal: at most 11 GB and 9 s), timed like the model-offload route it would replace."""
    from helpers.models import get_model

    large = get_model("large")
    with recorder.case("build: NF4 transformer, NF4 T5, on the GPU") as record:
        pipe = _full_size("large", quantize="nf4", t5="nf4")
        record["weights_gb"] = round(_allocated_gb(), 2)
    with recorder.case("NF4 transformer and NF4 T5 on the GPU", model="large") as record:
        _measured(record, measure(pipe, steps=STEPS, size=SIZE, guidance_scale=large.guidance_scale, runs=2,
                                  warmup=1), _estimate("large", "nf4-t5-nf4"))


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


RUNNERS: dict[str, Callable[[Recorder], None]] = {
    "stand-in-loading": check_stand_in_loading,
    "bench-options": check_bench_options,
    "ladder-large": lambda recorder: check_speed_ladder(recorder, "large"),
    "ladder-medium": lambda recorder: check_speed_ladder(recorder, "medium"),
    "low-memory-large": check_low_memory,
    "t4-vae-decode": check_t4_vae_decode,
    "fp16": check_fp16,
    "lora-training": check_lora_training,
    "catalogue-routes": check_catalogue_routes,
    "medium": check_medium,
    "large": check_large,
    "large-nf4-model-offload": _offload_check("large", "model", "nf4-model-offload", nf4=True, steps=STEPS),
    "medium-model-offload": _offload_check("medium", "model", "model-offload"),
    "medium-group-offload": _offload_check("medium", "group", "group-offload"),
    "medium-sequential-offload": _offload_check("medium", "sequential", "sequential-offload"),
    "compile": check_compile,
}


def run_child(name: str, records: Path) -> None:
    """Run one check in this process, recording into `records`."""
    import warnings

    warnings.filterwarnings("ignore", message="invalid value encountered in cast")  # random weights' pictures
    RUNNERS[name](Recorder(records))


# ---------------------------------------------------------------------------------------------------------------
# The parent: runs each check in its own process within the budget, then writes the report.


def environment() -> dict[str, Any]:
    """The machine and versions the figures belong to."""
    import psutil
    import torch

    versions = {}
    for package in ("torch", "diffusers", "transformers", "accelerate", "bitsandbytes", "huggingface_hub"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "python": platform.python_version(), "versions": versions, "cpus": os.cpu_count(),
        "host_memory_gb": round(psutil.virtual_memory().total / 1e9, 1), "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info.update(gpu=properties.name, gpu_memory_gb=round(properties.total_memory / 1e9, 1),
                    compute_capability=f"{properties.major}.{properties.minor}", cuda_version=torch.version.cuda)
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                text=True, timeout=20, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info


def _run_check(check: Check, out: Path, timeout_s: float) -> dict[str, Any]:
    records = out / f".{check.name}.jsonl"
    records.unlink(missing_ok=True)
    start = time.perf_counter()
    with (out / "gpu_check.log").open("a") as log:
        log.write(f"\n===== {check.name} =====\n")
        log.flush()
        try:
            returncode = subprocess.run(
                [sys.executable, "-m", "helpers.gpu_check", "--child", check.name, "--records", str(records)],
                stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s, check=False,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            ).returncode
        except subprocess.TimeoutExpired:
            returncode = None
    cases = [json.loads(line) for line in records.read_text().splitlines()] if records.exists() else []
    records.unlink(missing_ok=True)
    if returncode is None:
        status = f"stopped by the budget after {timeout_s:.0f} s"
    elif returncode != 0:
        status = f"process ended with code {returncode} (see gpu_check.log)"
    else:
        status = "failed" if any(case.get("status") == "failed" for case in cases) else "ok"
    return {"check": check.name, "what": check.what, "status": status,
            "seconds": round(time.perf_counter() - start, 1), "cases": cases}


REPORTS = ("gpu_check.json", "gpu_check.md", "gpu_check.log")


def _check_reports_are_ours(out: Path) -> None:
    """An --out folder may hold an earlier report of this command, which is replaced; files of those names written
    by anything else are left as they are, and the run stops before it starts."""
    present = [name for name in REPORTS if (out / name).exists()]
    if not present:
        return
    try:
        ours = str(json.loads((out / "gpu_check.json").read_text()).get("command", "")).startswith(
            "python -m helpers.gpu_check")
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise ValueError(f"--out {str(out)!r} holds {', '.join(present)} that this command did not write: they are "
                         "left as they are. Choose another --out folder.")


def run(budget_s: float, out: Path, only: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the checks in order within `budget_s` seconds; write and return the report."""
    import torch

    if not (isinstance(budget_s, (int, float)) and 0 < budget_s <= 86_400):
        raise ValueError(f"budget_s={shown(budget_s)} must be a positive number of seconds up to a day, e.g. 360.")
    out = output_folder(out, "--out")
    _check_reports_are_ours(out)
    unknown = sorted(set(only or ()) - set(RUNNERS))
    if unknown:
        raise ValueError(f"--only {' '.join(unknown)}: no such check. Checks: {', '.join(RUNNERS)}.")
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.log").write_text("")
    started = time.perf_counter()
    report: dict[str, Any] = {"command": "python -m helpers.gpu_check " + " ".join(sys.argv[1:]),
                              "budget_s": budget_s, "environment": environment(), "checks": []}
    for check in CHECKS:
        if only and check.name not in only:
            continue
        left = budget_s - (time.perf_counter() - started)
        if check.needs_gpu and not torch.cuda.is_available():
            result = {"check": check.name, "what": check.what, "status": "skipped: needs a CUDA GPU", "cases": []}
        elif left < check.minimum_s:
            result = {"check": check.name, "what": check.what,
                      "status": f"skipped: {left:.0f} s of the budget left, it needs {check.minimum_s:.0f} s",
                      "cases": []}
        else:
            if progress:
                print(f"[{time.perf_counter() - started:5.0f} s] {check.name}: {check.what}", flush=True)
            result = _run_check(check, out, left)
        report["checks"].append(result)
        report["seconds"] = round(time.perf_counter() - started, 1)
        write_report(report, out)
    return report


def write_report(report: dict[str, Any], out: Path) -> None:
    write_output_file(out / "gpu_check.json", json.dumps(report, indent=2) + "\n")
    write_output_file(out / "gpu_check.md", markdown(report))


def _gb(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the machine, then one row per measured case, then the option combinations."""
    env = report["environment"]
    versions = ", ".join(f"{name} {version}" for name, version in env["versions"].items() if version)
    machine = (f"{env['gpu']} ({env['gpu_memory_gb']} GB, compute capability {env['compute_capability']}, driver "
               f"{env.get('driver')}, CUDA {env['cuda_version']})" if env["cuda"] else "no CUDA GPU")
    lines = [(f"Machine: {machine}; {env['cpus']} CPUs, {env['host_memory_gb']} GB host memory; Python "
              f"{env['python']}, {versions}. Command: `{report['command']}` ({report.get('seconds', 0):.0f} s)."), ""]
    measured = [(check, case) for check in report["checks"] for case in check["cases"] if "median_s" in case
                and check["check"] not in ("stand-in-loading",)]
    if measured:
        lines += [("| check | case | steps | s per image (median) | GPU peak (GB) | estimate (GB) | measured / "
                   "estimate | process's largest RSS so far (GB) |"), "|---|---|---|---|---|---|---|---|"]
        for check, case in measured:
            ratio = case.get("measured_over_estimate")
            flag = "" if ratio is None or abs(ratio - 1) <= TOLERANCE else " (off by more than 15%)"
            lines.append(
                f"| {check['check']} | {case['case']} | {case['steps']} | {case['median_s']:.3f} | "
                f"{_gb(case.get('gpu_peak_gb'))} | {_gb(case.get('estimate_gb'))} | "
                f"{'-' if ratio is None else f'{ratio:.2f}'}{flag} | {_gb(case.get('host_rss_max_gb'))} |")
        lines.append("")
    lines += ["| check | status | cases: ok / refused up front / failed | seconds |", "|---|---|---|---|"]
    for check in report["checks"]:
        counts = [sum(case.get("status") == status for case in check["cases"]) for status in ("ok", "refused",
                                                                                            "failed")]
        lines.append(f"| {check['check']} | {check['status']} | {' / '.join(map(str, counts))} | "
                     f"{check.get('seconds', '-')} |")
    failures = [(check["check"], case) for check in report["checks"] for case in check["cases"]
                if case.get("status") == "failed"]
    if failures:
        lines += ["", "Failed cases:", ""]
        lines += [f"- {name}, {case['case']}: {case.get('error', '')}" for name, case in failures]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run every GPU path of the series within a time budget and write a JSON and a Markdown report."""
    parser = argparse.ArgumentParser(prog="python -m helpers.gpu_check", description=main.__doc__)
    parser.add_argument("--budget-s", type=float, default=360.0,
                        help="stop starting checks after this many seconds (default 360)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report folder (default {DEFAULT_OUT})")
    parser.add_argument("--only", nargs="+", metavar="CHECK", help=f"run only these: {', '.join(RUNNERS)}")
    parser.add_argument("--child", choices=list(RUNNERS), help=argparse.SUPPRESS)
    parser.add_argument("--records", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args.child, args.records)
        return 0
    try:
        report = run(args.budget_s, args.out, args.only)
    except ValueError as error:
        parser.error(str(error))
    print(markdown(report))
    print(f"saved {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    return 0 if all(check["status"] in ("ok",) or check["status"].startswith("skipped")
                    for check in report["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
