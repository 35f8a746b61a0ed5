"""Set up the series on a fresh machine and open it, or run its tests. Needs only Python 3.11+ with pip.

    python3 dev.py lab     set up .venv (first time: 1.5 minutes on 2 cores), then open JupyterLab on the series
    python3 dev.py test    set up .venv, then run the tests: unit tests, lint, every notebook (nbmake), the
                           sliders in a real JupyterLab (needs /usr/bin/chromium; skipped without it), and
                           notebooks 01-03 again on free Colab's T4 route (SD35_MACHINE=colab-t4)
    python3 dev.py test --quick
                           the unit tests of helpers only (no notebooks, browser, launches or training)
    python3 dev.py test --machine colab-t4
                           every notebook on that catalogue machine's route, emulated on this CPU
    python3 dev.py strip   remove outputs from the notebooks before committing (no setup needed)

Extra arguments go to JupyterLab or pytest (e.g. `python3 dev.py test -k tiny`). Setup runs again only when
pyproject.toml changes. Without a GPU or a Hugging Face token, the notebooks run the offline toy model.
In a git checkout, setup also installs nbstripout as a git filter: notebooks keep their outputs on your disk, and
git commits them without.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
TORCH = "torch==2.13.0"  # installed first, so the range in pyproject.toml pulls nothing bigger
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / "sd35-installed"


def run(*command: str | Path, cwd: Path = ROOT) -> None:
    print("+", " ".join(map(str, command)), flush=True)
    subprocess.run([str(part) for part in command], cwd=cwd, check=True)


class SetupError(Exception):
    """Setup cannot go on here; the message says what to install or change."""


MINIMUM_PYTHON = (3, 11)
NEEDED_DISK_GB = 4.0
"""Free disk setup needs: PyTorch's CPU build is about 1 GB installed, the rest of the packages about 1.5 GB more."""


def check_prerequisites(root: Path = ROOT) -> None:
    """What setup needs from this machine, checked before it starts: the Python version, venv with pip, disk."""
    import shutil

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if sys.version_info[:2] < MINIMUM_PYTHON:
        raise SetupError(f"Python {version} is too old: the series needs Python 3.11 or newer. Install it (on "
                         "Debian or Ubuntu: sudo apt install python3.11 python3.11-venv) and run `python3.11 dev.py`.")
    try:
        import ensurepip  # noqa: F401 - Debian and Ubuntu ship it separately, in python3-venv
    except ImportError:
        raise SetupError(venv_missing_help(version)) from None
    free_gb = shutil.disk_usage(root).free / 1e9
    if free_gb < NEEDED_DISK_GB:
        raise SetupError(f"{free_gb:.1f} GB free on the disk of {root}; setup needs about {NEEDED_DISK_GB:.0f} GB "
                         "(PyTorch and the other packages). Free some space and run this again.")


def venv_missing_help(version: str) -> str:
    return (f"This Python ({version}) cannot make virtual environments with pip: its venv support (ensurepip) is "
            f"not installed. On Debian or Ubuntu: sudo apt install python{version}-venv ; on Fedora or RHEL: sudo "
            "dnf install python3-pip ; then run this command again (the half-made .venv is completed, not reused "
            "as it is).")


def has_pip(python: Path) -> bool:
    """Whether the environment's Python exists and can run pip."""
    return python.is_file() and subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True,
                                               check=False).returncode == 0


def ensure_venv(folder: Path = VENV) -> None:
    """A virtual environment with pip in `folder`: made where there is none, completed where an earlier setup
    stopped half-way (no Python, or no pip), in place: nothing in the folder is deleted."""
    python = folder / ("Scripts" if os.name == "nt" else "bin") / ("python.exe" if os.name == "nt" else "python")
    if has_pip(python):
        return
    print(f"{'Completing' if folder.exists() else 'Creating'} {folder} ...", flush=True)
    try:
        venv.EnvBuilder(with_pip=True).create(folder)
    except subprocess.CalledProcessError as error:  # ensurepip failed: its output says why
        print((error.output or b"").decode(errors="replace") if isinstance(error.output, bytes) else error.output or "")
        raise SetupError(venv_missing_help(f"{sys.version_info.major}.{sys.version_info.minor}")) from None
    if not has_pip(python):
        raise SetupError(f"{folder} was made, but its Python cannot run pip. "
                         + venv_missing_help(f"{sys.version_info.major}.{sys.version_info.minor}"))


def ensure_environment() -> None:
    wanted = hashlib.sha256(TORCH.encode() + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.is_file() and STAMP.read_text() == wanted and PYTHON.is_file():
        return
    check_prerequisites()
    ensure_venv(VENV)
    STAMP.unlink(missing_ok=True)  # written again only when everything below has installed
    pip = [PYTHON, "-m", "pip", "install", "--disable-pip-version-check"]
    run(*pip, TORCH)  # pip: where a machine keeps a PyTorch build on its disk, pip's settings point to it
    install_project(pip)
    if (ROOT / ".git").exists():
        install_output_filter()
    STAMP.write_text(wanted)


def install_project(pip: list, python: Path = PYTHON) -> None:
    """The helpers package and everything it needs, by uv where uv installs (measured on a 2-core machine: 28 s
    against pip's 150 s, the same versions), else by pip. Both compile every module to bytecode as they install:
    where PYTHONDONTWRITEBYTECODE is set, as on this project's CI machine, Python would otherwise compile each module
    again in every process that imports it (measured: the tests took 35% more CPU time without it)."""
    pinned = python.parent.parent / "sd35-constraints.txt"  # uv keeps the torch installed above, fetches no other
    pinned.write_text(TORCH + "\n")
    try:
        run(*pip, "--quiet", "uv")
        run(python.parent / ("uv.exe" if os.name == "nt" else "uv"), "pip", "install", "--python", python,
            "--compile-bytecode", "--constraint", pinned, "-e", ".[lab,dev]")
        return
    except subprocess.CalledProcessError as error:
        print(f"uv could not install here (`{' '.join(map(str, error.cmd))}` ended with exit status "
              f"{error.returncode}); installing with pip instead, which takes a few minutes.", flush=True)
    run(*pip, "-e", ".[lab,dev]")


def install_output_filter(repository: Path = ROOT, python: Path = PYTHON) -> None:
    """nbstripout's git filter, keeping cell ids (git then sees the committed notebooks as unchanged)."""
    run(python, "-m", "nbstripout", "--install", cwd=repository)
    strip = f'"{python}" -m nbstripout --keep-id'
    run("git", "config", "filter.nbstripout.clean", strip, cwd=repository)
    run("git", "config", "diff.ipynb.textconv", f"{strip} -t", cwd=repository)


FIRST_NOTEBOOK = "notebooks/01_loading_sd35.ipynb"


def lab_command(extra: list[str]) -> tuple[list[str], dict[str, str]]:
    """JupyterLab rooted at the repository (so the notebooks' links to the README work), opening notebook 01 (the URL
    it prints opens it too), with .venv first on the PATH of its terminals. Terminals start as plain shells: Lab
    otherwise starts login shells when it has no terminal of its own (started in the background, by a service),
    and /etc/profile then resets PATH (jupyter_server_terminals' app.py)."""
    as_root = ["--allow-root"] if getattr(os, "geteuid", lambda: -1)() == 0 else []  # containers, cloud VMs
    env = {**os.environ, "VIRTUAL_ENV": str(VENV), "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")])}
    shell = os.environ.get("SHELL") or "/bin/sh"
    command = [str(BIN / "jupyter"), "lab", f"--ServerApp.root_dir={ROOT}", FIRST_NOTEBOOK,
               f"--LabApp.default_url=/lab/tree/{FIRST_NOTEBOOK}", f"--ServerApp.terminado_settings=shell_command={shell}",
               *as_root, *extra]
    return command, env


LAB_OVERRIDES = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}}
"""Settings of the series' own JupyterLab (in .venv, not the reader's): no "news" prompt over the notebook."""


def write_lab_overrides(venv_folder: Path = VENV) -> Path:
    """LAB_OVERRIDES merged into the overrides.json of the JupyterLab installed in `venv_folder`."""
    path = venv_folder / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        current = {}
    merged = {**current, **{key: {**current.get(key, {}), **value} for key, value in LAB_OVERRIDES.items()}}
    if merged != current:
        path.write_text(json.dumps(merged, indent=1) + "\n")
    return path


def strip_outputs(notebooks: list[Path]) -> list[Path]:
    """Remove outputs, execution counts and execution metadata from code cells; return the notebooks changed."""
    changed = []
    for path in notebooks:
        notebook = json.loads(path.read_text(encoding="utf-8"))
        before = json.dumps(notebook, sort_keys=True)
        for cell in notebook.get("cells", []):
            if cell.get("cell_type") == "code":
                cell["outputs"], cell["execution_count"] = [], None
                cell.get("metadata", {}).pop("execution", None)
        if json.dumps(notebook, sort_keys=True) != before:
            # nbformat's layout, which the output filter writes too: a stripped notebook is then unchanged for git
            path.write_text(json.dumps(notebook, sort_keys=True, indent=1, ensure_ascii=False) + "\n",
                            encoding="utf-8")
            changed.append(path)
    return changed


QUICK_SKIP = ("test_browser.py", "test_colab.py", "test_distributed.py", "test_training.py", "test_toy_model.py",
              "test_gpu_check.py", "test_inside_pipeline.py", "test_lora.py")
"""Test files the quick tier leaves out: browsers, wheel installs, process launches, training and the toy model's
lessons, each seconds to a minute."""


def side_by_side(cores: int | None = None) -> tuple[list[str], dict[str, str]]:
    """pytest-xdist's options and the environment for test processes running side by side, one per core (up to
    four), each with its share of the cores as torch threads. The toy model's tensors are small: measured on 2 cores,
    the 708 tests of `dev.py test` took 390 s as two processes on one thread each, 545 s as one on two threads."""
    cores = cores or os.cpu_count() or 1
    workers = max(1, min(4, cores))
    # a file at a time (its module fixtures, such as a trained LoRA, are made once), longest first (conftest.py;
    # xdist would otherwise reorder files by their number of tests)
    return ["-n", str(workers), "--dist", "loadfile", "--no-loadscope-reorder"], {
        "OMP_NUM_THREADS": str(max(1, cores // workers))}


def test_commands(extra: list[str]) -> list[tuple[list[str], dict[str, str]]]:
    """The pytest runs `dev.py test` makes, each with its environment. Files or options named after `test` run
    as given, in one process."""
    pytest = [str(PYTHON), "-m", "pytest"]
    options, threads = side_by_side()
    if extra[:1] == ["--quick"]:
        ignore = [f"--ignore=tests/{name}" for name in QUICK_SKIP]
        return [([*pytest, "tests", "-o", "addopts=-p no:cacheprovider", *options, *ignore, *extra[1:]], threads)]
    if extra[:1] == ["--machine"] and len(extra) >= 2:
        # float16 on a CPU is slower than float32: a sweep's cell can outlast the default cell timeout
        return [([*pytest, "notebooks", "--nbmake-timeout=1200", *options, *extra[2:]],
                 {**threads, "SD35_MACHINE": extra[1]})]
    if extra:
        return [([*pytest, *extra], {})]
    # notebooks 01 to 03 on free Colab's T4 route too, in the same run (conftest.T4_NOTEBOOKS)
    return [([*pytest, *options, "--t4-route"], threads)]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"lab", "test", "strip"}:
        print(__doc__)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    command, extra = argv[0], argv[1:]
    if command == "strip":
        targets = [Path(arg) for arg in extra] or sorted((ROOT / "notebooks").glob("*.ipynb"))
        for path in strip_outputs(targets):
            print(f"stripped {path}")
        return 0
    try:
        ensure_environment()
    except SetupError as error:
        print(f"Setup cannot go on: {error}")
        return 1
    except subprocess.CalledProcessError as error:
        print(f"Setup failed: `{' '.join(map(str, error.cmd))}` ended with exit status {error.returncode}; its output "
              "is above. Fix what it says and run this again: setup goes on from where it stopped.")
        return error.returncode or 1
    if command == "lab":
        write_lab_overrides()
        lab, env = lab_command(extra)
        return subprocess.call(lab, cwd=ROOT, env=env)
    failed = 0
    for command, env in test_commands(extra):
        if env:
            print("+", " ".join(f"{key}={value}" for key, value in env.items()), " ".join(command[2:]), flush=True)
        failed = subprocess.call(command, cwd=ROOT, env={**os.environ, **env}) or failed
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
