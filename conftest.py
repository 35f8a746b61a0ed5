"""Test settings shared by the unit tests and the notebooks that nbmake runs.

Notebooks run on the offline toy model (unit tests name the model they need, mostly the random `tiny` stand-in),
in throwaway folders, with no Hugging Face token in sight.
Set here, in the environment, so notebook kernels started by nbmake inherit the same settings.
"""

from __future__ import annotations

import os
import tempfile
import time
from queue import Empty

POLL_SLICE_S = 1.0


def pytest_configure(config) -> None:
    scratch = tempfile.mkdtemp(prefix="sd35-tests-")
    os.environ["SD35_MODEL"] = "toy"
    os.environ["SD35_CACHE_DIR"] = os.path.join(scratch, "cache")
    os.environ["SD35_OUTPUT_DIR"] = os.path.join(scratch, "outputs")
    os.environ["HF_HOME"] = os.path.join(scratch, "hf-home")  # no cached login
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
