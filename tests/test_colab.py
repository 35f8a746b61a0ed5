"""Colab's route: the package installed from its wheel (not editable, no repository beside it), notebooks run from
an empty folder. Colab keeps its own torch and widgets; here the test environment's packages stand in for them."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
# The notebooks that read files shipped with the package: the sample pictures and the toy model.
NOTEBOOKS = ["06_image_to_image.ipynb", "07_inpainting.ipynb"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The helpers as `pip install git+...` leaves them: a built wheel, installed into its own folder."""
    wheels, site = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(ROOT)], check=True, capture_output=True)
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), *map(str, wheels.glob("*.whl"))],
                   check=True, capture_output=True)
    return site


@pytest.fixture
def colab(installed, tmp_path, monkeypatch) -> Path:
    """An empty working folder whose Python finds the installed helpers first (kernels started here inherit it)."""
    monkeypatch.setenv("PYTHONPATH", str(installed))
    monkeypatch.delenv("SD35_OUTPUT_DIR", raising=False)  # as on Colab: outputs/ in the working folder
    monkeypatch.delenv("SD35_MODEL", raising=False)  # 'auto': no GPU here, so the toy model
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_installed_helpers_import_quietly_from_the_wheel(colab, installed):
    done = subprocess.run([sys.executable, "-c", "import helpers, bitsandbytes; print(helpers.__file__)"],
                          capture_output=True, text=True, check=True, cwd=colab, env=os.environ)
    assert Path(done.stdout.strip()).parent == installed / "helpers"
    assert done.stderr == ""  # no notices on import


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_a_notebook_runs_from_an_empty_folder(colab, installed, name):
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("import helpers\nprint(helpers.__file__)"))
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(colab)}}).execute()
    assert Path(notebook.cells[-1].outputs[0]["text"].strip()).parent == installed / "helpers"
    assert any((colab / "outputs").rglob("*.png")), "the notebook saved no picture in the working folder"
