"""How a pipeline is loaded on a machine, its *route*: decided in one place (`plan_route`) and applied by one
function (`build_pipeline`), which `load_pipeline`, `python -m helpers.bench` and `python -m helpers.gpu_check` all
call.

Introduced in notebook 02. A route is the dtype, which parts are NF4 or 8-bit or dropped, what is offloaded, the
attention the GPU can run, and VAE tiling. On a GPU it is planned for that GPU. With SD35_MACHINE set (or
`machine=` given) it is planned for that catalogue machine (helpers.machines) and then applied on this CPU to the
offline model: the same dtype, quantized layers, attention and tiling; only what needs a GPU (offload hooks, CUDA
streams) is planned and reported, not run.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from helpers.checks import checked, optional, shown, side
from helpers.machines import MACHINES, Machine, emulated_machine, get_machine, live_machine, machine_rule
from helpers.memory import VAE_TILE
from helpers.models import ModelSpec, get_model, model_spec
from helpers.speed import Speedups, combination_refusal, machine_refusal, speedups_rule
from helpers.speed import not_run_here as speed_not_run_here

if TYPE_CHECKING:
    import torch

OFFLOAD_CHOICES = ("auto", None, "model", "sequential", "group")
QUANTIZE_CHOICES = ("auto", None, "nf4")
T5_CHOICES = ("auto", "keep", "drop", "nf4", "int8")

AUTO_ROUTES = ("gpu", "model-offload", "t5-int8", "t5-nf4", "nf4", "nf4-model-offload", "nf4-t5-nf4", "no-t5",
               "nf4-no-t5")
"""The strategies of helpers.memory that 'auto' options try, in order: full precision first, then offload (slower),
then 8- and 4-bit weights, T5 dropped last (weaker prompt following). Sequential and group offload are never
chosen for you: they copy every weight to the GPU at every step."""


H100_OFFLOAD_GB_PER_S = 2.2
"""What model offload moved per second on the H100 machine: 32.1 GB per image in 14.4 s (benchmarks/RESULTS.md)."""

COSTS = {
    "gpu": "",
    "nf4": "NF4 transformer: +2% time on an H100 (measured: 5.72 s against 5.58 s for Large, 28 steps); pictures "
           "differ slightly from 16-bit",
    "t5-nf4": "T5 in NF4: prompt embeddings differ slightly from 16-bit; its time cost is not measured",
    "t5-int8": "T5 in 8-bit: prompt embeddings differ slightly from 16-bit; its time cost is not measured",
    "no-t5": "no T5: long prompts are followed less well (notebook 08)",
    "nf4-no-t5": "NF4 transformer (+2% time on an H100, measured) and no T5: long prompts are followed less well "
                 "(notebook 08)",
    "sequential-offload": "sequential offload: every weight crosses to the GPU at every step (Medium, 2 steps: 4.9 s "
                          "on an H100, measured)",
    "group-offload": "group offload: every block crosses to the GPU at every step (Medium, 2 steps: 18.2 s on an "
                     "H100, measured)",
}
"""What each strategy costs besides memory, measured where benchmarks/RESULTS.md has it, else said to be unmeasured.
Model offload's cost is computed per model (`Route.cost`)."""


@dataclass(frozen=True)
class Route:
    """How one pipeline is loaded: for which model and machine, in which dtype, with which parts quantized,
    dropped or offloaded, which attention and whether the VAE decodes in tiles."""

    model: str
    """The model the route was planned for (a full-size model, or an offline model on its own)."""
    runs: str
    """The model that loads: the same, or the offline model playing it."""
    machine: Machine | None
    """The machine planned for (None: this CPU)."""
    emulated: bool
    """Planned for `machine`, run on this CPU."""
    device: str
    dtype: str
    quantize: str | None = None
    t5: str = "keep"
    offload: str | None = None
    attention: str = "fused"
    vae_tiling: bool = False
    strategy: str | None = None
    """The helpers.memory strategy these options stand for (None: an offline model, or a CPU)."""
    speed: Speedups = field(default_factory=Speedups)
    """The rungs of the speed ladder applied after loading (helpers.speed)."""

    @property
    def key(self) -> tuple:
        """What makes two loads the same: every field, the machine by its name (a GPU's free memory changes)."""
        from dataclasses import astuple

        return (*astuple(replace(self, machine=None)), None if self.machine is None else self.machine.name)

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype)

    @property
    def offloads_here(self) -> bool:
        """Whether offload hooks are turned on here (an emulated route only plans them)."""
        return self.offload is not None and not self.emulated

    @property
    def quantized(self) -> bool:
        return self.quantize == "nf4" or self.t5 in ("nf4", "int8")

    def not_run_here(self) -> list[str]:
        """What the route plans that this machine does not run (an emulated route's GPU-only parts)."""
        if not self.emulated:
            return []
        skipped = []
        if self.offload:
            skipped.append(f"{self.offload} CPU offload (its hooks need a GPU)")
        if self.quantize == "nf4":
            skipped.append("diffusers' BitsAndBytesConfig quantizer (it needs a GPU; the same bitsandbytes NF4 "
                           "layers are built directly)")
        return skipped + speed_not_run_here(self.speed, self.emulated)

    def cannot_fuse_qkv(self) -> str | None:
        """Why fused q/k/v projections cannot be used on this route (None: they can)."""
        return fuse_refusal(self.quantize, self.offload)

    def cost(self) -> str:
        """What this route costs besides memory, with how strong the figure is."""
        parts = []
        if self.machine is not None and self.dtype == "float16":
            why = (f"the {self.machine.gpu} has no bf16 tensor cores, so the series computes in float16"
                   if self.machine.dtype == "float16" else
                   f"float16 as asked (the {self.machine.gpu} would compute in {self.machine.dtype})")
            parts.append(f"float16: {why} (pictures differ slightly from bf16; a NaN check stops overflow)")
        if self.strategy in ("model-offload", "nf4-model-offload") and not get_model(self.model).is_stand_in:
            from helpers.memory import offload_traffic_gb

            traffic = offload_traffic_gb(self.model, self.strategy)
            parts.append(f"model offload copies {traffic:.0f} GB an image: about +{traffic / H100_OFFLOAD_GB_PER_S:.0f} "
                         f"s an image at the {H100_OFFLOAD_GB_PER_S} GB/s it reached on an H100 (estimate)")
        elif self.strategy == "nf4-t5-nf4":
            parts += [COSTS["nf4"], COSTS["t5-nf4"]]
        elif self.strategy:
            parts.append(COSTS.get(self.strategy, ""))
        if self.attention == "bounded":
            parts.append("attention 512 queries at a time (no fused kernel for this dtype here): the same pictures")
        if self.vae_tiling:
            parts.append(f"VAE decoded in {VAE_TILE}-pixel tiles so the decode fits: faint seams are possible")
        return "; ".join(part for part in parts if part) or "none"

    def describe(self) -> str:
        """One line: dtype, storage of each part, offload, attention, tiling."""
        parts = [self.dtype, f"transformer {'NF4' if self.quantize else '16-bit'}",
                 {"keep": "T5 16-bit", "drop": "no T5", "nf4": "T5 NF4", "int8": "T5 8-bit"}[self.t5]]
        if self.offload:
            parts.append(f"{self.offload} offload")
        parts.append(f"{self.attention} attention")
        if self.vae_tiling:
            parts.append("VAE tiles")
        if self.speed.any:
            parts.append(self.speed.describe())
        return ", ".join(parts)

    def report(self) -> str:
        """The route as setup() and load_pipeline tell it: what, where, at what cost, and what is not run here."""
        where = ("this CPU" if self.machine is None else
                 f"{self.machine.name}, emulated on this CPU" if self.emulated else self.machine.gpu)
        title = get_model(self.model).title
        played = "" if self.runs == self.model else f" (played by the {get_model(self.runs).title.lower()})"
        lines = [f"{title}{played} on {where}: {self.strategy or 'as it is'} ({self.describe()}). Cost: {self.cost()}."]
        if self.not_run_here():
            lines.append("Planned, not run on this CPU: " + "; ".join(self.not_run_here()) + ".")
        return "\n".join(lines)


def fuse_refusal(quantize: str | None, offload: str | None) -> str | None:
    """Why q/k/v projections cannot be fused with these options (None: they can)."""
    if quantize == "nf4":
        return ("this route stores the transformer in NF4, whose packed 4-bit q, k and v blocks cannot be joined "
                "into one matrix")
    if offload in ("sequential", "group"):
        return f"{offload} offload moves the separate q, k and v layers, and a fused layer has no hooks"
    return None


def default_device() -> str:
    """'cuda' where a CUDA GPU is present, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: object) -> str:
    """'cpu', 'cuda' or 'cuda:N' for a GPU PyTorch can use here; else ValueError saying what is available."""
    import torch

    text = str(device) if isinstance(device, (str, torch.device)) else None
    kind, _, index = (text or "").partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise ValueError(f"device={shown(device)} is not a device of this series: use 'cuda' (or 'cuda:1', ...) for a "
                         "GPU, 'cpu', or leave it out to pick the GPU where there is one.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={shown(device)}, but PyTorch sees no CUDA GPU on this machine (torch "
                         f"{torch.__version__}). Leave device out to run on the CPU; setup() says why a GPU is not "
                         "seen where there is one.")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"device={shown(device)}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0.")
    return text


def _dtype_name(dtype, name: str = "dtype") -> str | None:
    import torch

    if dtype is None:
        return None
    names = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}
    if isinstance(dtype, str) and dtype in names.values():
        return dtype
    if isinstance(dtype, torch.dtype) and dtype in names:
        return names[dtype]
    default = " (or leave it out: the machine's own)" if name == "dtype" else ""
    raise ValueError(f"{name}={shown(dtype)} is not a dtype of this series. Use torch.bfloat16, torch.float16 or "
                     f"torch.float32{default}.")


def option(value: object, name: str) -> object:
    """One of the choices of load_pipeline's `offload`, `quantize` or `t5`: a rule for `helpers.checks`."""
    choices = {"offload": OFFLOAD_CHOICES, "quantize": QUANTIZE_CHOICES, "t5": T5_CHOICES}[name]
    if not any(value is choice or (isinstance(value, str) and value == choice) for choice in choices):
        hint = ("quantize='nf4' (4-bit), None (16-bit) or 'auto' (16-bit where it fits)" if name == "quantize"
                else f"one of: {', '.join(map(repr, choices))}")
        raise ValueError(f"{name}={shown(value)} is not supported. Use {hint}.")
    return value


def device_rule(value: object, name: str = "device") -> str:
    """A device of this machine (None picks one): a rule for `helpers.checks`."""
    return check_device(value)


def dtype_rule(value: object, name: str = "dtype"):
    """torch.bfloat16, torch.float16 or torch.float32 (or their names): a rule for `helpers.checks`."""
    _dtype_name(value, name)
    return value


def check_choices(offload, quantize, t5) -> None:
    """Each option is one of its choices, and they work together; else ValueError naming the value and the fix."""
    option(offload, "offload")
    option(quantize, "quantize")
    option(t5, "t5")
    if (quantize == "nf4" or t5 in ("nf4", "int8")) and offload in ("sequential", "group"):
        raise ValueError(
            f"offload={shown(offload)} does not work with bitsandbytes 4-bit or 8-bit layers (quantize={shown(quantize)}, "
            f"t5={shown(t5)}): their weights cannot be moved layer by layer. Use offload='model' with quantization, "
            "or drop the quantization to use this offload."
        )


@checked(model=model_spec, machine=optional(machine_rule), device=optional(device_rule), dtype=optional(dtype_rule),
         offload=option, quantize=option, t5=option, size=optional(side), speed=speedups_rule)
def plan_route(model: str | ModelSpec, *, machine: str | Machine | None = None, device: str | None = None,
               dtype=None, offload="auto", quantize="auto", t5="auto", size: int | None = None,
               speed: Speedups | dict | None = None) -> Route:
    """The route `model` loads with: for `machine` (a catalogue name) or SD35_MACHINE where set, emulated on this
    CPU; else for the GPU here (`device`); else for this CPU. Options left 'auto' take the first route of
    AUTO_ROUTES that fits (helpers.memory's estimates, in the machine's dtype), turning on VAE tiling where only
    that makes the decode fit. `speed`: the rungs of helpers.speed's ladder (a dict such as
    `{'compile': 'regional'}`), checked against the route. Raises, naming the value and the fix, before anything
    loads."""
    speed = speed or Speedups()
    asked = combination_refusal(speed, offload=None if offload == "auto" else offload,
                                quantize=None if quantize == "auto" else quantize)
    if asked:  # whatever the machine: said before planning
        raise ValueError(f"speed ({speed.describe()}) cannot run: {asked}.")
    route = _plan(model, machine=machine, device=device, dtype=dtype, offload=offload, quantize=quantize, t5=t5,
                  size=size)
    if not speed.any:
        return route
    why_not = (combination_refusal(speed, offload=route.offload, quantize=route.quantize)
               or machine_refusal(speed, machine=route.machine, dtype=route.dtype, emulated=route.emulated))
    if why_not:
        raise ValueError(f"speed ({speed.describe()}) cannot run on this route ({route.describe()}): {why_not}.")
    return replace(route, speed=speed)


def _plan(model, *, machine, device, dtype, offload, quantize, t5, size) -> Route:
    from helpers.memory import fits_machine, load_options, strategy_named

    spec = get_model(model)
    check_choices(offload, quantize, t5)
    dtype = _dtype_name(dtype)
    target = get_machine(machine) if machine is not None else emulated_machine()
    emulated = target is not None
    if emulated:
        if device not in (None, "cpu"):
            raise ValueError(f"device={device!r} with machine {target.name!r}: an emulated machine runs on this CPU. "
                             "Leave device out, or unset SD35_MACHINE to use the GPU here.")
        device = "cpu"
    else:
        device = check_device(device or default_device())
        target = live_machine(device)
    planned = spec.plays or spec.name
    base = {"model": planned, "runs": spec.name, "machine": target, "emulated": emulated, "device": device}
    chosen = {"offload": offload, "quantize": quantize, "t5": t5}
    # the options as asked, each 'auto' read as the default it stands for where nothing is planned
    as_asked = {"offload": None if offload == "auto" else offload, "quantize": None if quantize == "auto" else
                quantize, "t5": "keep" if t5 == "auto" else t5}
    if target is None:  # this CPU, nothing to plan
        if offload not in ("auto", None):
            raise ValueError(f"offload={shown(offload)} needs a CUDA GPU; device={shown(device)}. Use offload=None on a CPU.")
        return Route(**base, dtype=dtype or "float32", **as_asked)
    dtype = dtype or target.dtype
    attention = "fused" if target.fused_attention(dtype) else "bounded"
    if get_model(planned).is_stand_in:  # an offline model fits any machine
        return Route(**base, dtype=dtype, attention=attention, **as_asked)
    side = size or get_model(planned).height
    if offload != "auto":  # an explicit offload: check the options as given
        name = strategy_named(as_asked)
        candidates = [name] if name else []
        if not name:  # a combination helpers.memory does not estimate: loaded as asked, not refused
            return Route(**base, dtype=dtype, attention=attention, **as_asked)
    else:
        candidates = [name for name in AUTO_ROUTES
                      if all(value in ("auto", load_options(name).get(key, {"t5": "keep"}.get(key)))
                             for key, value in chosen.items() if key != "offload")]
    for name in candidates:
        for tiling in (False, True):
            if fits_machine(planned, name, target, side, dtype, vae_tiling=tiling):
                options = {"quantize": None, "t5": "keep", **load_options(name)}
                return Route(**base, dtype=dtype, attention=attention, vae_tiling=tiling, strategy=name, **options)
    raise _does_not_fit(get_model(planned), target, dtype, side, ", ".join(f"{key}={value!r}" for key, value in
                                                                         chosen.items() if value != "auto")
                        or "any automatic route")


def _does_not_fit(spec: ModelSpec, machine: Machine, dtype: str, size: int, options: str) -> MemoryError:
    """The error for a model that does not fit a machine with `options`, listing the options that fit."""
    from helpers.memory import load_options, routes_that_fit

    fitting = [", ".join(f"{key}={value!r}" for key, value in load_options(name).items())
               for name in routes_that_fit(spec.name, machine, size, dtype)]
    host = "" if machine.host_gb is None else f", {machine.host_gb:.1f} GB of RAM"
    flags = (f"--machine {machine.name}" if machine.name in MACHINES else
             f"--gpu-gb {machine.gpu_gb:.0f}" + ("" if machine.host_gb is None else f" --host-gb {machine.host_gb:.0f}")
             + " --compute-capability " + ".".join(map(str, machine.compute_capability)))
    return MemoryError(
        f"{spec.title} does not fit this machine ({machine.gpu_gb:.1f} GB of GPU memory free{host}, {dtype}) with "
        f"{options}. "
        + (f"Loading options that fit: {'; '.join(fitting)}. " if fitting else
           "No loading option fits it; use SD3.5 Medium (SD35_MODEL=medium) or a larger GPU. ")
        + f"A pipeline loaded earlier takes its share: `del` it first. `python -m helpers.memory {flags}` shows "
          "every estimate."
    )


# ---------------------------------------------------------------------------------------------------------------
# Applying a route


class NonFiniteError(FloatingPointError):
    """A pipeline produced NaN or infinite values: the message names the part and the fix."""


_FIXES = {
    "text_encoder_3": "T5's prompt embeddings",
    "transformer": "the transformer's final latents",
    "vae": "the VAE's decoded picture",
}


def guard_against_non_finite(pipe) -> None:
    """Check T5's embeddings, the final latents and the decoded picture for NaN or inf (one reduction each per
    image) and stop with NonFiniteError naming the part, instead of a black picture."""
    import torch

    dtype = str(pipe.dtype).removeprefix("torch.")

    def stop(part: str):
        fix = ("load that part in bfloat16 (`load_pipeline(..., dtype=torch.bfloat16)`; slower on GPUs without bf16 "
               "tensor cores) or in NF4 (`quantize='nf4'`, `t5='nf4'`)" if dtype == "float16" else
               "check the weights: a damaged or mismatched file gives this too")
        raise NonFiniteError(f"{_FIXES[part]} hold NaN or infinite values ({dtype}), so the picture would be black or "
                             f"noise. Fix: {fix}.")

    def check(part: str, tensor) -> None:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            stop(part)

    if getattr(pipe, "text_encoder_3", None) is not None:
        pipe.text_encoder_3.register_forward_hook(lambda module, args, output: check("text_encoder_3", output[0]))
    decoder = pipe.vae.decoder
    decoder.register_forward_pre_hook(lambda module, args: check("transformer", args[0]))
    decoder.register_forward_hook(lambda module, args, output: check("vae", output))


def tile_vae_decode(vae, tile: int = VAE_TILE) -> None:
    """Decode in `tile`-pixel tiles (diffusers' tiling, with its tile size set: see VAE_TILE)."""
    vae.enable_tiling()
    vae.tile_sample_min_size = tile
    vae.tile_latent_min_size = tile // 8


def apply_offload(pipe, offload: str, device: str) -> None:
    """Turn on diffusers' CPU offload of one kind: 'model', 'sequential' or 'group' (one block per group)."""
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif offload == "group":
        import torch

        pipe.enable_group_offload(onload_device=torch.device(device), num_blocks_per_group=1, use_stream=True)
    else:
        raise ValueError(f"offload={shown(offload)} is not an offload; use 'model', 'sequential' or 'group'.")


def build_pipeline(route: Route, pipeline_class=None, *, weights: str = "pretrained"):
    """The pipeline of `route`: its weights loaded (`weights='pretrained'`: the hub or the offline model's folder)
    or built with random values at full size (`weights='random'`, for GPU timing), then the route applied, in this
    order: NF4 layers where no loader made them, bounded attention, VAE tiling, offload (where it runs), the NaN
    check, and the speed-ups (helpers.speed)."""
    from helpers import quantization
    from helpers.attention import bound_attention_memory

    spec = get_model(route.runs)
    if route.emulated and not spec.is_stand_in:
        raise ValueError(f"{spec.title} cannot run on this CPU: SD35_MACHINE={route.machine.name} plans as that "
                         "machine and runs the offline models (SD35_MODEL=toy or tiny). Unset SD35_MACHINE on a GPU "
                         "machine to run SD3.5.")
    if weights == "random":
        pipe = _random_weights(route)
    elif weights == "pretrained":
        from helpers.loading import load_weights

        pipe = load_weights(pipeline_class, route)
    else:
        raise ValueError(f"weights={shown(weights)}: use 'pretrained' or 'random'.")
    if route.quantize == "nf4" and not quantization.count_4bit_layers(pipe.transformer):
        quantization.quantize_linear_layers_nf4(pipe.transformer, compute_dtype=route.torch_dtype)
    if route.attention == "bounded":
        bound_attention_memory(pipe)  # no fused kernel for this dtype here: GBs of scores otherwise
    if route.vae_tiling:
        tile_vae_decode(pipe.vae)
    if route.offloads_here:
        apply_offload(pipe, route.offload, route.device)
    guard_against_non_finite(pipe)
    if route.speed.any:  # last: compiling must see the final modules
        from helpers.speed import speed_up

        speed_up(pipe, route.speed, run_everything=not route.emulated)
    return pipe


def _random_weights(route: Route):
    """The full-size pipeline of `route.runs` with random weights: built on the GPU, or in CPU memory when the route
    offloads (never the whole model on a GPU that offload is for)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from helpers import quantization
    from helpers.architecture import COMPONENTS, build_component, reference_config
    from helpers.tiny import tiny_pipeline_dir

    spec = get_model(route.runs)
    if spec.is_stand_in:
        raise ValueError("weights='random' builds a full-size model; use it with large, large-turbo or medium.")
    if not (route.device.startswith("cuda") or route.device == "meta"):  # meta: shapes only, for tests
        raise ValueError("Random weights need a CUDA GPU: a full-size model with random weights is for GPU timing.")
    stand_in = StableDiffusion3Pipeline.from_pretrained(
        tiny_pipeline_dir(), transformer=None, vae=None, text_encoder=None, text_encoder_2=None, text_encoder_3=None
    )
    build_on = "cpu" if route.offload else route.device
    dtype = route.torch_dtype
    parts = {}
    for part in COMPONENTS:
        if part == "text_encoder_3" and route.t5 == "drop":
            parts[part] = None
            continue
        # .to(dtype): diffusers builds the transformer's positional table in float32; a checkpoint loads it in dtype
        module = build_component(spec.name, part, device=build_on, dtype=dtype).to(dtype=dtype).eval()
        if part == "text_encoder_3" and route.dtype == "float16":
            for name, layer in module.named_modules():  # as transformers loads T5 in float16: `wo` in float32
                if name.endswith(".wo"):
                    layer.float()
        if part == "text_encoder_3" and route.t5 in ("nf4", "int8"):
            if route.t5 == "int8":
                raise ValueError("t5='int8' is not built with random weights; use t5='nf4' or 'keep'.")
            quantization.quantize_linear_layers_nf4(module, compute_dtype=dtype, skip=(".wo",))
        parts[part] = module
    return StableDiffusion3Pipeline(
        **parts,
        tokenizer=stand_in.tokenizer,
        tokenizer_2=stand_in.tokenizer_2,
        tokenizer_3=None if route.t5 == "drop" else stand_in.tokenizer_3,
        scheduler=FlowMatchEulerDiscreteScheduler(**reference_config("scheduler")),
    )


_routes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""The route of each pipeline load_pipeline handed out, for as long as the pipeline lives."""


def remember(pipe, route: Route) -> None:
    """Record the route `pipe` was loaded with (`route_of` reads it)."""
    _routes[pipe] = route


def route_of(pipe) -> Route | None:
    """The route a pipeline from load_pipeline was loaded with (None: not loaded by the helpers)."""
    try:
        return _routes.get(pipe)
    except TypeError:  # an object that cannot be weakly referenced or hashed: not a pipeline of ours
        return None
