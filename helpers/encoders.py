"""The three text encoders of an SD3 pipeline: what each one reads of a prompt and what it hands the transformer.

Introduced in notebook 08. SD3 reads a prompt three times: with CLIP-L, with CLIP-G (both limited to their
tokenizer's length, 77 tokens on SD3.5) and with T5 (`max_sequence_length` tokens, 256 by default in diffusers, at
most 512). The tables here show, for the pipeline in use or for SD3.5 from its published configs, the tokens each
encoder keeps, the tokens it silently drops, and the shapes of what `encode_prompt` returns.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from helpers.checks import check_max_sequence_length, check_prompt, checked, instance, listed, optional, pipeline, text

ENCODERS = (
    ("CLIP-L", "tokenizer", "text_encoder", "text_encoder-clip-l"),
    ("CLIP-G", "tokenizer_2", "text_encoder_2", "text_encoder_2-clip-g"),
    ("T5", "tokenizer_3", "text_encoder_3", "text_encoder_3-t5xxl"),
)
"""(name, tokenizer attribute, encoder attribute, SD3.5 config file) for each of the three encoders."""


@checked(pipe=optional(pipeline))
def default_max_sequence_length(pipe=None) -> int:
    """diffusers' default number of T5 tokens, read from the installed pipeline's signature."""
    from diffusers import StableDiffusion3Pipeline

    pipeline_class = type(pipe) if pipe is not None else StableDiffusion3Pipeline
    return inspect.signature(pipeline_class.__call__).parameters["max_sequence_length"].default


def _widths(config: dict[str, Any]) -> tuple[int, int | None]:
    """(width of each token's features, width of the pooled vector) of an encoder config."""
    if "d_model" in config:  # T5: no pooled vector
        return config["d_model"], None
    return config["hidden_size"], config["projection_dim"]


@checked(pipe=optional(pipeline), max_sequence_length=optional(check_max_sequence_length))
def encoder_rows(pipe=None, max_sequence_length: int | None = None) -> list[dict[str, Any]]:
    """One row per encoder: tokens read, features per token, pooled width, parameters.

    With a pipeline, its own encoders (a dropped T5 shows as absent); without, SD3.5's, from the published configs
    (CLIP's limit is its 77 position embeddings).
    """
    from helpers.architecture import component_sizes, reference_config

    max_sequence_length = max_sequence_length or default_max_sequence_length(pipe)
    sizes = {} if pipe is not None else {size.component: size for size in component_sizes("medium")}
    rows = []
    for name, tokenizer_name, encoder_name, config_file in ENCODERS:
        if pipe is not None:
            encoder = getattr(pipe, encoder_name, None)
            if encoder is None:
                rows.append({"encoder": name, "class": "dropped: zeros instead", "tokens read": max_sequence_length,
                             "features per token": pipe.transformer.config.joint_attention_dim,
                             "pooled vector": "-", "parameters": 0})
                continue
            config = encoder.config.to_dict()
            parameters = sum(p.numel() for p in encoder.parameters())
            clip_tokens = getattr(pipe, tokenizer_name).model_max_length
            class_name = type(encoder).__name__
        else:
            config = reference_config(config_file)
            parameters = sizes[encoder_name].parameters
            clip_tokens = config.get("max_position_embeddings")
            class_name = config["architectures"][0]
        features, pooled = _widths(config)
        rows.append({
            "encoder": name,
            "class": class_name,
            "tokens read": max_sequence_length if pooled is None else clip_tokens,
            "features per token": features,
            "pooled vector": pooled if pooled is not None else "-",
            "parameters": f"{parameters / 1e6:,.1f} M" if parameters >= 1e5 else f"{parameters:,}",
        })
    return rows


def _encoder_rows_given(value: Any, name: str) -> list[dict[str, Any]]:
    rows = listed(instance(dict, "a row of encoder_rows()"), 3, 3)(value, name)
    needed = {"tokens read", "features per token", "pooled vector"}
    if not all(needed <= set(row) for row in rows):
        raise ValueError(f"{name} must be the three rows encoder_rows() returns (CLIP-L, CLIP-G, T5).")
    return rows


@checked(rows=_encoder_rows_given)
def prompt_shapes(rows: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """The shapes `encode_prompt` returns for one prompt, worked out from `encoder_rows`: the two CLIPs' token
    features side by side, zero-padded to T5's width, then CLIP's tokens stacked above T5's; the two CLIPs' pooled
    vectors side by side."""
    clip_l, clip_g, t5 = rows
    clip_width = clip_l["features per token"] + clip_g["features per token"]
    return {
        "prompt_embeds": (clip_l["tokens read"] + t5["tokens read"], t5["features per token"]),
        "pooled_prompt_embeds": (clip_l["pooled vector"] + clip_g["pooled vector"],),
        "CLIP block": (clip_l["tokens read"], clip_width),
    }


@checked(pipe=pipeline, prompt=check_prompt, max_sequence_length=optional(check_max_sequence_length))
def token_rows(pipe, prompt: str, max_sequence_length: int | None = None) -> list[dict[str, Any]]:
    """For each encoder of `pipe`: how many tokens `prompt` makes, which the encoder reads, which it drops.

    Tokens are shown as the tokenizer splits them; CLIP counts its start and end markers, T5 its end marker.
    """
    max_sequence_length = max_sequence_length or default_max_sequence_length(pipe)
    rows = []
    for name, tokenizer_name, encoder_name, _ in ENCODERS:
        tokenizer = getattr(pipe, tokenizer_name, None)
        if tokenizer is None or getattr(pipe, encoder_name, None) is None:
            continue
        limit = max_sequence_length if encoder_name == "text_encoder_3" else tokenizer.model_max_length
        ids = tokenizer(prompt, truncation=False, verbose=False).input_ids
        kept = ids[:limit - 1] + ids[-1:] if len(ids) > limit else ids  # truncation keeps the end marker
        dropped = ids[limit - 1:-1] if len(ids) > limit else []
        rows.append({
            "encoder": name,
            "limit": limit,
            "tokens": len(ids),
            "reads": _words(tokenizer, kept),
            "drops": _words(tokenizer, dropped) or "-",
        })
    return rows


def _negative(value: Any, name: str) -> str | list[str]:
    return check_prompt(value, name) if isinstance(value, str) else listed(check_prompt)(value, name)


@checked(pipe=pipeline, prompts=listed(check_prompt), max_sequence_length=optional(check_max_sequence_length),
         negative_prompt=_negative)
def embeddings_without_t5(pipe, prompts: list[str], *, max_sequence_length: int | None = None,
                          negative_prompt: str | list[str] = "") -> dict[str, Any]:
    """The four embedding arguments of a pipeline call for `prompts` (and the negative prompt), with T5's rows set to
    zeros: exactly what the pipeline computes when it is loaded without T5 (`t5='drop'`), from the pipeline already
    loaded, so nothing is loaded twice. Pass them instead of the prompts: `pipe(**embeddings, ...)`."""
    max_sequence_length = max_sequence_length or default_max_sequence_length(pipe)
    if isinstance(negative_prompt, list) and len(negative_prompt) != len(prompts):
        raise ValueError(f"negative_prompt has {len(negative_prompt)} texts for {len(prompts)} prompts: give one "
                         "text, or one per prompt.")
    text, negative_text, pooled, negative_pooled = pipe.encode_prompt(
        prompts, None, None, negative_prompt=negative_prompt, max_sequence_length=max_sequence_length)
    clip_tokens = text.shape[1] - max_sequence_length
    for embeddings in (text, negative_text):
        embeddings[:, clip_tokens:] = 0
    return {"prompt_embeds": text, "negative_prompt_embeds": negative_text, "pooled_prompt_embeds": pooled,
            "negative_pooled_prompt_embeds": negative_pooled}


@contextmanager
def quiet_truncation_warnings() -> Iterator[None]:
    """Within the block, diffusers and transformers do not log the text each encoder cut from each prompt (a warning
    per prompt per encoder, which swamps a cell that sends many long prompts). Other errors still show."""
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _words(tokenizer, ids: list[int]) -> str:
    """Token ids as the text they stand for, tokens separated by '|'."""
    special = set(tokenizer.all_special_ids)
    return "|".join(tokenizer.decode([token]).strip() or "_" for token in ids if token not in special)


def _embedding(value: Any, name: str):
    import torch

    if not isinstance(value, torch.Tensor) or value.ndim != 3 or 0 in value.shape:
        raise ValueError(f"{name} must be the prompt_embeds of pipe.encode_prompt(): a tensor of prompts x tokens x "
                         "features.")
    return value


@checked(prompt_embeds=_embedding, rows=_encoder_rows_given, title=optional(text))
def plot_prompt_embeddings(prompt_embeds, rows: list[dict[str, Any]], title: str | None = None):
    """One prompt's embedding as the transformer receives it: a row per token, a column per feature, coloured by
    magnitude, grey where the value is exactly zero (padding). `rows`: the pipeline's `encoder_rows`, which say
    where each encoder's block lies. Returned, not shown."""
    import numpy as np

    from helpers.images import unshown_subplots

    clip_l, clip_g, _ = rows
    clip_tokens, clip_l_width = clip_l["tokens read"], clip_l["features per token"]
    clip_width = clip_l_width + clip_g["features per token"]
    values = prompt_embeds[0].detach().float().abs().cpu().numpy()
    tokens, features = values.shape
    figure, axis = unshown_subplots(figsize=(8, 3.6))
    axis.set_facecolor("0.8")
    axis.imshow(np.ma.masked_where(values == 0, np.log10(values + 1e-6)), aspect="auto", interpolation="nearest",
                cmap="viridis")
    axis.axhline(clip_tokens - 0.5, color="white", linewidth=1.5)
    top = 1 - clip_tokens / tokens  # axvline's span is a fraction of the height, from the bottom
    axis.axvline(clip_l_width - 0.5, color="white", linewidth=1, ymin=top)
    axis.axvline(clip_width - 0.5, color="white", linewidth=1, ymin=top)
    for x, y, label in ((clip_l_width / 2, clip_tokens / 2, "CLIP-L"),
                        ((clip_l_width + clip_width) / 2, clip_tokens / 2, "CLIP-G"),
                        (features / 2, (clip_tokens + tokens) / 2, "T5")):
        axis.text(x, y, label, color="white", ha="center", va="center", fontweight="bold")
    axis.set_xlabel(f"feature (0 to {features - 1})")
    axis.set_ylabel(f"token (0 to {tokens - 1})")
    axis.set_title(title or "prompt_embeds of one prompt (grey: exactly zero)")
    figure.tight_layout()
    return figure
