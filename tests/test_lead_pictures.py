"""The picture each notebook opens with: drawn by helpers.lead_pictures, shown first, listed in the README."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from helpers import lead_pictures
from helpers.lead_pictures import PICTURES, is_ours

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name[:2])
def test_each_notebook_opens_with_its_picture_drawn_by_this_code(notebook):
    name = PICTURES[notebook.name[:2]][0]
    first = "".join(json.loads(notebook.read_text())["cells"][0]["source"])
    assert f"](attachment:{name})" in first  # the file itself, attached (tests/test_project.py compares the bytes)
    assert is_ours(ROOT / "images" / name), f"images/{name} was not drawn by {lead_pictures.MAKER}"
    readme = (ROOT / "README.md").read_text()
    assert f'<img src="images/{name}"' in readme


def test_the_command_draws_a_picture_and_replaces_only_its_own(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lead_pictures, "IMAGES", tmp_path)
    lead_pictures.main(["09"])  # the training curves: no model to load
    drawn = tmp_path / PICTURES["09"][0]
    assert is_ours(drawn) and Image.open(drawn).size[0] > 400
    lead_pictures.main(["09"])  # its own picture: replaced
    Image.new("RGB", (8, 8)).save(drawn)  # someone else's file under that name
    with pytest.raises(SystemExit):
        lead_pictures.main(["09"])
    assert "was not written by this command" in capsys.readouterr().err
    assert Image.open(drawn).size == (8, 8)
    with pytest.raises(SystemExit):
        lead_pictures.main(["12"])
    assert "notebook '12' has no picture: use notebook numbers 01, 02" in capsys.readouterr().err
