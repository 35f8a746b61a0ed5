"""The speed ladder: the changes that make an SD3.5 pipeline faster on the GPU it runs on, one rung at a time, each
with what it costs.

Introduced in notebook 03. `Speedups` names the rungs; `speed_up(pipe, speedups)` applies them to a loaded pipeline.
`load_pipeline(..., speed=...)` and `python -m helpers.bench` do it for you, after checking that the rungs work on
the route (helpers.routes):

- `compile='regional'`: torch.compile of the transformer's repeated block, compiled once per distinct block and
  reused for the others (diffusers' `compile_repeated_blocks`; diffusers 0.42 names no repeated block for SD3, so
  the series names `JointTransformerBlock` on the model). `compile='full'` compiles the whole transformer.
  The first picture pays for the compiling; `python -m helpers.bench` reports that apart from the time per picture.
- `compile_vae=True`: the VAE's decoder in channels-last memory format, compiled.
- `attention_kernel`: which of PyTorch's attention kernels runs ('flash', 'efficient', 'cudnn', 'math'; None:
  PyTorch's choice). `attention_kernel_used` reports the kernel PyTorch dispatches for the model's shapes.
- `fp8=True`: the transformer's linear layers in float8 with one scale per row (torchao's dynamic float8), on GPUs
  with FP8 tensor cores (compute capability 8.9 or more: L4, H100). `pip install torchao` (or `.[fast]`).
- `cache='pab'`: Pyramid Attention Broadcast, diffusers' hook: inside a window of the schedule, each attention is
  computed at every `cache_every`-th step and its output reused at the steps between.

    python -m helpers.speed costs --out FOLDER     what each rung that runs on a CPU costs the toy's pictures
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import weakref
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from helpers.attention import KERNELS
from helpers.checks import (
    check_output_file,
    checked,
    flag,
    pipeline,
    sd3_transformer,
    shown,
    whole,
    write_output_file,
)

COMPILE_CHOICES = (None, "regional", "full")
CACHE_CHOICES = (None, "pab")
CACHE_WINDOW = (100, 800)
"""Timesteps (of the scheduler's 1000) inside which Pyramid Attention Broadcast may reuse attention: diffusers'
default window. Outside it, at the noisiest and the cleanest steps, attention is always computed."""
REPEATED_BLOCK = "JointTransformerBlock"
"""The block SD3's transformer repeats (38 in Large, 24 in Medium): what regional compilation compiles."""
CPU_KERNELS = ("flash", "math")
"""The attention kernels PyTorch has on a CPU (its CPU flash kernel, and the math kernel)."""


@dataclass(frozen=True)
class Speedups:
    """The rungs of the speed ladder a pipeline runs with (the defaults: none)."""

    compile: str | None = None
    """None, 'regional' (the repeated block, compiled once per distinct block) or 'full' (the whole transformer)."""
    compile_vae: bool = False
    """Compile the VAE's decoder, in channels-last memory format."""
    attention_kernel: str | None = None
    """PyTorch's attention kernel: 'flash', 'efficient', 'cudnn', 'math', or None (PyTorch chooses)."""
    fp8: bool = False
    """The transformer's linear layers in float8 (torchao), on GPUs with FP8 tensor cores."""
    cache: str | None = None
    """None, or 'pab' (Pyramid Attention Broadcast)."""
    cache_every: int = 2
    """With cache='pab': attention computed at every this-many-th step inside CACHE_WINDOW, reused between."""

    @property
    def any(self) -> bool:
        return self != Speedups()

    def describe(self) -> str:
        """One line: the rungs on, e.g. 'regional compile, flash attention'."""
        parts = [f"{self.compile} compile"] if self.compile else []
        parts += ["VAE compiled"] if self.compile_vae else []
        parts += [f"{self.attention_kernel} attention kernel"] if self.attention_kernel else []
        parts += ["FP8 transformer"] if self.fp8 else []
        parts += [f"attention cache (PAB, every {self.cache_every} steps)"] if self.cache else []
        return ", ".join(parts) or "no speed-ups"


def _choice(value: Any, name: str, choices: tuple) -> Any:
    if not any(value is choice or (isinstance(value, str) and value == choice) for choice in choices):
        raise ValueError(f"speed {name}={shown(value)} is not a choice: use one of {', '.join(map(repr, choices))}.")
    return value


def speedups_rule(value: Any, name: str = "speed") -> Speedups:
    """A Speedups, a dict of its fields (`{'compile': 'regional'}`) or None (no speed-ups): a rule for
    `helpers.checks`. Each field is checked, naming the value and the choices."""
    if value is None:
        return Speedups()
    if isinstance(value, dict):
        known = {field.name for field in fields(Speedups)}
        unknown = sorted(set(value) - known, key=repr)
        if unknown:
            raise ValueError(f"{name} has no setting {shown(unknown[0])}: use {', '.join(sorted(known))}.")
        value = Speedups(**value)
    if not isinstance(value, Speedups):
        raise ValueError(f"{name}={shown(value)} must be a dict such as {{'compile': 'regional'}}, a Speedups, or "
                         "None.")
    _choice(value.compile, "compile", COMPILE_CHOICES)
    _choice(value.attention_kernel, "attention_kernel", (None, *KERNELS))
    _choice(value.cache, "cache", CACHE_CHOICES)
    flag(value.compile_vae, f"{name} compile_vae")
    flag(value.fp8, f"{name} fp8")
    whole(2, 100)(value.cache_every, f"{name} cache_every")
    return value


def combination_refusal(speed: Speedups, *, offload: str | None, quantize: str | None) -> str | None:
    """Why these speed-ups cannot run with these loading options on any machine (None: they can), as the end of a
    sentence that starts with what was asked."""
    if speed.compile and offload:
        return (f"compile with {offload} offload: the offload hooks move weights between CPU and GPU inside the "
                "transformer's forward pass, which torch.compile(fullgraph=True) refuses to trace (measured on an "
                "H100, helpers/gpu_runs/). Use one or the other")
    if speed.compile and speed.cache:
        return ("compile with cache='pab': the cache's hooks sit inside the compiled blocks and keep Python state "
                "that changes at every step; the two are not combined here (not measured together). Use one or the "
                "other")
    if speed.fp8 and quantize == "nf4":
        return "fp8=True with an NF4 transformer: the transformer is stored one way. Use quantize=None with fp8"
    if speed.fp8 and offload:
        return f"fp8=True with {offload} offload: not measured together. Use fp8 without offload"
    return None


def machine_refusal(speed: Speedups, *, machine, dtype: str, emulated: bool) -> str | None:
    """Why these speed-ups cannot run on `machine` (the catalogue machine planned for; None: this CPU) in `dtype`
    (None: they can), as the end of a sentence that starts with what was asked."""
    on_cpu = machine is None
    if (speed.compile or speed.compile_vae) and dtype == "bfloat16" and machine is not None \
            and not machine.bf16_tensor_cores:
        return (f"compile in bfloat16 on the {machine.gpu}: inductor skips bf16 on GPUs without bf16 (compute "
                "capability below 8.0), so nothing would be compiled. Leave the dtype to the route (float16 there)")
    if speed.fp8:
        if on_cpu:
            return ("fp8=True on a CPU: FP8 needs a GPU with FP8 tensor cores (compute capability 8.9 or more: an "
                    "L4, an H100). Leave fp8 out here")
        if not machine.fp8_tensor_cores:
            capability = ".".join(map(str, machine.compute_capability))
            return (f"fp8=True on the {machine.gpu} (compute capability {capability}): FP8 tensor cores need 8.9 or "
                    "more (an L4, an H100). Leave fp8 out on this GPU")
        if dtype != "bfloat16":
            return (f"fp8=True in {dtype}: torchao's float8 with one scale per row quantizes bfloat16 weights only "
                    "(an assertion in torchao/quantization/quant_api.py). Leave the dtype to the route (bfloat16 on "
                    "FP8 GPUs), or leave fp8 out")
        if not emulated and not torchao_installed():
            return "fp8=True without torchao installed: `pip install torchao` (or `pip install .[fast]`), then load again"
    kernel = speed.attention_kernel
    if kernel and kernel not in CPU_KERNELS and on_cpu:
        return (f"attention_kernel={kernel!r} on a CPU: PyTorch has only {' and '.join(map(repr, CPU_KERNELS))} "
                "there. Use one of those, or leave it out")
    if kernel and machine is not None:
        needs_ampere = kernel in ("flash", "cudnn") or (kernel == "efficient" and dtype == "bfloat16")
        if needs_ampere and not machine.bf16_tensor_cores:
            return (f"attention_kernel={kernel!r} on the {machine.gpu} in {dtype}: PyTorch runs it from compute "
                    "capability 8.0. Leave it out: the route picks the attention this GPU can run")
        if kernel in ("flash", "cudnn") and dtype == "float32":
            return (f"attention_kernel={kernel!r} in float32: that kernel takes 16-bit inputs only. Use 'efficient' "
                    "or 'math'")
    return None


def not_run_here(speed: Speedups, emulated: bool) -> list[str]:
    """What an emulated route plans of `speed` that this CPU does not run."""
    if not emulated:
        return []
    skipped = ["FP8 linear layers (they need FP8 tensor cores)"] if speed.fp8 else []
    if speed.attention_kernel and speed.attention_kernel not in CPU_KERNELS:
        skipped.append(f"the {speed.attention_kernel} attention kernel (a CUDA kernel; PyTorch chooses here)")
    return skipped


def torchao_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("torchao") is not None


# ---------------------------------------------------------------------------------------------------------------
# Applying the rungs


@dataclass
class SpeedReport:
    """What `speed_up` did to one pipeline."""

    speed: Speedups
    applied: list[str]
    """The rungs applied here, in order."""
    skipped: list[str]
    """Rungs planned for another machine and not run on this CPU."""
    cached_attention: int = 0
    """Attention layers given the cache's hook."""


_reports: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""What speed_up applied to each pipeline, for as long as the pipeline lives."""


def speed_report(pipe) -> SpeedReport | None:
    """What `speed_up` applied to `pipe` (None: nothing)."""
    return _reports.get(pipe)


@checked(pipe=pipeline, speed=speedups_rule, run_everything=flag)
def speed_up(pipe, speed: Speedups, *, run_everything: bool = True) -> SpeedReport:
    """Apply the rungs of `speed` to `pipe`, in this order: FP8 layers, the attention kernel, the attention cache,
    then compiling (which must see the final modules). With `run_everything=False` (an emulated route), the rungs
    that need a GPU are recorded as skipped. Compiling is lazy: the first picture compiles."""

    report = SpeedReport(speed, [], not_run_here(speed, not run_everything))
    transformer = pipe.transformer
    if speed.fp8 and run_everything:
        quantize_fp8(transformer)
        report.applied.append("FP8 linear layers (torchao, one scale per row)")
    if speed.attention_kernel and (run_everything or speed.attention_kernel in CPU_KERNELS):
        use_attention_kernel(transformer, speed.attention_kernel)
        report.applied.append(f"{speed.attention_kernel} attention kernel")
    if speed.cache == "pab":
        report.cached_attention = cache_attention(transformer, every=speed.cache_every)
        report.applied.append(f"Pyramid Attention Broadcast on {report.cached_attention} attention layers")
    if speed.compile == "regional":
        transformer._repeated_blocks = [REPEATED_BLOCK]  # diffusers 0.42 leaves SD3's list empty
        transformer.compile_repeated_blocks(fullgraph=True, dynamic=False)
        report.applied.append(f"regional compile ({REPEATED_BLOCK})")
    elif speed.compile == "full":
        transformer.compile(fullgraph=True, dynamic=False)
        report.applied.append("full compile of the transformer")
    if speed.compile_vae:
        compile_vae_decoder(pipe.vae.decoder, report)
    _reports[pipe] = report
    return report


VAE_COMPILED = "VAE decoder channels-last, compiled"


def compile_vae_decoder(decoder, report: SpeedReport) -> None:
    """Compile the VAE decoder's forward, in channels-last memory format. Compiling happens at the first decode; if
    it fails there (no C++ compiler, an operation inductor cannot lower), the decoder is put back as it was (its
    own forward, the default memory format) before the error is raised, so the calls after it decode uncompiled
    instead of failing again."""
    import torch
    from torch._dynamo.exc import TorchDynamoException

    decoder.to(memory_format=torch.channels_last)
    # its forward only: the route's NaN check hooks the decoder, and a check that branches on a value cannot be part
    # of a full graph
    compiled = torch.compile(decoder.forward, fullgraph=True, dynamic=False)

    def forward(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except TorchDynamoException as error:
            del decoder.forward  # the class's own forward again
            decoder.to(memory_format=torch.contiguous_format)
            if VAE_COMPILED in report.applied:
                report.applied.remove(VAE_COMPILED)
            raise RuntimeError(f"Compiling the VAE decoder failed ({type(error).__name__}: "
                               f"{str(error).splitlines()[0][:300]}). The decoder runs uncompiled again: call the "
                               "pipeline again, or leave compile_vae out.") from error

    decoder.forward = forward
    report.applied.append(VAE_COMPILED)


def fp8_config():
    """torchao's dynamic float8 for the transformer's linear layers, one scale per row. `set_inductor_config=False`:
    torchao's default turns on coordinate-descent autotuning in inductor for the whole process, which makes every
    later compile slower (torchao/quantization/utils.py, `recommended_inductor_config_setter`)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)


def quantize_fp8(transformer) -> None:
    """The transformer's linear layers in float8, activations scaled per row at run time (torchao)."""
    from torchao.quantization import quantize_

    quantize_(transformer, fp8_config())


def use_attention_kernel(transformer, kernel: str | None) -> None:
    """Make every attention of an SD3 transformer run PyTorch's kernel `kernel` (None: PyTorch's choice), keeping
    each processor's other settings (fused q/k/v, bounded memory)."""
    from diffusers.models.attention_processor import Attention

    from helpers.attention import JointAttention

    for module in transformer.modules():
        if isinstance(module, Attention):
            processor = module.processor
            if isinstance(processor, JointAttention):
                processor.kernel = kernel
            else:
                module.set_processor(JointAttention(kernel=kernel))


def cache_attention(transformer, *, every: int = 2, window: tuple[int, int] = CACHE_WINDOW) -> int:
    """Pyramid Attention Broadcast (diffusers' hook) on every attention of the transformer's blocks: inside `window`
    (timesteps of 1000), attention is computed at every `every`-th step and reused between. Returns how many
    attention layers got the hook.

    The SD3 pipeline keeps no current timestep for the hook to read, so a hook on the transformer records the
    timestep of each call; and diffusers' hook keeps its step count between pictures, so that count is reset
    whenever a new picture starts (the timestep rises again). Without that reset, two calls with one seed differ.
    """
    from diffusers import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast
    from diffusers.hooks import HookRegistry

    now: dict[str, float | None] = {"timestep": None}

    def record_timestep(_module, args, kwargs):
        timestep = kwargs.get("timestep", args[3] if len(args) > 3 else None)
        value = float(timestep.flatten()[0])
        if now["timestep"] is not None and value >= now["timestep"]:  # a new picture: start counting again
            for module in transformer.modules():
                registry = getattr(module, "_diffusers_hook", None)
                if isinstance(registry, HookRegistry):
                    registry.reset_stateful_hooks()
        now["timestep"] = value

    transformer._timestep_hook = transformer.register_forward_pre_hook(record_timestep, with_kwargs=True)
    transformer._attention_cache = {"pab": every, "window": list(window)}
    config = PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=every,
                                             spatial_attention_timestep_skip_range=window,
                                             current_timestep_callback=lambda: now["timestep"])
    apply_pyramid_attention_broadcast(transformer, config)
    return sum(1 for module in transformer.modules()
               if getattr(module, "_diffusers_hook", None) is not None
               and module._diffusers_hook.get_hook("pyramid_attention_broadcast") is not None)


def remove_attention_cache(transformer) -> None:
    """Undo `cache_attention`: every attention computes at every step again."""
    handle = getattr(transformer, "_timestep_hook", None)
    if handle is None:
        raise ValueError("remove_attention_cache: this transformer has no attention cache to remove.")
    handle.remove()
    del transformer._timestep_hook, transformer._attention_cache
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.get_hook("pyramid_attention_broadcast") is not None:
            registry.remove_hook("pyramid_attention_broadcast", recurse=False)


@checked(transformer=sd3_transformer, every=whole(2, 100))
@contextmanager
def attention_cached(transformer, every: int = 2):
    """Inside the block, the transformer's attention is cached as by `cache_attention`; after it, computed at every
    step again: one pipeline timed both ways (notebook 03). Bad arguments raise at the call, before the block."""
    cache_attention(transformer, every=every)
    try:
        yield transformer
    finally:
        remove_attention_cache(transformer)


def speed_signature(pipe) -> dict[str, Any]:
    """The speed-ups acting on `pipe` now that can change its pictures, as plain data for a picture's cache key
    (helpers.experiments): those `speed_up` applied, and the attention cache and kernel as the transformer has them
    at this moment (`attention_cached` adds and removes the cache). Empty where none acts."""
    from helpers.attention import JointAttention

    transformer = getattr(pipe, "transformer", None)
    if transformer is None:
        return {}
    report = speed_report(pipe)
    found: dict[str, Any] = {}
    if report is not None:
        found.update({name: value for name, value in asdict(report.speed).items()
                      if name in ("compile", "compile_vae", "fp8") and value})
    kernels = sorted({module.processor.kernel for module in transformer.modules()
                      if isinstance(getattr(module, "processor", None), JointAttention) and module.processor.kernel})
    if kernels:
        found["attention_kernel"] = kernels
    cache = getattr(transformer, "_attention_cache", None)
    if cache is not None:
        found["cache"] = cache
    return found


def compiled_graphs() -> int:
    """Graphs torch.compile has compiled in this process so far: one more after a call means that call compiled
    (or recompiled) something."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


SDPA_OPERATIONS = {
    "aten._scaled_dot_product_flash_attention.default": "flash",
    "aten._scaled_dot_product_flash_attention_for_cpu.default": "flash (CPU)",
    "aten._scaled_dot_product_efficient_attention.default": "efficient",
    "aten._scaled_dot_product_cudnn_attention.default": "cudnn",
}
"""PyTorch's operation for each fused attention kernel. Its math kernel has none of its own: it runs as matrix
multiplies and a softmax."""


@checked(pipe=pipeline, size=whole(16, 4096), text_tokens=whole(1, 4096), batch=whole(1, 64))
def attention_kernel_used(pipe, size: int, text_tokens: int = 77 + 256, batch: int = 2) -> str:
    """The attention kernel PyTorch dispatches for `pipe`'s joint attention at `size` x `size` with `text_tokens`
    (CLIP's 77 and T5's), batch 2 (with CFG): one attention call with the transformer's shapes, dtype, device and
    processor settings, watched at PyTorch's dispatcher, which sees the operation that runs. (PyTorch's profiler
    sees it too, but prints its own start and stop lines in every notebook cell that uses it.)"""
    import torch
    from diffusers.models.attention_processor import Attention
    from torch.utils._python_dispatch import TorchDispatchMode

    from helpers.attention import chunked_attention

    class Operations(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.add(str(func))
            return func(*args, **(kwargs or {}))

    transformer = pipe.transformer
    attention = next(module for module in transformer.modules() if isinstance(module, Attention))
    processor = attention.processor
    patch = transformer.config.patch_size
    tokens = (size // pipe.vae_scale_factor // patch) ** 2 + text_tokens
    head_size = transformer.config.attention_head_dim
    parameter = next(transformer.parameters())
    dtype = parameter.dtype if parameter.is_floating_point() else pipe.dtype
    query = torch.randn(batch, attention.heads, tokens, head_size, dtype=dtype, device=pipe._execution_device)
    with torch.no_grad(), Operations() as watched:
        chunked_attention(query, query, query, getattr(processor, "query_chunk", None),
                          getattr(processor, "kernel", None))
    found = [label for operation, label in SDPA_OPERATIONS.items() if operation in watched.seen]
    if not found and "aten.bmm.default" in watched.seen:
        found = ["math"]
    return ", ".join(found) or "none recognised"


# ---------------------------------------------------------------------------------------------------------------
# What each rung costs the toy's pictures


COSTED = {
    "regional compile": Speedups(compile="regional"),
    "attention cache, every 2 steps": Speedups(cache="pab", cache_every=2),
    "attention cache, every 3 steps": Speedups(cache="pab", cache_every=3),
    "math attention kernel": Speedups(attention_kernel="math"),
}
"""The rungs whose cost to the pictures runs on a CPU, measured by `picture_costs` on the toy model. FP8 and the
CUDA kernels need a GPU; the VAE's compile changes the decode only within float tolerance, like the transformer's."""


@checked(count=whole(2, 1024), progress=flag)
def picture_costs(count: int = 64, progress: bool = True) -> dict[str, Any]:
    """For each rung of COSTED: the toy's pictures of `count` evaluation scenes with it and without, judged, seed by
    seed: whether each followed its prompt (1) or not (0), for `paired_change`, and how far apart the pictures
    are (mean pixel difference, 0 to 255). Also the time of a picture without the rungs, and of each rung's first
    batch of 16 (with the compiling, where it compiles: `python -m helpers.speed costs` compiles into an empty
    cache folder, as a reader's first run does): one pass each, rough figures. What a rung saves in time is
    measured on a GPU (gpu_check) and, in alternating rounds, by notebook 03."""
    import platform

    import torch

    from helpers.evaluation import evaluation_scenes, generate_batch, judged
    from helpers.experiments import mean_difference
    from helpers.loading import load_pipeline

    scenes = evaluation_scenes(count)
    prompts = [item.caption for item in scenes]

    def pictures(pipe):
        pipe.set_progress_bar_config(disable=True)
        started = time.perf_counter()
        made = generate_batch(pipe, prompts, range(count), batch_size=16, progress=progress)
        return made, (time.perf_counter() - started) / count

    base_pipe = load_pipeline("toy")
    base, base_seconds = pictures(base_pipe)
    base_followed = [int(all(flags)) for flags in _flags(judged(base, scenes), scenes)]
    rows = {}
    for label, speed in COSTED.items():
        pipe = load_pipeline("toy", speed=speed)
        started = time.perf_counter()
        generate_batch(pipe, prompts[:16], range(16), batch_size=16)  # the first call compiles where asked
        first_s = time.perf_counter() - started
        made, _ = pictures(pipe)
        rows[label] = {
            "speed": asdict(speed),
            "followed_by_seed": [int(all(flags)) for flags in _flags(judged(made, scenes), scenes)],
            "mean_pixel_difference": round(sum(map(mean_difference, base, made)) / count, 3),
            "max_pixel_difference": round(max(map(mean_difference, base, made)), 3),
            "first_batch_s": round(first_s, 2),
        }
        del pipe
    return {"model": "toy", "count": count, "settings": "the toy's own: 20 steps, guidance 3.0, 64x64, batches of 16",
            "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s)", "torch": torch.__version__,
            "base_followed_by_seed": base_followed, "base_seconds_per_picture": round(base_seconds, 4),
            "rungs": rows}


def _flags(adherence, scenes):
    return [(reading.colour == item.colour, reading.shape == item.shape, reading.background == item.background)
            for reading, item in zip(adherence.readings, scenes, strict=True)]


COSTS_FILE = Path(__file__).parent / "configs" / "speed-costs.json"
"""The committed record of `python -m helpers.speed costs` that notebook 03 shows."""


def recorded_costs() -> dict[str, Any]:
    """The committed record of what each rung cost the toy's pictures (COSTS_FILE)."""
    return json.loads(COSTS_FILE.read_text())


def _is_costs_json(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"model", "rungs"} <= set(data)


def main(argv: list[str] | None = None) -> int:
    """Measure what each speed-up that runs on a CPU costs the toy model's pictures."""
    parser = argparse.ArgumentParser(prog="python -m helpers.speed", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    costs = commands.add_parser("costs", help="each rung's cost to the toy's pictures, judged over paired seeds")
    costs.add_argument("--out", type=Path, required=True, help="folder for speed-costs.json")
    costs.add_argument("--count", type=int, default=64, help="scenes (seeds) per rung (default 64)")
    args = parser.parse_args(argv)
    try:
        whole(2, 1024)(args.count, "--count")
        out = check_output_file(args.out / COSTS_FILE.name, "--out", ours=_is_costs_json)
    except ValueError as error:
        parser.error(str(error))
    from helpers.speed import picture_costs as measure  # this module's own classes, not __main__'s copies

    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="inductor-") as fresh:
        # compiled code from earlier runs would make the compile time look shorter than a reader's first one
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = fresh
        try:
            record = measure(args.count)
        finally:
            if before is None:
                del os.environ["TORCHINDUCTOR_CACHE_DIR"]
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = before
    write_output_file(out, json.dumps(record, indent=1) + "\n")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

