"""Saving generated images with the settings that made them, and labelled grids for comparing images.

Introduced in notebook 01; grids are used by every later notebook.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from helpers.checks import (
    check_guidance_scale,
    check_path,
    check_prompt,
    check_seed,
    check_side,
    check_steps,
    checked,
    listed,
    number,
    optional,
    output_folder,
    picture,
    shown,
    text,
    whole,
)

OUTPUT_VARIABLE = "SD35_OUTPUT_DIR"
METADATA_KEY = "sd35-notebooks"
STAGING_PREFIX = ".saving-"


def output_dir() -> Path:
    """Where notebooks save images: $SD35_OUTPUT_DIR, else outputs/ in the project (or the working folder)."""
    configured = os.environ.get(OUTPUT_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    project = Path(__file__).resolve().parent.parent
    return (project if (project / "pyproject.toml").is_file() else Path.cwd()) / "outputs"


def default_folder(*parts: str) -> Path:
    """A folder under output_dir() for what a call saves when it is given no folder, checked as a given folder is
    (made now, and writable), with a message naming SD35_OUTPUT_DIR where that chose it."""
    name = OUTPUT_VARIABLE if os.environ.get(OUTPUT_VARIABLE) else "the default output folder"
    return output_folder(output_dir().joinpath(*parts), name)


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "image"


def _plain_settings(settings: dict[str, Any], name: str) -> dict[str, Any]:
    """Other pipeline settings to record: plain JSON values, sizes checked as the pipeline checks them."""
    for key in ("height", "width"):
        if key in settings:
            settings[key] = check_side(key, settings[key])
    for key, value in settings.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(f"{key}={shown(value)} cannot be recorded in the PNG: every setting must be a plain number, "
                             "string or list.") from None
    return settings


def _png_picture(value: Any, name: str) -> Image.Image:
    image = picture(value, name)
    if image.mode not in PNG_MODES:
        raise ValueError(f"{name} is a {image.mode} image, which PNG cannot store; convert it, e.g. with "
                         "helpers.prepare_image(), first.")
    return image


PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16")
"""The image modes Pillow writes as PNG."""


@checked(image=_png_picture, model=text, prompt=check_prompt, seed=check_seed, num_inference_steps=check_steps,
         guidance_scale=check_guidance_scale, negative_prompt=optional(check_prompt), folder=optional(output_folder),
         settings=_plain_settings)
def save_image(
    image: Image.Image,
    *,
    model: str,
    prompt: str,
    seed: int,
    num_inference_steps: int,
    guidance_scale: float,
    negative_prompt: str | None = None,
    folder: str | Path | None = None,
    **settings: Any,
) -> Path:
    """Save `image` as a PNG that records how it was made; return its path.

    The prompt, negative prompt, model, seed, steps, guidance scale and size are stored in the PNG's metadata
    (read them back with `read_metadata`), with any other pipeline settings passed, such as `height` or the
    skip-layer guidance settings. An existing file is never overwritten: the name gets -2, -3, ... instead.
    A file appears complete or not at all.
    """
    record = {
        "model": model,
        "prompt": prompt,
        "negative_prompt": negative_prompt or "",
        "seed": seed,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        **settings,
        "width": image.width,
        "height": image.height,
    }
    for name in ("height", "width"):
        if name in settings and settings[name] != record[name]:
            raise ValueError(f"{name}={settings[name]} does not match the image, which is {record[name]} pixels.")

    folder = folder if folder is not None else default_folder()
    stem = f"{_slug(model)}-{_slug(prompt)}-seed{seed}"
    names = (f"{stem}.png" if attempt == 1 else f"{stem}-{attempt}.png" for attempt in range(1, 10_000))
    path = write_png(image, record, folder, names)
    if path is None:
        raise FileExistsError(f"{folder} already holds 9,999 images named {stem}*.png; choose another folder.")
    return path


def write_png(image: Image.Image, record: dict[str, Any], folder: Path, names: Iterable[str]) -> Path | None:
    """Write `image` with `record` in its metadata under the first of `names` not yet taken in `folder`.

    The file is written under a temporary name and then linked into place, which is atomic and never replaces an
    existing file: a name holds a complete image or nothing, even if the process is killed. Returns the path, or
    None when every name was taken.
    """
    folder.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text(METADATA_KEY, json.dumps(record))
    if "prompt" in record:
        info.add_text("Description", str(record["prompt"]))
    handle, staging = tempfile.mkstemp(suffix=".png", prefix=STAGING_PREFIX, dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            image.save(file, format="PNG", pnginfo=info)
        os.chmod(staging, 0o666 & ~_umask())  # mkstemp makes files only their owner may read
        for name in names:
            try:
                os.link(staging, folder / name)
                return folder / name
            except FileExistsError:
                continue
            except OSError:  # a filesystem without hard links (some network and FAT drives)
                if _write_exclusive(Path(staging).read_bytes(), folder / name):
                    return folder / name
        return None
    finally:
        os.unlink(staging)


def _umask() -> int:
    """This process's umask, read without changing it where Linux reports it (changing it, even for a moment, would
    affect files other threads create)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_exclusive(data: bytes, path: Path) -> bool:
    """Write `data` to `path` only if no file has that name (False if one has). Not atomic like a link: a process
    killed mid-write leaves a partial file, which a sweep finds damaged and makes again."""
    try:
        with open(path, "xb") as file:
            file.write(data)
    except FileExistsError:
        return False
    return True


@checked(path=check_path)
def read_metadata(path: str | Path) -> dict[str, Any]:
    """The generation settings stored in a PNG by `save_image`."""
    if not path.is_file():
        raise ValueError(f"path={str(path)!r}: {'a folder' if path.is_dir() else 'no such file'}, not a PNG saved by "
                         "helpers.save_image.")
    try:
        with Image.open(path) as image:
            stored = image.text.get(METADATA_KEY) if hasattr(image, "text") else None
    except (OSError, SyntaxError, ValueError):  # PIL's ways of saying "not a picture I can read"
        raise ValueError(f"path={str(path)!r} is not a picture PIL can read: not a PNG saved by "
                         "helpers.save_image.") from None
    try:
        record = json.loads(stored) if stored is not None else None
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise ValueError(f"path={str(path)!r} holds no readable generation settings: it was not saved by "
                         "helpers.save_image (or its text was edited).")
    return record


def drawn_by(path: Path, maker: str) -> bool:
    """Whether the PNG at `path` records `maker` as the software that drew it: a command that draws charts
    replaces only its own."""
    try:
        with Image.open(path) as image:
            return getattr(image, "text", {}).get("Software") == maker
    except (OSError, ValueError, SyntaxError):
        return False


def save_figure(figure, path: Path, maker: str, dpi: int) -> Path:
    """Save a matplotlib figure as a PNG that records `maker` (see `drawn_by`), whole or not at all."""
    import io

    from helpers.checks import write_output_file

    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=dpi, format="png", metadata={"Software": maker})
    return write_output_file(path, buffer.getvalue())


def unshown_subplots(*args: Any, **kwargs: Any):
    """`plt.subplots(...)` for a figure that a helper returns: pyplot lets go of it, so a notebook shows it once,
    when the returned figure is displayed, and not a second time at the end of the cell."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(*args, **kwargs)
    plt.close(figure)
    return figure, axes


@checked(image=picture, at_least=whole(16, 2048))
def enlarged(image: Image.Image, at_least: int = 256) -> Image.Image:
    """`image` shown at least `at_least` pixels on its longer side: a small picture (the toy's are 64 px) is scaled
    by a whole factor without smoothing, so each pixel stays a sharp square; a larger one is returned as it is.
    A copy for display: the picture itself is not changed."""
    factor = -(-at_least // max(image.size))  # ceiling division
    if factor <= 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


MAX_GRID = 400
"""Pictures in one grid: more would make a figure too large to draw or see."""


def _grid_rows(images: Any, name: str) -> list[list[Image.Image]]:
    """A flat list of pictures (one row) or a list of rows; returns the rows."""
    items = listed(lambda item, _: item, 1, MAX_GRID)(images, name)
    if all(isinstance(item, Image.Image) for item in items):
        return [[picture(item, f"{name}[{index}]") for index, item in enumerate(items)]]
    rows = [listed(picture, 1, MAX_GRID)(row, f"{name}[{index}]") for index, row in enumerate(items)]
    if sum(map(len, rows)) > MAX_GRID:
        raise ValueError(f"{name} holds {sum(map(len, rows)):,} pictures; a grid shows at most {MAX_GRID}.")
    return rows


def _wrapped(label: str, inches: float, points: float) -> str:
    """`label` broken into lines that fit `inches` at a font of `points` (a character is about 0.6 of its size), so
    the labels of neighbouring pictures do not run into each other; its own line breaks are kept."""
    import textwrap

    width = max(6, int(inches * 72 / (points * 0.6)))
    return "\n".join(textwrap.fill(line, width=width) if line else "" for line in label.split("\n"))


@checked(images=_grid_rows, column_labels=optional(listed(text, 0)), row_labels=optional(listed(text, 0)),
         title=optional(text), cell_inches=optional(number(0.2, 10)))
def image_grid(
    images: Sequence[Image.Image] | Sequence[Sequence[Image.Image]],
    *,
    column_labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    cell_inches: float | None = None,
):
    """A matplotlib figure of images in a grid with labelled rows and columns; a flat list makes one row.

    Each image gets `cell_inches` (default: 3, less when many columns must fit a notebook's width).
    Returned, not shown: it displays when it is the last line of a cell, and `figure.savefig(path)` saves it.
    """
    rows = images if isinstance(images, list) else _grid_rows(images, "images")
    columns = max(len(row) for row in rows)
    for name, labels, expected in (("column_labels", column_labels, columns), ("row_labels", row_labels, len(rows))):
        if labels is not None and len(labels) != expected:
            raise ValueError(f"{name} has {len(labels)} labels for {expected} {name.split('_')[0]}s.")

    cell_inches = cell_inches or min(3.0, 16.0 / columns)
    size = 10 if cell_inches >= 2 else 7
    figure, axes = unshown_subplots(
        len(rows), columns, squeeze=False, figsize=(cell_inches * columns, cell_inches * len(rows) + (0.4 if title else 0))
    )
    for r, row in enumerate(rows):
        for c in range(columns):
            axis = axes[r][c]
            axis.set_xticks([])
            axis.set_yticks([])
            if c < len(row):
                # Masks (mode L) in grey, white where paint goes; small pictures enlarged without smoothing.
                grey = {"cmap": "gray", "vmin": 0, "vmax": 255} if row[c].mode == "L" else {}
                axis.imshow(row[c], interpolation="nearest" if max(row[c].size) < 256 else "antialiased", **grey)
            else:
                axis.set_axis_off()
            if column_labels is not None and r == 0:
                axis.set_title(_wrapped(column_labels[c], cell_inches, size), fontsize=size)
            if row_labels is not None and c == 0:
                axis.set_ylabel(_wrapped(row_labels[r], cell_inches, size), fontsize=size)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure
