"""``perfusion pretrain-base --flux``: the tiny FLUX-architecture base (``tiny-flux``), on the synthetic catalogue.

FLUX.1's layout at tiny widths: a ``FluxTransformer2DModel`` (2 double- and 4 single-stream blocks, width 128,
RoPE over (0, row, column)), the tiny CLIP's text tower for the pooled embedding, a small T5 encoder for the text
stream's tokens, and the tiny VAE (4 latent channels, so 2×2 packed patches of 16). The T5 stays as initialized,
frozen, as FLUX's T5 is frozen in FLUX's training: its token embeddings tell the words apart, and the transformer
learns to read them. The transformer learns rectified flow (``noise.RectifiedFlow``: σ logit-normal, target ε − x_0)
on the catalogue's cached latents with prompts, captions and 10 % empty text, and is saved as its EMA. With no
guidance embedding (FLUX.1-dev's is distilled from a guided teacher, which the tiny base does not have), it is
drawn with classifier-free guidance, the prompt and the empty prompt as a batch of two (``FrozenFlux``).

It reads ``tiny-clip`` and ``tiny-sd`` (for the VAE) from ``source`` and writes ``OUT/tiny-flux``, a
``FluxPipeline`` folder in fp16 safetensors; ``--base-model tiny-flux`` loads it.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTokenizer, T5Config, T5EncoderModel

from perfusion_cli.config import BaseTrainConfig
from perfusion_cli.io import atomic_dir
from perfusion_cli.models.frozen_flux import FluxComponents, FrozenFlux
from perfusion_cli.models.frozen_transformer import JointText
from perfusion_cli.noise import RectifiedFlow
from perfusion_cli.progress import NullProgress, Progress
from perfusion_cli.training.tiny_bases import Catalogue, begin_pretraining, pretrain_denoiser, tiny_sources

T5_WIDTH = 64


def build_tiny_flux(vae: AutoencoderKL, pooled_width: int, seed: int = 0) -> FluxTransformer2DModel:
    torch.manual_seed(seed)
    return FluxTransformer2DModel(patch_size=1, in_channels=4 * vae.config.latent_channels, num_layers=2,
                                  num_single_layers=4, attention_head_dim=32, num_attention_heads=4,
                                  joint_attention_dim=T5_WIDTH, pooled_projection_dim=pooled_width,
                                  guidance_embeds=False, axes_dims_rope=(8, 12, 12))


def build_tiny_t5(tokenizer: CLIPTokenizer, seed: int = 0) -> T5EncoderModel:
    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=T5_WIDTH, d_kv=16, d_ff=2 * T5_WIDTH,
                                   num_layers=2, num_heads=4))


def pretrain_transformer(catalogue: Catalogue, frozen: FrozenFlux, config: BaseTrainConfig, progress: Progress):
    """Rectified flow on the catalogue's cached latents; the transformer trains, everything else stays frozen."""
    process = RectifiedFlow(frozen.sd.noise_scheduler)

    def loss(x0: torch.Tensor, text: JointText, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(x0.shape, generator=generator)
        times = process.times(len(x0), x0.device, generator)
        velocity = frozen.velocity(process.noisy(x0, noise, times), times, text)
        return F.mse_loss(velocity, process.target(x0, noise, times))

    transformer = frozen.sd.transformer.train().requires_grad_(True)
    pretrain_denoiser(catalogue, transformer, frozen.latents, frozen.text, loss, config, progress,
                      "tiny FLUX transformer", config.seed + 5)
    return transformer.requires_grad_(False)


def pretrain_flux(out: str | Path, config: BaseTrainConfig, source: str | Path,
                  progress: Progress | None = None) -> dict:
    """``tiny-flux`` from ``source``'s ``tiny-clip`` and ``tiny-sd`` (its VAE); ``config.unet_steps`` steps."""
    progress = progress or NullProgress()
    source, out = Path(source), Path(out)
    timings, started = {}, time.perf_counter()
    catalogue = begin_pretraining(config, progress)
    tokenizer, clip, vae = tiny_sources(source)
    vae.register_to_config(shift_factor=0.0)  # FLUX's pipelines undo (z − shift)·scale
    parts = FluxComponents(vae, clip, tokenizer, build_tiny_t5(tokenizer, config.seed), tokenizer,
                           build_tiny_flux(vae, clip.config.hidden_size, config.seed),
                           FlowMatchEulerDiscreteScheduler(shift=1.0), max_sequence_length=tokenizer.model_max_length)
    frozen = FrozenFlux(parts, torch.device("cpu"), torch.float32)
    clock = time.perf_counter()
    transformer = pretrain_transformer(catalogue, frozen, config, progress)
    timings["transformer_s"] = time.perf_counter() - clock
    pipeline = FluxPipeline(parts.noise_scheduler, vae, clip, tokenizer, parts.text_encoder_2, tokenizer, transformer)
    with atomic_dir(out / "tiny-flux") as folder:
        pipeline.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    timings["total_s"] = time.perf_counter() - started
    return timings
