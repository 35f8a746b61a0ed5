"""Saving images with their settings, never overwriting, and labelled grids."""

import itertools

import numpy as np
import pytest
from PIL import Image

from helpers.images import image_grid, read_metadata, save_image

SETTINGS = {
    "model": "tiny",
    "prompt": "Children's birthday party",
    "seed": 7,
    "num_inference_steps": 4,
    "guidance_scale": 4.5,
}


def picture(value: int = 0, size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(value)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def test_metadata_round_trip(tmp_path):
    path = save_image(picture(), folder=tmp_path, negative_prompt="No birthday cake", **SETTINGS)
    assert path.suffix == ".png" and path.parent == tmp_path
    assert read_metadata(path) == {
        **SETTINGS,
        "negative_prompt": "No birthday cake",
        "width": 64,
        "height": 48,
    }


def test_extra_pipeline_settings_are_recorded(tmp_path):
    path = save_image(picture(), folder=tmp_path, skip_guidance_layers=[7, 8, 9], width=64, **SETTINGS)
    assert read_metadata(path)["skip_guidance_layers"] == [7, 8, 9]


def test_saved_pixels_are_the_image(tmp_path):
    image = picture(3)
    path = save_image(image, folder=tmp_path, **SETTINGS)
    with Image.open(path) as saved:
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(image))


def test_never_overwrites(tmp_path):
    first = save_image(picture(1), folder=tmp_path, **SETTINGS)
    first_bytes = first.read_bytes()
    second = save_image(picture(2), folder=tmp_path, **SETTINGS)
    third = save_image(picture(3), folder=tmp_path, **SETTINGS)
    assert len({first, second, third}) == 3
    assert first.read_bytes() == first_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (first, second, third))


def test_wrong_size_setting_is_refused(tmp_path):
    with pytest.raises(ValueError, match="height=1024"):
        save_image(picture(), folder=tmp_path, height=1024, **SETTINGS)
    assert list(tmp_path.iterdir()) == []


def test_read_metadata_of_a_foreign_png_says_so(tmp_path):
    path = tmp_path / "plain.png"
    picture().save(path)
    with pytest.raises(ValueError, match="not saved by helpers.save_image"):
        read_metadata(path)


def test_grid_has_one_panel_per_image_with_labels():
    images = [[picture(i), picture(i + 1), picture(i + 2)] for i in range(2)]
    figure = image_grid(images, column_labels=["1.0", "4.5", "7.0"], row_labels=["seed 0", "seed 1"], title="t")
    axes = figure.get_axes()
    assert len(axes) == 6
    assert [axis.get_title() for axis in axes[:3]] == ["1.0", "4.5", "7.0"]
    assert [axes[0].get_ylabel(), axes[3].get_ylabel()] == ["seed 0", "seed 1"]


def test_long_labels_are_wrapped_within_their_picture_and_do_not_meet():
    """Notebook 11's grid of eight captions: each label broken into lines no wider than its picture, as drawn."""
    captions = [f"a {colour} ring on a {background} background" for colour, background in
                zip(("red", "yellow", "white", "green", "blue", "purple", "red", "white"),
                    ("blue", "green", "purple", "yellow", "white", "green", "yellow", "blue"), strict=True)]
    figure = image_grid([picture(i) for i in range(8)], column_labels=captions)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    axes = figure.get_axes()
    for axis, caption in zip(axes, captions, strict=True):
        assert axis.get_title().replace("\n", " ") == caption and "\n" in axis.get_title()
        assert axis.title.get_window_extent(renderer).width <= axis.get_window_extent(renderer).width * 1.05
    extents = [axis.title.get_window_extent(renderer) for axis in axes]
    assert all(left.x1 <= right.x0 for left, right in itertools.pairwise(extents))
    kept = image_grid([[picture()], [picture()]], row_labels=["negative:\na blue\nbackground", "none"])
    assert kept.get_axes()[0].get_ylabel() == "negative:\na blue\nbackground"  # its own breaks kept


def test_flat_list_is_one_row():
    figure = image_grid([picture(), picture()], column_labels=["a", "b"])
    assert len(figure.get_axes()) == 2


def test_grid_label_count_mismatch_is_explained():
    with pytest.raises(ValueError, match="column_labels has 1 labels for 2 columns"):
        image_grid([picture(), picture()], column_labels=["only one"])
    with pytest.raises(ValueError, match="images is empty"):
        image_grid([])


def test_a_small_picture_is_enlarged_pixel_for_pixel_and_a_large_one_left_alone():
    import numpy as np

    from helpers.images import enlarged

    small = Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3))
    shown = enlarged(small)
    assert shown.size == (256, 256) and small.size == (64, 64)
    assert np.array_equal(np.asarray(shown)[::4, ::4], np.asarray(small))  # each pixel a 4x4 square, no smoothing
    large = Image.new("RGB", (1024, 768))
    assert enlarged(large) is large
