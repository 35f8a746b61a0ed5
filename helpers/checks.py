"""The checks every entry point runs on the values a reader gives, before any work starts.

Each check returns the value (converted where that is safe) or raises ValueError naming the parameter, the value
and the fix. Sweeps, explorers, setup() and the command lines call these, so one mistake gets one message
wherever it is made. Importing this module is cheap: it does not import torch.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any

from helpers.models import check_side

__all__ = ["check_guidance_scale", "check_max_sequence_length", "check_output_file", "check_prompt", "check_seed",
           "check_side", "check_steps", "check_strength", "check_strength_for_steps", "is_whole", "steps_run"]

MAX_SEED = 2**63 - 1
"""torch.Generator.manual_seed takes seeds up to this."""
T5_MAX_TOKENS = 512
"""diffusers' SD3 pipelines read at most 512 T5 tokens."""


def _is_number(value: Any) -> bool:
    """A real number: Python's, or NumPy's scalars (registered with `numbers`), never a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def is_whole(value: Any) -> bool:
    """A whole number: Python's or NumPy's, never a bool."""
    return isinstance(value, numbers.Integral) and _is_number(value)


def check_guidance_scale(value: Any, name: str = "guidance_scale") -> float:
    """A finite number of 0 or more (1 or less turns classifier-free guidance off)."""
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value!r} must be a finite number of 0 or more, e.g. 4.5 (1 or less turns "
                         "guidance off).")
    return float(value)


def check_steps(value: Any, name: str = "num_inference_steps") -> int:
    """A whole number of denoising steps, at least 1."""
    if not is_whole(value) or value < 1:
        raise ValueError(f"{name}={value!r} must be a whole number of at least 1, e.g. 28.")
    return int(value)


def check_seed(value: Any, name: str = "seed", maximum: int = MAX_SEED) -> int:
    """A whole number from 0 to `maximum` (torch.Generator takes up to 2**63 - 1, NumPy's global seed 2**32 - 1)."""
    if not is_whole(value) or not 0 <= value <= maximum:
        limit = "2**63 - 1" if maximum == MAX_SEED else f"{maximum:,}"
        raise ValueError(f"{name}={value!r} must be a whole number from 0 to {limit}, e.g. 0.")
    return int(value)


def check_strength(value: Any, name: str = "strength") -> float:
    """More than 0 (0 would keep the input and run no step) and at most 1 (ignore the input entirely)."""
    if not _is_number(value) or not math.isfinite(value) or not 0 < value <= 1:
        raise ValueError(f"{name}={value!r} must be more than 0 and at most 1: near 0 keeps the input, 1 ignores "
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
    """Text (an empty prompt is allowed: the model then draws unguided)."""
    if not isinstance(value, str):
        raise ValueError(  # noqa: TRY004 - every check raises ValueError, which callers and explorers report
            f"{name}={value!r} must be text (a str), e.g. {name}='a red circle'; use '' for none.")
    return value


def check_max_sequence_length(value: Any, name: str = "max_sequence_length") -> int:
    """T5 tokens per prompt: a whole number from 1 to 512."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= T5_MAX_TOKENS:
        raise ValueError(f"{name}={value!r} must be a whole number from 1 to {T5_MAX_TOKENS} (T5 tokens per "
                         "prompt; diffusers' default is 256).")
    return value


def check_output_file(path: Path, name: str, suffix: str | None = None) -> Path:
    """A file a command will write when it finishes, checked before it starts: its folder can be made and written
    to, and it is not a folder. With `suffix`, a path without one gets it (the path returned is the one written)."""
    path = Path(path)
    if suffix and not path.suffix:
        path = path.with_suffix(suffix)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{name} {str(path)!r}: its folder cannot be made ({error.strerror}); choose another path.")
    if path.is_dir() or not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{name} {str(path)!r} cannot be written (a folder, or not writable by you); choose another "
                         "path.")
    return path
