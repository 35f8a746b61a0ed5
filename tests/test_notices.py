"""Library notices a reader would see in red are stopped by cause: bitsandbytes' hub-kernel warning on CPUs with
AVX512-BF16, forced here on any CPU, with and without the `kernels` package, online-like and offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Runs in a fresh Python: records every warning bitsandbytes' CPU backend logs (a filter that sees each record before
# the one helpers adds), then runs the backend's module again with its AVX512-BF16 check answering yes, as a CPU
# with that instruction set does at import.
FORCED_IMPORT = """
import importlib, json, logging, sys
if {without_kernels}:
    sys.modules["kernels"] = None  # `import kernels` raises ImportError, as where the package is not installed
seen = []
def record(entry):
    seen.append(entry.msg)
    return True
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(record)
if {with_helpers}:
    import helpers
import bitsandbytes.functional
import bitsandbytes.backends.cpu.ops as cpu_ops
bitsandbytes.functional.has_avx512bf16 = lambda: True
importlib.reload(cpu_ops)
print(json.dumps(seen))
"""


def forced_import(*, without_kernels: bool, offline: bool, with_helpers: bool) -> tuple[list[str], str]:
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    code = FORCED_IMPORT.format(without_kernels=without_kernels, with_helpers=with_helpers)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.mark.parametrize("without_kernels, offline", [(True, False), (False, False), (False, True)],
                         ids=["no kernels package", "kernels, online-like", "kernels, offline"])
def test_the_hub_kernel_notice_is_logged_and_never_shown(without_kernels, offline):
    seen, stderr = forced_import(without_kernels=without_kernels, offline=offline, with_helpers=True)
    # the forced branch ran and logged its warning (else this test would prove nothing) ...
    assert any(message.startswith("Failed to load CPU gemm_4bit_forward") for message in seen), seen
    # ... and nothing reached the reader: no red text, no advice to trust remote code
    assert "gemm_4bit_forward" not in stderr and "trust_remote_code" not in stderr, stderr


def test_without_helpers_the_same_import_shows_the_notice():
    """The control: the notice is real on this machine's installed versions, and it is helpers that stops it."""
    _, stderr = forced_import(without_kernels=True, offline=False, with_helpers=False)
    assert "Failed to load CPU gemm_4bit_forward" in stderr


def test_the_filter_keys_on_the_format_string_bitsandbytes_uses():
    """If a bitsandbytes release rewords its warning, this fails (in `dev.py test --latest`) before readers see it."""
    from pathlib import Path

    import bitsandbytes

    from helpers import BITSANDBYTES_HUB_KERNEL_NOTICE

    source = (Path(bitsandbytes.__file__).parent / "backends" / "cpu" / "ops.py").read_text()
    assert f'"{BITSANDBYTES_HUB_KERNEL_NOTICE}: %s.' in source
