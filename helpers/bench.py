"""Timing SD3.5 pipelines soundly: warm-up, synchronised clocks, several runs, peak memory, time per stage.

Introduced in notebook 03. `benchmark(pipe, ...)` times any loaded pipeline; `python -m helpers.bench` loads one
and prints a table (or `--json FILE`). With `--weights random`, the full-size architecture is built from its
published config with random weights straight on the GPU: no download, and the same speed as the real weights,
since arithmetic does not depend on the values.

    python -m helpers.bench --model large --weights random --steps 28 --size 1024 --runs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from helpers.checks import (
    check_guidance_scale,
    check_max_sequence_length,
    check_output_file,
    check_prompt,
    check_side,
    check_steps,
    checked,
    flag,
    function,
    instance,
    listed,
    one_of,
    optional,
    pipeline,
    sd3_transformer,
    side,
    text,
    whole,
    write_output_file,
)
from helpers.experiments import sign_test_p
from helpers.models import MODELS, full_size_model, get_model, model_name

MAX_RUNS = 1000
"""Timed or warm-up runs of one measurement: a bound that stops a typo from running for days."""

STAGES = {
    "prompt encoding": ("text_encoder", "text_encoder_2", "text_encoder_3"),
    "denoising": ("transformer",),
    "VAE decode": ("vae.decoder",),
}
PROMPT = "A group of elves hunting a dragon, 4k cinema"
H100_DENSE_BF16_TFLOPS = 989.0
"""NVIDIA's figure for the H100 SXM's dense bf16 tensor-core throughput."""


@dataclass
class BenchResult:
    """One configuration's timings (seconds) and peak memory, with everything that determined them."""

    model: str
    weights: str
    device: str
    dtype: str
    steps: int
    size: int
    guidance_scale: float
    options: dict[str, Any]
    runs: list[float]
    stages: dict[str, float] = field(default_factory=dict)
    peak_memory_gb: float | None = None
    memory_kind: str = ""
    gpu: str | None = None
    first_call_s: float | None = None
    """The first (untimed) call alone: where torch.compile compiles. None without a warm-up."""
    graphs_compiled: int = 0
    """Graphs torch.compile compiled during the warm-up."""
    recompiles: int = 0
    """Graphs compiled during the timed runs: more than 0 means the timed runs include compiling."""
    attention_kernel: str | None = None
    """The attention kernel PyTorch dispatched for the model's shapes (helpers.speed.attention_kernel_used)."""

    @property
    def compile_s(self) -> float | None:
        """About how long compiling took: the first call's time over the median call's (None: nothing compiled)."""
        if not self.graphs_compiled or self.first_call_s is None:
            return None
        return max(0.0, self.first_call_s - self.median)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def row(self) -> dict[str, str]:
        """A table row: the settings, then min / median / max, the stage split and the peak."""
        options = ", ".join(f"{key}={value}" for key, value in self.options.items() if value not in (None, False))
        return {
            "model": self.model,
            "weights": self.weights,
            "device": f"{self.device} ({self.gpu})" if self.gpu else self.device,
            "dtype": self.dtype,
            "steps": str(self.steps),
            "size": f"{self.size}x{self.size}",
            "guidance": f"{self.guidance_scale:g}",
            "options": options or "-",
            "min / median / max (s)": f"{min(self.runs):.3f} / {self.median:.3f} / {max(self.runs):.3f}",
            **{stage: f"{seconds:.3f}" for stage, seconds in self.stages.items()},
            "peak memory": f"{self.peak_memory_gb:.2f} GB {self.memory_kind}" if self.peak_memory_gb else "-",
            "attention kernel": self.attention_kernel or "-",
            "compile (s)": "-" if self.compile_s is None else
                           f"{self.compile_s:.1f} ({self.graphs_compiled} graphs, {self.recompiles} recompiled)",
        }


def _synchronize(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@contextmanager
def _stage_clocks(pipe, device: str, totals: dict[str, float]):
    """Add the time spent inside each stage's modules to `totals` (GPU-synchronised): via forward hooks, or, for a
    module compiled whole (`module.compile()`, whose compiled call runs the hooks inside the graph, where a clock
    cannot be read), by timing its compiled call from outside for the duration of the block."""
    handles = []

    def watch(module, stage: str):
        started: list[float] = []

        def before(*_):
            _synchronize(device)
            started.append(time.perf_counter())

        def after(*_):
            _synchronize(device)
            totals[stage] = totals.get(stage, 0.0) + time.perf_counter() - started.pop()

        compiled = module._compiled_call_impl
        if compiled is None:
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
            return

        def timed(*args, **kwargs):
            before()
            try:
                return compiled(*args, **kwargs)
            finally:
                after()

        module._compiled_call_impl = timed
        handles.append(_Restore(module, compiled))

    for stage, paths in STAGES.items():
        for path in paths:
            module = pipe
            for name in path.split("."):
                module = getattr(module, name, None)
            if module is not None:
                watch(module, stage)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _Restore:
    """Puts a module's compiled call back, like a hook handle's `remove()`."""

    def __init__(self, module, compiled):
        self.module, self.compiled = module, compiled

    def remove(self) -> None:
        self.module._compiled_call_impl = self.compiled


class _PeakRss:
    """Samples this process's resident memory every few milliseconds; the CPU's stand-in for a GPU peak."""

    def __init__(self, interval_s: float = 0.005):
        import psutil

        self._process, self._interval, self.peak = psutil.Process(), interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self):
        self.peak = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@checked(call=function, device=text, warmup=whole(0, MAX_RUNS), runs=whole(1, MAX_RUNS), progress=flag)
def time_call(call: Callable[[], Any], *, device: str, warmup: int = 1, runs: int = 5, progress: bool = True):
    """Run `call` `warmup` times untimed, then `runs` times timed; return (seconds per run, peak memory, kind).

    On a GPU every timed region starts and ends with `torch.cuda.synchronize()`, and the peak is
    `torch.cuda.max_memory_allocated()` over the timed runs; on a CPU it is the process's peak resident memory.
    """
    import torch
    from tqdm.auto import tqdm

    on_gpu = str(device).startswith("cuda")
    for _ in tqdm(range(warmup), desc="warm-up", disable=not progress or warmup == 0, leave=False):
        call()
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    with _PeakRss() if not on_gpu else nullcontext() as rss:
        for _ in tqdm(range(runs), desc="timed runs", disable=not progress, leave=False):
            _synchronize(device)
            start = time.perf_counter()
            call()
            _synchronize(device)
            seconds.append(time.perf_counter() - start)
    if on_gpu:
        return seconds, torch.cuda.max_memory_allocated() / 1e9, "GPU allocated"
    return seconds, rss.peak / 1e9, "process RSS"


@dataclass
class Comparison:
    """Two calls timed in alternating rounds (A B, B A, A B, ...): per-round seconds, and what they show."""

    labels: tuple[str, str]
    seconds: tuple[list[float], list[float]]

    @property
    def ratios(self) -> list[float]:
        """Per round: the second call's time over the first's."""
        return [b / a for a, b in zip(*self.seconds, strict=True)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    def finding(self) -> str:
        """The ratio where the rounds agree on which call is slower (sign test p < 0.05); else a caution, not a
        number to read."""
        first, second = self.labels
        ratios, rounds = self.ratios, len(self.ratios)
        slower = sum(ratio > 1 for ratio in ratios)
        p = sign_test_p(slower, rounds)
        spread = f"per-round ratios {min(ratios):.2f} to {max(ratios):.2f}, {rounds} rounds"
        if p < 0.05:
            return (f"{second} took {self.ratio:.2f}x the time of {first} (median; {spread}; "
                    f"{'slower' if slower > rounds / 2 else 'faster'} in {max(slower, rounds - slower)} of {rounds} "
                    f"rounds, sign test p = {p:.2g}).")
        return (f"Caution: no reading. The rounds disagree on which is slower ({spread}; slower in {slower} of "
                f"{rounds}, sign test p = {p:.2g}): this machine's load changed under the measurement, or the two "
                "take the same time. Run the cell again on an idle machine.")


@checked(first=function, second=function, labels=listed(text, 2, 2), device=text, rounds=whole(2, MAX_RUNS),
         warmup=whole(0, MAX_RUNS))
def compare_times(first: Callable[[], Any], second: Callable[[], Any], *, labels: tuple[str, str], device: str,
                  rounds: int = 6, warmup: int = 1) -> Comparison:
    """Time two calls in alternating rounds (A B, then B A, ...), so that a machine getting busier or quieter
    weighs on both alike; each timed region is synchronized on a GPU, as in `time_call`."""
    for _ in range(warmup):
        first()
        second()
    seconds: tuple[list[float], list[float]] = ([], [])
    for round_ in range(rounds):
        order = (0, 1) if round_ % 2 == 0 else (1, 0)
        for index in order:
            call = (first, second)[index]
            _synchronize(device)
            start = time.perf_counter()
            call()
            _synchronize(device)
            seconds[index].append(time.perf_counter() - start)
    return Comparison(tuple(labels), seconds)


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        (check_steps if name == "steps" else whole(0 if name == "warmup" else 1, MAX_RUNS))(value, name)


@checked(pipe=pipeline, model=model_name, weights=one_of("hub", "random", "trained toy", "stand-in"),
         steps=check_steps, size=side, guidance_scale=check_guidance_scale, runs=whole(1, MAX_RUNS),
         warmup=whole(0, MAX_RUNS), prompt=check_prompt, inputs=optional(instance(dict, "a dict of pipeline inputs")),
         options=optional(instance(dict, "a dict of the options benchmarked")), progress=flag,
         on_output=optional(function))
def benchmark(
    pipe,
    *,
    model: str,
    weights: str = "hub",
    steps: int,
    size: int,
    guidance_scale: float,
    runs: int = 5,
    warmup: int = 1,
    prompt: str = PROMPT,
    inputs: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    progress: bool = True,
    on_output: Callable[[Any], None] | None = None,
) -> BenchResult:
    """Time `pipe(prompt, ...)` with these settings: medians per run and per stage, and the peak memory.

    `inputs` replaces the prompt with other pipeline inputs, such as prompt embeddings computed beforehand.
    `on_output` is given each call's output (the pictures), so that a caller need not make them again.
    `weights` says where the weights came from ('hub' or 'random'); the offline models are labelled
    'trained toy' and 'stand-in'.
    """
    import torch

    from helpers.experiments import check_for_pipeline

    check_for_pipeline(pipe, {"height": size, "width": size})
    device = str(pipe._execution_device)
    spec = get_model(model)
    if spec.is_stand_in:
        weights = "trained toy" if spec.is_toy else "stand-in"
    settings = _call_settings(steps, size, guidance_scale)
    if spec.max_sequence_length is not None:  # the toy reads fewer T5 tokens than diffusers' default
        settings["max_sequence_length"] = spec.max_sequence_length
    pipe.set_progress_bar_config(disable=True)
    per_run_stages: list[dict[str, float]] = []

    def call():
        totals: dict[str, float] = {}
        with _stage_clocks(pipe, device, totals):
            output = pipe(**(inputs or {"prompt": prompt}), generator=torch.Generator("cpu").manual_seed(0),
                          **settings)
        per_run_stages.append(totals)
        if on_output is not None:
            on_output(output)

    from helpers.speed import attention_kernel_used, compiled_graphs

    graphs_before = compiled_graphs()
    first_s = None
    if warmup:  # the first call alone: where torch.compile compiles, reported apart from the time per picture
        _synchronize(device)
        started = time.perf_counter()
        call()
        _synchronize(device)
        first_s = time.perf_counter() - started
    graphs_warm = compiled_graphs()
    seconds, peak, kind = time_call(call, device=device, warmup=max(0, warmup - 1), runs=runs, progress=progress)
    recompiles = compiled_graphs() - graphs_warm
    text_tokens = 77 + (spec.max_sequence_length or 256)
    timed = per_run_stages[-runs:]
    stages = {stage: statistics.median(run.get(stage, 0.0) for run in timed) for stage in STAGES}
    stages["other"] = max(0.0, statistics.median(seconds) - sum(stages.values()))
    return BenchResult(
        model=model, weights=weights, device=device.split(":")[0], dtype=str(pipe.dtype).removeprefix("torch."),
        steps=steps, size=size, guidance_scale=guidance_scale, options=options or {}, runs=seconds, stages=stages,
        peak_memory_gb=peak, memory_kind=kind,
        gpu=torch.cuda.get_device_name() if device.startswith("cuda") else None,
        first_call_s=first_s, graphs_compiled=graphs_warm - graphs_before, recompiles=recompiles,
        attention_kernel=attention_kernel_used(pipe, size, text_tokens=text_tokens),
    )


@checked(transformer=sd3_transformer)
def fuse_qkv_projections(transformer) -> None:
    """Fuse the q, k and v projections of each block's joint attention into one matrix multiply per stream.

    diffusers 0.42's `transformer.fuse_qkv_projections()` uses a processor that skips SD3.5's normalisation of
    queries and keys, which changes the images, and gives MMDiT-X's extra self-attention (SD3.5 Medium) a
    processor that fails. This keeps the normalisation and leaves the extra self-attention as it is.
    `unfuse_qkv_projections(transformer)` undoes it.
    It keeps bounded attention where the route has it (512 queries at a time on GPUs without a fused kernel for the
    dtype). An NF4 transformer cannot be fused: ValueError, before anything changes.
    """
    from helpers.attention import JointAttention
    from helpers.quantization import count_4bit_layers

    if count_4bit_layers(transformer):
        raise ValueError("fuse_qkv_projections: this transformer is stored in NF4, whose packed 4-bit q, k and v blocks "
                         "cannot be joined into one matrix. Load it with quantize=None to fuse, or leave it unfused.")
    if not any(hasattr(block.attn, "to_qkv") for block in transformer.transformer_blocks):  # fused already: keep
        transformer.original_attn_processors = transformer.attn_processors  # the processors from before
    for block in transformer.transformer_blocks:
        chunk, kernel = (getattr(block.attn.processor, name, None) for name in ("query_chunk", "kernel"))
        block.attn.fuse_projections(fuse=True)
        block.attn.set_processor(JointAttention(fused=True, query_chunk=chunk, kernel=kernel))


@checked(transformer=sd3_transformer)
def unfuse_qkv_projections(transformer) -> None:
    """Undo `fuse_qkv_projections`: the original attention processors back, and the fused weights freed.
    (diffusers 0.42's `transformer.unfuse_qkv_projections()` restores the processors but keeps the fused layers,
    2.7 GB for Large.)"""
    if getattr(transformer, "original_attn_processors", None) is None:
        raise ValueError("unfuse_qkv_projections: this transformer was not fused by fuse_qkv_projections(); there is "
                         "nothing to undo.")
    transformer.set_attn_processor(transformer.original_attn_processors)
    for block in transformer.transformer_blocks:
        for name in ("to_qkv", "to_added_qkv"):
            if hasattr(block.attn, name):
                delattr(block.attn, name)
        block.attn.fused_projections = False


def _call_settings(steps: int, size: int, guidance_scale: float) -> dict[str, Any]:
    return {"num_inference_steps": steps, "height": size, "width": size, "guidance_scale": guidance_scale}


def harness_overhead(pipe, *, model: str, steps: int, size: int, guidance_scale: float,
                     runs: int = 10) -> dict[str, float]:
    """Median of a bare `pipe(...)` loop against the same calls timed by `benchmark`: their ratio is the overhead."""
    import torch

    settings = _call_settings(steps, size, guidance_scale)
    pipe.set_progress_bar_config(disable=True)
    device = str(pipe._execution_device)
    bare = []
    for index in range(runs + 1):
        _synchronize(device)
        start = time.perf_counter()
        pipe(prompt=PROMPT, generator=torch.Generator("cpu").manual_seed(0), **settings)
        _synchronize(device)
        if index:  # the first call is the warm-up
            bare.append(time.perf_counter() - start)
    timed = benchmark(pipe, model=model, steps=steps, size=size, guidance_scale=guidance_scale, runs=runs,
                      progress=False)
    bare_median = statistics.median(bare)
    return {"bare_median_s": bare_median, "harness_median_s": timed.median, "ratio": timed.median / bare_median}


H100_MEASURED_S = {"large": 5.58, "medium": 2.65}
"""Seconds per 1024x1024 image at 28 steps with CFG, bf16, everything on the GPU, measured on the H100
(benchmarks/RESULTS.md): with flops_per_step, the share of the H100's peak the denoising reached."""


def estimated_seconds_per_image(route, *, steps: int, guidance_scale: float, size: int) -> float | None:
    """About how long one picture of the full-size model `route` was planned for takes on its machine: the steps'
    FLOPs at the share of peak the H100 reached for that model (H100_MEASURED_S), scaled by the machine's tensor
    throughput, plus 2% for an NF4 transformer and the copies of model offload at the H100's rate. An estimate,
    never a measurement. None where there is no full-size model or machine to estimate for."""
    from helpers.memory import offload_traffic_gb
    from helpers.routes import H100_OFFLOAD_GB_PER_S

    spec = get_model(route.model)
    machine = route.machine
    if spec.is_stand_in or machine is None or machine.tensor_tflops is None:
        return None
    reference = "medium" if spec.name == "medium" else "large"
    share = 28 * _flops(reference, 1024, 2) / H100_MEASURED_S[reference] / (H100_DENSE_BF16_TFLOPS * 1e12)
    seconds = steps * _flops(spec.name, size, 2 if guidance_scale > 1 else 1) / (machine.tensor_tflops * 1e12 * share)
    if route.quantize:
        seconds *= 1.02
    if route.strategy in ("model-offload", "nf4-model-offload"):
        seconds += offload_traffic_gb(spec.name, route.strategy) / H100_OFFLOAD_GB_PER_S
    return seconds


@cache
def _flops(model: str, size: int, batch: int) -> float:
    return flops_per_step(model, size=size, batch=batch)


@checked(model=full_size_model, size=side, batch=whole(1, 64), max_sequence_length=check_max_sequence_length)
def flops_per_step(model: str, size: int = 1024, batch: int = 2, max_sequence_length: int = 256) -> float:
    """FLOPs of one transformer call (one denoising step; batch 2 = with CFG), counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from helpers.architecture import meta_component

    transformer = meta_component(model, "transformer")
    config = transformer.config
    latent = size // 8
    with torch.device("meta"):
        inputs = {
            "hidden_states": torch.empty(batch, config.in_channels, latent, latent),
            "encoder_hidden_states": torch.empty(batch, 77 + max_sequence_length, config.joint_attention_dim),
            "pooled_projections": torch.empty(batch, config.pooled_projection_dim),
            "timestep": torch.ones(batch),
        }
    with FlopCounterMode(display=False) as counter:
        transformer(**inputs, return_dict=False)
    return float(counter.get_total_flops())


def _is_bench_json(path: Path) -> bool:
    """Whether `path` holds a result this command wrote (one it may replace)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"model", "weights", "runs", "stages"} <= set(data)


def bench_speedups(args: argparse.Namespace):
    """The speed ladder's rungs a bench command asks for (helpers.speed)."""
    from helpers.speed import speedups_rule

    return speedups_rule({"compile": args.compile, "compile_vae": args.compile_vae,
                          "attention_kernel": args.attention_kernel, "fp8": args.fp8, "cache": args.cache,
                          "cache_every": args.cache_every}, "the speed options")


def load_for_bench(args: argparse.Namespace):
    """The pipeline a bench command asks for, after every check that can fail has passed."""
    from helpers.loading import load_pipeline
    from helpers.routes import build_pipeline, fuse_refusal, plan_route

    if args.fuse_qkv and fuse_refusal(args.quantize, args.offload):
        raise ValueError(f"--fuse-qkv cannot be used here: {fuse_refusal(args.quantize, args.offload)}. Time one or "
                         "the other.")
    spec = get_model(args.model)
    if args.weights == "random" and spec.is_stand_in:
        raise ValueError("--weights random builds a full-size model; use it with --model large, large-turbo or medium.")
    options = {"offload": args.offload or "auto", "quantize": args.quantize, "t5": "drop" if args.drop_t5 else "keep",
               "speed": bench_speedups(args)}
    route = plan_route(spec, **options)  # refuses speed-ups the route cannot run, naming why
    if args.weights == "random" and not route.device.startswith("cuda"):
        raise ValueError("--weights random needs a CUDA GPU: a full-size model with random weights is for GPU timing.")
    if args.weights == "random":
        pipe = build_pipeline(route, weights="random")
    else:
        pipe = load_pipeline(spec, **options)
    if args.fuse_qkv:  # before the first call, so a compiled block traces the fused projections
        fuse_qkv_projections(pipe.transformer)
    return pipe


@checked(results=listed(instance(BenchResult, "a BenchResult from benchmark()")), labels=listed(text))
def plot_results(results: list[BenchResult], labels: list[str]):
    """Median time against peak memory, one labelled point per configuration."""
    from helpers.images import unshown_subplots

    if len(results) != len(labels):
        raise ValueError(f"labels has {len(labels)} entries for {len(results)} results.")
    figure, axis = unshown_subplots(figsize=(7, 4))
    for result, label in zip(results, labels, strict=True):
        axis.scatter(result.peak_memory_gb, result.median)
        axis.annotate(label, (result.peak_memory_gb, result.median), textcoords="offset points", xytext=(5, 4),
                      fontsize=8)
    kinds = {result.memory_kind for result in results}
    devices = {f"{result.device} ({result.gpu})" if result.gpu else result.device for result in results}
    axis.set_xlabel(f"peak memory (GB, {' / '.join(sorted(kinds))})")
    axis.set_ylabel("median seconds per image")
    axis.set_title(f"time vs memory, measured on {' / '.join(sorted(devices))}")
    axis.set_ylim(bottom=0)
    figure.tight_layout()
    return figure


def main(argv: list[str] | None = None) -> int:
    """Time SD3.5 text-to-image on this machine and print (or save) the results."""
    from helpers.attention import KERNELS
    from helpers.speed import CACHE_CHOICES, COMPILE_CHOICES

    parser = argparse.ArgumentParser(prog="python -m helpers.bench", description=main.__doc__)
    parser.add_argument("--model", default="tiny", choices=list(MODELS))
    parser.add_argument("--quantize", choices=["nf4"], help="store the transformer in NF4")
    parser.add_argument("--offload", choices=["model", "sequential", "group"], help="CPU offload (default: none)")
    parser.add_argument("--drop-t5", action="store_true", help="no T5 text encoder (text_encoder_3=None)")
    parser.add_argument("--compile", nargs="?", const="regional", choices=COMPILE_CHOICES[1:],
                        help="torch.compile the transformer: its repeated block (regional, the default) or all of it; "
                             "the compile time is reported apart")
    parser.add_argument("--compile-vae", action="store_true", help="compile the VAE decoder (channels-last)")
    parser.add_argument("--attention-kernel", choices=list(KERNELS),
                        help="PyTorch's attention kernel (default: PyTorch chooses; the one used is reported)")
    parser.add_argument("--fp8", action="store_true", help="FP8 linear layers (torchao; GPUs with FP8: L4, H100)")
    parser.add_argument("--cache", choices=CACHE_CHOICES[1:], help="reuse attention between steps (Pyramid Attention Broadcast)")
    parser.add_argument("--cache-every", type=int, default=2,
                        help="with --cache: attention computed every this many steps in its window (default 2)")
    parser.add_argument("--fuse-qkv", action="store_true", help="fuse the transformer's q, k, v projections")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's recommended)")
    parser.add_argument("--size", type=int, help="height and width in pixels (default: the model's)")
    parser.add_argument("--guidance", type=float, help="guidance scale (default: the model's recommended)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs after one warm-up (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1; 2+ with --compile)")
    parser.add_argument("--weights", choices=["hub", "random"], default="hub",
                        help="hub: the real checkpoint; random: full-size random weights built on the GPU")
    parser.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    parser.add_argument("--overhead", action="store_true",
                        help="also compare the harness with a bare loop of pipeline calls and print the ratio")
    args = parser.parse_args(argv)
    spec = get_model(args.model)
    steps = spec.num_inference_steps if args.steps is None else args.steps
    size = spec.height if args.size is None else args.size
    guidance = spec.guidance_scale if args.guidance is None else args.guidance
    try:
        _check_counts(steps=steps, runs=args.runs, warmup=args.warmup)
        check_side("--size", size)
        check_guidance_scale(guidance, "--guidance")
        whole(2, 100)(args.cache_every, "--cache-every")
        if args.json:
            args.json = check_output_file(args.json, "--json", ours=_is_bench_json)  # before the benchmark
        pipe = load_for_bench(args)
    except (ValueError, MemoryError) as error:
        parser.error(str(error))
    speed = bench_speedups(args)
    options = {"quantize": args.quantize, "offload": args.offload, "drop_t5": args.drop_t5, "fuse_qkv": args.fuse_qkv,
               **{key: value for key, value in asdict(speed).items() if key != "cache_every" or speed.cache}}
    from helpers.display import Table

    try:
        result = benchmark(
            pipe, model=spec.name, weights=args.weights, steps=steps, size=size,
            guidance_scale=guidance, runs=args.runs, warmup=args.warmup, options=options,
        )
        print(Table([result.row()]))
        if args.overhead:
            overhead = harness_overhead(pipe, model=spec.name, steps=steps, size=size, guidance_scale=guidance,
                                        runs=args.runs)
            print(f"harness overhead: bare median {overhead['bare_median_s']:.4f} s, harness median "
                  f"{overhead['harness_median_s']:.4f} s, ratio {overhead['ratio']:.3f}")
    finally:
        if args.fuse_qkv:  # load_pipeline shares pipelines within a process: leave this one as it was found
            unfuse_qkv_projections(pipe.transformer)
    if args.json:  # its folder was made when --json was checked
        write_output_file(args.json, json.dumps(asdict(result), indent=2) + "\n")
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
