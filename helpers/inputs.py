"""Input images and masks for image-to-image and inpainting: loaded, checked, and sized the way SD3.5 needs.

Introduced in notebook 06 (images) and 07 (masks). SD3.5 works on sides that are multiples of 16 (the VAE's factor
8 times the transformer's patch 2). `prepare_image` scales an input so its longer side is the model's working size,
keeps its aspect ratio, rounds both sides to multiples of 16, and says what it did. Masks are white where the
pipeline should paint and black where it should keep the image.

    python -m helpers.inputs     redraws the sample pictures in images/ that the notebooks use
"""

from __future__ import annotations

import io
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps, UnidentifiedImageError

from helpers.checks import (  # noqa: F401 - check_strength is part of this module's interface
    SIZE_MULTIPLE,
    check_path,
    check_side,
    check_strength,
    checked,
    listed,
    number,
    one_of,
    optional,
    picture,
    shown,
    side,
    text,
    whole,
)

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "images"
SAMPLES = {"scene": "sample_scene.png", "subject": "sample_subject.png"}


MAX_INPUT_PIXELS = 89_478_485
"""Largest input accepted (Pillow's own decompression-bomb threshold, about 9,500 x 9,500): larger files are refused
before they are decoded, so a small file that unpacks to gigabytes cannot fill the memory."""


MAX_GROW = 512
"""Pixels a mask can be grown or shrunk by: more than any picture of the series needs."""
ORIENTED = "sd35-oriented"
"""Where load_image notes that it turned a photo upright (the `info` of the picture it returns)."""


def picture_size(value, name: str) -> tuple[int, int]:
    """(width, height) of a picture: whole numbers of at least 1 pixel, at most MAX_INPUT_PIXELS in all."""
    width, height = listed(whole(1, MAX_INPUT_PIXELS), 2, 2)(value, name)
    if width * height > MAX_INPUT_PIXELS:
        raise ValueError(f"{name}={tuple(value)!r} is {width * height:,} pixels, more than the {MAX_INPUT_PIXELS:,} "
                         "accepted; SD3.5 works at about 1024 x 1024.")
    return width, height


def _source(value, name: str):
    """What load_image reads: a path, bytes or a PIL image (anything else is refused by name)."""
    if isinstance(value, Image.Image):
        return picture(value, name)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, (str, Path)):
        return check_path(value, name)
    raise ValueError(f"{name} must be a path, bytes or a PIL image, not {type(value).__name__}. (A NumPy array: "
                     "Image.fromarray(array) first, with values 0-255 as uint8.)")


def _check_pixel_count(image: Image.Image, what: str) -> None:
    if image.width * image.height > MAX_INPUT_PIXELS:
        raise ValueError(f"{what} is {image.width}x{image.height} pixels, more than the {MAX_INPUT_PIXELS:,} "
                         "accepted. Resize it first (1024 px on the long side is what SD3.5 works at).")


def _opened(file, name: str, what: str) -> Image.Image:
    """Decode an image file, refusing one larger than MAX_INPUT_PIXELS before its pixels are read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below says it better
            with Image.open(file) as opened:
                _check_pixel_count(opened, f"{name}: {what}")  # from the header, before decoding
                opened.load()
                return opened.copy()
    except Image.DecompressionBombError:
        raise ValueError(f"{name}: {what} declares a size far beyond the {MAX_INPUT_PIXELS:,} pixels accepted (a "
                         "'decompression bomb'); it was not decoded.") from None


@checked(source=_source, name=text)
def load_image(source: str | Path | bytes | Image.Image, *, name: str = "image") -> Image.Image:
    """An image from a file path, raw bytes or a PIL image. Raises a clear error for anything that is not one.
    A photo whose EXIF data says the camera was turned is turned upright, as viewers show it."""
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, bytes):  # the door has made a bytearray bytes
        try:
            image = _opened(io.BytesIO(source), name, f"these {len(source)} bytes")
        except (UnidentifiedImageError, OSError):
            raise ValueError(f"{name}: these {len(source)} bytes are not an image PIL can read; "
                             "pass PNG or JPEG data.") from None
    else:  # a Path: the door has checked it
        path = source.expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{name}={str(source)!r}: no such file. Check the path (relative to the "
                                    f"notebook's folder, {Path.cwd()}).")
        try:
            image = _opened(path, name, f"the file {str(source)!r}")
        except (UnidentifiedImageError, OSError):
            raise ValueError(f"{name}={str(source)!r} is not an image file PIL can read; use a PNG or JPEG.") from None
    _check_pixel_count(image, name)
    return _upright(image)


def _upright(image: Image.Image) -> Image.Image:
    """The picture as a viewer shows it: turned by its EXIF orientation (1 to 8), noted in its `info`."""
    try:
        orientation = image.getexif().get(0x0112, 1)  # the EXIF Orientation tag
    except Exception:  # noqa: BLE001 - unreadable EXIF data: the picture is used as stored
        return image
    if orientation in (None, 1) or orientation not in range(2, 9):
        return image
    turned = ImageOps.exif_transpose(image)
    turned.info[ORIENTED] = f"turned upright (EXIF orientation {orientation})"
    return turned


def to_8bit(image: Image.Image) -> tuple[Image.Image, str | None]:
    """`image` with 8-bit channels, its values scaled rather than clipped, and a note of what was done.

    Pillow's own convert() clips: a 16-bit picture (0 to 65535) comes out almost white, a float one (0 to 1)
    black. 16-bit values are divided by 257; float values are taken as 0 to 1 when none is above 1, else as 0 to
    255. Other modes are returned as they are.
    """
    import numpy as np

    if image.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return image, None
    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"the {image.mode} image holds values that are not numbers (NaN or infinite); fix the file.")
    top = values.max(initial=0.0)
    if image.mode == "F":
        scale, how = (255.0, "0-1 floats scaled to 0-255") if top <= 1 else (1.0, "floats taken as 0-255")
    elif top <= 255 and image.mode == "I":  # 32-bit integers holding 8-bit values (e.g. Image.fromarray of int32)
        scale, how = 1.0, "integers 0-255 kept as they are"
    else:
        scale, how = 1 / 257, "16-bit values scaled to 8 bits"
    eight = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(eight), f"{image.mode}: {how}"


@dataclass(frozen=True)
class Prepared:
    """An input made ready for the pipeline, and a note of what was done to it."""

    image: Image.Image
    note: str

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


@checked(size=picture_size, longest=side)
def working_size(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """Width and height with the longer side `longest`, the aspect ratio kept, both rounded to multiples of 16."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"image size {width}x{height} is empty.")
    check_side("longest", longest)
    scale = longest / max(width, height)

    def snap(value: float) -> int:
        return max(SIZE_MULTIPLE, round(value * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE)

    return snap(width), snap(height)


@checked(source=_source, longest=side)
def prepare_image(source, longest: int = 1024) -> Prepared:
    """The input as RGB at its working size (longer side `longest`, sides multiples of 16, aspect ratio kept)."""
    image = load_image(source)
    notes = [image.info[ORIENTED]] if ORIENTED in image.info else []
    image, scaled = to_8bit(image)
    notes += [scaled] if scaled else []
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        notes.append(f"{image.mode}: transparent areas put on white")
        background = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if image.mode != "RGB":
        notes.append(f"converted {image.mode} to RGB")
        image = image.convert("RGB")
    target = working_size(image.size, longest)
    if target != image.size:
        notes.append(f"resized {image.width}x{image.height} to {target[0]}x{target[1]} (aspect ratio "
                     f"{image.width / image.height:.3f} to {target[0] / target[1]:.3f})")
        image = image.resize(target, Image.Resampling.LANCZOS)
    return Prepared(image, "; ".join(notes) or f"kept as it is: {image.width}x{image.height}, RGB")


@checked(source=_source, image_size=picture_size, grow=whole(0, MAX_GROW), original_size=optional(picture_size))
def prepare_mask(source, image_size: tuple[int, int], *, grow: int = 0,
                 original_size: tuple[int, int] | None = None) -> Prepared:
    """A mask for an image of `image_size`: single channel, white = paint, black = keep.

    The mask must have the size of the image it was drawn for (`original_size`, default `image_size`); it is
    resized with the image, made strictly black and white, and optionally grown by `grow` pixels. (A soft edge
    would not help: SD3's inpainting pipeline makes every mask black and white. Blend after painting instead,
    with `blend`.)
    """
    import numpy as np

    mask = load_image(source, name="mask")
    expected = tuple(original_size or image_size)
    if mask.size != expected:
        raise ValueError(f"mask is {mask.width}x{mask.height} but the image is {expected[0]}x{expected[1]}: draw "
                         "the mask on the image it belongs to, or resize it to the image's size first.")
    notes = [mask.info[ORIENTED]] if ORIENTED in mask.info else []
    mask, scaled = to_8bit(mask)
    notes += [scaled] if scaled else []
    if mask.mode != "L":
        notes.append(f"converted {mask.mode} to one channel")
        mask = mask.convert("L")
    if mask.size != image_size:
        notes.append(f"resized {mask.width}x{mask.height} to {image_size[0]}x{image_size[1]}")
        mask = mask.resize(image_size, Image.Resampling.NEAREST)
    mask = mask.point(lambda value: 255 if value >= 128 else 0)
    if mask.getextrema()[1] == 0:
        raise ValueError("mask has nothing to paint: it is black everywhere. Paint the area to change in white.")
    if grow:
        mask = _grown(mask, grow)
        notes.append(f"grown by {grow} px")
    painted = float((np.asarray(mask) >= 128).mean())
    notes.append(f"{painted:.0%} of the image to paint")
    return Prepared(mask, "; ".join(notes))


def _grown(mask: Image.Image, pixels: int) -> Image.Image:
    """A black-and-white mask with its white area grown by `pixels` in every direction (a square, as a max filter
    of side 2 * pixels + 1), in time independent of `pixels` (a summed-area table, not a filter of that size)."""
    import numpy as np

    painted = np.asarray(mask) >= 128
    table = np.pad(painted.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    height, width = painted.shape
    top = np.clip(np.arange(height) - pixels, 0, height)[:, None]
    bottom = np.clip(np.arange(height) + pixels + 1, 0, height)[:, None]
    left = np.clip(np.arange(width) - pixels, 0, width)[None, :]
    right = np.clip(np.arange(width) + pixels + 1, 0, width)[None, :]
    inside = table[bottom, right] - table[top, right] - table[bottom, left] + table[top, left]
    return Image.fromarray(np.where(inside > 0, 255, 0).astype(np.uint8))


def _same_sizes(original: Image.Image, painted: Image.Image, mask: Image.Image) -> None:
    if not original.size == painted.size == mask.size:
        raise ValueError(f"sizes differ: original {original.size}, painted {painted.size}, mask {mask.size}; "
                         "use the prepared image and mask that made the painted picture.")


@checked(original=picture, painted=picture, mask=picture, soften=whole(0, MAX_GROW))
def blend(original: Image.Image, painted: Image.Image, mask: Image.Image, *, soften: int = 0) -> Image.Image:
    """`painted` inside the mask and `original` outside it, mixed across an edge softened over `soften` pixels.

    The inpainting pipeline decodes the whole picture, so even the kept area comes back through the VAE, slightly
    changed; pasting the original back makes the kept area exact, and a soft edge hides the seam.
    """
    _same_sizes(original, painted, mask)
    weight = mask.convert("L")
    if soften:
        weight = weight.filter(ImageFilter.GaussianBlur(soften))
    return Image.composite(painted.convert("RGB"), original.convert("RGB"), weight)


# Masks without a drawing app -------------------------------------------------------------------------------

def fractions_box(box, name: str) -> tuple[float, float, float, float]:
    """A box as fractions of a picture (left, top, right, bottom) with 0 <= left < right <= 1, the same for top and
    bottom; NumPy numbers accepted."""
    try:
        left, top, right, bottom = listed(number(0, 1), 4, 4)(box, name)
    except ValueError:
        left = top = right = bottom = 0.0
    if not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):
        raise ValueError(f"{name}={shown(box)} must be (left, top, right, bottom) fractions with 0 <= left < right <= 1 "
                         "and 0 <= top < bottom <= 1.")
    return left, top, right, bottom


def _box(size: tuple[int, int], box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """A checked box of fractions in pixels."""
    left, top, right, bottom = box
    width, height = size
    x0, y0 = min(round(left * width), width - 1), min(round(top * height), height - 1)
    x1, y1 = max(x0 + 1, round(right * width)), max(y0 + 1, round(bottom * height))  # at least one pixel
    return x0, y0, x1 - 1, y1 - 1


@checked(size=picture_size, box=fractions_box)
def rectangle_mask(size: tuple[int, int], box: tuple[float, float, float, float]) -> Image.Image:
    """White (paint) inside `box`, given as fractions of the image: (left, top, right, bottom)."""
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(_box(size, box), fill=255)
    return mask


@checked(size=picture_size, box=fractions_box)
def ellipse_mask(size: tuple[int, int], box: tuple[float, float, float, float]) -> Image.Image:
    """White (paint) inside the ellipse that fills `box`, given as fractions of the image."""
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse(_box(size, box), fill=255)
    return mask


@checked(image=picture, paint=one_of("opaque", "transparent"))
def mask_from_alpha(image: Image.Image, *, paint: str = "opaque") -> Image.Image:
    """A mask from an image's transparency: paint where it is opaque (a stroke layer) or 'transparent' (holes)."""
    if "A" not in image.getbands():
        raise ValueError(f"the image has no alpha channel (mode {image.mode}); save it as a PNG with transparency.")
    alpha = image.getchannel("A").point(lambda value: 255 if value >= 128 else 0)
    return alpha if paint == "opaque" else ImageChops.invert(alpha)


@checked(subject=picture, margin=whole(0, MAX_GROW))
def background_mask(subject: Image.Image, *, margin: int = 0) -> Image.Image:
    """For background replacement: paint everything but the subject of a cut-out (transparent background),
    keeping a `margin` of pixels around the subject untouched."""
    mask = mask_from_alpha(subject, paint="transparent")
    return ImageChops.invert(_grown(ImageChops.invert(mask), margin)) if margin else mask


# Sample pictures, drawn by code -----------------------------------------------------------------------------

def draw_scene(size: tuple[int, int] = (768, 512)) -> Image.Image:
    """A simple landscape: sky, sun, hills, a lake and a house. Deterministic."""
    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(height):  # sky, light towards the horizon
        t = y / height
        draw.line([(0, y), (width, y)], fill=(int(90 + 120 * t), int(150 + 80 * t), 235))
    draw.ellipse([width * 0.72, height * 0.08, width * 0.86, height * 0.29], fill=(255, 214, 70))
    draw.polygon([(0, height * 0.62), (width * 0.3, height * 0.42), (width * 0.62, height * 0.6), (width, height * 0.5),
                  (width, height), (0, height)], fill=(70, 140, 60))
    draw.ellipse([width * 0.05, height * 0.72, width * 0.45, height * 0.92], fill=(60, 110, 190))
    draw.rectangle([width * 0.58, height * 0.56, width * 0.78, height * 0.8], fill=(200, 160, 120))
    draw.polygon([(width * 0.55, height * 0.56), (width * 0.68, height * 0.42), (width * 0.81, height * 0.56)],
                 fill=(160, 50, 40))
    draw.rectangle([width * 0.65, height * 0.66, width * 0.7, height * 0.8], fill=(90, 60, 40))
    return image


def draw_subject(size: tuple[int, int] = (512, 512)) -> Image.Image:
    """A cut-out subject on a transparent background (RGBA): a red ball on a small stand."""
    width, height = size
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rectangle([width * 0.44, height * 0.62, width * 0.56, height * 0.86], fill=(120, 120, 130, 255))
    draw.rectangle([width * 0.3, height * 0.84, width * 0.7, height * 0.9], fill=(90, 90, 100, 255))
    draw.ellipse([width * 0.28, height * 0.18, width * 0.72, height * 0.62], fill=(210, 40, 50, 255))
    draw.ellipse([width * 0.38, height * 0.26, width * 0.47, height * 0.35], fill=(250, 170, 170, 255))
    return image


DRAWINGS = {"scene": draw_scene, "subject": draw_subject}


def _sample_name(value, name: str) -> str:
    if not isinstance(value, str) or value not in SAMPLES:
        raise ValueError(f"{name}={shown(value)} is not a sample; use one of: {', '.join(SAMPLES)}.")
    return value


@checked(name=_sample_name)
def sample(name: str) -> Image.Image:
    """A sample picture: 'scene' or 'subject'. Read from the repository's images/ (drawn there by
    `python -m helpers.inputs`), or drawn here where the helpers were installed without it (as on Colab)."""
    path = SAMPLE_DIR / SAMPLES[name]
    return load_image(path if path.is_file() else DRAWINGS[name](), name=name)


def main(argv: list[str] | None = None) -> int:
    """Redraw the sample pictures in images/."""
    import argparse

    argparse.ArgumentParser(prog="python -m helpers.inputs", description=f"Redraw the sample pictures "
                            f"({', '.join(SAMPLES.values())}) in {SAMPLE_DIR}.").parse_args(argv)
    SAMPLE_DIR.mkdir(exist_ok=True)
    for name, draw in DRAWINGS.items():
        path = SAMPLE_DIR / SAMPLES[name]
        draw().save(path)
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
