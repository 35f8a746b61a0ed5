"""Sweeps that survive being killed, the image cache, measurements, and the slider explorer's callbacks."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.experiments import (
    colour_share,
    image_key,
    key_name,
    mean_difference,
    run_sweep,
    settings_of,
    summarise,
)
from helpers.images import STAGING_PREFIX
from helpers.loading import load_pipeline

FIXED = {"prompt": "a cat", "num_inference_steps": 2, "guidance_scale": 4.5, "height": 64, "width": 64}


@pytest.fixture(scope="module")
def pipe():
    pipe = load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def final_images(folder):
    return sorted(p for p in folder.glob("*.png") if not p.name.startswith(STAGING_PREFIX))


def test_sweep_makes_every_combination_and_reuses_them(pipe, tmp_path):
    vary = {"seed": [0, 1], "guidance_scale": [1.0, 7.0]}
    fixed = {k: v for k, v in FIXED.items() if k != "guidance_scale"}
    first = run_sweep(pipe, "tiny", fixed, vary, folder=tmp_path, progress=False)
    assert (first.generated, first.reused) == (4, 0) and len(final_images(tmp_path)) == 4
    again = run_sweep(pipe, "tiny", fixed, vary, folder=tmp_path, progress=False)
    assert (again.generated, again.reused) == (0, 4)
    assert [path for _, path in again.entries] == [path for _, path in first.entries]
    assert settings_of(first.entries[3][1]) == {**fixed, "seed": 1, "guidance_scale": 7.0}
    figure = first.figure(rows="seed", columns="guidance_scale")
    assert [axis.get_title() for axis in figure.get_axes()[:2]] == ["guidance_scale = 1.0", "guidance_scale = 7.0"]


def test_sweep_image_equals_a_direct_pipeline_call(pipe, tmp_path):
    sweep = run_sweep(pipe, "tiny", FIXED, {"seed": [3]}, folder=tmp_path, progress=False)
    direct = pipe(**FIXED, generator=torch.Generator("cpu").manual_seed(3)).images[0]
    assert mean_difference(sweep.image(seed=3), direct) == 0.0


def test_a_sweep_encodes_each_prompt_once_and_makes_the_same_pictures(pipe, tmp_path):
    calls = []
    handles = [getattr(pipe, part).register_forward_hook(lambda *_, part=part: calls.append(part))
               for part in ("text_encoder", "text_encoder_2", "text_encoder_3")]
    vary = {"seed": [0, 1, 2], "prompt": ["a cat on a mat", "a dog on a log"]}
    try:
        sweep = run_sweep(pipe, "tiny", {k: v for k, v in FIXED.items() if k != "prompt"}, vary, folder=tmp_path,
                          progress=False)
    finally:
        for handle in handles:
            handle.remove()
    # 2 prompts, each with CFG's empty negative prompt: each encoder ran 4 times (CLIPs per prompt), not once per
    # picture (6 pictures, 12 runs of each)
    assert sweep.generated == 6 and calls.count("text_encoder_3") == 4 and calls.count("text_encoder") <= 8
    direct = pipe(**{**FIXED, "prompt": "a dog on a log"}, generator=torch.Generator("cpu").manual_seed(2)).images[0]
    assert mean_difference(sweep.image(seed=2, prompt="a dog on a log"), direct) == 0.0


def test_a_speed_up_that_changes_pictures_changes_the_key(pipe):
    from helpers.speed import attention_cached

    settings = {**FIXED, "seed": 0}
    plain = image_key(pipe, "tiny", settings)
    with attention_cached(pipe.transformer, every=2):
        cached = image_key(pipe, "tiny", settings)
    assert "speed" not in plain and cached["speed"] == {"cache": {"pab": 2, "window": [100, 800]}}
    assert key_name(cached) != key_name(plain) and image_key(pipe, "tiny", settings) == plain  # the cache removed
    kernel = load_pipeline("tiny", speed={"attention_kernel": "math"})
    assert image_key(kernel, "tiny", settings)["speed"] == {"attention_kernel": ["math"]}


def test_everything_that_changes_an_image_changes_its_key(pipe):
    settings = {**FIXED, "seed": 0}
    base = key_name(image_key(pipe, "tiny", settings))
    changed = [
        key_name(image_key(pipe, "large", settings)),
        key_name(image_key(pipe, "tiny", {**settings, "negative_prompt": "grass"})),
        key_name(image_key(pipe, "tiny", {**settings, "seed": 1})),
        key_name(image_key(load_pipeline("tiny", quantize="nf4"), "tiny", settings)),
        key_name(image_key(load_pipeline("tiny", task="image-to-image"), "tiny",
                           {**settings, "image": Image.new("RGB", (64, 64)), "strength": 0.5})),
    ]
    assert len({base, *changed}) == len(changed) + 1


@pytest.mark.parametrize(
    ("fixed", "vary", "message"),
    [
        (FIXED, {}, "vary is empty"),
        (FIXED, {"seed": []}, "must be a non-empty list"),
        ({**FIXED, "guidance_scale": -1.0}, {"seed": [0]}, "guidance_scale=-1.0 must be a number from 0 to 100"),
        ({**FIXED, "num_inference_steps": 0}, {"seed": [0]}, "num_inference_steps=0"),
        (FIXED, {"cfg": [1.0]}, "unknown setting 'cfg'"),
        (FIXED, {"seed": [0], "prompt": ["x"]}, "'prompt' is both fixed and varied"),
        ({**FIXED, "height": 100}, {"seed": [0]}, "height=100 must be a positive multiple of 16"),
    ],
)
def test_bad_sweeps_fail_before_generating(pipe, tmp_path, fixed, vary, message):
    with pytest.raises(ValueError, match=message):
        run_sweep(pipe, "tiny", fixed, vary, folder=tmp_path, progress=False)
    assert not tmp_path.exists() or final_images(tmp_path) == []


def test_a_killed_sweep_loses_nothing_and_redoes_nothing(pipe, tmp_path):
    fixed = {**FIXED, "num_inference_steps": 30, "height": 128, "width": 128}
    seeds = list(range(12))
    script = textwrap.dedent(f"""
        from helpers.experiments import run_sweep
        from helpers.loading import load_pipeline
        pipe = load_pipeline("tiny")
        pipe.set_progress_bar_config(disable=True)
        run_sweep(pipe, "tiny", {fixed!r}, {{"seed": {seeds!r}}}, folder={str(tmp_path)!r}, progress=False)
    """)
    worker = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    deadline = time.monotonic() + 120
    while len(final_images(tmp_path)) < 3 and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    finished = {path.name: path.read_bytes() for path in final_images(tmp_path)}
    assert 3 <= len(finished) < len(seeds), "the sweep should have been killed midway"
    for path in final_images(tmp_path):  # every final name holds a whole, readable image
        with Image.open(path) as image:
            image.load()

    resumed = run_sweep(pipe, "tiny", fixed, {"seed": seeds}, folder=tmp_path, progress=False)
    assert resumed.reused == len(finished) and resumed.generated == len(seeds) - len(finished)
    assert {name: (tmp_path / name).read_bytes() for name in finished} == finished
    assert len(final_images(tmp_path)) == len(seeds)


def test_colour_share_counts_pixels_in_a_hue_range():
    green, red, grey = Image.new("RGB", (10, 10), (30, 200, 40)), Image.new("RGB", (10, 10), (220, 20, 20)), \
        Image.new("RGB", (10, 10), (128, 128, 128))
    half = Image.new("RGB", (10, 10), (220, 20, 20))
    half.paste(green.crop((0, 0, 5, 10)), (0, 0))
    assert colour_share(green, "green") == 1.0 and colour_share(red, "green") == 0.0
    assert colour_share(red, "red") == 1.0  # red's range wraps around 0 degrees
    assert colour_share(grey, "green") == 0.0  # grey has no hue worth the name
    assert colour_share(half, "green") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="colour='teal'"):
        colour_share(green, "teal")


def test_mean_saturation_runs_from_grey_to_pure_colour():
    from helpers.experiments import mean_saturation

    assert mean_saturation(Image.new("RGB", (4, 4), (128, 128, 128))) == 0.0
    assert mean_saturation(Image.new("RGB", (4, 4), (255, 0, 0))) == 1.0


def test_region_difference_separates_inside_from_outside():
    from helpers.experiments import region_difference

    before = Image.new("RGB", (10, 10))
    after = before.copy()
    after.paste((100, 100, 100), (0, 0, 5, 10))
    mask = Image.new("L", (10, 10))
    mask.paste(255, (0, 0, 5, 10))
    assert region_difference(before, after, mask) == {"inside": 100.0, "outside": 0.0}
    with pytest.raises(ValueError, match="both painted"):
        region_difference(before, after, Image.new("L", (10, 10)))


def test_mean_difference_and_summary():
    black, white = Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4), (255, 255, 255))
    assert mean_difference(black, black) == 0.0 and mean_difference(black, white) == 255.0
    with pytest.raises(ValueError, match="compare pictures of one size"):
        mean_difference(black, Image.new("RGB", (5, 4)))
    assert summarise([0.1, 0.3]) == "0.200 ± 0.141 (n = 2)"
    with pytest.raises(ValueError, match="values is empty"):
        summarise([])


def test_explorer_shows_an_image_when_created_and_on_every_click(pipe, tmp_path):
    from helpers.widgets import TextToImageExplorer

    explorer = TextToImageExplorer(pipe, "tiny", prompt="a cat", guidance_scale=4.5, num_inference_steps=2,
                                   height=64, width=64, folder=tmp_path)
    first = bytes(explorer.image.value)
    assert first.startswith(b"\x89PNG") and "guidance_scale=4.5" in explorer.settings.value
    assert explorer.progress.value == explorer.progress.max == 2

    explorer.controls["guidance_scale"].value = 8.0
    explorer.button.click()
    assert bytes(explorer.image.value) != first
    assert "guidance_scale=8.0" in explorer.settings.value and "generated now" in explorer.settings.value

    explorer.controls["guidance_scale"].value = 4.5
    explorer.button.click()
    assert bytes(explorer.image.value) == first and "from the cache" in explorer.settings.value
    assert not explorer.button.disabled


def test_explorer_steps_and_seed_change_the_image(pipe, tmp_path):
    from helpers.widgets import TextToImageExplorer

    explorer = TextToImageExplorer(pipe, "tiny", prompt="a cat", guidance_scale=4.5, num_inference_steps=2,
                                   height=64, width=64, folder=tmp_path)
    seen = {bytes(explorer.image.value)}
    for name, value in (("seed", 5), ("num_inference_steps", 3), ("negative_prompt", "grass")):
        explorer.controls[name].value = value
        explorer.button.click()
        seen.add(bytes(explorer.image.value))
    assert len(seen) == 4
    assert np.asarray(Image.open(min(tmp_path.glob("*.png")))).shape == (64, 64, 3)


def test_explorer_uses_the_value_a_slider_shows_and_refuses_what_a_sweep_refuses(pipe, tmp_path):
    from helpers.widgets import TextToImageExplorer

    explorer = TextToImageExplorer(pipe, "tiny", prompt="a cat", guidance_scale=3.0, num_inference_steps=2,
                                   height=64, width=64, folder=tmp_path)
    explorer.controls["guidance_scale"].value = 3.0 + 0.5 + 0.5 - 4e-16  # what a browser's two steps add up to
    assert explorer.current_settings()["guidance_scale"] == 4.0
    wide = TextToImageExplorer(pipe, "tiny", prompt="a cat", guidance_scale=12.0, num_inference_steps=2, height=64,
                               width=64, folder=tmp_path)
    assert wide.current_settings()["guidance_scale"] == 12.0, "the slider widens to the value given, not clamps it"
    with pytest.raises(ValueError, match="height=72 must be a positive multiple of 16"):
        TextToImageExplorer(pipe, "tiny", prompt="a cat", guidance_scale=3.0, num_inference_steps=2, height=72,
                            width=64, folder=tmp_path)


# A damaged cache: a sweep folder synced half-way, a file emptied or overwritten by another picture.
DAMAGE = {
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "emptied": lambda path: path.write_bytes(b""),
    "not a PNG": lambda path: path.write_text("<html>404</html>"),
    "another picture, no record": lambda path: Image.new("RGB", (64, 64), "red").save(path),
    "pixels changed, record kept": lambda path: _repaint_keeping_record(path),
}


def _repaint_keeping_record(path):
    from PIL import PngImagePlugin

    with Image.open(path) as image:
        info = PngImagePlugin.PngInfo()
        for name, value in image.text.items():
            info.add_text(name, value)
        changed = image.convert("RGB")
    changed.putpixel((0, 0), (255 - changed.getpixel((0, 0))[0], 0, 0))
    changed.save(path, pnginfo=info)


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cached_picture_is_made_again_and_counted(pipe, tmp_path, damage, capsys):
    first = run_sweep(pipe, "tiny", FIXED, {"seed": [0, 1]}, folder=tmp_path, progress=False)
    good = first.image(seed=0)
    DAMAGE[damage](first.entries[0][1])
    again = run_sweep(pipe, "tiny", FIXED, {"seed": [0, 1]}, folder=tmp_path, progress=False)
    assert (again.generated, again.reused, again.repaired) == (1, 1, 1)
    assert mean_difference(again.image(seed=0), good) == 0.0
    assert "1 cached picture(s)" in capsys.readouterr().out
    assert run_sweep(pipe, "tiny", FIXED, {"seed": [0, 1]}, folder=tmp_path, progress=False).reused == 2


def test_a_model_changed_in_place_never_returns_old_pictures(tmp_path):
    from helpers.experiments import pipeline_fingerprint
    from helpers.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline()  # its own copy: the change below must not reach other tests
    pipe.set_progress_bar_config(disable=True)
    before = run_sweep(pipe, "tiny", FIXED, {"seed": [0]}, folder=tmp_path, progress=False)
    fingerprint = pipeline_fingerprint(pipe)
    with torch.no_grad():  # as a LoRA merge or a fine-tuning step would: same names, shapes and dtype
        pipe.transformer.proj_out.weight.mul_(1.5)
    assert pipeline_fingerprint(pipe) != fingerprint
    after = run_sweep(pipe, "tiny", FIXED, {"seed": [0]}, folder=tmp_path, progress=False)
    assert (after.generated, after.reused) == (1, 0)
    assert after.entries[0][1] != before.entries[0][1]
    assert mean_difference(after.image(seed=0), before.image(seed=0)) > 0


def test_a_damaged_picture_in_a_read_only_folder_is_reported(pipe, tmp_path):
    sweep = run_sweep(pipe, "tiny", FIXED, {"seed": [0]}, folder=tmp_path, progress=False)
    sweep.entries[0][1].write_bytes(b"")
    tmp_path.chmod(0o555)
    try:
        if os.access(tmp_path, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        with pytest.raises(OSError, match="is damaged .* cannot be replaced"):
            run_sweep(pipe, "tiny", FIXED, {"seed": [0]}, folder=tmp_path, progress=False)
    finally:
        tmp_path.chmod(0o755)


@pytest.mark.parametrize("kind", ["folder", "dangling link", "link to a picture"])
def test_a_cache_name_that_is_not_a_picture_stops_the_sweep_and_is_left_alone(pipe, tmp_path, kind):
    name = key_name(image_key(pipe, "tiny", {**FIXED, "seed": 0}))
    path = tmp_path / name
    if kind == "folder":
        path.mkdir()
        (path / "mine.txt").write_text("keep")
    elif kind == "dangling link":
        path.symlink_to(tmp_path / "nowhere.png")
    else:
        Image.new("RGB", (8, 8)).save(tmp_path / "elsewhere.png")
        path.symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(OSError, match="is a (folder|link), where this sweep keeps the picture"):
        run_sweep(pipe, "tiny", FIXED, {"seed": [0]}, folder=tmp_path, progress=False)
    assert path.is_symlink() or (path / "mine.txt").read_text() == "keep"


def test_numpy_numbers_are_settings_like_python_numbers_and_equal_values_share_a_picture(pipe, tmp_path):
    first = run_sweep(pipe, "tiny", {**FIXED, "guidance_scale": 4}, {"seed": [np.int64(0)]}, folder=tmp_path,
                      progress=False)
    again = run_sweep(pipe, "tiny", {**FIXED, "guidance_scale": np.float32(4.0)}, {"seed": [0]}, folder=tmp_path,
                      progress=False)
    assert (first.generated, again.generated, again.reused) == (1, 0, 1)
    assert first.entries[0][1] == again.entries[0][1]
    for negative in ("", None):  # what diffusers does with no negative prompt: the same picture, the same file
        same = run_sweep(pipe, "tiny", {**FIXED, "guidance_scale": 4.0, "negative_prompt": negative}, {"seed": [0]},
                         folder=tmp_path, progress=False)
        assert (same.generated, same.entries[0][1]) == (0, first.entries[0][1])


def test_a_paired_change_is_reported_only_where_the_sign_test_finds_it():
    from helpers.experiments import paired_change, sign_test_p

    assert sign_test_p(8, 8) == 2 / 256 and sign_test_p(0, 0) == 1.0
    clear = paired_change([1.0] * 8 + [0.0] * 2, [0.0] * 10)  # 8 of 10 seeds lost it, 2 had nothing to lose
    assert (clear.lower, clear.higher, clear.same, clear.direction) == (8, 0, 2, "lower")
    assert clear.finding("the green share").startswith("the green share was lower, seed by seed (lower in 8, higher in 0 of 10")
    assert "p = 0.0078" in str(clear)
    unclear = paired_change([1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0])  # 2 lower, 1 higher: p = 1
    assert unclear.direction is None and unclear.p == 1.0
    assert unclear.finding("the green share").startswith("no evidence that the green share differs, either way")
    too_few = paired_change([1.0] * 4, [0.0] * 4)  # every changed seed one way, but 4 cannot reach p < 0.05
    assert too_few.direction is None and "too few to tell" in too_few.finding("it")


def test_a_paired_change_within_the_tolerance_counts_as_the_same():
    from helpers.experiments import paired_change

    change = paired_change([10.0, 10.0, 10.0], [10.04, 9.97, 12.0], tolerance=0.05)
    assert (change.lower, change.higher, change.same) == (0, 1, 2) and "within 0.05 in 2 of 3 seeds" in str(change)
    with pytest.raises(ValueError, match="tolerance=-1"):
        paired_change([1.0], [2.0], tolerance=-1)
