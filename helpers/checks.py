"""The checks every entry point runs on the values a reader gives, before any work starts.

Each check returns the value (converted where that is safe: NumPy numbers become Python's, so 4 and 4.0 make one
setting) or raises ValueError naming the parameter, the value and the fix. Public functions declare their checks
next to their signature with `@checked(name=rule, ...)`, the one door every argument passes through; sweeps,
explorers, setup() and the command lines use the same rules, so one mistake gets one message wherever it is made.
Importing this module is cheap: it does not import torch.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "check_guidance_scale",
    "check_max_sequence_length",
    "check_output_file",
    "check_prompt",
    "check_seed",
    "check_side",
    "check_steps",
    "check_strength",
    "check_strength_for_steps",
    "checked",
    "is_whole",
    "shown",
    "steps_run",
]

Rule = Callable[[Any, str], Any]
"""A check: takes the value and the parameter's name, returns the value to use or raises ValueError."""

MAX_SEED = 2**63 - 1
"""torch.Generator.manual_seed takes seeds up to this."""
T5_MAX_TOKENS = 512
"""diffusers' SD3 pipelines read at most 512 T5 tokens."""
MAX_STEPS = 1000
"""SD3.5's scheduler is trained on 1000 timesteps (`num_train_timesteps`); the bound stops a typo (28000 for 28)
from running for hours."""
MAX_GUIDANCE = 100
"""Guidance scales beyond any use (SD3.5's model cards recommend 3.5 to 4.5); far larger ones multiply the gap
between the two noise predictions until float16 or float32 overflow and the picture is NaN."""
MAX_TEXT = 20_000
"""Characters in a prompt: CLIP reads 77 tokens and T5 at most 512, far fewer than this."""
MAX_COUNT = 100_000
"""Seeds, pictures or runs in one call: more than any lesson needs, few enough to list and store."""


def _is_number(value: Any) -> bool:
    """A real number: Python's, or NumPy's scalars (registered with `numbers`), never a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def is_whole(value: Any) -> bool:
    """A whole number: Python's or NumPy's, never a bool."""
    return isinstance(value, numbers.Integral) and _is_number(value)


SIZE_MULTIPLE = 16
"""Image sides must be multiples of 16: the VAE shrinks by 8 and the transformer groups 2x2 latent pixels."""


MAX_SIDE = 6144
"""The largest side any model of the series draws: SD3.5 Medium's position table (pos_embed_max_size 384 patches
of 2 latent pixels, each 8 image pixels). Large's table stops at 3072; a loaded pipeline is checked against its own
(`helpers.experiments.max_side`)."""


def check_side(name: str, value: object) -> int:
    """`value` if it is a positive multiple of 16 up to MAX_SIDE, else an error naming `name`, the value and the
    rule. NumPy's integers are accepted (and returned as Python's)."""
    whole = is_whole(value)
    if not whole or value <= 0 or value % SIZE_MULTIPLE or value > MAX_SIDE:
        raise ValueError(f"{name}={shown(value)} must be a positive multiple of {SIZE_MULTIPLE} (VAE factor 8 x patch 2) "
                         f"up to {MAX_SIDE}, e.g. 1024.")
    return int(value)


def check_guidance_scale(value: Any, name: str = "guidance_scale") -> float:
    """A finite number from 0 to MAX_GUIDANCE (1 or less turns classifier-free guidance off)."""
    if not _is_number(value) or not math.isfinite(value) or not 0 <= value <= MAX_GUIDANCE:
        raise ValueError(f"{name}={shown(value)} must be a number from 0 to {MAX_GUIDANCE}, e.g. 4.5 (1 or less "
                         "turns guidance off).")
    return float(value)


def check_steps(value: Any, name: str = "num_inference_steps") -> int:
    """A whole number of denoising steps, from 1 to MAX_STEPS."""
    if not is_whole(value) or not 1 <= value <= MAX_STEPS:
        raise ValueError(f"{name}={shown(value)} must be a whole number from 1 to {MAX_STEPS}, e.g. 28.")
    return int(value)


def check_seed(value: Any, name: str = "seed", maximum: int = MAX_SEED) -> int:
    """A whole number from 0 to `maximum` (torch.Generator takes up to 2**63 - 1, NumPy's global seed 2**32 - 1)."""
    if not is_whole(value) or not 0 <= value <= maximum:
        limit = "2**63 - 1" if maximum == MAX_SEED else f"{maximum:,}"
        raise ValueError(f"{name}={shown(value)} must be a whole number from 0 to {limit}, e.g. 0.")
    return int(value)


def check_strength(value: Any, name: str = "strength") -> float:
    """More than 0 (0 would keep the input and run no step) and at most 1 (ignore the input entirely)."""
    if not _is_number(value) or not math.isfinite(value) or not 0 < value <= 1:
        raise ValueError(f"{name}={shown(value)} must be more than 0 and at most 1: near 0 keeps the input, 1 ignores "
                         "it entirely.")
    return float(value)


def steps_run(strength: float, steps: int) -> int:
    """The denoising steps image-to-image and inpainting run: diffusers 0.42 skips the first
    int(steps - steps * strength) of the `steps` (`get_timesteps` of its SD3 pipelines)."""
    return steps - int(max(steps - min(steps * strength, steps), 0))


def check_strength_for_steps(strength: float, steps: int) -> None:
    """At least one denoising step must run, or the pipeline fails deep inside."""
    if steps_run(strength, steps) < 1:
        raise ValueError(f"strength={strength!r} with num_inference_steps={steps} runs no denoising step: raise "
                         "strength or the steps.")


def check_prompt(value: Any, name: str = "prompt") -> str:
    """Text of at most MAX_TEXT characters (an empty prompt is allowed: the model then draws unguided)."""
    if not isinstance(value, str):
        raise ValueError(
            f"{name}={shown(value)} must be text (a str), e.g. {name}='a red circle'; use '' for none.")
    if len(value) > MAX_TEXT:
        raise ValueError(f"{name} is {len(value):,} characters long; the text encoders read at most 512 tokens, so "
                         f"keep it under {MAX_TEXT:,} characters.")
    return value


def check_max_sequence_length(value: Any, name: str = "max_sequence_length") -> int:
    """T5 tokens per prompt: a whole number from 1 to 512."""
    if not is_whole(value) or not 1 <= value <= T5_MAX_TOKENS:
        raise ValueError(f"{name}={shown(value)} must be a whole number from 1 to {T5_MAX_TOKENS} (T5 tokens per "
                         "prompt; diffusers' default is 256).")
    return int(value)


def check_output_file(path: Path, name: str, suffix: str | None = None,
                      ours: Callable[[Path], bool] | None = None) -> Path:
    """A file a command will write when it finishes, checked before it starts: its folder can be made and written
    to, and it is not a folder. With `suffix`, a path without one gets it (the path returned is the one written).
    With `ours`, an existing file is replaced only if `ours(path)` says this command wrote it."""
    path = check_path(path, name)
    if suffix and not path.suffix:
        path = path.with_suffix(suffix)
    if ours is not None and path.is_file() and not ours(path):
        raise ValueError(f"{name} {str(path)!r} exists and was not written by this command: it is left as it "
                         "is. Choose another name, or move that file away.")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{name} {str(path)!r}: its folder cannot be made ({error.strerror}); choose another path.")
    if path.is_dir() or not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{name} {str(path)!r} cannot be written (a folder, or not writable by you); choose another "
                         "path.")
    return path


def write_output_file(path: Path, data: str | bytes) -> Path:
    """Write a command's result file (checked before the work by `check_output_file`): under a temporary name in
    the same folder, then renamed into place, so the file is whole or, if the write fails, as it was."""
    import tempfile

    path = Path(path)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data.encode() if isinstance(data, str) else data)
        os.chmod(staging, 0o644)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path


# --- The door: rules declared next to a signature ------------------------------------------------------------------

def shown(value: Any, limit: int = 80) -> str:
    """repr() of a value, cut to `limit` characters (a message never repeats a megabyte the reader passed)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 5]}...{text[-2:]} ({len(text):,} characters)"


def checked(**rules: Rule) -> Callable[[Callable], Callable]:
    """Check a function's arguments on entry. `@checked(steps=whole(1, MAX_STEPS))` runs the rule on `steps`
    whenever a caller gives it (defaults are trusted), and the function receives what the rule returns. Rules of
    a `**settings` parameter receive the whole dict. Wrong or missing arguments raise TypeError naming the
    function, as Python would, before any rule runs."""
    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)
        unknown = set(rules) - set(signature.parameters)
        if unknown:
            raise TypeError(f"@checked on {function.__qualname__}: no parameter {sorted(unknown)}")

        @functools.wraps(function)
        def door(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as error:
                raise TypeError(f"{function.__qualname__}(): {error}") from None
            for name, rule in rules.items():
                if name in bound.arguments:
                    bound.arguments[name] = rule(bound.arguments[name], name)
            return function(*bound.args, **bound.kwargs)

        door.checks = dict(rules)
        return door
    return decorate


def whole(low: int = 0, high: int = MAX_COUNT) -> Rule:
    """A whole number from `low` to `high` (NumPy's integers accepted; bools and 2.0 refused)."""
    def rule(value: Any, name: str) -> int:
        if not is_whole(value) or not low <= value <= high:
            raise ValueError(f"{name}={shown(value)} must be a whole number from {low:,} to {high:,}.")
        return int(value)
    return rule


def number(low: float = -math.inf, high: float = math.inf, *, above: bool = False) -> Rule:
    """A finite number from `low` (or more than it, with `above`) to `high`."""
    def rule(value: Any, name: str) -> float:
        if (not _is_number(value) or not math.isfinite(value) or value > high
                or (value <= low if above else value < low)):
            bounds = [f"more than {low:g}" if above else f"at least {low:g}"] if math.isfinite(low) else []
            bounds += [f"at most {high:g}"] if math.isfinite(high) else []
            raise ValueError(f"{name}={shown(value)} must be a finite number{' ' if bounds else ''}"
                             f"{' and '.join(bounds)}.")
        return float(value)
    return rule


def flag(value: Any, name: str) -> bool:
    """True or False (NumPy's bools accepted): a string such as 'no' would read as true."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise ValueError(f"{name}={shown(value)} must be True or False.")


def text(value: Any, name: str) -> str:
    """Text of at most MAX_TEXT characters."""
    return check_prompt(value, name)


def one_of(*choices: str) -> Rule:
    """One of the given strings."""
    def rule(value: Any, name: str) -> str:
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"{name}={shown(value)} must be one of: {', '.join(map(repr, choices))}.")
        return value
    return rule


def optional(inner: Rule) -> Rule:
    """None, or what `inner` accepts."""
    def rule(value: Any, name: str) -> Any:
        return None if value is None else inner(value, name)
    return rule


def listed(inner: Rule, low: int = 1, high: int = MAX_COUNT) -> Rule:
    """A list, tuple, range or 1-D array of `low` to `high` items, each checked by `inner` (as `name[i]`); returns a
    list."""
    def rule(value: Any, name: str) -> list:
        array = getattr(value, "ndim", None) == 1 and hasattr(value, "tolist")
        if isinstance(value, (str, bytes, Mapping)) or not (isinstance(value, Sequence) or array):
            raise ValueError(f"{name}={shown(value)} must be a list or tuple of {low} to {high:,} items.")
        if not low <= len(value) <= high:
            count = "is empty" if len(value) == 0 else f"has {len(value):,} items"
            raise ValueError(f"{name} {count}; give {low} to {high:,} items.")
        return [inner(item, f"{name}[{index}]") for index, item in enumerate(value)]
    return rule


def function(value: Any, name: str) -> Callable:
    """Something to call: a function, a lambda, a method."""
    if not callable(value):
        raise ValueError(f"{name} must be a function, not {type(value).__name__} ({shown(value, 40)}).")
    return value


def instance(kind: type | tuple[type, ...], what: str) -> Rule:
    """An instance of `kind`, described to the reader as `what`."""
    def rule(value: Any, name: str) -> Any:
        if not isinstance(value, kind):
            raise ValueError(f"{name} must be {what}, not {type(value).__name__} ({shown(value, 40)}).")
        return value
    return rule


def side(value: Any, name: str) -> int:
    """A picture's height or width: a positive multiple of 16 up to the largest model's position table."""
    return check_side(name, value)


def picture(value: Any, name: str) -> Any:
    """A PIL image with pixels (not an empty one)."""
    from PIL import Image

    if not isinstance(value, Image.Image):
        raise ValueError(f"{name} must be a PIL image, not {type(value).__name__}; open a file with "
                         "helpers.load_image().")
    if value.width < 1 or value.height < 1:
        raise ValueError(f"{name} is an empty {value.width}x{value.height} image.")
    return value


def pipeline(value: Any, name: str) -> Any:
    """A diffusers pipeline (what load_pipeline returns)."""
    if not (hasattr(value, "scheduler") and hasattr(value, "components") and callable(value)):
        raise ValueError(f"{name} must be a pipeline from helpers.load_pipeline() (or diffusers' from_pretrained), "
                         f"not {type(value).__name__}.")
    return value


def module(value: Any, name: str) -> Any:
    """A torch module (a pipeline's part, such as pipe.transformer)."""
    import torch

    if not isinstance(value, torch.nn.Module):
        raise ValueError(f"{name} must be a torch module, such as pipe.transformer, not {type(value).__name__}.")
    return value


def sd3_transformer(value: Any, name: str) -> Any:
    """An SD3 transformer (pipe.transformer)."""
    if not hasattr(value, "transformer_blocks") or not hasattr(value, "set_attn_processor"):
        raise ValueError(f"{name} must be an SD3 transformer (pipe.transformer), not {type(value).__name__}.")
    return value


def check_path(value: Any, name: str) -> Path:
    """A path given as text or a Path: not empty, no NUL character (which no file system accepts)."""
    if not isinstance(value, (str, os.PathLike)) or isinstance(value, bytes):
        raise ValueError(f"{name}={shown(value)} must be a path (text or a pathlib.Path).")
    text = os.fspath(value)
    if not isinstance(text, str) or not text.strip() or "\x00" in text or len(text) > 4096:
        raise ValueError(f"{name}={shown(text)} is not a usable path; give a folder or file name.")
    return Path(text)


def output_folder(value: Any, name: str) -> Path:
    """A folder pictures will be written to, checked before any is made: it is made now if it is missing, and a
    file can be written in it."""
    import tempfile

    path = check_path(value, name)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name}={str(path)!r} is a file, not a folder; give a folder for the pictures.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # the one test of writing that holds for root and read-only disks
            pass
    except OSError as error:
        raise ValueError(f"{name}={str(path)!r} cannot be written ({error.strerror or error}); choose another "
                         "folder.") from None
    return path
