"""Colab's route: the package installed from its wheel (not editable, no repository beside it). Every notebook runs
that way under nbmake (conftest.py gives it a kernel with the installed copy); these tests check the copy itself."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import installed_wheel
from helpers.inputs import DRAWINGS


@pytest.fixture(scope="module")
def installed() -> Path:
    return installed_wheel()[1]


def run_installed(code: str, site: Path, folder: Path) -> subprocess.CompletedProcess:
    """`python -c code` from an empty folder, finding the installed helpers first, with no output folder set."""
    env = {key: value for key, value in os.environ.items() if key != "SD35_OUTPUT_DIR"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=folder,
                          env={**env, "PYTHONPATH": str(site)})


def test_the_installed_helpers_import_quietly_from_the_wheel(installed, tmp_path):
    done = run_installed("import helpers, bitsandbytes; print(helpers.__file__)", installed, tmp_path)
    assert Path(done.stdout.strip()).parent == installed / "helpers"
    assert done.stderr == ""  # no notices on import


def test_the_installed_helpers_have_what_the_notebooks_read(installed, tmp_path):
    code = ("from helpers import measured_cases, sample; from helpers.images import output_dir; from helpers.loading "
            "import toy_model_dir; print(output_dir()); print(toy_model_dir()); print(sample('scene').size); "
            "print(measured_cases()[0].gpu)")
    outputs, toy, size, gpu = run_installed(code, installed, tmp_path).stdout.splitlines()
    assert gpu.startswith("NVIDIA H100")  # notebook 03's measured table ships in the package
    assert Path(outputs) == tmp_path / "outputs"  # pictures go to the working folder, as on Colab
    assert Path(toy).is_relative_to(installed)
    assert size == str(DRAWINGS["scene"]().size)


def test_notebooks_run_in_a_kernel_with_the_installed_helpers(request):
    if not getattr(request.config.option, "nbmake", False):
        pytest.skip("this session runs no notebooks")
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(request.config.option.nbmake_kernel)
    site = Path(spec.env["PYTHONPATH"])
    assert (site / "helpers" / "toy_model" / "model_index.json").is_file()
    assert not (site / "images").exists()  # as on Colab: the repository's folders are not there
