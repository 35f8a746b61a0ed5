"""Free Colab as it ships: a fresh runtime with Colab's own versions, each notebook alone in an empty folder, "Run all".

Run by `python3 dev.py test --colab` (8 min 45 s on 2 cores; not part of `dev.py test`). It builds
.venv-colab with the versions COLAB_SHIPPED lists (no bitsandbytes, as on Colab) and runs the notebooks in a kernel
there. Each notebook's own install cell runs its `%pip install` line unchanged; the only thing emulated is GitHub:
git fetches `github.com/sd35-notebooks/sd35-notebooks` from this repository's committed HEAD (`url.insteadOf` in a
git config of the test's own), so commit before running it.
Not emulated: Colab's Python (3.12 and 3.13 there, this machine's 3.11 here) and its torch (2.11 there; 2.13.0 here,
the build this machine keeps), and its GPU (a free Colab runtime without one runs the toy model, as here).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import load_dev

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REPOSITORY = "https://github.com/sd35-notebooks/sd35-notebooks"
COLAB_SHIPPED = ("diffusers==0.39.0", "transformers==5.15.1", "accelerate==1.14.0", "peft==0.20.0",
                 "ipywidgets==7.7.1", "ipykernel", "matplotlib", "pillow", "psutil", "tqdm", "safetensors",
                 "sentencepiece", "protobuf")
"""What free Colab's runtime had installed (2026-08, issue 32) of what the series uses; PyTorch comes first, as
dev.py installs it. Colab ships no bitsandbytes."""
KERNEL = "sd35-colab"

pytestmark = pytest.mark.skipif(os.environ.get("SD35_COLAB_TIER") != "1",
                                reason="run by `python3 dev.py test --colab` (builds a Colab-like environment)")


@pytest.fixture(scope="module")
def colab(tmp_path_factory) -> dict[str, str]:
    """.venv-colab at Colab's versions (made afresh), a kernel in it, and the environment its kernels start with."""
    import shutil

    dev = load_dev()
    folder = ROOT / ".venv-colab"
    if folder.exists():
        assert not dev.not_ours(folder), dev.not_ours(folder)
        shutil.rmtree(folder)  # ours (dev.py's marker): a fresh runtime every run
    dev.ensure_venv(folder)
    python = dev.python_of(folder)
    dev.install_torch(dev.pip_of(python))
    subprocess.run([*map(str, dev.pip_of(python)), "--quiet", *COLAB_SHIPPED], check=True)
    scratch = tmp_path_factory.mktemp("colab")
    git_config = scratch / "gitconfig"
    git_config.write_text(f'[url "{ROOT.as_uri()}"]\n\tinsteadOf = {REPOSITORY}\n')
    kernels = scratch / "jupyter" / "kernels" / KERNEL
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Colab as shipped", "language": "python"}))
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("SD35_", "HF_", "PYTHON", "VIRTUAL_ENV", "JUPYTER"))}
    env.update({"GIT_CONFIG_GLOBAL": str(git_config), "JUPYTER_PATH": str(scratch / "jupyter"),
                "HF_HOME": str(scratch / "hf-home"), "PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}"})
    return env


def run_alone(notebook: Path, env: dict[str, str], folder: Path, first: str | None = None,
              stop_after_setup: bool = False):
    """`notebook` copied alone into `folder` and run top to bottom in a fresh Colab kernel ("Run all"), with `first`
    as a cell of the reader's before it. Returns the executed notebook."""
    import nbformat
    from nbclient import NotebookClient

    folder.mkdir(parents=True, exist_ok=True)
    notebook_copy = folder / notebook.name
    notebook_copy.write_bytes(notebook.read_bytes())
    nb = nbformat.read(notebook_copy, as_version=4)
    if stop_after_setup:
        setup = next(i for i, cell in enumerate(nb.cells) if "run = setup(" in cell.source)
        nb.cells = nb.cells[: setup + 1]
    if first:
        nb.cells.insert(0, nbformat.v4.new_code_cell(first))
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client = NotebookClient(nb, kernel_name=KERNEL, timeout=1200, allow_errors=stop_after_setup,
                                resources={"metadata": {"path": str(folder)}})
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return nb


def test_a_stale_diffusers_in_memory_gets_the_restart_message_before_any_work(colab, tmp_path):
    """A reader ran a cell importing diffusers (Colab's 0.39.0) and then "Run all": the install cell installs the
    helpers with a newer diffusers, and the setup cell stops with the restart message."""
    nb = run_alone(NOTEBOOKS[0], colab, tmp_path / "empty", first="import diffusers\nprint(diffusers.__version__)",
                   stop_after_setup=True)
    assert nb.cells[0].outputs[0]["text"].strip() == "0.39.0"
    errors = [output for output in nb.cells[-1].outputs if output.get("output_type") == "error"]
    assert errors and errors[0]["ename"] == "RestartNeededError", nb.cells[-1].outputs
    assert "diffusers 0.39.0 is in memory" in errors[0]["evalue"] and "Runtime → Restart session" in errors[0]["evalue"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name[:2])
def test_each_notebook_alone_runs_top_to_bottom_after_the_restart(colab, notebook, tmp_path):
    """After the restart (a new kernel): "Run all" in an empty folder; its opening picture is in the notebook."""
    nb = run_alone(notebook, colab, tmp_path / "empty")
    assert any(cell.get("attachments") for cell in nb.cells if cell.cell_type == "markdown")
