"""Test settings shared by the unit tests and the notebooks that nbmake runs.

Notebooks run on the offline toy model (unit tests name the model they need, mostly the random `tiny` stand-in),
in throwaway folders, with no Hugging Face token in sight.
Set here, in the environment, so notebook kernels started by nbmake inherit the same settings.
"""

from __future__ import annotations

import json
import os
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
    controller = getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput")  # xdist's
    if getattr(config.option, "nbmake", False) and not getattr(config.option, "nbmake_kernel", None) and not controller:
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


LONGEST_FIRST = ("notebooks/11_", "tests/test_lora.py", "notebooks/04_", "notebooks/10_", "tests/test_browser.py",
                 "notebooks/08_", "tests/test_training.py", "notebooks/09_", "tests/test_distributed.py",
                 "tests/test_gpu_check.py", "notebooks/")
"""Files that take longest (seconds to minutes), in that order: test processes side by side (`dev.py test`, one
file at a time each) start them first, so that no process is left with a long file at the end while the others
idle."""


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: tests that compare trained weights bit for bit use it (with two threads a
    CPU may sum in another order, helpers.training)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items) -> None:
    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return next((index for index, start in enumerate(LONGEST_FIRST) if path.startswith(start)),
                    len(LONGEST_FIRST))

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


def install_wheel(scratch: Path) -> Path:
    """The helpers as `pip install git+...` leaves them: a built wheel, installed into scratch/installed."""
    import fcntl

    wheels, site = scratch / "wheel", scratch / "installed"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    (ROOT / "build").mkdir(exist_ok=True)
    # setuptools builds in the repository (build/, *.egg-info): test processes running side by side take turns
    with open(ROOT / "build" / ".wheel-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(ROOT)], check=True, capture_output=True)
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), *map(str, wheels.glob("*.whl"))],
                   check=True, capture_output=True)
    return site


def _installed_helpers_kernel(scratch: Path) -> str:
    """A Jupyter kernel that imports the helpers as Colab gets them: built into a wheel and installed, not editable,
    with no repository beside them. Notebooks run in it, so anything the package fails to ship fails the tests."""
    site, kernels = install_wheel(scratch), scratch / "jupyter" / "kernels"
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
    if call.when == "call" and item.nodeid.endswith(".ipynb") and report.passed:
        unexplained = _unexplained_stderr()
        if unexplained:
            report.outcome = "failed"
            report.longrepr = ("The notebook wrote to stderr what no reader caused (explain it in conftest.py's "
                               "EXPLAINED_STDERR, or stop it):\n" + "\n".join(unexplained[:20]))
