"""Bounded attention (what load_pipeline runs on GPUs without fused bf16 kernels) gives the pipeline's own images."""

import numpy as np
import pytest
import torch

from helpers.attention import ImageSelfAttention, JointAttention, bound_attention_memory, chunked_attention
from helpers.tiny import build_tiny_pipeline


def picture(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt="a red circle", num_inference_steps=2, height=64, width=64, output_type="np",
                generator=torch.Generator("cpu").manual_seed(3)).images[0]


def test_chunked_attention_equals_one_call():
    query, key, value = torch.randn(3, 2, 4, 37, 8).unbind(0)
    whole = torch.nn.functional.scaled_dot_product_attention(query, key, value)
    for chunk in (1, 5, 36, 37, 100, None):
        torch.testing.assert_close(chunked_attention(query, key, value, chunk), whole)


def test_bounded_attention_gives_the_same_picture():
    pipe = build_tiny_pipeline()
    before = picture(pipe)
    bound_attention_memory(pipe, query_chunk=5)  # every attention of the tiny model has more than 5 queries
    processors = [type(module.processor) for part in (pipe.transformer, pipe.vae) for module in part.modules()
                  if hasattr(module, "processor")]
    assert processors.count(JointAttention) == len(pipe.transformer.transformer_blocks) + sum(
        block.attn2 is not None for block in pipe.transformer.transformer_blocks if hasattr(block, "attn2"))
    assert ImageSelfAttention in processors
    after = picture(pipe)
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_image_self_attention_refuses_what_it_does_not_compute():
    pipe = build_tiny_pipeline()
    attention = next(module for module in pipe.vae.modules() if hasattr(module, "processor"))
    states = torch.zeros(1, attention.inner_dim, 2, 2)
    with pytest.raises(ValueError, match="SD3 VAE's self-attention"):
        ImageSelfAttention()(attention, states, attention_mask=torch.zeros(1, 4, 4))
