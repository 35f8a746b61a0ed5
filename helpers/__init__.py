"""Helpers for the SD3.5 notebook series: setup, model loading, the offline toy model, images and tables.

Each module is about one idea and names the notebook that introduces it. The names below are importable
directly (`from helpers import setup, load_pipeline`); modules load on first use, so importing `helpers`
itself is instant and only the parts a notebook uses pay for torch and diffusers.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

BITSANDBYTES_HUB_KERNEL_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"
"""The start of a warning's format string in bitsandbytes' CPU backend (`backends/cpu/ops.py`, read in 0.50.2).

On CPUs with AVX512-BF16, importing bitsandbytes asks the optional `kernels` package for a faster 4-bit matrix
product hosted on the Hugging Face hub. When that fails for any reason (`kernels` absent, the hub offline, the
repository not on `kernels`' trusted list) bitsandbytes logs this warning and uses the kernel compiled into its own
library, which computes the same product. The series needs nothing from the hub's kernel, and the warning's text
ends in advice to trust remote code, which a reader should never follow for us. So the record is dropped by
its logger and its constant format string (`record.msg`), never by the reason filled into it, which changes with
the versions installed and the network. tests/test_notices.py forces this branch on any CPU."""


def _without_hub_kernel_notice(record: logging.LogRecord) -> bool:
    return not (isinstance(record.msg, str) and record.msg.startswith(BITSANDBYTES_HUB_KERNEL_NOTICE))


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_without_hub_kernel_notice)

_EXPORTS = {
    "setup": "session",
    "Session": "session",
    "MODELS": "models",
    "ModelSpec": "models",
    "get_model": "models",
    "UnknownModelError": "models",
    "load_pipeline": "loading",
    "TASKS": "loading",
    "plan_route": "routes",
    "route_of": "routes",
    "NonFiniteError": "routes",
    "MACHINES": "machines",
    "catalogue_table": "machines",
    "ModelAccessError": "access",
    "MissingTokenError": "access",
    "InvalidTokenError": "access",
    "LicenceNotAcceptedError": "access",
    "HubUnreachableError": "access",
    "component_sizes": "architecture",
    "pipeline_sizes": "architecture",
    "plot_component_sizes": "architecture",
    "estimate": "memory",
    "fit_table": "memory",
    "format_table": "memory",
    "strategy_table": "memory",
    "Strategy": "memory",
    "offload_traffic_gb": "memory",
    "measure_peak_gb": "memory",
    "plot_strategies": "memory",
    "STRATEGIES": "memory",
    "weights": "memory",
    "estimate_on": "memory",
    "RESERVE_GB": "memory",
    "count_4bit_layers": "quantization",
    "quantize_linear_layers_nf4": "quantization",
    "footprint_bytes": "quantization",
    "unquantized_bytes": "quantization",
    "benchmark": "bench",
    "time_call": "bench",
    "compare_times": "bench",
    "flops_per_step": "bench",
    "plot_results": "bench",
    "measured_case": "measured",
    "measured_cases": "measured",
    "fuse_qkv_projections": "bench",
    "unfuse_qkv_projections": "bench",
    "H100_DENSE_BF16_TFLOPS": "bench",
    "run_sweep": "experiments",
    "generate": "experiments",
    "colour_share": "experiments",
    "mean_difference": "experiments",
    "summarise": "experiments",
    "paired_change": "experiments",
    "mean_saturation": "experiments",
    "region_difference": "experiments",
    "ImageToImageExplorer": "widgets",
    "InpaintingExplorer": "widgets",
    "LoraScaleExplorer": "widgets",
    "BlindRating": "rating",
    "prepare_image": "inputs",
    "prepare_mask": "inputs",
    "blend": "inputs",
    "load_image": "inputs",
    "rectangle_mask": "inputs",
    "ellipse_mask": "inputs",
    "mask_from_alpha": "inputs",
    "background_mask": "inputs",
    "sample": "inputs",
    "TextToImageExplorer": "widgets",
    "save_image": "images",
    "read_metadata": "images",
    "image_grid": "images",
    "enlarged": "images",
    "Table": "display",
    "judge": "world",
    "adherence": "evaluation",
    "generate_batch": "evaluation",
}

__all__ = tuple(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'helpers' has no attribute {name!r}")
    return getattr(importlib.import_module(f"helpers.{module}"), name)


def __dir__() -> list[str]:
    return list(__all__)
