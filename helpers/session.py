"""`setup()`: the one setup call at the top of every notebook.

Introduced in notebook 01. It picks the model (from SD35_MODEL and the GPU), the device and dtype, seeds every
random generator, and prints one short report: versions, GPU, whether a Hugging Face token is present (never
its value), and what to do when something is missing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from helpers.access import has_token
from helpers.checks import check_seed
from helpers.images import output_dir
from helpers.loading import choose_route, default_device, default_dtype, gpu_memory_gb, this_machine
from helpers.memory import STRATEGIES
from helpers.models import AUTO, MODEL_VARIABLE, MODELS, ModelSpec, get_model, model_setting

if TYPE_CHECKING:
    import torch

NO_GPU_BANNER = (
    "No GPU found: running the offline toy model, a small SD3 pipeline trained on drawn shapes (notebook 09). "
    "Every cell runs the same diffusers code as on a GPU, with toy-world prompts in place of SD3.5's. For SD3.5 "
    "itself, open this notebook on a GPU machine (Colab, SageMaker) with a Hugging Face token."
)
T = TypeVar("T")
REPORTED_PACKAGES = ("torch", "diffusers", "transformers", "huggingface_hub", "accelerate")


@dataclass(frozen=True)
class GpuInfo:
    name: str
    memory_gb: float
    native_bf16: bool
    free_gb: float | None = None
    """GPU memory not yet taken when setup() ran (None: all of it)."""
    host_gb: float | None = None
    """The machine's RAM (None: not counted)."""

    @property
    def card(self):
        """This GPU as helpers.memory describes cards, for choosing how each model loads."""
        from helpers.memory import Card

        return Card(self.memory_gb if self.free_gb is None else self.free_gb, fused_bf16_attention=self.native_bf16,
                    host_gb=self.host_gb)


@dataclass(frozen=True)
class Session:
    """What `setup()` decided; later cells read the model, device and dtype from here."""

    models: tuple[ModelSpec, ...]
    about: tuple[ModelSpec, ...]
    device: str
    dtype: torch.dtype
    seed: int
    gpu: GpuInfo | None
    token_present: bool
    output_dir: Path
    versions: dict[str, str]
    notes: tuple[str, ...]

    @property
    def model(self) -> ModelSpec:
        """The model this notebook runs (the first of `models`)."""
        return self.models[0]

    @property
    def full_size(self) -> ModelSpec:
        """The full-size model whose figures (sizes, memory estimates) the notebook shows: the model that runs,
        or, where the stand-in runs, the model the notebook is about."""
        return self.model if not self.model.is_stand_in else self.about[0]

    def pick(self, *, sd35: T, toy: T) -> T:
        """The SD3.5 version of an experiment, or its toy-world counterpart where an offline model runs.

        The toy model knows only the toy world's words (shapes, six colours, backgrounds), so every experiment
        asks its question there in the toy's terms: `run.pick(sd35="A group of elves...", toy="a red circle")`.
        """
        return toy if self.model.is_stand_in else sd35

    def fits(self, spec: ModelSpec, *, offload="auto", quantize="auto", t5="auto") -> bool:
        """Whether `load_pipeline(spec, offload=..., quantize=..., t5=...)` fits this machine's GPU and RAM
        (helpers.memory's estimates); if not, says so. Without a GPU everything fits (it runs on the CPU)."""
        from helpers.loading import check_options

        try:
            check_options(spec, self.device, offload, quantize, t5)
        except MemoryError:
            options = ", ".join(f"{name}={value!r}" for name, value in
                                (("offload", offload), ("quantize", quantize), ("t5", t5)) if value != "auto")
            print(f"{spec.title} with {options or 'its automatic route'} does not fit this machine: skipped here.")
            return False
        return True

    def fitting(self, variants: Sequence[tuple[ModelSpec, str | None]]) -> list[tuple[ModelSpec, str | None]]:
        """The (model, quantize) pairs that `load_pipeline(model, quantize=quantize)` can load on this machine;
        says which it leaves out. Without a GPU every pair loads (on the CPU)."""
        return [(spec, quantize) for spec, quantize in variants if self.fits(spec, quantize=quantize)]

    def gpu_offload(self, offload: str) -> str | None:
        """`offload` where there is a GPU to offload to; None on a CPU, where everything is in CPU memory already."""
        return offload if self.gpu is not None else None

    def report(self) -> str:
        """The setup report as text."""
        gpu = "none" if self.gpu is None else f"{self.gpu.name}, {self.gpu.memory_gb:.1f} GB"
        token = "found (value not shown)" if self.token_present else "not found"
        lines = [
            f"model      {', '.join(spec.title for spec in self.models)}",
            f"device     {self.device}, {str(self.dtype).removeprefix('torch.')}",
            f"GPU        {gpu}",
            f"HF token   {token}",
            f"versions   {', '.join(f'{name} {version}' for name, version in self.versions.items())}",
            f"outputs    {self.output_dir}",
            f"seed       {self.seed}",
        ]
        return "\n".join(lines + [""] + list(self.notes)).rstrip()


def _gpu() -> GpuInfo | None:
    import torch

    if not torch.cuda.is_available():
        return None
    machine = this_machine("cuda")
    return GpuInfo(
        name=torch.cuda.get_device_name(0),
        memory_gb=gpu_memory_gb("cuda") or 0.0,
        native_bf16=machine.fused_bf16_attention,
        free_gb=machine.memory_gb,
        host_gb=machine.host_gb,
    )


def _nvidia_gpu_present() -> bool:
    """Whether the NVIDIA driver reports a GPU, whatever PyTorch sees."""
    return Path("/proc/driver/nvidia/gpus").is_dir() and any(Path("/proc/driver/nvidia/gpus").iterdir())


def _versions() -> dict[str, str]:
    found = {}
    for package in REPORTED_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def _choose_models(
    about: tuple[ModelSpec, ...], setting: str, gpu: GpuInfo | None
) -> tuple[tuple[ModelSpec, ...], list[str]]:
    """The models to run and the notes explaining the choice."""
    if setting != AUTO:
        chosen = get_model(setting)
        notes = [f"{MODEL_VARIABLE}={setting}: every model of this notebook is played by {chosen.title}."]
        if chosen.is_toy:
            notes.append("The toy model draws shapes on plain backgrounds: the notebook uses toy-world prompts.")
        elif chosen.is_stand_in:
            notes.append("The random stand-in's images are noise: it shows the code paths, not image quality.")
        elif gpu is None:
            notes.append(
                f"No GPU found: {chosen.title} will be very slow on a CPU and needs over 30 GB of memory. "
                f"Set {MODEL_VARIABLE}=toy (or leave it unset) to run the offline toy model."
            )
        return (chosen,), notes
    if gpu is None:
        return (MODELS["toy"],), [NO_GPU_BANNER]

    card = gpu.card
    host = "" if card.host_gb is None else f", {card.host_gb:.1f} GB of RAM"
    fitting, notes = [], []
    for spec in about:
        route = choose_route(spec, card)
        if route is None:
            notes.append(f"{spec.title} does not fit this machine ({card.memory_gb:.1f} GB of GPU memory free{host}) "
                         "in any way load_pipeline can load it; skipped here.")
            continue
        fitting.append(spec)
        if route.strategy != "gpu":
            notes.append(
                f"{spec.title} fits this machine ({card.memory_gb:.1f} GB of GPU memory free{host}) only as "
                f"'{route.strategy}': {STRATEGIES[route.strategy].description}. load_pipeline loads it that way "
                "unless you choose otherwise."
            )
    if not fitting:
        fallback = MODELS["medium"] if choose_route(MODELS["medium"], card) else MODELS["toy"]
        fitting = [fallback]
        notes.append(f"Running {fallback.title} instead. Set {MODEL_VARIABLE} to choose another model.")
    return tuple(fitting), notes


def setup(about: str | Sequence[str] = "large", *, seed: int = 0, verbose: bool = True) -> Session:
    """Prepare a notebook: choose model, device and dtype; seed Python, NumPy and torch; print a short report.

    `about` names the model(s) the notebook is about. With SD35_MODEL unset or 'auto', a machine with a CUDA
    GPU runs those that fit its memory, and a machine without one runs the offline toy model. Any other
    SD35_MODEL value runs that model everywhere. A bad value raises before anything loads.
    """
    import numpy
    import torch

    check_seed(seed, maximum=2**32 - 1)  # NumPy's global generator takes no more
    setting = model_setting()
    about_specs = tuple(get_model(name) for name in ([about] if isinstance(about, str) else about))
    if not about_specs:
        raise ValueError("about is empty: name the model(s) this notebook is about, e.g. about='large'.")

    gpu = _gpu()
    models, notes = _choose_models(about_specs, setting, gpu)
    if gpu is None and _nvidia_gpu_present():
        notes.insert(0,
            f"An NVIDIA GPU is here, but PyTorch cannot use it (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none: a CPU-only build'}), so the notebook runs on the CPU. Usually the NVIDIA "
            "driver is older than this torch build needs: install the torch build for your driver's CUDA version "
            "(pytorch.org lists them; `nvidia-smi` shows the driver's), then restart the kernel."
        )
    device = default_device()
    dtype = default_dtype(device)
    token_present = has_token()

    if gpu is not None and not gpu.native_bf16:
        notes.append(
            f"The {gpu.name} has no native bf16: PyTorch emulates it, so images are right but slower, and its "
            "fused attention kernels do not run, so load_pipeline attends a chunk of queries at a time to bound "
            "the memory (helpers.attention). "
            "Do not switch to float16: SD3.5 then gives black images (T5 and the VAE overflow)."
        )
    gated = [spec for spec in models if not spec.is_stand_in]
    if gated and not token_present:
        notes.append(
            f"No Hugging Face token found: loading {gated[0].title} will stop and explain how to get one "
            f"(accept the licence at {gated[0].page_url}, then set HF_TOKEN or run notebook_login())."
        )

    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)

    session = Session(
        models=models,
        about=about_specs,
        device=device,
        dtype=dtype,
        seed=seed,
        gpu=gpu,
        token_present=token_present,
        output_dir=output_dir(),
        versions=_versions(),
        notes=tuple(notes),
    )
    if verbose:
        print(session.report())
    return session
