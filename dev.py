"""Set up the series on a fresh machine and open it, or run its tests. Needs only Python 3.11+ with pip.

    python3 dev.py lab     set up .venv (first time: about a minute), then open JupyterLab on the series
    python3 dev.py test    set up .venv, then run the tests: unit tests, lint, every notebook (nbmake), the
                           sliders in a real JupyterLab (needs /usr/bin/chromium; skipped without it), and
                           notebooks 01-03 again on free Colab's T4 route (SD35_MACHINE=colab-t4)
    python3 dev.py test --quick
                           the unit tests of helpers only (no notebooks, browser, launches or training)
    python3 dev.py test --machine colab-t4
                           every notebook on that catalogue machine's route, emulated on this CPU
    python3 dev.py test --latest
                           the quick tier in .venv-latest, with the newest versions pyproject.toml allows today
                           (not the locked ones): library drift shows up here, on purpose, before it reaches CI
    python3 dev.py test --colab
                           each notebook alone in an empty folder, "Run all" in a kernel with free Colab's shipped
                           versions (.venv-colab; its install cell runs; 9 minutes on 2 cores); commit first
    python3 dev.py lock    refresh requirements-lock.txt (the versions setup installs) to the newest allowed
    python3 dev.py strip   remove outputs from the notebooks before committing (no setup needed)

Extra arguments go to JupyterLab or pytest (e.g. `python3 dev.py test -k tiny`). Setup installs the versions in
requirements-lock.txt, runs again only when it or pyproject.toml changes, and works only in a `.venv` it made
itself. Without a GPU or a Hugging Face token, the notebooks run the offline toy model.
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


def python_of(folder: Path) -> Path:
    """The Python of the virtual environment in `folder`."""
    return folder / ("Scripts" if os.name == "nt" else "bin") / ("python.exe" if os.name == "nt" else "python")


PYTHON = python_of(VENV)
BIN = PYTHON.parent
STAMP = VENV / "sd35-installed"
LATEST = ROOT / ".venv-latest"
"""`dev.py test --latest`'s environment: the newest versions pyproject.toml allows, apart from the locked .venv."""
LOCK = ROOT / "requirements-lock.txt"
"""Every package version the tests ran with, with hashes (uv pip compile, for every platform): setup installs exactly
these. `python3 dev.py lock` refreshes it to the newest versions pyproject.toml allows."""
MARKER = "sd35-made-by-dev.py"
"""Written first into each environment dev.py makes: only a folder carrying it is ever completed or installed into."""
LEGACY_MARKERS = ("sd35-installed", "sd35-constraints.txt")  # what dev.py left in its environments before MARKER
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
"""PyTorch's own index of CPU builds (about 0.2 GB), for Linux machines with no NVIDIA GPU: PyPI's Linux wheel is the
CUDA build, with several GB of NVIDIA libraries."""


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
        again = " ".join(["python3.11", "dev.py", *sys.argv[1:]] if sys.argv[1:] else ["python3.11", "dev.py", "lab"])
        raise SetupError(f"Python {version} is too old: the series needs Python 3.11 or newer. Install it (on "
                         f"Debian or Ubuntu: sudo apt install python3.11 python3.11-venv) and run `{again}`.")
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


def not_ours(folder: Path) -> str | None:
    """Why `folder` is an environment dev.py must not touch, or None where dev.py made it. Setup writes into an
    environment's interpreter files; where they are links to another Python (`uv venv`, `python -m venv` and conda
    make them so), writing would replace that Python, outside the clone."""
    if folder.is_symlink():
        return f"{folder} is a link to {os.path.realpath(folder)}"
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if not any((folder / name).exists() for name in (MARKER, *LEGACY_MARKERS)):
        return f"{folder} was made by another tool (it has no {MARKER})"
    for interpreter in python_of(folder).parent.glob("python*"):
        if interpreter.is_symlink() and not Path(os.path.realpath(interpreter)).is_relative_to(folder.resolve()):
            return f"its {interpreter.name} is a link to {os.path.realpath(interpreter)}, another Python"
    return None


def ensure_venv(folder: Path = VENV) -> None:
    """A virtual environment with pip in `folder`: made where there is none, completed where an earlier setup of
    ours stopped half-way (no Python, or no pip), in place: nothing in the folder is deleted. A folder dev.py did not
    make is refused, with the command that moves it aside, before anything is written."""
    python = python_of(folder)
    if folder.exists() or folder.is_symlink():
        reason = not_ours(folder)
        if reason:
            raise SetupError(f"{reason}. dev.py sets up only an environment it made itself, so that it never writes "
                             f"over a Python outside this folder. Move it aside and run the same command again: "
                             f"mv {folder} {folder.with_name(folder.name + '.other')}")
        if has_pip(python):
            return
        print(f"Completing {folder} ...", flush=True)
    else:
        print(f"Creating {folder} ...", flush=True)
        try:
            folder.mkdir(parents=True)
        except OSError as error:
            raise SetupError(f"cannot make {folder} ({error.strerror}): setup needs to write inside the clone. "
                             "Clone the series into a folder you can write to (e.g. your home folder).") from None
        (folder / MARKER).write_text("This environment was made by dev.py; dev.py completes and updates it.\n")
    try:
        venv.EnvBuilder(with_pip=True, symlinks=False).create(folder)
    except subprocess.CalledProcessError as error:  # ensurepip failed: its output says why
        print((error.output or b"").decode(errors="replace") if isinstance(error.output, bytes) else error.output or "")
        raise SetupError(venv_missing_help(f"{sys.version_info.major}.{sys.version_info.minor}")) from None
    if not has_pip(python):
        raise SetupError(f"{folder} was made, but its Python cannot run pip. "
                         + venv_missing_help(f"{sys.version_info.major}.{sys.version_info.minor}"))


def ensure_environment() -> None:
    """.venv with the locked versions; again only when dev.py's torch, pyproject.toml or the lock change."""
    wanted = hashlib.sha256(TORCH.encode() + (ROOT / "pyproject.toml").read_bytes() + LOCK.read_bytes()).hexdigest()
    if STAMP.is_file() and STAMP.read_text() == wanted and PYTHON.is_file() and not not_ours(VENV):
        return
    check_prerequisites()
    ensure_venv(VENV)
    STAMP.unlink(missing_ok=True)  # written again only when everything below has installed
    pip = pip_of(PYTHON)
    install_torch(pip)
    install_project(pip)
    if (ROOT / ".git").exists():
        install_output_filter()
    STAMP.write_text(wanted)


def pip_of(python: Path) -> list:
    return [python, "-m", "pip", "install", "--disable-pip-version-check"]


def has_nvidia_gpu() -> bool:
    import shutil

    return bool(shutil.which("nvidia-smi")) or Path("/proc/driver/nvidia/gpus").is_dir()


def torch_source(on_disk: bool, gpu: bool, platform: str = sys.platform) -> list[str]:
    """pip's arguments for PyTorch: as pip is set up where the machine keeps a wheel on its disk (this project's CI
    machines; pip prefers it over PyPI's build of the same version), else, on Linux with no NVIDIA GPU, PyTorch's
    own CPU index, else PyPI (a CUDA build on Linux; a CPU one elsewhere)."""
    if on_disk or not platform.startswith("linux") or gpu:
        return [TORCH]
    return ["--index-url", CPU_TORCH_INDEX, TORCH]


def install_torch(pip: list) -> None:
    on_disk = subprocess.run([*map(str, pip), "--dry-run", "--quiet", "--no-deps", "--no-index", TORCH],
                             capture_output=True, check=False).returncode == 0
    run(*pip, *torch_source(on_disk, has_nvidia_gpu()))


def install_project(pip: list, python: Path = PYTHON, lock: Path | None = LOCK) -> None:
    """The helpers package and everything it needs, at the versions in `lock` (None: the newest pyproject.toml
    allows), by uv where uv installs (measured on a 2-core machine: 28 s against pip's 150 s, the same versions),
    else by pip. Both compile every module to bytecode as they install: where PYTHONDONTWRITEBYTECODE is set, as on
    this project's CI machine, Python would otherwise compile each module again in every process that imports it
    (measured: the tests took 35% more CPU time without it)."""
    pinned = torch_pin(python)  # uv keeps the torch installed above, fetches no other
    constraints = ["--constraint", pinned, *(["--constraint", lock] if lock else ["--upgrade"])]
    try:
        run(*pip, "--quiet", "uv")
        run(uv_of(python), "pip", "install", "--python", python, "--compile-bytecode", *constraints,
            "-e", ".[lab,dev]")
        return
    except subprocess.CalledProcessError as error:
        print(f"uv could not install here (`{' '.join(map(str, error.cmd))}` ended with exit status "
              f"{error.returncode}); installing with pip instead, which takes a few minutes.", flush=True)
    run(*pip, *constraints, "-e", ".[lab,dev]")


def torch_pin(python: Path) -> Path:
    """A constraints file in `python`'s environment holding dev.py's torch pin, for uv (installing, locking)."""
    pinned = python.parent.parent / "sd35-constraints.txt"
    pinned.write_text(TORCH + "\n")
    return pinned


def uv_of(python: Path) -> Path:
    return python.parent / ("uv.exe" if os.name == "nt" else "uv")


def lock_command(python: Path = PYTHON) -> list:
    """uv's resolution of pyproject.toml's lab and dev extras at the newest versions allowed, for every platform
    Python 3.11+ runs on, with hashes; torch is left to dev.py's own pin (its wheel differs by machine)."""
    return [uv_of(python), "pip", "compile", "pyproject.toml", "--extra", "lab", "--extra", "dev", "--universal",
            "--python-version", "3.11", "--generate-hashes", "--upgrade", "--no-emit-package", "torch",
            "--constraint", torch_pin(python), "--custom-compile-command",
            "python3 dev.py lock", "--output-file", LOCK]


def ensure_latest_environment() -> Path:
    """.venv-latest with the newest versions pyproject.toml allows today, resolved afresh on every call."""
    check_prerequisites()
    ensure_venv(LATEST)
    python = python_of(LATEST)
    install_torch(pip_of(python))
    install_project(pip_of(python), python, lock=None)
    return python


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


def test_commands(extra: list[str], python: Path = PYTHON) -> list[tuple[list[str], dict[str, str]]]:
    """The pytest runs `dev.py test` makes, each with its environment. Files or options named after `test` run
    as given, in one process."""
    pytest = [str(python), "-m", "pytest"]
    options, threads = side_by_side()
    if extra[:1] in (["--quick"], ["--latest"]):
        ignore = [f"--ignore=tests/{name}" for name in QUICK_SKIP]
        return [([*pytest, "tests", "-o", "addopts=-p no:cacheprovider", *options, *ignore, *extra[1:]], threads)]
    if extra[:1] == ["--colab"]:  # builds .venv-colab at free Colab's versions (tests/test_colab_as_shipped.py)
        return [([*pytest, "tests/test_colab_as_shipped.py", "-o", "addopts=-p no:cacheprovider", "-v", *extra[1:]],
                 {"SD35_COLAB_TIER": "1"})]
    if extra[:1] == ["--machine"] and len(extra) >= 2:
        # float16 on a CPU is slower than float32: a sweep's cell can outlast the default cell timeout
        return [([*pytest, "notebooks", "--nbmake-timeout=1200", *options, *extra[2:]],
                 {**threads, "SD35_MACHINE": extra[1]})]
    if extra:
        return [([*pytest, *extra], {})]
    # notebooks 01 to 03 on free Colab's T4 route too, in the same run (conftest.T4_NOTEBOOKS)
    return [([*pytest, *options, "--t4-route"], threads)]


def free_port(first: int = 8888, tries: int = 50) -> int:
    """The first port from `first` that nothing listens on, so that the stop command dev.py prints names it."""
    import socket

    for port in range(first, first + tries):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise SetupError(f"ports {first} to {first + tries - 1} are all in use: stop another Jupyter, or pass "
                     "--ServerApp.port=N with a free port N")


def run_lab(extra: list[str]) -> int:
    """JupyterLab until it stops. Ctrl-C reaches Lab, which stops at once (answer_yes); this process only waits."""
    port = next((int(a.split("=", 1)[1]) for a in extra if a.startswith(("--port=", "--ServerApp.port="))), None)
    if port is None:
        port = free_port()
        extra = [f"--ServerApp.port={port}", "--ServerApp.port_retries=0", *extra]
    lab, env = lab_command(["--ServerApp.answer_yes=True", *extra])
    print(f"Opening JupyterLab on port {port}. To stop it: Ctrl-C here, or from another terminal "
          f"{BIN / 'jupyter'} server stop {port}", flush=True)
    process = subprocess.Popen(lab, cwd=ROOT, env=env)
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:  # Lab got the same Ctrl-C and is stopping; wait for it, with no traceback
            continue


def with_setup(setup, what: str):
    """`setup()`'s result, or the exit status and the message that says what to do."""
    try:
        return setup(), 0
    except SetupError as error:
        print(f"Setup cannot go on: {error}")
        return None, 1
    except OSError as error:  # a read-only clone, a full disk
        print(f"Setup cannot write {error.filename or ''} ({error.strerror or error}). Run it in a clone you can "
              "write to, with a few GB free.")
        return None, 1
    except subprocess.CalledProcessError as error:
        print(f"{what} failed: `{' '.join(map(str, error.cmd))}` ended with exit status {error.returncode}; its "
              "output is above. Fix what it says and run this again: setup goes on from where it stopped.")
        return None, error.returncode or 1


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"lab", "test", "strip", "lock"}:
        print(__doc__)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    command, extra = argv[0], argv[1:]
    if command == "strip":
        targets = [Path(arg) for arg in extra] or sorted((ROOT / "notebooks").glob("*.ipynb"))
        for path in strip_outputs(targets):
            print(f"stripped {path}")
        return 0
    python = PYTHON
    if extra[:1] == ["--latest"]:
        python, failed = with_setup(ensure_latest_environment, "Setup of .venv-latest")
        if failed:
            return failed
        subprocess.call([str(python), "-m", "pip", "list", "--disable-pip-version-check"])  # what was tested
    else:
        _, failed = with_setup(ensure_environment, "Setup")
        if failed:
            return failed
    if command == "lock":
        _, failed = with_setup(lambda: run(*lock_command()), "Locking")
        return failed
    if command == "lab":
        write_lab_overrides()
        return run_lab(extra)
    failed = 0
    for command, env in test_commands(extra, python):
        if env:
            print("+", " ".join(f"{key}={value}" for key, value in env.items()), " ".join(command[2:]), flush=True)
        failed = subprocess.call(command, cwd=ROOT, env={**os.environ, **env}) or failed
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
