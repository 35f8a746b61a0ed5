"""The tiny random stand-in: a real SD3 pipeline with random weights, built locally and deterministically.

The unit tests run it (`SD35_MODEL=tiny`): it is built in a second, through exactly the code a reader runs on a
GPU (the same diffusers classes, saved with `save_pretrained` and loaded with `from_pretrained(folder)`). Its
images are noise. Its tokenizers also serve the trained toy model of helpers.training, which the notebooks run
without a GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import string
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path

CACHE_VARIABLE = "SD35_CACHE_DIR"

# Words the stand-in's tokenizers know as whole tokens; anything else is spelled out letter by letter,
# so every prompt still gets its own token ids.
WORDS = """
a an the of and with in on at to for from by no not is are there
photo photograph painting drawing illustration portrait landscape closeup close up cinematic cinema
4k 8k detailed sharp blurry high quality low bad ugly deformed
cat dog bird horse dragon elves elf child children kids people man woman girl boy group family
birthday party cake balloons hats hat table cloth dining sitting standing hunting flying running
background foreground sunny day night park forest mountain mountains lake river sea beach city street
green grass red blue yellow white black orange purple pink brown gold silver
tree trees flower flowers sky clouds sun moon stars water fire snow rain light dark
astronaut riding castle house room window door car boat robot space
three two one four five many small large big tiny old young happy sad
""".split()  # noqa: SIM905 (a word list reads better as text)

TINY_CONFIGS: dict[str, dict] = {
    "text_encoder": {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "projection_dim": 32, "max_position_embeddings": 77, "hidden_act": "gelu",
    },
    "text_encoder_3": {
        "d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2,
        "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 8,
    },
    # pooled_projection_dim = the two CLIP projections (32 + 32); joint_attention_dim = T5's d_model;
    # caption_projection_dim = heads x head dim. Patch 2 with a VAE factor of 8 and pos_embed_max_size 32
    # allows 64 to 256 px. Block 0 has the dual attention of MMDiT-X (SD3.5 Medium).
    "transformer": {
        "sample_size": 16, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 2,
        "attention_head_dim": 8, "num_attention_heads": 4, "joint_attention_dim": 64,
        "caption_projection_dim": 32, "pooled_projection_dim": 64, "pos_embed_max_size": 32,
        "qk_norm": "rms_norm", "dual_attention_layers": [0],
    },
    # Four levels give the real scale factor 8; 16 latent channels as in SD3.5.
    "vae": {
        "in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": [8, 16, 16, 16],
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 128, "use_quant_conv": False,
        "use_post_quant_conv": False, "scaling_factor": 1.5305, "shift_factor": 0.0609,
    },
    "scheduler": {"num_train_timesteps": 1000, "shift": 3.0},
}


def _fingerprint() -> str:
    """Changes whenever the recipe changes, so a stale cached stand-in is never loaded."""
    recipe = json.dumps({"configs": TINY_CONFIGS, "words": WORDS, "format": 1}, sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def cache_dir() -> Path:
    """Where the stand-in is written: $SD35_CACHE_DIR, else ~/.cache/sd35-notebooks."""
    configured = os.environ.get(CACHE_VARIABLE)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "sd35-notebooks"


def _bpe_pieces(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """How a BPE with these merge ranks splits `word`: always merge the adjacent pair that ranks first."""
    pieces = [*word[:-1], word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(pairwise(pieces))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def _clip_tokenizer(extra_words: Sequence[str] = ()):
    """A CLIP-style byte-level BPE: every byte is a token, and each word of WORDS (and `extra_words`) is one token."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(f"{char}</w>" for char in alphabet)]
    ranks: dict[tuple[str, str], int] = {}
    for word in sorted(set(WORDS) | set(extra_words)):
        # Join the pieces the merges so far leave, left to right. New merges rank after the old ones,
        # so words already whole stay whole.
        pieces = _bpe_pieces(word, ranks)
        merged = pieces[0]
        for piece in pieces[1:]:
            ranks[(merged, piece)] = len(ranks)
            merged += piece
            tokens.append(merged)
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=list(ranks), model_max_length=77)


def _t5_tokenizer(extra_words: Sequence[str] = ()):
    """A T5-style Unigram tokenizer: whole words of WORDS (and `extra_words`) are cheap, single characters dear."""
    from transformers import T5Tokenizer

    characters = string.ascii_letters + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [(char, -10.0) for char in characters]
    vocab += [(f"▁{word}", -4.0) for word in sorted(set(WORDS) | set(extra_words))]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def text_encoder_configs(configs: dict[str, dict], clip_tokenizer, t5_tokenizer):
    """The CLIP and T5 configs of `configs` ("text_encoder", "text_encoder_3"), with the tokenizers' vocabulary
    size and special tokens filled in."""
    from transformers import CLIPTextConfig, T5Config

    clip = CLIPTextConfig(
        **configs["text_encoder"], vocab_size=len(clip_tokenizer), bos_token_id=clip_tokenizer.bos_token_id,
        eos_token_id=clip_tokenizer.eos_token_id, pad_token_id=clip_tokenizer.pad_token_id,
    )
    t5 = T5Config(
        **configs["text_encoder_3"], vocab_size=len(t5_tokenizer), pad_token_id=t5_tokenizer.pad_token_id,
        eos_token_id=t5_tokenizer.eos_token_id, decoder_start_token_id=0,
    )
    return clip, t5


def build_tiny_pipeline():
    """The stand-in in memory, in eval mode. Same weights on every call: each part has its own fixed seed."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    clip_tokenizer, t5_tokenizer = _clip_tokenizer(), _t5_tokenizer()

    def seeded(seed, make):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return make().eval()

    clip, t5 = text_encoder_configs(TINY_CONFIGS, clip_tokenizer, t5_tokenizer)
    return StableDiffusion3Pipeline(
        transformer=seeded(1, lambda: SD3Transformer2DModel(**TINY_CONFIGS["transformer"])),
        vae=seeded(2, lambda: AutoencoderKL(**TINY_CONFIGS["vae"])),
        text_encoder=seeded(3, lambda: CLIPTextModelWithProjection(clip)),
        text_encoder_2=seeded(4, lambda: CLIPTextModelWithProjection(clip)),
        text_encoder_3=seeded(5, lambda: T5EncoderModel(t5)),
        tokenizer=clip_tokenizer,
        tokenizer_2=clip_tokenizer,
        tokenizer_3=t5_tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(**TINY_CONFIGS["scheduler"]),
    )


def tiny_pipeline_dir() -> Path:
    """The folder holding the saved stand-in, building it on first use (about a second, no network).

    The folder appears complete or not at all: it is written under a temporary name and renamed into place. One
    that is damaged (its files differ from the list saved with them) is moved aside, said so, and built again.
    """
    from helpers.checks import output_folder
    from helpers.manifest import DamagedModelError, check_model_folder, write_manifest

    folder = output_folder(cache_dir(), CACHE_VARIABLE if os.environ.get(CACHE_VARIABLE) else "the stand-in's cache "
                           "folder") / f"tiny-sd35-{_fingerprint()}"
    if (folder / "model_index.json").is_file():
        try:
            check_model_folder(folder, "")
            return folder
        except DamagedModelError as error:
            aside = folder.with_name(f"{folder.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            folder.rename(aside)  # kept, not deleted: the reader may want to see what happened to it
            print(f"The stand-in's cache was damaged ({str(error).rstrip('. ')}); it was moved to {aside} and is built "
                  "again.")
    elif folder.exists():
        raise DamagedModelError(f"{folder} exists but holds no saved stand-in: it is left as it is. Move it away, or "
                                f"set {CACHE_VARIABLE} to another folder.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    try:
        with quiet_transformers_progress():
            build_tiny_pipeline().save_pretrained(staging, safe_serialization=True)
        write_manifest(staging)
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / "model_index.json").is_file():  # not a lost race with another builder
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


@contextmanager
def quiet_transformers_progress() -> Iterator[None]:
    """Hide transformers' per-file progress bars, which take a screen of output for a one-megabyte model."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()
