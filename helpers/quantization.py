"""4-bit NF4 and 8-bit weights with bitsandbytes, and how much memory a loaded model really takes.

Introduced in notebook 02. On a GPU the transformer is quantized the way diffusers documents it (a
`BitsAndBytesConfig` passed to `from_pretrained`) and T5 the way transformers does. diffusers' quantizer refuses to
run without a GPU, so on a CPU the same layout is built directly: every `nn.Linear` of the transformer becomes a
bitsandbytes `Linear4bit` holding NF4 weights in blocks of 64 with one float32 scale each, computing in bf16.
"""

from __future__ import annotations

import warnings

from helpers.architecture import stored_tensors
from helpers.checks import checked, listed, text
from helpers.checks import module as module_rule


def diffusers_nf4_config(compute_dtype):
    """diffusers' config for an NF4 transformer (no double quantization, as in the seed and diffusers' docs)."""
    from diffusers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)


def transformers_config(storage: str, compute_dtype):
    """transformers' config for a quantized T5 encoder: 'nf4' or 'int8'."""
    from transformers import BitsAndBytesConfig

    if storage == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def _dtype(value: object, name: str):
    from helpers.routes import dtype_rule

    dtype_rule(value, name)
    import torch

    return getattr(torch, value) if isinstance(value, str) else value


@checked(module=module_rule, compute_dtype=_dtype, skip=lambda value, name: tuple(listed(text, 0)(value, name)))
def quantize_linear_layers_nf4(module, compute_dtype, skip: tuple[str, ...] = ()):
    """Replace every `nn.Linear` inside `module` (but those whose names end with one of `skip`) by a bitsandbytes
    NF4 `Linear4bit`, quantized where it lies.

    The layout matches what `diffusers_nf4_config` produces on a GPU. Returns the module, changed in place.
    """
    import bitsandbytes as bnb
    import torch

    for prefix, parent in list(module.named_modules()):
        for name, layer in list(parent.named_children()):
            if type(layer) is not torch.nn.Linear or f"{prefix}.{name}".endswith(skip) and skip:
                continue
            quantized = bnb.nn.Linear4bit(
                layer.in_features,
                layer.out_features,
                bias=layer.bias is not None,
                compute_dtype=compute_dtype,
                compress_statistics=False,
                quant_type="nf4",
                device="meta",
            )
            quantized.weight = bnb.nn.Params4bit(
                layer.weight.data, requires_grad=False, compress_statistics=False, quant_type="nf4", blocksize=64
            )
            if layer.bias is not None:
                quantized.bias = torch.nn.Parameter(layer.bias.data, requires_grad=False)
            setattr(parent, name, quantized.to(layer.weight.device))  # moving quantizes the weights
    return module


@checked(module=module_rule)
def count_4bit_layers(module) -> int:
    """How many bitsandbytes 4-bit layers `module` holds."""
    import bitsandbytes as bnb

    return sum(isinstance(layer, bnb.nn.Linear4bit) for layer in module.modules())


@checked(module=module_rule)
def footprint_bytes(module) -> int:
    """Bytes a loaded module really holds: parameters, persistent buffers, and the scales of 4-bit weights.

    bitsandbytes keeps a 4-bit weight's per-block scales beside the parameter (in its quant_state), where
    `parameters()` does not see them; 8-bit scales (SCB) are counted the same way.
    """
    parameters, buffers = stored_tensors(module)
    total = sum(t.numel() * t.element_size() for t in parameters + buffers)
    for parameter in parameters:
        state = getattr(parameter, "quant_state", None)
        if state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
            if state.nested and state.state2 is not None:
                total += state.state2.absmax.numel() * state.state2.absmax.element_size()
        scales = getattr(parameter, "SCB", None)
        if scales is not None:
            total += scales.numel() * scales.element_size()
    return total


def quiet_int8_cast_warning():
    """bitsandbytes warns on every 8-bit matmul that bf16 inputs are cast to fp16; once is enough to know."""
    warnings.filterwarnings("once", message="MatMul8bitLt: inputs will be cast")


@checked(module=module_rule)
def unquantized_bytes(module) -> int:
    """Bytes `module` took before quantization, read from the loaded module itself.

    A 4-bit weight counts at its original shape and dtype (kept in its quant_state); other tensors as they are.
    """
    parameters, buffers = stored_tensors(module)
    total = 0
    for tensor in parameters + buffers:
        state = getattr(tensor, "quant_state", None)
        if state is None:
            total += tensor.numel() * tensor.element_size()
        else:
            total += state.shape.numel() * state.dtype.itemsize
    return total
