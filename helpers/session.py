"""`setup()`: the one setup call at the top of every notebook.

Introduced in notebook 01. It picks the model (from SD35_MODEL and the GPU), the machine it plans for (the GPU here,
or the catalogue machine SD35_MACHINE names, emulated on this CPU), the device and dtype, seeds every random
generator, and prints one short report: versions, machine, each model's route and its cost, whether a Hugging Face
token is present (never its value), and what to do when something is missing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from helpers.access import has_token
from helpers.checks import check_seed, checked, flag, listed, number, whole
from helpers.images import output_dir
from helpers.machines import MACHINE_VARIABLE, Machine, emulated_machine, live_machine
from helpers.models import AUTO, MODEL_VARIABLE, MODELS, ModelSpec, get_model, model_setting, model_spec
from helpers.routes import Route, default_device, option, plan_route

if TYPE_CHECKING:
    import torch

NO_GPU_BANNER = (
    "No GPU found: running the offline toy model, a small SD3 pipeline trained on drawn shapes (notebook 09). "
    "Every cell runs the same diffusers code as on a GPU, with toy-world prompts in place of SD3.5's. For SD3.5 "
    "itself, open this notebook on a GPU machine (Colab, SageMaker) with a Hugging Face token."
)
T = TypeVar("T")
EVIDENCE_SEEDS = 6
"""The fewest paired seeds with which a two-sided sign test can reach p < 0.05: 6 all one way give p = 0.031, 5 give
0.0625 (helpers.experiments.sign_test_p)."""
REPORTED_PACKAGES = ("torch", "diffusers", "transformers", "huggingface_hub", "accelerate")
CHECKED_IN_MEMORY = (*REPORTED_PACKAGES, "peft", "bitsandbytes", "safetensors", "tokenizers", "numpy")
"""Packages whose version in memory must be the one installed (see `check_restart_not_needed`)."""
RESTART = ("Restart the runtime (Colab: Runtime → Restart session; Jupyter and SageMaker: Kernel → Restart Kernel), "
           "then run the notebook again from the top: what was installed stays installed.")


class RestartNeededError(RuntimeError):
    """A package in memory is not the one installed: only a restart of the Python process loads the new one."""


def stale_imports(modules: dict | None = None) -> dict[str, tuple[str, str]]:
    """{package: (version in memory, version installed)} for each of CHECKED_IN_MEMORY imported at one version while
    another is installed, as when a cell imported diffusers before the install cell upgraded it."""
    import sys

    modules = sys.modules if modules is None else modules
    stale = {}
    for name in CHECKED_IN_MEMORY:
        module = modules.get(name)
        in_memory = getattr(module, "__version__", None)
        if module is None or not isinstance(in_memory, str):
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # not installed as a distribution: nothing to compare with
        if installed != in_memory:
            stale[name] = (in_memory, installed)
    return stale


def check_restart_not_needed(modules: dict | None = None) -> None:
    """Raise RestartNeededError, naming each package and the restart's menu path, where a package in memory is older
    or newer than the one installed: Python keeps the first version it imported until the process restarts."""
    stale = stale_imports(modules)
    if stale:
        found = "; ".join(f"{name} {old} is in memory but {new} is installed" for name, (old, new) in stale.items())
        raise RestartNeededError(f"{found}. A cell imported it before the install cell changed it, and Python keeps "
                                 f"the version it imported first. {RESTART}")


@dataclass(frozen=True)
class Session:
    """What `setup()` decided; later cells read the model, device and dtype from here."""

    models: tuple[ModelSpec, ...]
    about: tuple[ModelSpec, ...]
    device: str
    dtype: torch.dtype
    seed: int
    machine: Machine | None
    """The machine routes are planned for: the GPU here, the SD35_MACHINE one (emulated), or None (this CPU)."""
    emulated: bool
    routes: tuple[Route, ...]
    """The route each of `models` loads with."""
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

    @cached_property
    def repository(self) -> str:
        """Where `from_pretrained` loads the model that runs from: its hub repository, such as
        'stabilityai/stable-diffusion-3.5-large' (your token and licence checked first), or the offline model's
        folder (its files checked). Checked once: a cell may read it several times."""
        from helpers.loading import weights_location

        return weights_location(self.model)

    def pick(self, *, sd35: T, toy: T) -> T:
        """The SD3.5 version of an experiment, or its toy-world counterpart where an offline model runs.

        The toy model knows only the toy world's words (shapes, six colours, backgrounds), so every experiment
        asks its question there in the toy's terms: `run.pick(sd35="A group of elves...", toy="a red circle")`.
        """
        return toy if self.model.is_stand_in else sd35

    @checked(toy=whole(1, 10_000), per_seed=whole(1, 1000), minutes=number(0.1, 24 * 60), verbose=flag)
    def seeds(self, *, toy: int, per_seed: int, minutes: float = 10.0, verbose: bool = True) -> list[int]:
        """The seeds an experiment runs, each one paired comparison. On an offline model, `toy` of them. On SD3.5,
        as many as make `per_seed` pictures each in about `minutes` on this machine's route (helpers.bench's
        estimate), at least EVIDENCE_SEEDS (the fewest with which a sign test can find anything) and at most
        `toy`; says how many and how long before anything is made. Lower it knowingly: `SEEDS = SEEDS[:3]`."""
        from helpers.bench import estimated_seconds_per_image
        from helpers.experiments import duration

        if self.model.is_stand_in:
            return list(range(toy))
        spec, route = self.model, self.routes[0]
        seconds = estimated_seconds_per_image(route, steps=spec.num_inference_steps,
                                              guidance_scale=spec.guidance_scale, size=spec.height)
        fit = toy if seconds is None else int(minutes * 60 // (seconds * per_seed))
        count = max(EVIDENCE_SEEDS, min(toy, fit))
        if verbose:
            time = ("" if seconds is None else
                    f", about {duration(seconds * per_seed * count)} on the {route.machine.gpu} (estimate)")
            print(f"{count} seeds, {count * per_seed} pictures{time}. At least {EVIDENCE_SEEDS}: with fewer pairs "
                  "no sign test can reach p < 0.05, so the findings could only say 'no evidence'.")
        return list(range(count))

    @checked(spec=model_spec, offload=option, quantize=option, t5=option)
    def fits(self, spec: ModelSpec, *, offload="auto", quantize="auto", t5="auto") -> bool:
        """Whether `load_pipeline(spec, offload=..., quantize=..., t5=...)` fits this machine's GPU and RAM
        (helpers.memory's estimates); if not, says so. Without a GPU everything fits (it runs on the CPU)."""
        try:
            plan_route(spec, offload=offload, quantize=quantize, t5=t5)
        except MemoryError:
            options = ", ".join(f"{name}={value!r}" for name, value in
                                (("offload", offload), ("quantize", quantize), ("t5", t5)) if value != "auto")
            print(f"{spec.title} with {options or 'its automatic route'} does not fit this machine: skipped here.")
            return False
        return True

    @checked(variants=lambda value, name: listed(_variant)(value, name))
    def fitting(self, variants: Sequence[tuple[ModelSpec, str | None]]) -> list[tuple[ModelSpec, str | None]]:
        """The (model, quantize) pairs that `load_pipeline(model, quantize=quantize)` can load on this machine;
        says which it leaves out. Without a GPU every pair loads (on the CPU)."""
        return [(spec, quantize) for spec, quantize in variants if self.fits(spec, quantize=quantize)]

    @checked(offload=option)
    def gpu_offload(self, offload: str) -> str | None:
        """`offload` where there is a GPU to offload to (or one is emulated: then it is planned, not run); None on a
        CPU, where everything is in CPU memory already."""
        return offload if self.machine is not None else None

    def report(self) -> str:
        """The setup report as text."""
        machine = ("none (this CPU)" if self.machine is None else
                   f"{self.machine.name}: {self.machine.describe()}, emulated on this CPU" if self.emulated else
                   self.machine.describe())
        token = "found (value not shown)" if self.token_present else "not found"
        lines = [
            f"model      {', '.join(spec.title for spec in self.models)}",
            f"device     {self.device}, {str(self.dtype).removeprefix('torch.')}",
            f"machine    {machine}",
            f"HF token   {token}",
            f"versions   {', '.join(f'{name} {version}' for name, version in self.versions.items())}",
            f"outputs    {self.output_dir}",
            f"seed       {self.seed}",
        ]
        routes = [route.report() for route in self.routes if route.machine is not None]
        return "\n".join(lines + [""] + routes + list(self.notes)).rstrip()


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
    about: tuple[ModelSpec, ...], setting: str, machine: Machine | None, emulated: bool = False
) -> tuple[tuple[ModelSpec, ...], list[str]]:
    """The models to run and the notes explaining the choice. On an emulated machine the offline model plays each
    model of the notebook that fits it, so it loads with that model's route."""
    if setting != AUTO:
        chosen = get_model(setting)
        notes = [f"{MODEL_VARIABLE}={setting}: every model of this notebook is played by {chosen.title}."]
        if chosen.is_toy:
            notes.append("The toy model draws shapes on plain backgrounds: the notebook uses toy-world prompts.")
        elif chosen.is_stand_in:
            notes.append("The random stand-in's images are noise: it shows the code paths, not image quality.")
        elif emulated:
            raise ValueError(f"{MODEL_VARIABLE}={setting} with {MACHINE_VARIABLE}={machine.name}: an emulated machine "
                             f"runs the offline models on this CPU. Set {MODEL_VARIABLE}=toy (or unset it), or unset "
                             f"{MACHINE_VARIABLE} on a GPU machine to run {chosen.title}.")
        elif machine is None:
            notes.append(
                f"No GPU found: {chosen.title} will be very slow on a CPU and needs over 30 GB of memory. "
                f"Set {MODEL_VARIABLE}=toy (or leave it unset) to run the offline toy model."
            )
        if emulated and chosen.is_stand_in:
            return _played_by(chosen, about, machine, notes)
        return (chosen,), notes
    if emulated:
        return _played_by(MODELS["toy"], about, machine, [])
    if machine is None:
        return (MODELS["toy"],), [NO_GPU_BANNER]
    fitting, notes = _fitting(about, machine)
    if not fitting:
        fallback = MODELS["medium"] if _fitting((MODELS["medium"],), machine)[0] else MODELS["toy"]
        fitting = [fallback]
        notes.append(f"Running {fallback.title} instead. Set {MODEL_VARIABLE} to choose another model.")
    return tuple(fitting), notes


def _fitting(about: tuple[ModelSpec, ...], machine: Machine) -> tuple[list[ModelSpec], list[str]]:
    """The models of `about` some route fits on `machine`, and a note for each that does not."""
    fitting, notes = [], []
    host = "" if machine.host_gb is None else f", {machine.host_gb:.1f} GB of RAM"
    for spec in about:
        try:
            plan_route(spec, machine=machine)
        except MemoryError:
            notes.append(f"{spec.title} does not fit this machine ({machine.gpu_gb:.1f} GB of GPU memory free{host}) "
                         "in any way load_pipeline can load it; skipped here.")
            continue
        fitting.append(spec)
    return fitting, notes


def _played_by(offline: ModelSpec, about: tuple[ModelSpec, ...], machine: Machine, notes: list[str]):
    """The offline model playing each model of `about` that fits the emulated machine."""
    fitting, skipped = _fitting(about, machine)
    if not fitting:
        fitting = [MODELS["medium"]]
    notes = notes + skipped + [
        (f"{MACHINE_VARIABLE}={machine.name}: routes are planned as on {machine.describe()}, and run here on the CPU "
        f"with the {offline.title.lower()}: the same dtype, quantized parts, attention and tiling.")]
    # a notebook about an offline model (the toy's training) runs it as itself, on the machine's route
    return tuple(offline if spec.is_stand_in else offline.playing(spec.name) for spec in fitting), notes


def _variant(value: object, name: str) -> tuple[ModelSpec, str | None]:
    """(model, quantize): a model of the series and one of load_pipeline's quantize values."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name}={value!r} must be a (model, quantize) pair, e.g. (MODELS['large'], 'nf4').")
    return model_spec(value[0], name), option(value[1], "quantize")


def _about(value: object, name: str) -> tuple[ModelSpec, ...]:
    """The model(s) a notebook is about: one name or a list of names."""
    if isinstance(value, (str, ModelSpec)):
        return (model_spec(value, name),)
    return tuple(listed(model_spec, 1, len(MODELS))(value, name))


@checked(about=_about, seed=lambda value, name: check_seed(value, name, maximum=2**32 - 1), verbose=flag)
def setup(about: str | Sequence[str] = "large", *, seed: int = 0, verbose: bool = True) -> Session:
    """Prepare a notebook: choose model, device and dtype; seed Python, NumPy and torch; print a short report.

    `about` names the model(s) the notebook is about. With SD35_MODEL unset or 'auto', a machine with a CUDA
    GPU runs those that fit its memory, and a machine without one runs the offline toy model. Any other
    SD35_MODEL value runs that model everywhere. A bad value raises before anything loads.
    """
    check_restart_not_needed()  # before anything else is imported or decided
    import numpy
    import torch

    setting = model_setting()  # seed is checked up to 2**32 - 1: NumPy's global generator takes no more
    about_specs = about

    machine = emulated_machine()
    emulated = machine is not None
    if not emulated:
        machine = live_machine("cuda")
    models, notes = _choose_models(about_specs, setting, machine, emulated)
    if machine is None and _nvidia_gpu_present():
        notes.insert(0,
            f"An NVIDIA GPU is here, but PyTorch cannot use it (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none: a CPU-only build'}), so the notebook runs on the CPU. Usually the NVIDIA "
            "driver is older than this torch build needs: install the torch build for your driver's CUDA version "
            "(pytorch.org lists them; `nvidia-smi` shows the driver's), then restart the kernel."
        )
    routes = tuple(plan_route(spec) for spec in models)
    device = routes[0].device if emulated else default_device()
    dtype = routes[0].torch_dtype
    token_present = has_token()

    gated = [spec for spec in models if not spec.is_stand_in]
    if gated and not token_present:
        notes.append(
            f"No Hugging Face token found: loading {gated[0].title} will stop and explain how to get one "
            f"(accept the licence at {gated[0].page_url}, then set HF_TOKEN or run notebook_login())."
        )

    from helpers.loading import quiet_irrelevant_notices

    quiet_irrelevant_notices()
    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)

    session = Session(
        models=models,
        about=about_specs,
        device=device,
        dtype=dtype,
        seed=seed,
        machine=machine,
        emulated=emulated,
        routes=routes,
        token_present=token_present,
        output_dir=output_dir(),
        versions=_versions(),
        notes=tuple(notes),
    )
    if verbose:
        print(session.report())
    return session
