"""Bad input, as a careless user or damaged data gives it: each attack ends in an error raised by `helpers`, before
any work, whose message names the value and says what to do, and never shows a token.

Each group says what the user was doing. The table grows with each entry point checked (issue "Bad input").
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers.access import HUB_TIMEOUT_S, HubUnreachableError, InvalidTokenError, check_access, require_token
from helpers.experiments import check_settings
from helpers.loading import load_pipeline
from helpers.session import setup

SECRET = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"


@dataclass(frozen=True)
class Attack:
    what: str
    call: Callable[[], Any]
    error: type[BaseException]
    says: tuple[str, ...]
    """Every one of these must be in the message."""


ATTACKS: list[Attack] = []


def attack(what: str, call: Callable[[], Any], error: type[BaseException], *says: str) -> None:
    ATTACKS.append(Attack(what, call, error, says))


# --- Pasting a token: copy-paste artefacts in HF_TOKEN reach the hub as a malformed header -------------------------
# (huggingface_hub itself removes line breaks and surrounding spaces from HF_TOKEN; everything else is ours to catch.)

def token_from_environment(value: str) -> Callable[[], Any]:
    def call():
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("HF_TOKEN", value)
            return require_token("stabilityai/stable-diffusion-3.5-large")
    return call


for name, character, said in [
    ("zero-width space", "\u200b", "zero-width space (U+200B)"),
    ("non-breaking space", "\u00a0", "non-breaking space (U+00A0)"),
    ("tab", "\t", "a tab (U+0009)"),
    ("space", " ", "a space (U+0020)"),
    ("form feed", "\f", "a form feed (U+000C)"),
    ("byte-order mark", "\ufeff", "byte-order mark (U+FEFF)"),
    ("Cyrillic a that looks like a Latin a", "\u0430", "cyrillic small letter a (U+0430)"),
    ("en dash for a hyphen", "\u2013", "en dash (U+2013)"),
    ("escape character", "\x1b", "U+001B"),
]:
    attack(f"HF_TOKEN with a {name} inside", token_from_environment(SECRET[:10] + character + SECRET[10:]),
           InvalidTokenError, said, "Copy the token again")
    if not character.isspace():  # leading and trailing spaces huggingface_hub strips: the token then works
        attack(f"HF_TOKEN starting with a {name}", token_from_environment(character + SECRET), InvalidTokenError,
               said, "character 1 of")
for short in ("hf_", "x", "abc1234"):
    attack(f"HF_TOKEN of {len(short)} characters", token_from_environment(short), InvalidTokenError,
           f"{len(short)} characters long")

# --- Passing a token to check_access directly (a script, or a token read from a file with its line ending) --------

for name, value in [("a trailing line break", SECRET + "\n"), ("a carriage return inside", SECRET[:5] + "\r" + SECRET[5:]),
                    ("an empty string", ""), ("a line break inside", SECRET[:8] + "\n" + SECRET[8:]),
                    ("a NUL inside", SECRET[:8] + "\x00" + SECRET[8:]), ("a space before it", " " + SECRET)]:
    attack(f"check_access with {name}",
           lambda value=value: check_access("stabilityai/stable-diffusion-3.5-large", value,
                                            endpoint="http://127.0.0.1:9"),
           InvalidTokenError, "Copy it again" if value == "" else "Copy the token again")

# --- Settings of a sweep or an explorer: what a reader types into a cell ------------------------------------------

SETTINGS = {"prompt": "a red circle", "num_inference_steps": 20, "guidance_scale": 3.0, "seed": 0}
for name, value, said in [
    ("guidance_scale", math.inf, "guidance_scale=inf"), ("guidance_scale", -math.inf, "guidance_scale=-inf"),
    ("guidance_scale", math.nan, "guidance_scale=nan"), ("guidance_scale", -1.0, "guidance_scale=-1.0"),
    ("guidance_scale", "7", "guidance_scale='7'"), ("guidance_scale", True, "guidance_scale=True"),
    ("guidance_scale", None, "guidance_scale=None"), ("guidance_scale", [4.5], "guidance_scale=[4.5]"),
    ("num_inference_steps", 0, "num_inference_steps=0"), ("num_inference_steps", -3, "num_inference_steps=-3"),
    ("num_inference_steps", 2.5, "num_inference_steps=2.5"), ("num_inference_steps", 20.0, "num_inference_steps=20.0"),
    ("num_inference_steps", True, "num_inference_steps=True"), ("num_inference_steps", "20", "'20'"),
    ("num_inference_steps", None, "num_inference_steps=None"),
    ("seed", -1, "seed=-1"), ("seed", 1.5, "seed=1.5"), ("seed", "0", "seed='0'"), ("seed", 2**64, str(2**64)),
    ("seed", None, "seed=None"), ("seed", False, "seed=False"),
    ("prompt", None, "prompt=None"), ("prompt", 42, "prompt=42"), ("prompt", ["a", "b"], "prompt=['a', 'b']"),
    ("prompt", b"a red circle", "prompt=b'a red circle'"),
    ("negative_prompt", 0, "negative_prompt=0"), ("negative_prompt", ["x"], "negative_prompt=['x']"),
    ("height", 100, "height=100"), ("height", 0, "height=0"), ("height", -64, "height=-64"),
    ("width", 64.0, "width=64.0"), ("width", "64", "width='64'"), ("width", True, "width=True"),
    ("strength", 0, "strength=0"), ("strength", 0.0, "strength=0.0"), ("strength", -0.1, "strength=-0.1"),
    ("strength", 1.5, "strength=1.5"), ("strength", math.nan, "strength=nan"), ("strength", math.inf, "strength=inf"),
    ("strength", "0.6", "strength='0.6'"), ("strength", 1e-300, "runs no denoising step"),
    ("max_sequence_length", 0, "max_sequence_length=0"), ("max_sequence_length", 513, "max_sequence_length=513"),
    ("max_sequence_length", -1, "max_sequence_length=-1"), ("max_sequence_length", 77.0, "max_sequence_length=77.0"),
    ("max_sequence_length", True, "max_sequence_length=True"),
    ("sampler", "euler", "unknown setting 'sampler'"),
]:
    attack(f"sweep setting {name}={value!r}", lambda name=name, value=value: check_settings({**SETTINGS, name: value}),
           ValueError, said)
for missing in ("prompt", "num_inference_steps", "guidance_scale", "seed"):
    attack(f"sweep without {missing}",
           lambda missing=missing: check_settings({k: v for k, v in SETTINGS.items() if k != missing}),
           ValueError, f"setting {missing!r} is missing")

# --- Starting a notebook: setup() and load_pipeline() with values typed by hand ----------------------------------

for seed in (-1, 2**32, 1.0, "0", None, True):
    attack(f"setup(seed={seed!r})", lambda seed=seed: setup(about="large", seed=seed, verbose=False), ValueError,
           f"seed={seed!r}")
for device in ("cuda", "cuda:0", "gpu", "mps", "cpu:0", "cuda:x", "CPU", 1.5):
    attack(f"load_pipeline(device={device!r}) on a machine without a GPU",
           lambda device=device: load_pipeline("tiny", device=device), ValueError, f"device={device!r}")
for options, said in [
    ({"offload": "disk"}, "offload='disk'"), ({"quantize": "int4"}, "quantize='int4'"), ({"quantize": True},
                                                                                         "quantize=True"),
    ({"t5": "fp8"}, "t5='fp8'"), ({"t5": None}, "t5=None"), ({"offload": "model"}, "offload='model' needs a CUDA GPU"),
    ({"quantize": "nf4", "offload": "sequential"}, "offload='sequential' does not work with bitsandbytes"),
    ({"t5": "int8", "offload": "group"}, "offload='group' does not work with bitsandbytes"),
]:
    attack(f"load_pipeline(**{options!r})", lambda options=options: load_pipeline("tiny", **options), ValueError, said)
for model in ("sdxl", "", "stabilityai/stable-diffusion-3.5-large", None, 3):
    attack(f"load_pipeline({model!r})", lambda model=model: load_pipeline(model), ValueError, f"model={model!r}")
attack("load_pipeline with a made-up task", lambda: load_pipeline("tiny", "text2img"), ValueError, "task='text2img'")


@pytest.mark.parametrize("case", ATTACKS, ids=lambda case: case.what)
def test_attack_is_refused_clearly(case: Attack, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(case.error) as raised:
        case.call()
    message = str(raised.value)
    for part in case.says:
        assert part in message, (part, message)
    assert Path(raised.traceback[-1].path).parent.name == "helpers", "raised by helpers, not deep in a library"
    assert SECRET not in message and SECRET[10:] not in message and SECRET[:10] not in message


def test_the_table_is_large():
    assert len(ATTACKS) + len(CLI_ATTACKS) >= 150


# --- A hub that accepts the connection and never answers (a stalled proxy) ----------------------------------------

def test_a_stalled_hub_is_reported_as_stalled_quickly():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # connections are accepted by the system, and no answer ever comes
        start = time.monotonic()
        with pytest.raises(HubUnreachableError) as error:
            check_access("stabilityai/stable-diffusion-3.5-large", SECRET,
                         endpoint=f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=1.0)
        assert time.monotonic() - start < 5
    message = str(error.value)
    assert "did not answer within 1 s" in message and "proxy" in message and SECRET not in message


def test_the_default_wait_for_the_hub_is_under_20_seconds():
    assert 5 <= HUB_TIMEOUT_S <= 20


# --- Command lines: flags typed in a terminal. Each must stop before any work, with the flag and value named -----

def unwritable_folder() -> str:
    return "/proc/sd35-cannot-write-here/result.json"


CLI_ATTACKS = [
    ("helpers.bench", ["--guidance", "nan"], "--guidance=nan"),
    ("helpers.bench", ["--guidance", "-2"], "--guidance=-2.0"),
    ("helpers.bench", ["--guidance", "inf"], "--guidance=inf"),
    ("helpers.bench", ["--steps", "0"], "steps=0"),
    ("helpers.bench", ["--runs", "-1"], "runs=-1"),
    ("helpers.bench", ["--warmup", "-1"], "warmup=-1"),
    ("helpers.bench", ["--size", "100"], "--size=100"),
    ("helpers.bench", ["--size", "0"], "--size=0"),
    ("helpers.bench", ["--steps", "two"], "invalid int value: 'two'"),
    ("helpers.bench", ["--model", "sdxl"], "invalid choice: 'sdxl'"),
    ("helpers.bench", ["--json", unwritable_folder()], "--json '/proc/sd35-cannot-write-here/result.json'"),
    ("helpers.bench", ["--json", "/"], "cannot be written"),
    ("helpers.bench", ["--quantize", "nf4", "--fuse-qkv"], "--fuse-qkv cannot be used here: this route stores the transformer in NF4"),
    ("helpers.bench", ["--compile", "--offload", "group"], "compile with group offload"),
    ("helpers.bench", ["--fp8", "--quantize", "nf4"], "fp8=True with an NF4 transformer"),
    ("helpers.bench", ["--cache", "pab", "--cache-every", "0"], "--cache-every=0"),
    ("helpers.memory", ["--gpu-gb", "nan"], "--gpu-gb nan"),
    ("helpers.memory", ["--gpu-gb", "inf"], "--gpu-gb inf"),
    ("helpers.memory", ["--gpu-gb", "0"], "--gpu-gb 0"),
    ("helpers.memory", ["--gpu-gb", "16", "--host-gb", "nan"], "--host-gb nan"),
    ("helpers.memory", ["--host-gb", "12.7"], "give its --gpu-gb too"),
    ("helpers.memory", ["--size", "1000"], "size=1000"),
    ("helpers.memory", ["--model", "tiny"], "invalid choice: 'tiny'"),
    ("helpers.architecture", ["--figure", unwritable_folder()], "--figure"),
    ("helpers.gpu_check", ["--budget-s", "0"], "budget_s=0.0"),
    ("helpers.gpu_check", ["--budget-s", "nan"], "budget_s=nan"),
    ("helpers.gpu_check", ["--only", "everything"], "--only everything: no such check"),
    ("helpers.evaluation", ["--count", "0"], "--count=0"),
    ("helpers.training", ["train", "--out", "x", "--steps", "0"], "--steps=0"),
    ("helpers.training", ["train", "--out", "x", "--batch", "-4"], "--batch=-4"),
]


@pytest.mark.parametrize(("module", "argv", "says"), CLI_ATTACKS, ids=[f"{m} {' '.join(a)}" for m, a, _ in CLI_ATTACKS])
def test_command_line_attack_stops_before_any_work(module, argv, says, capsys):
    import importlib

    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(module).main(argv)
    assert stopped.value.code == 2
    assert says in capsys.readouterr().err


def test_a_figure_named_without_a_suffix_is_saved_as_png_and_reported_so(tmp_path, capsys):
    from helpers.architecture import main

    main(["--figure", str(tmp_path / "chart")])
    assert (tmp_path / "chart.png").is_file() and not (tmp_path / "chart").exists()
    assert f"saved {tmp_path / 'chart.png'}" in capsys.readouterr().out


# --- Input pictures: files from cameras, scanners, image tools and the web ----------------------------------------

def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` and holds one row of data: decoding it in full would need gigabytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1)))
            + chunk(b"IEND", b""))


def _image_attacks():
    from PIL import Image

    from helpers.experiments import check_settings
    from helpers.inputs import load_image, prepare_image, prepare_mask

    attack("a 20,000 x 20,000 PNG of a few hundred bytes (a decompression bomb)",
           lambda: load_image(png_header_only(20_000, 20_000)), ValueError, "decompression bomb")
    attack("a 10,000 x 10,000 PNG (just under Pillow's own error, over its warning)",
           lambda: load_image(png_header_only(10_000, 10_000)), ValueError, "10000x10000 pixels", "Resize it")
    attack("an in-memory picture of 10,000 x 10,000", lambda: prepare_image(Image.new("L", (10_000, 10_000))),
           ValueError, "10000x10000 pixels")
    attack("bytes that are not a picture", lambda: load_image(b"<html>not found</html>"), ValueError,
           "are not an image PIL can read")
    attack("a float picture holding NaN", lambda: prepare_image(Image.fromarray(
        __import__("numpy").full((32, 32), float("nan"), dtype="float32"))), ValueError, "NaN or infinite")
    attack("an RGBA picture straight into a sweep", lambda: check_settings(
        {**SETTINGS, "image": Image.new("RGBA", (64, 64)), "strength": 0.5}), ValueError,
        "image is a RGBA image", "prepare_image()")
    attack("a colour mask straight into a sweep", lambda: check_settings(
        {**SETTINGS, "mask_image": Image.new("RGB", (64, 64))}), ValueError, "mask_image is a RGB image",
        "prepare_mask()")
    attack("a file path as a sweep's image", lambda: check_settings({**SETTINGS, "image": "photo.jpg"}),
           ValueError, "image is 'str'", "prepare_image()")
    attack("a mask of another size", lambda: prepare_mask(Image.new("L", (32, 32), 255), (64, 64)), ValueError,
           "mask is 32x32 but the image is 64x64")
    attack("an all-black float mask", lambda: prepare_mask(Image.new("F", (64, 64), 0.0), (64, 64)), ValueError,
           "nothing to paint")


_image_attacks()


def _helper_argument_attacks():
    from PIL import Image

    from helpers.inputs import (
        blend,
        ellipse_mask,
        load_image,
        mask_from_alpha,
        prepare_image,
        prepare_mask,
        rectangle_mask,
        sample,
    )

    picture = Image.new("RGB", (64, 64))
    for longest in (0, 100, -16, "1024", 1024.0):
        attack(f"prepare_image(longest={longest!r})", lambda longest=longest: prepare_image(picture, longest=longest),
               ValueError, f"longest={longest!r}")
    for grow in (-1, 1.5, "2"):
        attack(f"prepare_mask(grow={grow!r})",
               lambda grow=grow: prepare_mask(Image.new("L", (64, 64), 255), (64, 64), grow=grow), ValueError,
               f"grow={grow!r}")
    attack("blend(soften=-2)", lambda: blend(picture, picture, Image.new("L", (64, 64)), soften=-2), ValueError,
           "soften=-2")
    attack("blend of pictures of different sizes", lambda: blend(picture, Image.new("RGB", (32, 32)),
                                                                 Image.new("L", (64, 64))), ValueError, "sizes differ")
    for box in ((0.5, 0.5, 0.2, 0.9), (-0.1, 0, 1, 1), (0, 0, 1.5, 1), (0.2, 0.2, 0.2, 0.8)):
        attack(f"rectangle_mask(box={box!r})", lambda box=box: rectangle_mask((64, 64), box), ValueError,
               f"box={box!r}")
    attack("ellipse_mask with a box of three numbers", lambda: ellipse_mask((64, 64), (0, 0, 1)), ValueError,
           "box=(0, 0, 1)")
    attack("rectangle_mask with a box of text", lambda: rectangle_mask((64, 64), ("0", "0", "1", "1")), ValueError,
           "box=('0', '0', '1', '1')")
    attack("rectangle_mask with nan in the box", lambda: rectangle_mask((64, 64), (0, 0, float("nan"), 1)),
           ValueError, "box=(0, 0, nan, 1)")
    attack("mask_from_alpha of a picture without transparency", lambda: mask_from_alpha(picture), ValueError,
           "no alpha channel")
    attack("mask_from_alpha(paint='inside')", lambda: mask_from_alpha(Image.new("RGBA", (8, 8)), paint="inside"),
           ValueError, "paint='inside'")
    attack("sample('portrait')", lambda: sample("portrait"), ValueError, "name='portrait'")
    attack("load_image of a path that does not exist", lambda: load_image("no/such/photo.png"), FileNotFoundError,
           "'no/such/photo.png': no such file")
    attack("load_image(42)", lambda: load_image(42), ValueError, "not int")


_helper_argument_attacks()


def test_16_bit_and_float_pictures_keep_their_brightness():
    import numpy as np
    from PIL import Image

    from helpers.inputs import prepare_image

    grey16 = Image.fromarray(np.full((64, 64), 32768, dtype=np.uint16))  # mid-grey in 16 bits
    prepared = prepare_image(grey16, longest=64)
    assert np.asarray(prepared.image)[0, 0].tolist() == [128, 128, 128] and "16-bit values scaled" in prepared.note
    half = Image.fromarray(np.full((64, 64), 0.5, dtype=np.float32))  # mid-grey as a 0-1 float
    prepared = prepare_image(half, longest=64)
    assert np.asarray(prepared.image)[0, 0].tolist() == [128, 128, 128] and "0-1 floats scaled" in prepared.note


def test_a_float_mask_paints_where_it_is_1():
    import numpy as np
    from PIL import Image

    from helpers.inputs import prepare_mask

    values = np.zeros((64, 64), dtype=np.float32)
    values[16:48, 16:48] = 1.0
    mask = prepare_mask(Image.fromarray(values), (64, 64))
    assert np.asarray(mask.image)[32, 32] == 255 and np.asarray(mask.image)[0, 0] == 0


def test_transparent_areas_become_white_not_black():
    import numpy as np
    from PIL import Image

    from helpers.inputs import prepare_image

    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    prepared = prepare_image(clear, longest=64)
    assert np.asarray(prepared.image)[0, 0].tolist() == [255, 255, 255] and "transparent areas" in prepared.note


# --- Files: where the pictures land (a shared folder, a network drive, a read-only copy of a finished sweep) -------

@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_pictures_honour_the_umask(tmp_path, umask, mode):
    import os

    from PIL import Image

    from helpers.images import write_png

    previous = os.umask(umask)
    try:
        path = write_png(Image.new("RGB", (8, 8)), {"prompt": "x"}, tmp_path, ["a.png"])
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode


def test_pictures_are_saved_where_the_filesystem_has_no_hard_links(tmp_path, monkeypatch):
    import errno
    import os

    from PIL import Image

    from helpers.images import read_metadata, write_png

    def no_links(*args, **kwargs):  # what os.link raises on such a filesystem
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = write_png(Image.new("RGB", (8, 8), "red"), {"prompt": "x"}, tmp_path, ["a.png"])
    assert path == tmp_path / "a.png" and read_metadata(path) == {"prompt": "x"}
    assert write_png(Image.new("RGB", (8, 8)), {"prompt": "y"}, tmp_path, ["a.png"]) is None  # never replaced
    assert read_metadata(path) == {"prompt": "x"} and sorted(tmp_path.iterdir()) == [path]


def test_a_finished_sweep_reads_from_a_folder_it_cannot_clean(tmp_path, monkeypatch):
    import os
    import pathlib

    from helpers.experiments import run_sweep
    from helpers.images import STAGING_PREFIX

    pipe = load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    fixed = {"prompt": "a cat", "num_inference_steps": 2, "guidance_scale": 4.5, "height": 64, "width": 64}
    run_sweep(pipe, "tiny", fixed, {"seed": [0, 1]}, folder=tmp_path, progress=False)
    stale = tmp_path / f"{STAGING_PREFIX}left-by-a-killed-run.png"
    stale.write_bytes(b"partial")
    os.utime(stale, (0, 0))

    def read_only(self, missing_ok=False):  # what unlink raises in a read-only folder (root may write anywhere)
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "unlink", read_only)
    again = run_sweep(pipe, "tiny", fixed, {"seed": [0, 1]}, folder=tmp_path, progress=False)
    assert (again.generated, again.reused) == (0, 2)


# --- Damaged model files: a full disk, a hand edit, a part deleted. One message naming the file, before diffusers --

def _toy_copy(tmp_path):
    import shutil

    from helpers.loading import TOY_MODEL_DIR

    copy = tmp_path / "toy"
    shutil.copytree(TOY_MODEL_DIR, copy)
    return copy


def _cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_config(path):
    path.write_text(path.read_text().replace('"num_layers": 6', '"num_layers": 7'))  # same size, other model


@pytest.mark.parametrize(("damage", "file", "says"), [
    (_cut, "transformer/diffusion_pytorch_model.safetensors", "cut short"),
    (lambda path: path.unlink(), "vae/diffusion_pytorch_model.safetensors", "missing"),
    (_edit_config, "transformer/config.json", "changed since it was saved"),
    (_cut, "tokenizer_3/tokenizer.json", "cut short"),
    (lambda path: path.write_text("{not json"), "model_index.json", "does not read as JSON"),
    (lambda path: path.write_text('{"x": {"bytes": 1}}'), "files.json", "does not read"),
])
def test_a_damaged_toy_folder_is_named_before_diffusers_reads_it(tmp_path, monkeypatch, damage, file, says):
    from helpers.manifest import DamagedModelError

    folder = _toy_copy(tmp_path)
    damage(folder / file)
    monkeypatch.setenv("SD35_TOY_DIR", str(folder))
    with pytest.raises(DamagedModelError) as raised:
        load_pipeline("toy")
    message = str(raised.value)
    assert str(folder / file) in message and says in message and "Train it again" in message
    assert Path(raised.traceback[-1].path).parent.name == "helpers"


def test_a_part_missing_from_a_folder_without_a_file_list_is_named(tmp_path, monkeypatch):
    import shutil

    from helpers.manifest import DamagedModelError

    folder = _toy_copy(tmp_path)
    (folder / "files.json").unlink()
    shutil.rmtree(folder / "text_encoder_2")
    monkeypatch.setenv("SD35_TOY_DIR", str(folder))
    with pytest.raises(DamagedModelError, match="text_encoder_2: this part of the pipeline is missing"):
        load_pipeline("toy")


def test_a_retrained_toy_folder_loads_where_the_message_points(tmp_path, monkeypatch):
    """The fix a message suggests works: SD35_TOY_DIR loads another toy folder, and it is not the shipped one."""
    import torch
    from safetensors.torch import load_file, save_file

    from helpers.manifest import write_manifest

    folder = _toy_copy(tmp_path)
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = torch.zeros_like(tensors[name])
    save_file(tensors, weights)
    write_manifest(folder)  # as a retraining writes it
    monkeypatch.setenv("SD35_TOY_DIR", str(folder))
    mine = load_pipeline("toy")
    monkeypatch.delenv("SD35_TOY_DIR")
    shipped = load_pipeline("toy")
    assert mine is not shipped
    assert not torch.equal(dict(mine.vae.named_parameters())[name], dict(shipped.vae.named_parameters())[name])


def test_the_shipped_toy_model_matches_its_file_list():
    from helpers.loading import TOY_MODEL_DIR
    from helpers.manifest import MANIFEST, check_model_folder

    check_model_folder(TOY_MODEL_DIR, "")
    listed = set(__import__("json").loads((TOY_MODEL_DIR / MANIFEST).read_text()))
    on_disk = {path.relative_to(TOY_MODEL_DIR).as_posix() for path in TOY_MODEL_DIR.rglob("*")
               if path.is_file() and path.name != MANIFEST and "__pycache__" not in path.parts}
    assert listed == on_disk


def test_a_damaged_stand_in_cache_is_moved_aside_and_built_again(tmp_path, monkeypatch, capsys):
    from helpers import tiny

    monkeypatch.setenv("SD35_CACHE_DIR", str(tmp_path))
    folder = tiny.tiny_pipeline_dir()
    _cut(folder / "transformer" / "diffusion_pytorch_model.safetensors")
    assert tiny.tiny_pipeline_dir() == folder
    aside = [path for path in tmp_path.iterdir() if ".damaged-" in path.name]
    assert len(aside) == 1 and "moved to" in capsys.readouterr().out
    from helpers.manifest import check_model_folder

    check_model_folder(folder, "")  # whole again


def test_a_stand_in_cache_name_taken_by_something_else_is_left_alone(tmp_path, monkeypatch):
    from helpers import tiny
    from helpers.manifest import DamagedModelError

    monkeypatch.setenv("SD35_CACHE_DIR", str(tmp_path))
    taken = tmp_path / f"tiny-sd35-{tiny._fingerprint()}"
    taken.mkdir()
    (taken / "mine.txt").write_text("a reader's file")
    with pytest.raises(DamagedModelError, match="holds no saved stand-in: it is left as it is"):
        tiny.tiny_pipeline_dir()
    assert (taken / "mine.txt").read_text() == "a reader's file"


def test_a_launch_name_cannot_write_outside_the_sweeps_folder(tmp_path):
    from helpers.distributed import Journal

    for name in ("../../escaped", "/tmp/x", "a/b", "", "x" * 200):
        with pytest.raises(ValueError, match="must be a plain name"):
            Journal(tmp_path, name, 0)
    assert not any(tmp_path.parent.glob("escaped*"))
    assert Journal(tmp_path, "20261201-120000-abc123", 1).path.parent == tmp_path / ".journal"


def test_a_result_file_is_replaced_whole_or_left_as_it_was(tmp_path, monkeypatch):
    import os

    from helpers.checks import write_output_file

    target = tmp_path / "result.json"
    target.write_text("the earlier result")

    def full_disk(*args, **kwargs):  # what os.replace meets when the drive fills at the last moment
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        write_output_file(target, "the new result")
    monkeypatch.undo()
    assert target.read_text() == "the earlier result" and [p.name for p in tmp_path.iterdir()] == ["result.json"]
    write_output_file(target, "the new result")
    assert target.read_text() == "the new result" and [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_replaced_picture_pool_is_refused_before_training_on_it(tmp_path):
    import numpy as np

    from helpers.training import Recipe, scene_pool

    recipe = Recipe(pool=80)
    pictures = scene_pool(recipe, tmp_path)[1]  # drawn and kept
    again = scene_pool(recipe, tmp_path)[1]
    assert np.array_equal(again, pictures)
    planted = pictures.copy()
    planted[40] = 255 - planted[40]
    np.save(tmp_path / "pool.npy", planted)
    with pytest.raises(ValueError, match="picture 40 is not the scene of its seed"):
        scene_pool(recipe, tmp_path)
    np.save(tmp_path / "pool.npy", np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="does not read as a NumPy array"):
        scene_pool(recipe, tmp_path)


@pytest.mark.parametrize(("module", "flag", "name"), [
    ("helpers.bench", "--json", "notes.json"),
    ("helpers.architecture", "--figure", "holiday.png"),
    ("helpers.gpu_check", "--out", "gpu_check.md"),
])
def test_an_output_that_names_someone_elses_file_stops_before_any_work(tmp_path, capsys, module, flag, name):
    import importlib

    theirs = tmp_path / name
    theirs.write_bytes(b"a reader's own file")
    target = tmp_path if flag == "--out" else theirs
    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(module).main([flag, str(target)])
    message = capsys.readouterr().err
    assert stopped.value.code == 2 and ("was not written by this command" in message or "did not write" in message)
    assert theirs.read_bytes() == b"a reader's own file"


def test_a_chart_the_command_drew_is_replaced_when_asked_again(tmp_path, capsys):
    from helpers.architecture import main

    main(["--figure", str(tmp_path / "chart.png")])
    first = (tmp_path / "chart.png").stat().st_mtime_ns
    main(["--figure", str(tmp_path / "chart.png")])
    assert (tmp_path / "chart.png").stat().st_mtime_ns >= first and "saved" in capsys.readouterr().out
