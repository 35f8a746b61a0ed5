"""The project as a reader and CI meet it: dependencies, README, CI script, notebooks in git."""

import json
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
README = (ROOT / "README.md").read_text()
TEST_COMMAND = "python3 dev.py test"


def normalised(requirement: str) -> str:
    parsed = Requirement(requirement)
    return f"{parsed.name.lower().replace('_', '-')}{parsed.specifier}"


def test_environment_yml_and_pyproject_name_the_same_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    pip_lines = re.findall(r"^ {6}- ([^#\n]+?)\s*(?:#.*)?$", (ROOT / "environment.yml").read_text(), re.MULTILINE)
    conda = [line for line in pip_lines if line != "-e ."]  # `-e .` installs the helpers package itself
    assert len(conda) == len(pip_lines) - 1
    assert sorted(map(normalised, conda)) == sorted(map(normalised, declared))


def test_ci_runs_the_readme_test_command():
    assert f"`{TEST_COMMAND}`" in README or f"\n{TEST_COMMAND}\n" in README
    commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert TEST_COMMAND in commands


def test_ci_installs_the_pinned_cpu_torch():
    assert 'TORCH = "torch==2.13.0"' in (ROOT / "dev.py").read_text()


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_committed_without_outputs(notebook):
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"][:80]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_follows_the_series_anatomy(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    text = ["".join(cell["source"]) for cell in cells]
    assert text[0].startswith(f"# {notebook.name[:2]} · ")
    headings = [line for cell in text for line in cell.splitlines() if line.startswith("## ")]
    for required in ("## What you will learn", "## Before you start", "## Setup", "## Summary", "## Exercises"):
        assert required in headings, required
    setup_cells = [i for i, cell in enumerate(cells) if cell["cell_type"] == "code" and "setup(" in text[i]]
    assert len(setup_cells) == 1 and text[setup_cells[0] - 1].strip() == "## Setup"
    assert "../README.md" in text[-1] or "ipynb" in text[-1]  # ends pointing the reader onwards


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_readme_lists_each_notebook_with_a_colab_link(notebook):
    assert f"notebooks/{notebook.name})" in README
    assert f"colab.research.google.com/github/sd35-notebooks/sd35-notebooks/blob/main/notebooks/{notebook.name}" in README


def test_no_remote_code_pickles_or_deprecated_dtype_argument():
    sources = list((ROOT / "helpers").glob("*.py")) + NOTEBOOKS
    for path in sources:
        text = path.read_text()
        assert "trust_remote_code" not in text, path
        assert "use_safetensors=False" not in text, path
        assert "torch_dtype=" not in text, path  # diffusers 0.42 takes dtype=
