"""The project as a reader and CI meet it: dependencies, README, CI script, notebooks in git."""

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import conftest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
README = (ROOT / "README.md").read_text()
GITHUB = "https://github.com/sd35-notebooks/sd35-notebooks"
COLAB = "https://colab.research.google.com/github/sd35-notebooks/sd35-notebooks/blob/main/notebooks/"
TEST_COMMAND = "python3 dev.py test"


def normalised(requirement: str) -> str:
    parsed = Requirement(requirement)
    return f"{parsed.name.lower().replace('_', '-')}{parsed.specifier}"


def test_environment_yml_and_pyproject_name_the_same_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"]  # a kernel for readers: JupyterLab and the test tools are not in it
    pip_lines = re.findall(r"^ {6}- ([^#\n]+?)\s*(?:#.*)?$", (ROOT / "environment.yml").read_text(), re.MULTILINE)
    conda = [line for line in pip_lines if line != "-e ."]  # `-e .` installs the helpers package itself
    assert len(conda) == len(pip_lines) - 1
    tested_torch = re.search(r'TORCH = "(torch==[^"]+)"', (ROOT / "dev.py").read_text()).group(1)
    assert tested_torch in conda  # SageMaker gets the torch CI tests, within pyproject's range
    torch_range = Requirement(next(d for d in declared if d.startswith("torch"))).specifier
    assert torch_range.contains(tested_torch.removeprefix("torch=="))
    assert sorted(map(normalised, conda)) == sorted(
        normalised(tested_torch if requirement.startswith("torch") else requirement) for requirement in declared)


def test_ci_runs_the_readme_test_command():
    assert f"`{TEST_COMMAND}`" in README or f"\n{TEST_COMMAND}\n" in README
    commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert TEST_COMMAND in commands


def test_ci_installs_the_pinned_cpu_torch():
    assert 'TORCH = "torch==2.13.0"' in (ROOT / "dev.py").read_text()


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_committed_without_outputs(notebook):
    """What git would commit: the staged notebook (after dev.py's output filter), or the file outside git."""
    import subprocess

    staged = subprocess.run(["git", "show", f":{notebook.relative_to(ROOT).as_posix()}"], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    text = staged.stdout if staged.returncode == 0 else notebook.read_text()
    for cell in json.loads(text)["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"][:80]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_stored_in_the_form_the_output_filter_writes(notebook):
    """nbformat's own layout (keys sorted, one-space indent): else the filter rewrites it and a fresh clone shows
    the notebook as modified the moment setup installs the filter."""
    text = notebook.read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def test_the_output_filter_leaves_every_committed_notebook_as_it_is():
    """What git's clean filter (`nbstripout --keep-id`, as dev.py installs it) makes of each notebook, byte for
    byte: the notebook itself. Else a fresh clone shows notebooks as modified once setup installs the filter (08
    and 10 did). One nbstripout process for all: with -t it writes each stripped notebook in turn."""
    import subprocess
    import sys

    stripped = subprocess.run([sys.executable, "-m", "nbstripout", "--keep-id", "-t", *map(str, NOTEBOOKS)],
                              capture_output=True, text=True, check=True, encoding="utf-8").stdout
    assert stripped == "".join(path.read_text(encoding="utf-8") for path in NOTEBOOKS)


def test_git_commits_notebooks_without_outputs_and_keeps_them_on_disk(tmp_path):
    """dev.py's nbstripout filter, in a scratch repository: a notebook run and saved in Lab, then committed."""
    import subprocess
    import sys

    def git(*arguments: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *arguments], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    load_dev().install_output_filter(tmp_path, Path(sys.executable))
    source = NOTEBOOKS[0].read_text()
    notebook = json.loads(source)
    cell = next(cell for cell in notebook["cells"] if cell["cell_type"] == "code")
    cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["a reader's output\n"]}]
    cell["execution_count"] = 1
    (tmp_path / "n.ipynb").write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    git("add", "n.ipynb")
    git("commit", "-q", "-m", "run")
    assert git("show", "HEAD:n.ipynb") == source  # committed exactly as the clean notebook, cell ids kept
    assert "a reader's output" in (tmp_path / "n.ipynb").read_text()  # the working copy keeps its outputs
    assert git("status", "--porcelain") == ""  # and git does not see it as changed


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_follows_the_series_anatomy(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    text = ["".join(cell["source"]) for cell in cells]
    assert text[0].startswith(f"# {notebook.name[:2]} · ")
    headings = [line for cell in text for line in cell.splitlines() if line.startswith("## ")]
    for required in ("## What you will learn", "## Before you start", "## Setup", "## Summary", "## Exercises",
                     "## Further reading"):
        assert required in headings, required
    for cell, source in zip(cells, text, strict=True):  # code a reader reads without scrolling sideways
        if cell["cell_type"] == "code":
            assert not [line for line in source.splitlines() if len(line) > 100], source[:80]
    for cell, source in zip(cells, text, strict=True):  # a heading starts its own cell, never in the middle
        if cell["cell_type"] == "markdown":
            assert not [line for line in source.splitlines()[1:] if line.startswith("#")], source[:80]
    setup_cells = [i for i, cell in enumerate(cells)
                   if cell["cell_type"] == "code" and re.search(r"^run = setup\(", text[i], re.MULTILINE)]
    # "## Setup", the install cell (the first code cell: Colab's "Run all" from a fresh runtime), the setup cell
    assert len(setup_cells) == 1 and text[setup_cells[0] - 2].strip() == "## Setup"
    first_code = next(i for i, cell in enumerate(cells) if cell["cell_type"] == "code")
    assert first_code == setup_cells[0] - 1 and text[first_code] == install_cell()
    assert text[-1].startswith("## Next")
    position = NOTEBOOKS.index(notebook)
    onwards = (f"]({NOTEBOOKS[position + 1].name}) ([in Colab]({COLAB}{NOTEBOOKS[position + 1].name}))"
               if position + 1 < len(NOTEBOOKS) else f"]({GITHUB}#the-notebooks)")
    assert onwards in text[-1], f"the last cell should link to {onwards[2:]}"
    for link in re.findall(r"\]\((?!https?://|attachment:)([^)#]+)", "\n".join(text)):  # relative links resolve
        assert (notebook.parent / link).exists(), link


def install_cell() -> str:
    """The first code cell of every notebook: README's install line, run only where the helpers are missing."""
    (line,) = re.findall(r"^%pip install .*$", README, re.MULTILINE)
    return ("# On Colab or SageMaker the first run installs the series' helpers and the versions they need;"
            "\n# where they are installed already (your own machine, a second run) this cell does nothing."
            "\nimport importlib.util\n\nif importlib.util.find_spec(\"helpers\") is None:\n    " + line +
            "\n    importlib.invalidate_caches()")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_the_opening_picture_travels_with_the_notebook_and_is_the_one_in_images(notebook):
    """Colab opens a notebook from GitHub with nothing beside it: the opening picture is an attachment of its cell,
    byte for byte the file in images/ (which `python -m helpers.lead_pictures` draws, and the README shows)."""
    import base64

    cells = json.loads(notebook.read_text())["cells"]
    attached = {name: base64.b64decode(data["image/png"]) for cell in cells
                for name, data in cell.get("attachments", {}).items()}
    assert len(attached) == 1, attached.keys()
    ((name, picture),) = attached.items()
    assert f"](attachment:{name})" in "".join(cells[0]["source"])
    assert picture == (ROOT / "images" / name).read_bytes(), f"run `python -m helpers.lead_pictures` ({name})"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_readme_lists_each_notebook_with_a_colab_link(notebook):
    assert f"notebooks/{notebook.name})" in README
    assert f"{COLAB}{notebook.name}" in README


def test_no_remote_code_pickles_or_deprecated_dtype_argument():
    sources = list((ROOT / "helpers").glob("*.py")) + NOTEBOOKS
    for path in sources:
        text = path.read_text()
        assert "trust_remote_code" not in text, path
        assert "use_safetensors=False" not in text, path
        assert "torch_dtype=" not in text, path  # diffusers 0.42 takes dtype=


def test_readme_table_matches_the_notebooks_and_every_link_resolves():
    listed = re.findall(r"\]\(notebooks/(\d\d_[^)]+\.ipynb)\)", README)
    assert listed == [notebook.name for notebook in NOTEBOOKS]
    for link in re.findall(r"\]\((?!https?://|attachment:)([^)#]+)", README):
        assert (ROOT / link).exists(), link
    for command in ("python3 dev.py lab", "python3 dev.py test", "python3 dev.py strip"):
        assert command in README


def test_code_is_lint_clean():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "helpers", "tests", "notebooks", "conftest.py", "dev.py"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


load_dev = conftest.load_dev


def test_lab_opens_the_series_at_the_repository_root_with_the_venv_on_its_path():
    dev = load_dev()
    command, env = dev.lab_command(["--no-browser"])
    assert command[1:4] == ["lab", f"--ServerApp.root_dir={ROOT}", "notebooks/01_loading_sd35.ipynb"]
    assert env["PATH"].split(":")[0] == str(ROOT / ".venv" / "bin") and env["VIRTUAL_ENV"] == str(ROOT / ".venv")
    assert "--LabApp.default_url=/lab/tree/notebooks/01_loading_sd35.ipynb" in command  # the printed URL opens it
    # an explicit shell: Lab started without a terminal would otherwise start login shells, which reset PATH
    assert any(part.startswith("--ServerApp.terminado_settings=shell_command=") for part in command)


def test_the_series_lab_has_no_news_prompt_and_keeps_other_overrides(tmp_path):
    dev = load_dev()
    settings = tmp_path / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"@jupyterlab/apputils-extension:themes": {"theme": "JupyterLab Dark"}}))
    dev.write_lab_overrides(tmp_path)
    written = json.loads(settings.read_text())
    assert written["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false"
    assert written["@jupyterlab/apputils-extension:themes"] == {"theme": "JupyterLab Dark"}


def test_setup_says_what_to_install_where_python_cannot_make_environments(monkeypatch, capsys):
    import sys

    dev = load_dev()
    monkeypatch.setitem(sys.modules, "ensurepip", None)  # as Debian's python3 without python3-venv
    with pytest.raises(dev.SetupError, match=r"sudo apt install python3\.\d+-venv"):
        dev.check_prerequisites()
    monkeypatch.setattr(dev, "STAMP", Path("/nonexistent/stamp"))
    assert dev.main(["test"]) == 1
    assert "Setup cannot go on:" in capsys.readouterr().out


def test_a_python_too_old_gets_the_same_command_to_run_with_a_newer_one(monkeypatch):
    import sys

    dev = load_dev()
    monkeypatch.setattr(dev, "MINIMUM_PYTHON", (sys.version_info.major, sys.version_info.minor + 1))
    monkeypatch.setattr(sys, "argv", ["dev.py", "lab", "--no-browser"])
    with pytest.raises(dev.SetupError, match=r"run `python3\.11 dev\.py lab --no-browser`"):
        dev.check_prerequisites()


def test_setup_installs_the_locked_versions_with_uv_and_falls_back_to_pip_where_uv_cannot(tmp_path, monkeypatch,
                                                                                         capsys):
    """uv keeps the pinned torch (a constraint) and every locked version; a machine where uv fails to install still
    gets the same versions from pip; `--latest` asks both for the newest instead."""
    import subprocess

    dev = load_dev()
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    commands = []

    def run(*command, cwd=dev.ROOT):
        commands.append([str(part) for part in command])
        if Path(command[0]).name == "uv":
            raise subprocess.CalledProcessError(2, [str(part) for part in command])

    monkeypatch.setattr(dev, "run", run)
    pip = [str(python), "-m", "pip", "install"]
    dev.install_project(pip, python)
    uv, fallback = commands[1], commands[2]
    assert commands[0] == [*pip, "--quiet", "uv"]
    pinned = Path(uv[uv.index("--constraint") + 1])
    assert pinned.read_text().strip() == "torch==2.13.0" and uv[-2:] == ["-e", ".[lab,dev]"]
    locked = ["--constraint", str(dev.LOCK)]
    assert "--compile-bytecode" in uv and " ".join(locked) in " ".join(uv)
    assert fallback == [*pip, "--constraint", str(pinned), *locked, "-e", ".[lab,dev]"]
    assert "installing with pip instead" in capsys.readouterr().out
    commands.clear()
    dev.install_project(pip, python, lock=None)
    assert str(dev.LOCK) not in " ".join(commands[1]) and "--upgrade" in commands[1] and "--upgrade" in commands[2]


def test_this_environment_has_exactly_the_locked_versions():
    """What `dev.py` installed (a fresh clone's CI included) is what requirements-lock.txt says, package by package."""
    import importlib.metadata
    import re
    import sysconfig

    dev = load_dev()
    from packaging.markers import Marker

    normal = {}  # the lock is for every platform: a line's marker says where it applies
    for name, version, marker in re.findall(r"^([A-Za-z0-9_.-]+)==([^ ;\\\n]+)(?: ; ([^\\\n]+?))?\s*\\?$",
                                            dev.LOCK.read_text(), re.MULTILINE):
        if not marker or Marker(marker).evaluate():
            normal[re.sub(r"[-_.]+", "-", name).lower()] = version
    assert {"diffusers", "transformers", "bitsandbytes", "accelerate", "peft", "nbmake"} <= set(normal)
    # the environment's own packages: importing setuptools puts its vendored copies (older packaging, zipp ...)
    # on sys.path too, which the environment never installed
    site = sysconfig.get_paths()["purelib"]
    installed = {re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower(): dist.version
                 for dist in importlib.metadata.distributions(path=[site])}
    differ = {name: (installed[name], version) for name, version in normal.items()
              if name in installed and installed[name] != version}
    assert not differ, f"installed against locked: {differ}; run `python3 dev.py test` to set up again"
    assert "torch" not in normal  # torch is dev.py's own pin, its wheel differing by machine


def test_torch_comes_from_the_disk_or_the_cpu_index_where_there_is_no_nvidia_gpu():
    dev = load_dev()
    assert dev.torch_source(on_disk=True, gpu=False, platform="linux") == [dev.TORCH]
    assert dev.torch_source(on_disk=False, gpu=False, platform="linux") == ["--index-url", dev.CPU_TORCH_INDEX,
                                                                            dev.TORCH]
    assert dev.torch_source(on_disk=False, gpu=True, platform="linux") == [dev.TORCH]
    assert dev.torch_source(on_disk=False, gpu=False, platform="darwin") == [dev.TORCH]


def test_a_half_made_environment_of_ours_is_completed_in_place(tmp_path):
    import venv

    dev = load_dev()
    folder = tmp_path / "venv"
    venv.create(folder, with_pip=False)  # what an earlier setup leaves when ensurepip fails
    (folder / dev.MARKER).write_text("")
    (folder / "mine.txt").write_text("kept")
    python = folder / "bin" / "python"
    assert not dev.has_pip(python)
    dev.ensure_venv(folder)
    assert dev.has_pip(python) and (folder / "mine.txt").read_text() == "kept"


@pytest.mark.parametrize("kind", ["another tool's, its python a link", "a link to a folder", "our marker, a linked python"])
def test_an_environment_dev_py_did_not_make_is_refused_and_nothing_outside_changes(tmp_path, kind):
    """`uv venv .venv` or `python3.X -m venv --without-pip .venv` leave bin/python a link to another interpreter;
    completing such a folder would write this Python's launcher through the link onto the other one."""
    dev = load_dev()
    decoy = tmp_path / "elsewhere" / "bin" / "python3.99"
    decoy.parent.mkdir(parents=True)
    decoy.write_bytes(b"#!/bin/sh\necho decoy interpreter\n")
    folder = tmp_path / "clone" / ".venv"
    if kind == "a link to a folder":
        folder.parent.mkdir()
        folder.symlink_to(decoy.parent.parent, target_is_directory=True)
    else:
        (folder / "bin").mkdir(parents=True)
        (folder / "bin" / "python").symlink_to(decoy)
        (folder / "pyvenv.cfg").write_text("home = elsewhere\n")
        if kind == "our marker, a linked python":
            (folder / dev.MARKER).write_text("")
    before = sorted((path, path.read_bytes()) for path in tmp_path.rglob("*") if path.is_file())
    with pytest.raises(dev.SetupError, match=rf"Move it aside .*: mv {folder} {folder}\.other"):
        dev.ensure_venv(folder)
    assert sorted((path, path.read_bytes()) for path in tmp_path.rglob("*") if path.is_file()) == before


def test_a_clone_that_cannot_be_written_gets_a_clear_message(tmp_path, capsys):
    """Where .venv cannot be made (a read-only clone; here its parent is a file, which stops root too): a sentence
    that says what to do, not a raw OSError."""
    dev = load_dev()
    (tmp_path / "clone").write_text("not a folder")
    with pytest.raises(dev.SetupError, match="Clone the series into a folder you can write to"):
        dev.ensure_venv(tmp_path / "clone" / ".venv")
    assert dev.with_setup(lambda: (tmp_path / "clone" / "x").write_text(""), "Setup") == (None, 1)
    assert "Setup cannot write" in capsys.readouterr().out


def test_lab_takes_a_free_port_names_it_in_the_stop_command_and_stops_on_the_first_ctrl_c(monkeypatch, capsys):
    import socket
    import subprocess

    dev = load_dev()
    started = []

    class Lab:  # stands for the Lab process: the reader's Ctrl-C reaches dev.py too, while Lab stops
        def __init__(self, command, **_):
            started.append(command)
            self.waits = 0

        def wait(self):
            self.waits += 1
            if self.waits == 1:
                raise KeyboardInterrupt
            return 0

    monkeypatch.setattr(subprocess, "Popen", Lab)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        first_free = dev.free_port
        monkeypatch.setattr(dev, "free_port", lambda: first_free(port))  # from the taken port on, not 8888
        assert dev.run_lab(["--no-browser"]) == 0  # no traceback from the first Ctrl-C
    (command,) = started
    took = int(next(part for part in command if part.startswith("--ServerApp.port=")).split("=")[1])
    assert took != port and "--ServerApp.port_retries=0" in command and "--ServerApp.answer_yes=True" in command
    assert f"server stop {took}" in capsys.readouterr().out


@pytest.mark.parametrize("module", ["helpers.bench", "helpers.memory", "helpers.architecture", "helpers.gpu_check",
                                    "helpers.evaluation", "helpers.training", "helpers.distributed", "helpers.inputs",
                                    "helpers.lead_pictures"])
def test_every_command_line_answers_help_without_doing_anything(module, capsys):
    import importlib

    samples = sorted((ROOT / "images").glob("sample_*.png"))
    before = [path.stat().st_mtime_ns for path in samples]
    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(module).main(["--help"])
    assert stopped.value.code == 0 and "usage:" in capsys.readouterr().out
    assert [path.stat().st_mtime_ns for path in samples] == before


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_links_in_notebooks_resolve_inside_the_folder_lab_serves(notebook):
    text = "".join("".join(cell["source"]) for cell in json.loads(notebook.read_text())["cells"])
    for link in re.findall(r"\]\((?!https?://|attachment:)([^)#\s]+)", text):
        target = (notebook.parent / link).resolve()
        assert target.exists() and target.is_relative_to(ROOT), (notebook.name, link)


def test_strip_removes_outputs(tmp_path):
    dev = load_dev()
    notebook = tmp_path / "n.ipynb"
    notebook.write_text(json.dumps({"cells": [
        {"cell_type": "code", "source": "1", "metadata": {"execution": {"x": 1}}, "execution_count": 3,
         "outputs": [{"output_type": "stream", "name": "stdout", "text": "1"}]},
        {"cell_type": "markdown", "source": "# t", "metadata": {}},
    ], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert dev.strip_outputs([notebook]) == [notebook]
    cell = json.loads(notebook.read_text())["cells"][0]
    assert cell["outputs"] == [] and cell["execution_count"] is None and cell["metadata"] == {}
    assert dev.strip_outputs([notebook]) == []  # already clean: nothing rewritten


def test_the_built_wheel_carries_the_toy_model():
    """A pip install (Colab's route) must find the trained model inside the package, weights and record."""
    import zipfile

    names = set(zipfile.ZipFile(conftest.installed_wheel()[0]).namelist())
    shipped = {path.relative_to(ROOT).as_posix() for path in (ROOT / "helpers" / "toy_model").rglob("*")
               if path.is_file()}
    assert "helpers/toy_model/transformer/diffusion_pytorch_model.safetensors" in shipped
    assert "helpers/toy_model/training.json" in shipped
    assert shipped <= names, sorted(shipped - names)


def test_the_test_command_also_runs_notebooks_on_the_t4_route_and_has_a_quick_tier():
    dev = load_dev()
    (full, env), = dev.test_commands([])
    assert "SD35_MACHINE" not in env and "--t4-route" in full
    assert all((ROOT / "notebooks" / f"{name}.ipynb").is_file() for name in conftest.T4_NOTEBOOKS)
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "--t4-route", "notebooks"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert sorted(line for line in collected.splitlines() if line.endswith("[colab-t4]")) == [
        f"notebooks/{name}.ipynb::{name}.ipynb[colab-t4]" for name in conftest.T4_NOTEBOOKS]
    (quick, env), = dev.test_commands(["--quick"])
    assert "tests" in quick and "--ignore=tests/test_browser.py" in quick and "SD35_MACHINE" not in env
    (machine, env), = dev.test_commands(["--machine", "h100"])
    assert "notebooks" in machine and env["SD35_MACHINE"] == "h100"
    (named, env), = dev.test_commands(["tests/test_world.py"])
    assert named[3:] == ["tests/test_world.py"] and env == {}


def test_test_processes_side_by_side_share_the_cores():
    dev = load_dev()
    for cores, workers, threads in ((1, 1, 1), (2, 2, 1), (8, 4, 2), (6, 4, 1)):
        options, env = dev.side_by_side(cores)
        assert options[options.index("-n") + 1] == str(workers) and env == {"OMP_NUM_THREADS": str(threads)}


def test_no_code_unpickles_and_every_deletion_is_of_what_the_helpers_made():
    """A scan of helpers/: nothing loads pickles, and each place that removes files is one reviewed here (each
    removes only what the helpers wrote: staging files, claims, records, a cache picture found damaged, a model
    trained by helpers.training and checked to be one)."""
    sources = {path.name: path.read_text() for path in (ROOT / "helpers").glob("*.py")}
    for name, text in sources.items():
        for forbidden in ("weights_only=False", "import pickle", "pickle.load", "torch.load(", "trust_remote_code=True",
                          "allow_pickle=True"):
            assert forbidden not in text, f"{name} contains {forbidden}"
    removals = sorted((name, line.strip()) for name, text in sources.items() for line in text.splitlines()
                      if re.search(r"rmtree\(|\.unlink\(|os\.remove\(", line))
    assert removals == [
        ("checks.py", "Path(staging).unlink(missing_ok=True)"),
        ("distributed.py", "(folder / CLAIMS / f\"{name}.claim\").unlink(missing_ok=True)"),
        ("distributed.py", "aside.unlink(missing_ok=True)"),
        ("distributed.py", "aside.unlink(missing_ok=True)"),
        ("experiments.py", "leftover.unlink(missing_ok=True)"),
        ("experiments.py", "path.unlink()"),
        ("gpu_check.py", "records.unlink(missing_ok=True)"),
        ("gpu_check.py", "records.unlink(missing_ok=True)"),
        ("images.py", "os.unlink(staging)"),
        ("lora.py", "shutil.rmtree(out)"),
        ("tiny.py", "shutil.rmtree(staging, ignore_errors=True)"),
        ("training.py", "shutil.rmtree(out)"),
    ]
    for name in ("training.py", "lora.py"):  # a model or adapter a run of ours saved, checked to be one
        assert "_check_out(out)\n" in sources[name].split("shutil.rmtree(out)")[0][-40:], name
