"""The toy world the offline model was trained on: drawn scenes with captions, and a judge that reads pictures.

Introduced in notebook 01; notebook 09 shows how the offline model learned it. A scene is one shape (circle,
square or triangle) in one colour on a plain background of another colour, at a random place and size. Its
caption says what is there ("a red circle on a blue background"). The judge reads any picture back into the same
terms (shape, its colour, background colour, position), so every lesson can be measured on the offline model:
did the picture follow the prompt, did the negative prompt's colour go away, did the input survive image-to-image.

Scenes are exact and deterministic: the same seed draws the same scene on every machine. Importing this module
does not import torch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from helpers.checks import check_seed, checked, shown

SIZE = 64
"""The side, in pixels, of the scenes the offline model was trained on."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle")
"""The shapes the offline model was trained on: every random scene is one of these."""
NEW_SHAPES = ("ring",)
"""Shapes the world draws and the judge reads that no training scene showed or caption named: the concept notebook
11 teaches the toy with a LoRA (helpers.lora)."""
DRAWN_SHAPES = SHAPES + NEW_SHAPES
RING_HOLE = 0.5
"""A ring's hole: its radius as a share of the ring's outer radius."""

SIZE_RANGE = (0.40, 0.70)
"""A shape's height as a share of the image side: large enough to read at 64 pixels."""
SUPERSAMPLE = 4
"""Sub-pixels per side used to draw edges smoothly (anti-aliased), as a camera would see them."""

# How the judge separates shape from background: a pixel belongs to the shape when its colour is further than
# this from the background's (0-441 in RGB), and a picture with less than MIN_SHAPE_SHARE of such pixels has none.
FOREGROUND_DISTANCE = 90.0
MIN_SHAPE_SHARE = 0.02
# Fill of the shape's bounding box: a square fills it, a circle pi/4 = 0.785 of it, a triangle half. A ring
# encloses a hole of background (a quarter of its disc): read as a ring when the enclosed background is at least
# _RING_HOLE_SHARE of its box (0.196 on the world's own rings).
_RING_HOLE_SHARE = 0.05
_FILL_TRIANGLE_BELOW = 0.64
_FILL_CIRCLE_BELOW = 0.90


@dataclass(frozen=True)
class Scene:
    """One drawn scene: what is in it, where, and its full caption."""

    shape: str
    colour: str
    background: str
    centre: tuple[float, float]
    """(x, y) of the shape's bounding-box centre, as shares of the image side (0 = left/top, 1 = right/bottom)."""
    extent: float
    """The shape's width and height, as a share of the image side."""

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.background)

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The shape's bounding box (left, top, right, bottom) as shares of the image side."""
        x, y = self.centre
        half = self.extent / 2
        return (x - half, y - half, x + half, y + half)

    def draw(self, size: int = SIZE) -> Image.Image:
        """The scene as an RGB picture of `size` x `size` pixels."""
        return draw(self, size)

    def cutout(self, size: int = SIZE) -> Image.Image:
        """The shape alone on a transparent background (RGBA), as a cut-out subject for background replacement."""
        picture = Image.new("RGBA", (size, size), (*COLOURS[self.colour], 0))
        alpha = np.rint(_coverage(self, size) * 255).astype(np.uint8)
        picture.putalpha(Image.fromarray(alpha, "L"))
        return picture


def caption(colour: str | None, shape: str | None, background: str | None) -> str:
    """The caption of a scene, leaving out what is None: 'a red circle on a blue background', 'a red shape',
    'a circle', 'a blue background'; '' when all three are None."""
    if colour is None and shape is None:
        return "" if background is None else f"a {background} background"
    thing = " ".join(word for word in (colour, shape or "shape") if word)
    return f"a {thing}" + (f" on a {background} background" if background else "")


def random_scene(rng: random.Random) -> Scene:
    """A scene drawn at random by `rng`: every shape, colour pair, size and place equally likely."""
    colour, background = rng.sample(sorted(COLOURS), 2)
    shape = rng.choice(SHAPES)
    extent = rng.uniform(*SIZE_RANGE)
    margin = 2 / SIZE
    low, high = extent / 2 + margin, 1 - extent / 2 - margin
    return Scene(shape, colour, background, (rng.uniform(low, high), rng.uniform(low, high)), extent)


@checked(seed=check_seed)
def scene(seed: int) -> Scene:
    """The scene of `seed`: the same on every machine."""
    return random_scene(random.Random(seed))


@lru_cache(maxsize=4)
def _sample_points(size: int) -> tuple[np.ndarray, np.ndarray]:
    steps = (np.arange(size * SUPERSAMPLE) + 0.5) / (size * SUPERSAMPLE)
    return np.meshgrid(steps, steps)


def _coverage(spec: Scene, size: int) -> np.ndarray:
    """The share of each pixel the shape covers, from SUPERSAMPLE x SUPERSAMPLE samples per pixel."""
    x, y = _sample_points(size)
    cx, cy = spec.centre
    half = spec.extent / 2
    if spec.shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= half**2
    elif spec.shape == "ring":
        squared = (x - cx) ** 2 + (y - cy) ** 2
        inside = (squared <= half**2) & (squared >= (RING_HOLE * half) ** 2)
    elif spec.shape == "square":
        inside = (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    elif spec.shape == "triangle":  # apex at the top centre, base along the bottom of the box
        down = y - (cy - half)
        inside = (down >= 0) & (down <= 2 * half) & (np.abs(x - cx) <= down / 2)
    else:
        raise ValueError(f"shape={shown(spec.shape)} is not a shape of the toy world. Use one of: "
                         f"{', '.join(DRAWN_SHAPES)}.")
    return inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


def draw(spec: Scene, size: int = SIZE) -> Image.Image:
    """Draw `spec` as an RGB picture, edges anti-aliased."""
    for name in (spec.colour, spec.background):
        if name not in COLOURS:
            raise ValueError(f"colour {shown(name)} is not a colour of the toy world. Use one of: {', '.join(COLOURS)}.")
    cover = _coverage(spec, size)[..., None]
    pixels = (1 - cover) * np.array(COLOURS[spec.background]) + cover * np.array(COLOURS[spec.colour])
    return Image.fromarray(np.rint(pixels).astype(np.uint8), "RGB")


def dataset(seeds: range | list[int], size: int = SIZE) -> tuple[list[Scene], np.ndarray]:
    """Scenes of `seeds` and their pictures as one uint8 array (N, size, size, 3)."""
    scenes = [scene(seed) for seed in seeds]
    return scenes, np.stack([np.asarray(item.draw(size)) for item in scenes])


# --- The judge -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """What the judge sees in a picture. `shape` and `colour` are None when there is no shape."""

    shape: str | None
    colour: str | None
    background: str
    centre: tuple[float, float] | None
    shape_share: float
    """The share of the picture that differs clearly from the background."""

    def follows(self, colour: str | None = None, shape: str | None = None, background: str | None = None) -> bool:
        """True when the picture shows everything given (None: not asked)."""
        return ((colour is None or self.colour == colour) and (shape is None or self.shape == shape)
                and (background is None or self.background == background))


_PALETTE_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[name] for name in _PALETTE_NAMES], dtype=np.float64)


def nearest_colour(rgb: np.ndarray) -> str:
    """The name of the toy world's colour nearest to `rgb`."""
    return _PALETTE_NAMES[int(np.argmin(((_PALETTE - np.asarray(rgb, dtype=np.float64)) ** 2).sum(axis=1)))]


MAX_JUDGED = 4096
"""The largest side the judge reads: far beyond the toy's 64 px, and a few hundred MB of float pixels at most."""


def _pixels(image: Image.Image | np.ndarray, name: str = "image") -> np.ndarray:
    """A picture as (H, W, 3) floats from 0 to 255: a PIL image, or an array of 0-255 values (uint8 or numbers) or
    of 0-1 floats (as matplotlib and torch keep them), which are scaled. Anything else is refused by name."""
    if isinstance(image, Image.Image):
        if image.width < 1 or image.height < 1:
            raise ValueError(f"{name} is an empty {image.width}x{image.height} image.")
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a PIL image or an (H, W, 3) NumPy array, not {type(image).__name__}.")
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape or image.dtype.kind not in "uif":
        raise ValueError(f"{name} of shape {image.shape} and dtype {image.dtype} is not an RGB picture; pass a PIL "
                         "image or an (H, W, 3) array of numbers.")
    if max(image.shape[:2]) > MAX_JUDGED:
        raise ValueError(f"{name} is {image.shape[1]}x{image.shape[0]} pixels; the judge reads pictures of up to "
                         f"{MAX_JUDGED} px a side (the toy world's are {SIZE}).")
    pixels = image.astype(np.float64)
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"{name} holds values outside 0-255 (or NaN); give 0-255 values, or 0-1 floats.")
    if image.dtype.kind == "f" and pixels.max() <= 1:
        pixels = pixels * 255.0
    return pixels


def _neighbours(mask: np.ndarray) -> list[np.ndarray]:
    padded = np.pad(mask, 1, mode="edge")
    height, width = mask.shape
    return [padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _shrink(mask: np.ndarray) -> np.ndarray:
    return np.logical_and.reduce(_neighbours(mask))


def _grow(mask: np.ndarray) -> np.ndarray:
    return np.logical_or.reduce(_neighbours(mask))


def _enclosed(mask: np.ndarray) -> np.ndarray:
    """Pixels outside `mask` that no path of such pixels (8 neighbours) joins to the picture's border."""
    outside = ~mask
    reached = np.zeros_like(mask)
    reached[0], reached[-1], reached[:, 0], reached[:, -1] = outside[0], outside[-1], outside[:, 0], outside[:, -1]
    while True:
        grown = _grow(reached) & outside
        if (grown == reached).all():
            return outside & ~reached
        reached = grown


@checked(image=_pixels)
def judge(image: Image.Image | np.ndarray) -> Reading:
    """Read a picture in the toy world's terms: background colour, and the shape, its colour and centre, if any.
    Arrays of 0-1 floats are read as 0-255 values scaled down.

    The background is the colour of the picture's border; shape pixels are those far from it. A shape that encloses
    background (a hole no path from the border reaches) is a ring; any other is told by how much of its bounding
    box it fills (square 1, circle 0.79, triangle 0.5). Exact on the world's own scenes.
    """
    pixels = image
    height, width, _ = pixels.shape
    ring = max(1, min(height, width) // 32)
    border = np.concatenate([pixels[:ring].reshape(-1, 3), pixels[-ring:].reshape(-1, 3),
                             pixels[:, :ring].reshape(-1, 3), pixels[:, -ring:].reshape(-1, 3)])
    background_rgb = np.median(border, axis=0)
    background = nearest_colour(background_rgb)
    distance = np.sqrt(((pixels - background_rgb) ** 2).sum(axis=2))
    mask = distance > FOREGROUND_DISTANCE
    share = float(mask.mean())
    if share < MIN_SHAPE_SHARE:
        return Reading(None, None, background, None, share)
    colour = nearest_colour(np.median(pixels[mask], axis=0))
    # Measure the shape after an opening (erode, then grow back), so that a few stray pixels do not stretch its box.
    solid = _grow(_shrink(mask))
    rows, columns = np.nonzero(solid if solid.any() else mask)
    top, bottom, left, right = rows.min(), rows.max(), columns.min(), columns.max()
    box_area = (bottom - top + 1) * (right - left + 1)
    fill = (solid if solid.any() else mask).sum() / box_area
    if _enclosed(mask).sum() >= _RING_HOLE_SHARE * box_area:
        shape = "ring"
    else:
        shape = "triangle" if fill < _FILL_TRIANGLE_BELOW else "circle" if fill < _FILL_CIRCLE_BELOW else "square"
    centre = ((left + right + 1) / 2 / width, (top + bottom + 1) / 2 / height)
    return Reading(shape, colour, background, centre, share)
