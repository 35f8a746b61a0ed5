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


H100 = {
    "process start": 5.0,
    "build Large": 21.0,
    "build Medium": 18.0,
    "Large, 28 steps": 5.6,
    "Large NF4, 28 steps": 5.75,
    "Medium, 28 steps": 2.65,
    "Large Turbo, 4 steps": 0.58,
}
"""Seconds measured on the H100 machine (helpers/gpu_runs/h100-run1.json): a check's process until its first case
(each check's time less its cases', 4 to 5 s), building each model with random weights on the GPU, and one picture
of each (medians). The lease plan's estimates are made of these and the estimates below."""
COMPILE_GRAPH_S = 20.0
"""Estimate, not measured: seconds inductor takes to compile one distinct graph of SD3.5 (a kind of block, or the VAE
decoder) in its default mode on the H100 machine. The one compile measured there was the stand-in's whole
transformer in max-autotune mode, which tunes every matrix multiply: 80 s with its warm-up and runs
(helpers/gpu_runs/h100-run2.json)."""
FASTER = {"compiled": 0.8, "fp8": 0.65}
"""Estimates, not measured: a compiled picture's time, and a compiled FP8 one's, as a share of the eager time (for
planning only; the check measures them)."""
GRAPHS = {"large": 2, "medium": 3}
"""Distinct kinds of block regional compile compiles: Large's 38 blocks are 37 alike and a last one that keeps no
context; Medium's 24 add MMDiT-X's second attention in the first 13 (helpers/configs/transformer-*.json)."""


@dataclass(frozen=True)
class Check:
    name: str
    what: str
    needs_gpu: bool
    parts: tuple[tuple[str, float], ...]
    """The check's expected wall time on an H100, part by part (seconds): measured where helpers/gpu_runs/ has the
    check, else made of H100 and the estimates above. A check starts only when its sum fits the time left."""

    @property
    def estimate_s(self) -> float:
        return round(sum(seconds for _, seconds in self.parts), 1)


def _ladder_parts(model: str) -> tuple[tuple[str, float], ...]:
    """The lease ladder's time: eager, regional compile + VAE compile, + FP8 (each a first call and 2 timed), and
    for Large, Turbo at the fastest rung (batch 1 without CFG: each kind of block compiled again)."""
    title = model.capitalize()
    step = H100[f"{title}, 28 steps"]
    graphs = GRAPHS[model] * COMPILE_GRAPH_S
    parts = [("process start", H100["process start"]), (f"build {title}", H100[f"build {title}"]),
             ("eager: 3 pictures", 3 * step),
             ("regional compile + VAE compile: compiling (estimate)", graphs + COMPILE_GRAPH_S),
             ("regional compile + VAE compile: 3 pictures (estimate)", 3 * step * FASTER["compiled"]),
             ("+ FP8: compiling again (estimate)", graphs), ("+ FP8: 3 pictures (estimate)", 3 * step * FASTER["fp8"])]
    if model == "large":
        parts += [("Turbo: compiling for batch 1 (estimate)", graphs),
                  ("Turbo: 3 pictures", 3 * H100["Large Turbo, 4 steps"])]
    return tuple((name, round(seconds, 1)) for name, seconds in parts)


def _measured_parts(seconds: float) -> tuple[tuple[str, float], ...]:
    return (("measured on the H100 (helpers/gpu_runs/)", seconds),)


def _estimated_parts(seconds: float) -> tuple[tuple[str, float], ...]:
    return (("estimate: not yet run on a GPU", seconds),)


CHECKS = {check.name: check for check in (
    Check("stand-in-loading", "every load_pipeline option combination on the stand-in, each task through from_pipe",
          False, _measured_parts(43)),
    Check("bench-options", "every python -m helpers.bench option combination on the stand-in", False,
          _measured_parts(34)),
    Check("lease-ladder-large", "the speed ladder's new rungs on SD3.5 Large (28 steps, CFG): eager, regional "
          "compile + VAE compile, + FP8; then Large Turbo (4 steps) on the fastest rung that ran. Time, stage split, "
          "compile time, kernel, and pixel difference from eager", True, _ladder_parts("large")),
    Check("low-memory-large", "SD3.5 Large in NF4 (transformer and T5) with everything on the GPU, against the "
          "seed's goal of 11 GB without offload: as loaded, with the VAE decoding in tiles, and with the text "
          "encoders freed once the prompt is encoded (28 steps)", True,
          (("process start", H100["process start"]), ("build Large, NF4 transformer and T5", H100["build Large"] + 4),
           ("as loaded: 3 pictures", 3 * H100["Large NF4, 28 steps"]),
           ("tiled decode: 2 pictures", 2 * H100["Large NF4, 28 steps"] + 1),
           ("encoders freed: encoding + 2 pictures", 2 * H100["Large NF4, 28 steps"] + 1))),
    Check("lease-ladder-medium", "the speed ladder's new rungs on SD3.5 Medium (28 steps, CFG), as for Large, "
          "without Turbo", True, _ladder_parts("medium")),
    Check("ladder-large", "the speed ladder on SD3.5 Large (28 steps, CFG), rung by rung: regional compile, + VAE "
          "compile, + FP8, then Large Turbo (4 steps) on the fastest rung; then, on a new build, attention kernels, "
          "the attention cache, and cuDNN attention last (older cuDNN can fail there for good)", True,
          _estimated_parts(420)),
    Check("ladder-medium", "the speed ladder on SD3.5 Medium (28 steps, CFG), as for Large", True,
          _estimated_parts(300)),
    Check("t4-vae-decode", "the VAE decode at 1024x1024 as a T4 runs it: bf16 without cuDNN, float16 with it",
          True, _estimated_parts(30)),
    Check("fp16", "SD3.5 Medium and Large at full size in float16 (time and memory)", True, _estimated_parts(90)),
    Check("lora-training", "one LoRA training step of Medium and Large at 1024x1024 by each recipe of notebook "
          "11's memory table (16-bit, checkpointing + 8-bit AdamW, QLoRA): time and peak against the estimate",
          True, _estimated_parts(120)),
    Check("catalogue-routes", "each distinct catalogue route (GPU memory, compute capability, route), built at full "
          "size, then run with this GPU's memory capped at that machine's", True, _estimated_parts(150)),
    Check("medium", "SD3.5 Medium, random weights: bf16 on the GPU, the math attention of bf16 below compute "
          "capability 8.0, fused q/k/v, bounded attention", True, _measured_parts(48)),
    Check("large", "SD3.5 Large, random weights: bf16, Turbo's settings, the math attention of bf16 below compute "
          "capability 8.0, NF4, NF4 without T5", True, _measured_parts(87)),
    Check("large-nf4-model-offload", "SD3.5 Large, NF4 transformer with model CPU offload (the seed's T4 recipe)",
          True, _measured_parts(85)),
    Check("medium-model-offload", "SD3.5 Medium with model CPU offload: GPU peak and host memory", True,
          _measured_parts(70)),
    Check("medium-group-offload", "SD3.5 Medium with group offload (one block, CUDA stream)", True,
          _measured_parts(70)),
    Check("medium-sequential-offload", "SD3.5 Medium with sequential CPU offload", True, _measured_parts(38)),
    Check("compile", "torch.compile through python -m helpers.bench, alone and with model offload", False,
          _estimated_parts(60)),
)}

LEASE_BUDGET_S = 480
"""What `--lease` plans for: 8 minutes of a 15-minute GPU lease, leaving the rest for the machine's start, copying
the tree and unpacking packages."""
LEASE = ("lease-ladder-large", "low-memory-large", "lease-ladder-medium")
"""`--lease`: what no GPU has measured yet, by value; each starts only when its estimate fits the time left."""
LEASE_IF_TIME = ("lora-training", "catalogue-routes")
"""`--lease`, after LEASE: run only where time is left for their estimates (not counted in LEASE's plan)."""
DEFAULT = tuple(name for name in CHECKS if not name.startswith("lease-"))
"""The whole check (no --lease): every path, the new ones first after the stand-in's."""


def plan_lines(names: tuple[str, ...], budget_s: float) -> list[str]:
    """The plan as `--dry-run` prints it: each check with its estimate, part by part, and the sums."""
    lines, total = [], 0.0
    for name in names:
        check = CHECKS[name]
        optional = name in LEASE_IF_TIME
        if not optional:
            total += check.estimate_s
        lines.append(f"{name}: {check.estimate_s:.0f} s{' (only if time is left)' if optional else ''} - "
                     f"{check.what}")
        lines += [f"    {seconds:6.1f} s  {part}" for part, seconds in check.parts]
    lines.append(f"planned: {total:.0f} s of the {budget_s:.0f} s budget" + (
        "" if total <= budget_s else " (over the budget: the last checks will be skipped)"))
    return lines


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


def _estimate(model: str, strategy: str, attention: str = "fused", dtype: str = "bfloat16", vae_tiling: bool = False):
    """helpers.memory's estimate for a case: `strategy` is a name in helpers.memory.STRATEGIES."""
    from helpers.memory import estimate

    return estimate(model, strategy, SIZE, attention, dtype=dtype, vae_tiling=vae_tiling)


MATH_CASE = "math attention, bf16 (below compute capability 8.0)"
"""Called 'math attention (T4 path)' in reports before 2026-12-08, when a T4 ran bf16; it now runs float16."""


@contextmanager
def _math_attention():
    """PyTorch's math attention, which bf16 falls back to on GPUs below compute capability 8.0 (the series computes
    in float16 there, with fused kernels; this measures what bf16 would cost)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


def check_medium(recorder: Recorder) -> None:
    from helpers.bench import fuse_qkv_projections
    from helpers.models import get_model

    guidance = get_model("medium").guidance_scale
    with recorder.case("build on the GPU") as record:
        pipe = _full_size("medium")
        record["weights_gb"] = _allocated_gb()
    with recorder.case("bf16 on the GPU", model="medium") as record:
        _measured(record, measure(pipe, steps=STEPS, size=SIZE, guidance_scale=guidance, runs=3, warmup=1),
                  _estimate("medium", "gpu"))
    with recorder.case(MATH_CASE, model="medium") as record, _math_attention():
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
        record["allocated_gb"] = _allocated_gb()
        del pipe
        record["after_del_gb"] = _allocated_gb()
        gc.collect()
        record["after_gc_collect_gb"] = _allocated_gb()


def _allocated_gb() -> float | None:
    """GB the GPU holds for PyTorch's tensors now (None without a GPU)."""
    import torch

    return round(torch.cuda.memory_allocated() / 1e9, 2) if torch.cuda.is_available() else None


def check_large(recorder: Recorder) -> None:
    from helpers.models import get_model
    from helpers.quantization import quantize_linear_layers_nf4

    large, turbo = get_model("large"), get_model("large-turbo")
    with recorder.case("build on the GPU") as record:
        pipe = _full_size("large")
        record["weights_gb"] = _allocated_gb()
    with recorder.case("bf16 on the GPU", model="large") as record:
        _measured(record, measure(pipe, steps=STEPS, size=SIZE, guidance_scale=large.guidance_scale, runs=2,
                                  warmup=1), _estimate("large", "gpu"))
    with recorder.case("Turbo's settings", model="large-turbo") as record:
        _measured(record, measure(pipe, steps=turbo.num_inference_steps, size=SIZE,
                                  guidance_scale=turbo.guidance_scale, runs=3, warmup=1),
                  _estimate("large-turbo", "gpu"))
    with recorder.case(MATH_CASE, model="large") as record, _math_attention():
        _measured(record, measure(pipe, steps=MEMORY_STEPS, size=SIZE, guidance_scale=large.guidance_scale,
                                  warmup=1), _estimate("large", "gpu", "math"))
    with recorder.case("NF4 transformer on the GPU", model="large") as record:
        quantize_linear_layers_nf4(pipe.transformer, compute_dtype=pipe.dtype)
        _free_memory()
        record["weights_gb"] = _allocated_gb()
        _measured(record, measure(pipe, steps=STEPS, size=SIZE, guidance_scale=large.guidance_scale, runs=2,
                                  warmup=1), _estimate("large", "nf4"))
    with recorder.case("NF4 transformer, T5 dropped", model="large") as record:
        pipe.register_modules(text_encoder_3=None, tokenizer_3=None)
        _free_memory()
        record["weights_gb"] = _allocated_gb()
        _measured(record, measure(pipe, steps=STEPS, size=SIZE, guidance_scale=large.guidance_scale, runs=2,
                                  warmup=1), _estimate("large", "nf4-no-t5"))


def _offload_check(model: str, offload: str, strategy: str, *, nf4: bool = False, steps: int = MEMORY_STEPS):
    def check(recorder: Recorder) -> None:
        from helpers.models import get_model

        with recorder.case("build, move to CPU memory, offload") as record:
            pipe = _full_size(model, offload=offload, quantize="nf4" if nf4 else None)
            record["host_rss_gb"] = round(_rss_bytes() / 1e9, 2)
            record["gpu_allocated_gb"] = _allocated_gb()
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
                                      runs=1, warmup=1), _estimate(model, "gpu", dtype="float16"))
            del pipe


def catalogue_cases(gpu_gb: float) -> list[dict[str, Any]]:
    """The catalogue routes a GPU of `gpu_gb` GB can stand in for: one case per distinct (GPU memory, compute
    capability, route) for Large and Medium, naming every machine it stands for. Offload routes are left to their
    own checks."""
    from dataclasses import replace

    from helpers.machines import MACHINES
    from helpers.routes import plan_route

    cases: dict[tuple, dict[str, Any]] = {}
    for machine in MACHINES.values():
        if machine.gpu_gb > gpu_gb:
            continue
        for model in ("large", "medium"):
            route = replace(plan_route(model, machine=machine), emulated=False, device="cuda")
            if route.offload:
                continue
            key = (machine.gpu_gb, machine.compute_capability, model, route.describe())
            case = cases.setdefault(key, {"model": model, "machine": machine, "route": route, "machines": []})
            case["machines"].append(machine.name)
    return list(cases.values())


def check_catalogue_routes(recorder: Recorder) -> None:
    """Each distinct catalogue route for Large and Medium (`catalogue_cases`): built at full size on this GPU first,
    the building's memory freed, then run (2 steps) with this GPU's memory capped at that machine's
    (set_per_process_memory_fraction), the peak against the estimate. Building under the cap would fail where a
    route quantizes after a 16-bit build, which the real checkpoints do not need."""
    import torch

    from helpers.memory import estimate_on
    from helpers.models import get_model
    from helpers.routes import build_pipeline

    total = torch.cuda.get_device_properties(0).total_memory / 1e9
    for case in catalogue_cases(total):
        machine, model, route = case["machine"], case["model"], case["route"]
        with recorder.case(f"{' = '.join(case['machines'])} route", model=model, machine=machine.name,
                           machines=case["machines"], strategy=route.strategy, route=route.describe()) as record:
            pipe = build_pipeline(route, weights="random")
            _free_memory()
            torch.cuda.set_per_process_memory_fraction(min(1.0, machine.gpu_gb / total))
            try:
                _measured(record, measure(pipe, steps=MEMORY_STEPS, size=SIZE,
                                          guidance_scale=get_model(model).guidance_scale, warmup=1),
                          estimate_on(model, route.strategy, machine, SIZE, vae_tiling=route.vae_tiling))
            finally:
                torch.cuda.set_per_process_memory_fraction(1.0)
                del pipe


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
            record["weights_gb"] = _allocated_gb()
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
          "flash attention", "attention cache (PAB, every 2 steps)", "cudnn attention")
"""The speed ladder's rungs in the order `check_speed_ladder` measures them, by value: eager first (the reference),
the compiled rungs, each adding to the one before, then the rungs of the uncompiled model (attention kernels, the
attention cache), on a second build with the same random weights. cuDNN's attention comes last: at SD3.5's 4,429
tokens older cuDNN releases can end in an illegal memory access, after which nothing more runs in the process."""
LEASE_RUNGS = ("bf16 eager", "regional compile + VAE compile", "regional compile + VAE compile + FP8")
"""The rungs `--lease` measures: what no GPU has measured yet, in the fewest compiles."""
TURBO = {"large": "large-turbo"}
"""The model whose settings (steps, guidance) each ladder also measures on its fastest rung."""


def _ladder_speeds():
    from helpers.speed import Speedups

    return dict(zip(LADDER, (
        Speedups(), Speedups(compile="regional"), Speedups(compile="regional", compile_vae=True),
        Speedups(compile="regional", compile_vae=True, fp8=True), Speedups(attention_kernel="flash"),
        Speedups(cache="pab"), Speedups(attention_kernel="cudnn"),
    ), strict=True))


def check_speed_ladder(recorder: Recorder, model: str, *, size: int = SIZE, steps: int = STEPS,
                       rungs: tuple[str, ...] = LADDER, runs: int = 2, turbo: str | None = None) -> None:
    """Each rung of `rungs` on one full-size pipeline with random weights: seconds per picture (`runs` after a
    first call timed apart, which compiles), the stage split, graphs compiled and recompiled, the attention kernel
    that ran, GPU peak, what was applied, and the mean pixel difference (0 to 255) of the last timed picture from the
    first rung's (a lower bound on the drift real weights would show). The compiled rungs add to each other; a rung
    of the uncompiled model after them gets a new build, with the same random weights (the same seed). A rung the
    GPU cannot run is recorded as refused, with the reason. Then `turbo`'s settings (default: TURBO's for the model;
    Large Turbo's 4 steps without CFG for Large) on the fastest rung that ran, built again where the pipeline has
    moved past it. Without a GPU it runs on the stand-in (`model='tiny'`), for the tests."""
    import numpy as np
    import torch
    from diffusers import StableDiffusion3Pipeline

    from helpers.bench import PROMPT, benchmark
    from helpers.models import get_model
    from helpers.routes import build_pipeline, plan_route
    from helpers.speed import (
        Speedups,
        cache_attention,
        machine_refusal,
        remove_attention_cache,
        speed_report,
        speed_up,
        use_attention_kernel,
    )

    spec = get_model(model)
    turbo = turbo or TURBO.get(model)
    speeds = _ladder_speeds()
    with recorder.case("ladder planned", model=model) as record:
        record["rungs"] = list(rungs)
        record["then"] = f"{turbo}'s settings on the fastest rung" if turbo else None

    route = (plan_route("tiny") if spec.is_stand_in else
             plan_route(model, offload=None, quantize=None, t5="keep", dtype="bfloat16"))  # as _full_size plans

    def build():
        torch.manual_seed(0)  # the same random weights at every build
        return build_pipeline(route, StableDiffusion3Pipeline, weights="pretrained" if spec.is_stand_in else "random")

    def apply(pipe, speed: Speedups, already: Speedups) -> list[str]:
        """Add to `pipe` what `speed` has and `already` has not (the compiled rungs add up); what was applied."""
        added = Speedups(compile=None if already.compile else speed.compile,
                         compile_vae=speed.compile_vae and not already.compile_vae, fp8=speed.fp8 and not already.fp8)
        if not added.any:
            return []
        speed_up(pipe, added)
        applied = list(speed_report(pipe).applied)
        if added.fp8:  # torchao's default would have turned it on for the whole process
            tuning = torch._inductor.config.coordinate_descent_tuning
            applied.append(f"inductor's coordinate-descent tuning {'on' if tuning else 'off'}")
        return applied

    def measured(record, pipe, call_model: str, call_steps: int, guidance: float, label: str):
        """Time the rung; the last timed picture, as floats."""
        pictures = []
        result = benchmark(pipe, model=call_model, weights="stand-in" if spec.is_stand_in else "random",
                           steps=call_steps, size=size, guidance_scale=guidance, runs=runs, warmup=1,
                           progress=False, options={"rung": label},
                           inputs={"prompt": PROMPT, "output_type": "np"},
                           on_output=lambda output: pictures.append(output.images[0]))
        record.update(median_s=round(result.median, 4), runs_s=[round(value, 4) for value in result.runs],
                      stages={stage: round(value, 4) for stage, value in result.stages.items()},
                      first_call_s=round(result.first_call_s, 2), graphs_compiled=result.graphs_compiled,
                      recompiles=result.recompiles, attention_kernel=result.attention_kernel, steps=call_steps,
                      gpu_peak_gb=round(result.peak_memory_gb, 2) if result.memory_kind == "GPU allocated" else None)
        return np.nan_to_num(pictures[-1].astype(np.float64)), result.median

    pipe = build()
    guidance = spec.guidance_scale if spec.guidance_scale > 1 else 7.0
    reference = None
    applied, fastest = Speedups(), None  # what the pipeline has now; (median, speed) of the fastest rung that ran
    for rung in rungs:
        speed = speeds[rung]
        with recorder.case(rung, model=model) as record:
            why_not = machine_refusal(speed, machine=route.machine, dtype=route.dtype, emulated=False)
            if why_not:
                record.update(status="refused", error=why_not)
                continue
            compiled = bool(speed.compile or speed.compile_vae or speed.fp8)
            if applied.any and not compiled:  # a rung of the uncompiled model after compiled ones
                del pipe
                _free_memory()
                pipe, applied = build(), Speedups()
            if speed.attention_kernel:
                use_attention_kernel(pipe.transformer, speed.attention_kernel)
            elif speed.cache:
                cache_attention(pipe.transformer, every=speed.cache_every)
            elif compiled:
                before, applied = applied, speed  # set first: a failure part-way leaves the pipeline changed
                record["applied"] = apply(pipe, speed, before)
            try:
                made, median = measured(record, pipe, spec.name, steps, guidance, rung)
                reference = made if reference is None else reference
                record["pixel_difference"] = round(float(np.abs(made - reference).mean() * 255), 3)
                if not (speed.attention_kernel or speed.cache) and (fastest is None or median < fastest[0]):
                    fastest = (median, speed)
            finally:
                if speed.attention_kernel:  # back to PyTorch's choice for the rungs after
                    use_attention_kernel(pipe.transformer, None)
                if speed.cache:
                    remove_attention_cache(pipe.transformer)
    if turbo is None or fastest is None:
        return
    settings, speed = get_model(turbo), fastest[1]
    with recorder.case(f"{settings.title}'s settings at {speed.describe()}", model=turbo) as record:
        if applied != speed:  # the pipeline moved past the fastest rung (or a later rung failed): build it again
            del pipe
            _free_memory()
            pipe = build()
            record["applied"] = apply(pipe, speed, Speedups())
            record["built_again"] = True
        measured(record, pipe, spec.name if spec.is_stand_in else turbo, settings.num_inference_steps,
                 settings.guidance_scale, "Turbo")


def check_low_memory(recorder: Recorder, *, stand_in: bool = False) -> None:
    """Large with an NF4 transformer and an NF4 T5, all on the GPU, toward the seed's low-memory goal (at most 11 GB
    and 9 s without offload): as loaded (nf4-t5-nf4), then with the VAE decoding in tiles, then also with the text
    encoders freed once the prompt is encoded (helpers.memory.LOW_MEMORY_LARGE): there the encoding's peak is
    measured apart and the pictures are made from the embeddings. With `stand_in` (no GPU) it runs on the stand-in
    (64 px, 2 steps; no memory figures), for the tests."""
    import torch

    from helpers.bench import PROMPT
    from helpers.loading import load_pipeline
    from helpers.memory import LOW_MEMORY_LARGE
    from helpers.models import get_model
    from helpers.routes import tile_vae_decode

    spec = get_model("tiny" if stand_in else "large")
    model = spec.name
    size, steps = (64, 2) if stand_in else (SIZE, STEPS)
    guidance = get_model("large").guidance_scale
    on_gpu = torch.cuda.is_available()
    with recorder.case("build: NF4 transformer, NF4 T5, on the GPU") as record:
        pipe = (load_pipeline(spec, quantize="nf4", t5="nf4") if stand_in else
                _full_size("large", quantize="nf4", t5="nf4"))
        record["weights_gb"] = _allocated_gb()
    with recorder.case("NF4 transformer and NF4 T5 on the GPU", model=model) as record:
        _measured(record, measure(pipe, steps=steps, size=size, guidance_scale=guidance, runs=2, warmup=1),
                  _estimate("large", "nf4-t5-nf4"))
    with recorder.case("NF4 transformer and NF4 T5, VAE decoded in tiles", model=model) as record:
        tile_vae_decode(pipe.vae)
        _measured(record, measure(pipe, steps=steps, size=size, guidance_scale=guidance, runs=1, warmup=1),
                  _estimate("large", "nf4-t5-nf4", vae_tiling=True))
    with recorder.case("NF4, tiles, text encoders freed after encoding", model=model,
                       strategy=LOW_MEMORY_LARGE) as record:
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            embeddings = pipe.encode_prompt(prompt=PROMPT, prompt_2=None, prompt_3=None, device=pipe._execution_device,
                                            do_classifier_free_guidance=True,
                                            max_sequence_length=spec.max_sequence_length or 256)
        record["encoding_peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2) if on_gpu else None
        pipe.register_modules(text_encoder=None, text_encoder_2=None, text_encoder_3=None)
        _free_memory()
        record["weights_gb"] = _allocated_gb()
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
        _measured(record, measure(pipe, steps=steps, size=size, guidance_scale=guidance, runs=1, warmup=1,
                                  prompt=None, **dict(zip(names, embeddings, strict=True))),
                  _estimate("large", LOW_MEMORY_LARGE, vae_tiling=True))
        if on_gpu:
            record["route_peak_gb"] = max(record["encoding_peak_gb"], record["gpu_peak_gb"])
            record["measured_over_estimate"] = round(record["route_peak_gb"] / record["estimate_gb"], 3)


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


RUNNERS: dict[str, Callable[[Recorder], None]] = {
    "stand-in-loading": check_stand_in_loading,
    "bench-options": check_bench_options,
    "lease-ladder-large": lambda recorder: check_speed_ladder(recorder, "large", rungs=LEASE_RUNGS),
    "lease-ladder-medium": lambda recorder: check_speed_ladder(recorder, "medium", rungs=LEASE_RUNGS),
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


def _end_with_parent() -> None:
    """Have Linux kill this process when the process that started it dies (a check runs in its own process group,
    so a killed `gpu_check` would otherwise leave it running on the GPU)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's own cleanup still ends it
        return
    if str(os.getppid()) != os.environ.get("SD35_GPU_CHECK_PARENT", str(os.getppid())):  # it died before that
        os._exit(1)


def run_child(name: str, records: Path) -> None:
    """Run one check in this process, recording into `records`."""
    import warnings

    _end_with_parent()

    warnings.filterwarnings("ignore", message="invalid value encountered in cast")  # random weights' pictures
    RUNNERS[name](Recorder(records))


# ---------------------------------------------------------------------------------------------------------------
# The parent: runs each check in its own process within the budget, then writes the report.


def environment() -> dict[str, Any]:
    """The machine and versions the figures belong to."""
    import psutil
    import torch

    versions = {}
    for package in ("torch", "diffusers", "transformers", "accelerate", "bitsandbytes", "torchao", "peft",
                    "huggingface_hub"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "python": platform.python_version(), "versions": versions, "cpus": os.cpu_count(),
        "host_memory_gb": round(psutil.virtual_memory().total / 1e9, 1), "cuda": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
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


def _read_cases(records: Path) -> list[dict[str, Any]]:
    """The cases a check's process has recorded so far (a line being written is left for the next read)."""
    if not records.exists():
        return []
    cases = []
    for line in records.read_text().splitlines():
        try:
            cases.append(json.loads(line))
        except ValueError:
            break
    return cases


def _run_check(check: Check, out: Path, timeout_s: float,
               on_case: Callable[[dict[str, Any]], None] = lambda result: None, poll_s: float = 2.0) -> dict[str, Any]:
    """Run one check in its own process (and process group, so that compile workers end with it), for at most
    `timeout_s`; `on_case` gets the result so far whenever a case is recorded, so a report written there keeps every
    finished case even if this process is killed."""
    import signal

    records = out / f".{check.name}.jsonl"
    records.unlink(missing_ok=True)
    start = time.perf_counter()
    result = {"check": check.name, "what": check.what, "estimate_s": check.estimate_s, "status": "running",
              "cases": []}
    with (out / "gpu_check.log").open("a") as log:
        log.write(f"\n===== {check.name} =====\n")
        log.flush()
        process = subprocess.Popen(
            [sys.executable, "-m", "helpers.gpu_check", "--child", check.name, "--records", str(records)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "SD35_GPU_CHECK_PARENT": str(os.getpid())})
        try:
            while True:
                try:
                    returncode = process.wait(timeout=poll_s)
                    break
                except subprocess.TimeoutExpired:
                    cases = _read_cases(records)
                    if len(cases) != len(result["cases"]):
                        result.update(cases=cases, seconds=round(time.perf_counter() - start, 1))
                        on_case(result)
                    if time.perf_counter() - start > timeout_s:
                        returncode = None
                        break
        finally:
            if process.poll() is None:  # stopped by the budget, or this process interrupted
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    result["cases"] = _read_cases(records)
    records.unlink(missing_ok=True)
    if returncode is None:
        result["status"] = f"stopped by the budget after {timeout_s:.0f} s"
    elif returncode != 0:
        result["status"] = f"process ended with code {returncode} (see gpu_check.log)"
    else:
        result["status"] = "failed" if any(case.get("status") == "failed" for case in result["cases"]) else "ok"
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


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


def plan(lease: bool = False, only: list[str] | None = None) -> tuple[str, ...]:
    """The checks a run starts, in order: LEASE then LEASE_IF_TIME with `lease`, else DEFAULT (only those of
    `only`, if given)."""
    unknown = sorted(set(only or ()) - set(CHECKS))
    if unknown:
        raise ValueError(f"--only {' '.join(unknown)}: no such check. Checks: {', '.join(CHECKS)}.")
    if lease:
        if only:
            raise ValueError("--only with --lease: the lease runs its own plan (see --lease --dry-run). Leave one out.")
        return LEASE + LEASE_IF_TIME
    names = DEFAULT if not only else tuple(name for name in CHECKS if name in only)
    return names


def _check_budget(budget_s: object) -> None:
    if not (isinstance(budget_s, (int, float)) and 0 < budget_s <= 86_400):
        raise ValueError(f"budget_s={shown(budget_s)} must be a positive number of seconds up to a day, e.g. 360.")


def run(budget_s: float, out: Path, only: list[str] | None = None, progress: bool = True, lease: bool = False,
        command: str | None = None) -> dict[str, Any]:
    """Run the planned checks in order within `budget_s` seconds, each only where its estimate fits the time left;
    write the report after every case, and return it."""
    import torch

    _check_budget(budget_s)
    names = plan(lease, only)
    out = output_folder(out, "--out")
    _check_reports_are_ours(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.log").write_text("")
    started = time.perf_counter()
    report: dict[str, Any] = {"command": command or "python -m helpers.gpu_check", "budget_s": budget_s,
                              "environment": environment(), "checks": []}

    def running(result: dict[str, Any]) -> None:
        report["checks"][-1] = dict(result)
        report["seconds"] = round(time.perf_counter() - started, 1)
        write_report(report, out)

    for name in names:
        check = CHECKS[name]
        left = budget_s - (time.perf_counter() - started)
        skipped = {"check": name, "what": check.what, "estimate_s": check.estimate_s, "cases": []}
        if check.needs_gpu and not torch.cuda.is_available():
            result = {**skipped, "status": "skipped: needs a CUDA GPU"}
        elif left < check.estimate_s:
            result = {**skipped, "status": f"skipped: {left:.0f} s of the budget left, its estimate is "
                                           f"{check.estimate_s:.0f} s"}
        else:
            if progress:
                print(f"[{time.perf_counter() - started:5.0f} s] {name} (about {check.estimate_s:.0f} s): "
                      f"{check.what}", flush=True)
            report["checks"].append({**skipped, "status": "running"})
            running(report["checks"][-1])
            result = _run_check(check, out, left, on_case=running)
            report["checks"].pop()
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
    parser.add_argument("--lease", action="store_true",
                        help=f"run only what no GPU has measured yet, planned for a GPU lease (default budget "
                             f"{LEASE_BUDGET_S} s): {', '.join(LEASE)}, then {', '.join(LEASE_IF_TIME)} if time is "
                             "left")
    parser.add_argument("--dry-run", action="store_true", help="print the plan with each check's estimate; run nothing")
    parser.add_argument("--budget-s", type=float, help=f"stop starting checks after this many seconds (default 360, "
                                                       f"{LEASE_BUDGET_S} with --lease)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report folder (default {DEFAULT_OUT})")
    parser.add_argument("--only", nargs="+", metavar="CHECK", help=f"run only these: {', '.join(CHECKS)}")
    parser.add_argument("--child", choices=list(RUNNERS), help=argparse.SUPPRESS)
    parser.add_argument("--records", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args.child, args.records)
        return 0
    budget = args.budget_s if args.budget_s is not None else LEASE_BUDGET_S if args.lease else 360.0
    command = "python -m helpers.gpu_check " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        names = plan(args.lease, args.only)
        if args.dry_run:
            _check_budget(budget)
            print("\n".join(plan_lines(names, budget)))
            return 0
        report = run(budget, args.out, args.only, lease=args.lease, command=command)
    except ValueError as error:
        parser.error(str(error))
    print(markdown(report))
    print(f"saved {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    return 0 if all(check["status"] in ("ok",) or check["status"].startswith("skipped")
                    for check in report["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
