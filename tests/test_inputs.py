"""Input images and masks: loading, sizing, checks, mask makers, samples, and the image explorers' callbacks."""

import io

import numpy as np
import pytest
from PIL import Image

from helpers.inputs import (
    DRAWINGS,
    background_mask,
    blend,
    check_strength,
    ellipse_mask,
    load_image,
    mask_from_alpha,
    prepare_image,
    prepare_mask,
    rectangle_mask,
    sample,
    working_size,
)


@pytest.mark.parametrize("size", [(1000, 750), (333, 517), (1024, 1024), (1920, 1080), (17, 900)])
@pytest.mark.parametrize("longest", [128, 1024])
def test_odd_sizes_become_valid_sizes_with_the_aspect_ratio_kept(size, longest):
    width, height = working_size(size, longest)
    assert width % 16 == 0 and height % 16 == 0 and max(width, height) == longest
    if min(size) * longest / max(size) >= 16:  # the short side is not clamped to the 16-pixel minimum
        # Within one 16-pixel step of the exact aspect ratio.
        assert abs(width - height * size[0] / size[1]) <= 16


def test_prepare_image_converts_resizes_and_says_so():
    prepared = prepare_image(Image.new("RGBA", (1000, 750)), longest=1024)
    assert prepared.image.mode == "RGB" and prepared.size == (1024, 768)
    assert "converted RGBA to RGB" in prepared.note and "resized 1000x750 to 1024x768" in prepared.note
    assert prepare_image(Image.new("RGB", (128, 64)), longest=128).note == "kept as it is: 128x64, RGB"


def test_load_image_from_a_path_and_from_bytes(tmp_path):
    picture = Image.new("RGB", (20, 10), (1, 2, 3))
    picture.save(tmp_path / "p.png")
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG")
    assert load_image(tmp_path / "p.png").size == (20, 10)
    assert load_image(str(tmp_path / "p.png")).getpixel((0, 0)) == (1, 2, 3)
    assert load_image(buffer.getvalue()).size == (20, 10)


def test_non_images_are_refused_with_the_fix(tmp_path):
    (tmp_path / "notes.txt").write_text("not a picture")
    with pytest.raises(ValueError, match="notes.txt' is not an image file PIL can read; use a PNG or JPEG"):
        load_image(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="are not an image"):
        load_image(b"%PDF-1.7")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="not int"):
        load_image(3)


def test_mask_is_resized_with_the_image_and_made_black_and_white():
    mask = Image.new("RGB", (1000, 750))
    mask.paste((200, 200, 200), (100, 100, 500, 400))
    prepared = prepare_mask(mask, (1024, 768), original_size=(1000, 750))
    values = set(np.unique(np.asarray(prepared.image)))
    assert prepared.image.mode == "L" and prepared.size == (1024, 768) and values == {0, 255}
    assert "resized 1000x750 to 1024x768" in prepared.note and "to paint" in prepared.note


def test_growing_a_mask():
    hard = prepare_mask(rectangle_mask((64, 64), (0.25, 0.25, 0.75, 0.75)), (64, 64)).image
    grown = prepare_mask(rectangle_mask((64, 64), (0.25, 0.25, 0.75, 0.75)), (64, 64), grow=3).image
    assert np.asarray(grown).astype(bool).sum() > np.asarray(hard).astype(bool).sum()


def test_blend_keeps_the_original_outside_the_mask_and_mixes_across_a_soft_edge():
    original, painted = Image.new("RGB", (64, 64), (0, 0, 200)), Image.new("RGB", (64, 64), (200, 0, 0))
    mask = rectangle_mask((64, 64), (0.25, 0.25, 0.75, 0.75))
    hard = np.asarray(blend(original, painted, mask))
    assert (hard[0, 0] == (0, 0, 200)).all() and (hard[32, 32] == (200, 0, 0)).all()
    assert len(np.unique(hard[..., 0])) == 2
    soft = np.asarray(blend(original, painted, mask, soften=3))
    assert (soft[0, 0] == (0, 0, 200)).all() and (soft[32, 32] == (200, 0, 0)).all()
    assert len(np.unique(soft[..., 0])) > 2  # mixed values along the edge
    with pytest.raises(ValueError, match="soften=-1"):
        blend(original, painted, mask, soften=-1)


@pytest.mark.parametrize(
    ("mask", "arguments", "message"),
    [
        (Image.new("L", (64, 48)), {}, "nothing to paint"),
        (Image.new("L", (50, 50), 255), {}, "mask is 50x50 but the image is 64x48"),
        (Image.new("L", (64, 48), 255), {"grow": -1}, "grow=-1"),
    ],
)
def test_bad_masks_are_refused_with_the_fix(mask, arguments, message):
    with pytest.raises(ValueError, match=message):
        prepare_mask(mask, (64, 48), **arguments)


@pytest.mark.parametrize("strength", [-0.1, 1.5, "high"])
def test_strength_outside_0_to_1_is_refused(strength):
    with pytest.raises(ValueError, match=f"strength={strength!r} must be more than 0 and at most 1"):
        check_strength(strength)


def test_mask_makers():
    rectangle = np.asarray(rectangle_mask((100, 50), (0.1, 0.2, 0.5, 0.6)))
    assert rectangle[10:30, 10:50].all() and rectangle.sum() // 255 == 40 * 20
    ellipse = np.asarray(ellipse_mask((100, 100), (0.0, 0.0, 1.0, 1.0)))
    assert ellipse[50, 50] == 255 and ellipse[0, 0] == 0
    with pytest.raises(ValueError, match="box="):
        rectangle_mask((10, 10), (0.5, 0.5, 0.2, 0.9))


def test_masks_from_transparency():
    subject = sample("subject")
    opaque = np.asarray(mask_from_alpha(subject)).astype(bool)
    background = np.asarray(background_mask(subject)).astype(bool)
    assert (opaque ^ background).all()  # exactly one of the two covers each pixel
    assert np.asarray(background_mask(subject, margin=5)).astype(bool).sum() < background.sum()
    with pytest.raises(ValueError, match="no alpha channel"):
        mask_from_alpha(Image.new("RGB", (4, 4)))


def test_committed_samples_are_what_the_code_draws():
    for name, draw in DRAWINGS.items():
        assert np.array_equal(np.asarray(sample(name)), np.asarray(draw())), f"run python -m helpers.inputs ({name})"


def test_samples_are_drawn_where_images_is_missing(monkeypatch, tmp_path):
    from helpers import inputs

    monkeypatch.setattr(inputs, "SAMPLE_DIR", tmp_path / "not-installed")
    for name, draw in inputs.DRAWINGS.items():
        assert np.array_equal(np.asarray(sample(name)), np.asarray(draw()))


def explorer_on_the_scene(kind: str, task: str, folder):
    """An explorer of the given kind on the stand-in, for the sample scene at 128 px; and its first picture."""
    from helpers import widgets
    from helpers.loading import load_pipeline

    image = prepare_image(sample("scene"), longest=128).image
    explorer = getattr(widgets, kind)(load_pipeline("tiny", task=task), "tiny", image, prompt="a castle",
                                      guidance_scale=4.5, num_inference_steps=4, folder=folder)
    return explorer, bytes(explorer.image.value)


def test_image_to_image_explorer_updates_on_click(tmp_path):
    explorer, first = explorer_on_the_scene("ImageToImageExplorer", "image-to-image", tmp_path)
    assert Image.open(io.BytesIO(first)).size == (128, 80)
    explorer.controls["strength"].value = 0.3
    explorer.button.click()
    assert bytes(explorer.image.value) != first and "strength=0.3" in explorer.settings.value


def test_inpainting_explorer_moves_the_mask(tmp_path):
    explorer, first = explorer_on_the_scene("InpaintingExplorer", "inpainting", tmp_path)
    assert explorer.mask_box() == pytest.approx((0.3, 0.3, 0.7, 0.7))
    explorer.controls["mask left"].value = 0.0
    explorer.controls["mask width"].value = 0.3
    explorer.button.click()
    assert bytes(explorer.image.value) != first
    assert explorer.mask_box() == pytest.approx((0.0, 0.3, 0.3, 0.7))


def test_an_explorer_shows_any_failure_and_marks_the_old_picture(tmp_path, monkeypatch):
    import torch

    explorer, first = explorer_on_the_scene("ImageToImageExplorer", "image-to-image", tmp_path)

    def out_of_memory(*args, **kwargs):  # what a GPU raises when the picture does not fit; a CPU cannot
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(explorer.pipe.transformer, "forward", out_of_memory)
    explorer.controls["strength"].value = 0.45
    explorer.button.click()
    assert "Not generated:</b> OutOfMemoryError: CUDA out of memory" in explorer.settings.value
    assert "The picture shown is from earlier settings" in explorer.settings.value
    assert bytes(explorer.image.value) == first and isinstance(explorer.last_error, torch.OutOfMemoryError)
    assert not explorer.button.disabled
