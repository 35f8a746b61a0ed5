"""SD3's joint attention, with the two changes the series needs: fused q/k/v (notebook 03) and bounded memory on
GPUs older than Ampere (notebook 02).

On a T4 or V100, PyTorch's fused attention kernels do not take bf16 (its memory-efficient kernel takes float16 and
float32 there), so attention in bf16 falls back to PyTorch's math kernel, which stores every attention score in float32: measured on an H100 with that kernel forced, 6.3 GB more
than fused attention for SD3.5 Medium at 1024x1024 and 11.4 GB more for Large (helpers/gpu_runs/). Attending
`QUERY_CHUNK` queries at a time stores the scores of one chunk only. Each query's softmax is its own, so the result
is the same as one call.
"""

from __future__ import annotations

QUERY_CHUNK = 512
"""Queries attended at once after `bound_attention_memory`: at 1024x1024 (4,429 tokens with the text), about 1.6 GB of
scores for Large (batch 2, 38 heads) and 1.0 GB for Medium (24 heads) instead of 13.4 and 8.5 GB."""


def _heads(attn, tensor):
    """(batch, tokens, heads x head size) -> (batch, heads, tokens, head size)."""
    return tensor.unflatten(-1, (attn.heads, -1)).transpose(1, 2)


KERNELS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
           "math": "MATH"}
"""The scaled-dot-product kernels a reader can ask PyTorch for, by the names the series uses (`torch.nn.attention.
SDPBackend`'s members as values). None leaves the choice to PyTorch."""


def chunked_attention(query, key, value, query_chunk: int | None = None, kernel: str | None = None):
    """`scaled_dot_product_attention(query, key, value)` over `query_chunk` queries at a time (None: all at once),
    with PyTorch's kernel `kernel` (a key of KERNELS; None: PyTorch chooses)."""
    from contextlib import nullcontext

    import torch
    import torch.nn.functional as F

    if kernel is None:
        chosen = nullcontext()
    else:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        chosen = sdpa_kernel([getattr(SDPBackend, KERNELS[kernel])])
    with chosen:
        if query_chunk is None or query.shape[2] <= query_chunk:
            return F.scaled_dot_product_attention(query, key, value)
        return torch.cat([F.scaled_dot_product_attention(query[:, :, start:start + query_chunk], key, value)
                          for start in range(0, query.shape[2], query_chunk)], dim=2)


class JointAttention:
    """SD3's joint attention, computed as diffusers' JointAttnProcessor2_0 computes it (SD3.5's RMS normalisation
    of queries and keys included), with q, k and v projected by one fused matrix multiply per stream (`fused=True`,
    after `attn.fuse_projections()`), attention over `query_chunk` queries at a time (None: all at once) and PyTorch's
    attention kernel `kernel` (a key of KERNELS; None: PyTorch chooses)."""

    def __init__(self, *, fused: bool = False, query_chunk: int | None = None, kernel: str | None = None):
        self.fused, self.query_chunk, self.kernel = fused, query_chunk, kernel

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        import torch

        image_tokens = hidden_states.shape[1]

        def project(states, fused, separate, norm_q, norm_k):
            parts = fused(states).chunk(3, dim=-1) if self.fused else [layer(states) for layer in separate]
            query, key, value = (_heads(attn, part) for part in parts)
            return (norm_q(query) if norm_q else query), (norm_k(key) if norm_k else key), value

        query, key, value = project(hidden_states, getattr(attn, "to_qkv", None), (attn.to_q, attn.to_k, attn.to_v),
                                    attn.norm_q, attn.norm_k)
        if encoder_hidden_states is not None:
            text = project(encoder_hidden_states, getattr(attn, "to_added_qkv", None),
                           (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj), attn.norm_added_q, attn.norm_added_k)
            query, key, value = (torch.cat(pair, dim=2) for pair in zip((query, key, value), text, strict=True))
        out = chunked_attention(query, key, value, self.query_chunk, self.kernel).transpose(1, 2).flatten(2)
        out = out.to(query.dtype)
        image_out = attn.to_out[1](attn.to_out[0](out[:, :image_tokens]))
        if encoder_hidden_states is None:
            return image_out
        text_out = out[:, image_tokens:]
        return image_out, (text_out if attn.context_pre_only else attn.to_add_out(text_out))


class ImageSelfAttention:
    """The VAE's attention (one head over every latent pixel), computed as diffusers' AttnProcessor2_0 computes it
    for the VAE (group norm first, residual added, no mask), over `query_chunk` queries at a time."""

    def __init__(self, *, query_chunk: int | None = None):
        self.query_chunk = query_chunk

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None or attn.spatial_norm is not None:
            raise ValueError("ImageSelfAttention is for the SD3 VAE's self-attention: no context, mask or "
                             "spatial norm.")
        residual = hidden_states
        batch, channels, height, width = hidden_states.shape
        tokens = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            tokens = attn.group_norm(tokens.transpose(1, 2)).transpose(1, 2)

        query, key, value = (_heads(attn, layer(tokens)) for layer in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = chunked_attention(query, key, value, self.query_chunk).transpose(1, 2).flatten(2).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out)).transpose(1, 2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def bound_attention_memory(pipe, query_chunk: int = QUERY_CHUNK) -> None:
    """Attend `query_chunk` queries at a time in every attention of an SD3 pipeline's transformer (both of
    MMDiT-X's) and VAE. Text encoders are left alone: their few hundred tokens make small score matrices."""
    from diffusers.models.attention_processor import Attention

    for part, processor in (("transformer", JointAttention), ("vae", ImageSelfAttention)):
        for module in getattr(pipe, part).modules():
            if isinstance(module, Attention):
                module.set_processor(processor(query_chunk=query_chunk))

