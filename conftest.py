"""Test settings shared by the unit tests and the notebooks that nbmake runs.

Notebooks run on the offline toy model (unit tests name the model they need, mostly the random `tiny` stand-in),
in throwaway folders, with no Hugging Face token in sight.
Set here, in the environment, so notebook kernels started by nbmake inherit the same settings.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty

import pytest

POLL_SLICE_S = 1.0
ROOT = Path(__file__).resolve().parent
INSTALLED_KERNEL = "sd35-installed"


def pytest_configure(config) -> None:
    scratch = tempfile.mkdtemp(prefix="sd35-tests-")
    config._sd35_scratch = scratch  # removed when the session ends (pytest_unconfigure)
    controller = getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput")  # xdist's
    runs_notebooks = getattr(config.option, "nbmake", False) and not config.option.collectonly
    if runs_notebooks and not getattr(config.option, "nbmake_kernel", None) and not controller:
        config.option.nbmake_kernel = _installed_helpers_kernel(Path(scratch))
    os.environ["SD35_MODEL"] = "toy"
    os.environ["SD35_CACHE_DIR"] = os.path.join(scratch, "cache")
    os.environ["SD35_OUTPUT_DIR"] = os.path.join(scratch, "outputs")
    os.environ["HF_HOME"] = os.path.join(scratch, "hf-home")  # no cached login
    os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = os.path.join(scratch, "hypothesis")  # not .hypothesis/ here
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        os.environ.pop(name, None)
    _poll_kernel_messages_in_short_waits()


def pytest_unconfigure(config) -> None:
    shutil.rmtree(getattr(config, "_sd35_scratch", ""), ignore_errors=True)


def _poll_kernel_messages_in_short_waits() -> None:
    """Work around an intermittent stall in notebook execution (jupyter/nbclient#312).

    nbclient waits for a cell's reply with one poll lasting the whole cell timeout; now and then that poll misses
    the reply and the cell hangs for the full timeout before passing. Polling in waits of at most a second, up to
    the same deadline, never misses it. Only the waiting changes: every message is still read and checked.
    """
    from jupyter_client.channels import AsyncZMQSocketChannel

    original = AsyncZMQSocketChannel.get_msg
    if getattr(original, "_polls_in_slices", False):
        return

    async def get_msg(self, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = POLL_SLICE_S if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await original(self, timeout=min(POLL_SLICE_S, remaining))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    get_msg._polls_in_slices = True
    AsyncZMQSocketChannel.get_msg = get_msg


LONGEST_FIRST = ("notebooks/11_", "notebooks/10_", "notebooks/05_", "notebooks/04_", "notebooks/03_",
                 "tests/test_distributed.py", "notebooks/09_", "tests/test_training.py", "notebooks/08_",
                 "tests/test_toy_model.py", "tests/test_speed.py", "tests/test_gpu_check.py", "notebooks/")
"""Files that take longest (seconds to minutes), in that order (a group of ONE_PROCESS by its first file): test
processes side by side (`dev.py test`, one file at a time each) start them first, so that no process is left with a
long file at the end while the others idle."""


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: tests that compare trained weights bit for bit use it (with two threads a
    CPU may sum in another order, helpers.training)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_dev():
    """dev.py (which is not a package module) loaded as a module, for tests of setup and of its environments."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dev", ROOT / "dev.py")
    dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dev)
    return dev


def kill_part_way(script: str, part_way, timeout_s: float = 120) -> None:
    """Run `script` in a fresh Python on one thread and kill it hard (SIGKILL, as a crash or a closed laptop does)
    as soon as `part_way()` holds; fails the test if it finished first."""
    import signal

    process = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if part_way():
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"


ONE_PROCESS = {"LoRA and sliders": ("notebooks/11_fine_tuning_with_lora.ipynb", "tests/test_lora.py",
                                    "notebooks/05_guidance_scale_tuning.ipynb", "notebooks/07_inpainting.ipynb",
                                    "tests/test_browser.py")}
"""Files that test processes side by side run in one process, in this order, where a file reuses what the ones
before it made in the process's output folder, as a reader's second run does: tests/test_lora.py the adapter
notebook 11 trained (its finished checkpoint), the browser tests the sweeps and the adapter of the notebooks they
run again."""


def pytest_xdist_make_scheduler(config, log):
    """xdist's file-at-a-time scheduling, with the files of ONE_PROCESS given to one process together."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Together(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return next((group for group, paths in ONE_PROCESS.items() if path in paths), path)

    return Together(config, log)


T4_NOTEBOOKS = ("01_loading_sd35", "02_nf4_quantization_and_offload", "03_timing_on_h100")
"""The notebooks `--t4-route` (which `dev.py test` passes) also runs on free Colab's T4 route: where the route changes
what the code does (dtype, NF4 parts, skipped steps), in about a minute. All eleven passed on it (`dev.py test
--machine colab-t4`), but in float16 on a CPU the first ten took about 17 minutes here (notebook 04 alone 9.6) and
notebook 11 about 34 (its LoRA's 1000 steps 28 minutes on one thread, against 3 in float32), more than CI's budget
holds."""


def pytest_addoption(parser) -> None:
    parser.addoption("--t4-route", action="store_true",
                     help=f"also run notebooks {', '.join(name[:2] for name in T4_NOTEBOOKS)} on free Colab's T4 route "
                          "(SD35_MACHINE=colab-t4), each right after its run on this machine")


class OnMachine(pytest.Item):
    """A notebook's run on an emulated machine (SD35_MACHINE for its kernel), beside its run on this one."""

    nbmake = True

    def __init__(self, *, plain, machine: str, **kwargs) -> None:
        super().__init__(name=f"{plain.name}[{machine}]", **kwargs)
        self.plain, self.machine = plain, machine

    def runtest(self) -> None:
        before = os.environ.get("SD35_MACHINE")
        os.environ["SD35_MACHINE"] = self.machine  # the kernel started now inherits it
        try:
            self.plain.runtest()
        finally:
            if before is None:
                os.environ.pop("SD35_MACHINE", None)
            else:
                os.environ["SD35_MACHINE"] = before

    def repr_failure(self, excinfo, style=None):
        return self.plain.repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, 0, self.name


def pytest_collection_modifyitems(config, items) -> None:
    def rank(item) -> tuple[int, int]:
        path = item.nodeid.split("::")[0]
        group = next((paths for paths in ONE_PROCESS.values() if path in paths), (path,))
        first = next((index for index, start in enumerate(LONGEST_FIRST) if group[0].startswith(start)),
                     len(LONGEST_FIRST))
        return first, group.index(path)

    if config.getoption("t4_route"):
        for index in reversed(range(len(items))):
            item = items[index]
            if getattr(item, "nbmake", False) and item.path.stem in T4_NOTEBOOKS:
                items.insert(index + 1, OnMachine.from_parent(item.parent, plain=item, machine="colab-t4"))
    items.sort(key=rank)  # stable: within a file, and among the rest, the order stays as collected


STDERR_RECORD = "SD35_STDERR_RECORD"
RECORD_STDERR = """
# Test kernels only (conftest.py): everything a notebook writes to stderr is also appended to a file, which
# conftest checks after each notebook against EXPLAINED_STDERR.
import os as _os
import sys as _sys


def _record_stderr():
    path, stream = _os.environ.get("SD35_STDERR_RECORD"), _sys.stderr
    if not path:
        return
    write = stream.write

    def recorded(text):
        with open(path, "a", encoding="utf-8") as record:
            record.write(text)
        return write(text)

    stream.write = recorded


_record_stderr()
"""
_stderr_record: Path | None = None
EXPLAINED_STDERR: dict[str, str] = {}
"""Text a notebook may write to stderr (a regular expression) -> why a reader sees it. Anything else fails the
notebook's test: a reader should never see red text they did not cause."""


_installed: tuple[Path, Path] | None = None


def installed_wheel() -> tuple[Path, Path]:
    """The helpers as `pip install git+...` leaves them: (the built wheel, the folder it is installed into). Built
    once per test process (about 7 s): the notebooks' kernel, tests/test_colab.py and tests/test_project.py share it."""
    import fcntl

    global _installed
    if _installed is None:
        scratch = Path(tempfile.mkdtemp(prefix="sd35-wheel-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        wheels, site = scratch / "wheel", scratch / "installed"
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        (ROOT / "build").mkdir(exist_ok=True)
        # setuptools builds in the repository (build/, *.egg-info): test processes running side by side take turns
        with open(ROOT / "build" / ".wheel-lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(ROOT)], check=True,
                           capture_output=True)
        (wheel,) = wheels.glob("*.whl")
        subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True,
                       capture_output=True)
        _installed = (wheel, site)
    return _installed


def _installed_helpers_kernel(scratch: Path) -> str:
    """A Jupyter kernel that imports the helpers as Colab gets them: built into a wheel and installed, not editable,
    with no repository beside them. Notebooks run in it, so anything the package fails to ship fails the tests."""
    site, kernels = installed_wheel()[1], scratch / "jupyter" / "kernels"
    (kernels / INSTALLED_KERNEL).mkdir(parents=True)
    startup = scratch / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-record-stderr.py").write_text(RECORD_STDERR)
    (kernels / INSTALLED_KERNEL / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (helpers installed from their wheel)",
        "language": "python",
        "env": {"PYTHONPATH": str(site), "IPYTHONDIR": str(scratch / "ipython")},
    }))
    # kernels inherit the record's path from this process: each test process (pytest-xdist's workers) its own file
    global _stderr_record
    _stderr_record = scratch / "notebook-stderr.txt"
    os.environ[STDERR_RECORD] = str(_stderr_record)
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(scratch / "jupyter"), os.environ.get("JUPYTER_PATH")]))
    return INSTALLED_KERNEL


def _unexplained_stderr() -> list[str]:
    """What the notebook just run wrote to stderr that EXPLAINED_STDERR does not explain; the record is emptied."""
    import re

    path = _stderr_record
    if path is None or not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    path.unlink()
    lines = [line for line in text.splitlines() if line.strip()]
    return [line for line in lines if not any(re.search(pattern, line) for pattern in EXPLAINED_STDERR)]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.when == "call" and getattr(item, "nbmake", False) and report.passed:
        unexplained = _unexplained_stderr()
        if unexplained:
            report.outcome = "failed"
            report.longrepr = ("The notebook wrote to stderr what no reader caused (explain it in conftest.py's "
                               "EXPLAINED_STDERR, or stop it):\n" + "\n".join(unexplained[:20]))
