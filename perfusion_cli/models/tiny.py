"""Tiny backbones for CPU (DESIGN §4): the same classes as the real models, small configs.

An offline byte-level BPE tokenizer whose merges spell out the synthetic catalogue's words (any other
text falls back to bytes), a tiny ``CLIPModel``, ``AutoencoderKL`` and ``UNet2DConditionModel``.
``perfusion pretrain-base`` trains them on the catalogue and saves them in Hugging Face folder
format, so ``--base-model tiny`` loads through exactly the code that loads real weights.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from tokenizers import pre_tokenizers
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, SiglipConfig, SiglipModel

from perfusion_cli.marketplace.drawing import ITEMS, MATERIALS, PATTERNS

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
COLOUR_WORDS = ("red", "orange", "yellow", "lime", "green", "teal", "cyan", "azure", "blue", "violet", "magenta",
                "pink", "white", "black", "grey", "dark", "light")
EXTRA_WORDS = ("a", "an", "the", "with", "and", "of", "in", "for", "shirt", "t", "-")
MAX_TOKENS = 16  # catalogue prompts are at most ten tokens; longer ones are truncated and counted
IMAGE_SIZE = 64
TEXT_WIDTH = 64


def catalogue_words() -> list[str]:
    words = {*COLOUR_WORDS, *EXTRA_WORDS, *PATTERNS, *MATERIALS}
    for item in ITEMS:
        words.update(item.replace("-", " ").split())
    return sorted(words)


def build_tokenizer(words: list[str] | None = None) -> CLIPTokenizer:
    """A CLIP-style BPE tokenizer built offline: 512 byte tokens plus one merge chain per word."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for symbol in alphabet + [a + "</w>" for a in alphabet]:
        vocab[symbol] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in words or catalogue_words():
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        left = symbols[0]
        for right in symbols[1:]:
            merged = left + right
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((left, right))
            left = merged
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def build_tiny_clip(tokenizer: CLIPTokenizer, seed: int = 0, text_width: int = TEXT_WIDTH) -> CLIPModel:
    """A CLIPModel with two layers per tower (text ``text_width`` wide), 8×8 patches on 64×64 images."""
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": text_width, "intermediate_size": 2 * text_width,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": MAX_TOKENS,
                     **ids},
        vision_config={"image_size": IMAGE_SIZE, "patch_size": 8, "hidden_size": 64, "intermediate_size": 128,
                       "num_hidden_layers": 2, "num_attention_heads": 4},
        projection_dim=text_width,
    )
    torch.manual_seed(seed)
    return CLIPModel(config)


def build_tiny_siglip(tokenizer: CLIPTokenizer, seed: int = 0) -> SiglipModel:
    """A SiglipModel of the tiny CLIP's sizes (two layers per tower, 64 wide, 8×8 patches on 64×64 images), reading
    the tiny tokenizer's ids: the bundled SigLIP base for tests and the demo's SigLIP reward model."""
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    config = SiglipConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": TEXT_WIDTH, "intermediate_size": 2 * TEXT_WIDTH,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": MAX_TOKENS,
                     "projection_size": TEXT_WIDTH, **ids},
        vision_config={"image_size": IMAGE_SIZE, "patch_size": 8, "hidden_size": TEXT_WIDTH,
                       "intermediate_size": 2 * TEXT_WIDTH, "num_hidden_layers": 2, "num_attention_heads": 4},
    )
    torch.manual_seed(seed)
    return SiglipModel(config)


def build_tiny_vae(seed: int = 0) -> AutoencoderKL:
    """64×64×3 ↔ 16×16×4 latents (three blocks, two downsamplings; 0.7 M parameters).

    No attention in the mid block: on two CPU cores it tripled the step time for no visible gain.
    """
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=16, sample_size=IMAGE_SIZE, mid_block_add_attention=False,
    )


def build_tiny_unet(cross_attention_dim: int = TEXT_WIDTH, seed: int = 0) -> UNet2DConditionModel:
    """A three-level U-Net on 16×16×4 latents (3.7 M parameters).

    Attention (self and cross) runs at 8×8 and 4×4 only: at 16×16 it cost 2-3× the step time on CPU.
    """
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4, block_out_channels=(48, 96, 96),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=3, norm_num_groups=16,
    )


SDXL_TEXT_WIDTH = 96  # the tiny SDXL's second text encoder (SDXL: 768 + 1280)
SDXL_TIME_DIM = 16  # per micro-conditioning number (SDXL: 256)


def build_tiny_sdxl_unet(cross_attention_dim: int = TEXT_WIDTH + SDXL_TEXT_WIDTH, pooled_dim: int = SDXL_TEXT_WIDTH,
                         seed: int = 0) -> UNet2DConditionModel:
    """The tiny U-Net's blocks with SDXL's conditioning keys: ``addition_embed_type="text_time"`` (pooled text
    + six Fourier-embedded size numbers added to the time embedding), linear projections in its transformers,
    two transformer layers in the deepest blocks (SDXL: 1, 2, 10), cross-attention to both encoders' width."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4, block_out_channels=(48, 96, 96),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=(3, 3, 6), norm_num_groups=16,
        transformer_layers_per_block=(1, 1, 2), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_DIM, projection_class_embeddings_input_dim=pooled_dim + 6 * SDXL_TIME_DIM,
    )


def tiny_noise_scheduler() -> DDPMScheduler:
    """Stable Diffusion's training schedule (scaled-linear betas, ε-prediction)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False)
