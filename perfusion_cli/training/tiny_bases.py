"""``perfusion pretrain-base``: train the tiny backbones on the synthetic catalogue, once.

An untrained tiny diffusion model draws noise, and an untrained CLIP knows nothing, so the embedded
default needs small bases that have learned the catalogue (every product type, colour and pattern,
with no merchant taste). This trains, in order:

1. a tiny CLIP, contrastively, on (caption, image) pairs — "dark blue striped linen dress";
2. a tiny VAE (64×64×3 ↔ 16×16×4), on reconstruction with a small KL term;
3. a tiny U-Net on cached latents, ε-prediction under SD's schedule, conditioned on the CLIP text
   tower (frozen), with prompts ("linen dress"), captions, and 10% empty text for guidance; an EMA
   of its weights is what is saved.

It writes ``OUT/tiny-clip`` (CLIPModel + tokenizer) and ``OUT/tiny-sd`` (a StableDiffusionPipeline
folder), weights as fp16 safetensors (a few MB). ``--base-model tiny`` loads them. ``--sdxl`` and
``--siglip`` make ``tiny-sdxl`` (``pretrain_sdxl``) and ``tiny-siglip`` (``pretrain_siglip``) beside them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from diffusers.training_utils import EMAModel
from transformers import CLIPModel, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from perfusion_cli.config import BaseTrainConfig
from perfusion_cli.marketplace.drawing import ITEM_MATERIALS, ITEMS, draw, random_design
from perfusion_cli.io import atomic_dir
from perfusion_cli.models.backbones import clip_pixels, tokenize
from perfusion_cli.models.text import TextConditions, encode_prompts
from perfusion_cli.models.tiny import (IMAGE_SIZE, SDXL_TEXT_WIDTH, TEXT_WIDTH, build_tiny_clip, build_tiny_sdxl_unet,
                                       build_tiny_siglip, build_tiny_unet, build_tiny_vae, build_tokenizer,
                                       tiny_noise_scheduler)
from perfusion_cli.models.towers import family_of
from perfusion_cli.progress import NullProgress, Progress


@dataclass
class Catalogue:
    images: np.ndarray  # [N, 64, 64, 3] uint8
    prompts: list[str]
    captions: list[str]

    def tensor(self, index: np.ndarray) -> torch.Tensor:
        """[n, 3, 64, 64] in [0, 1]."""
        return torch.from_numpy(self.images[index]).permute(0, 3, 1, 2).float() / 255.0


def make_catalogue(size: int, seed: int) -> Catalogue:
    rng = np.random.default_rng(seed)
    images, prompts, captions = [], [], []
    for _ in range(size):
        item = ITEMS[int(rng.integers(len(ITEMS)))]
        material = ITEM_MATERIALS[item][int(rng.integers(len(ITEM_MATERIALS[item])))]
        design = random_design(rng, item, material)
        images.append(draw(design, IMAGE_SIZE))
        prompts.append(design.prompt)
        captions.append(design.caption())
    return Catalogue(np.stack(images), prompts, captions)


def cosine_schedule(optimizer: torch.optim.Optimizer, steps: int,
                    warmup: int = 50) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimize_step(loss: torch.Tensor, optimizer, schedule, progress: Progress, clip_norm: float = 0.0) -> None:
    loss.backward()
    if clip_norm:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    progress.advance(1, loss=loss.item())


def pretrain_clip(catalogue: Catalogue, tokenizer, config: BaseTrainConfig, progress: Progress,
                  text_width: int = TEXT_WIDTH):
    return pretrain_towers(build_tiny_clip(tokenizer, seed=config.seed, text_width=text_width), catalogue, tokenizer,
                           config, progress, "tiny CLIP")


def pretrain_towers(model, catalogue: Catalogue, tokenizer, config: BaseTrainConfig, progress: Progress, what: str):
    """Contrastive pre-training on (caption, image) pairs with the family's own loss (CLIP: softmax over the
    batch; SigLIP: pairwise sigmoid), its pixel normalization and its text masking."""
    family = family_of(model.config.to_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)
    schedule = cosine_schedule(optimizer, config.clip_steps)
    rng = np.random.default_rng(config.seed + 1)
    progress.start(f"pre-training {what}", config.clip_steps)
    for _ in range(config.clip_steps):
        index = rng.choice(len(catalogue.images), size=config.batch_size * 2, replace=False)
        ids, mask, _ = tokenize(tokenizer, [catalogue.captions[i] for i in index])
        pixels = clip_pixels(catalogue.tensor(index), IMAGE_SIZE, family.pixel_mean, family.pixel_std)
        masking = {"attention_mask": mask} if family.text_mask else {}
        loss = model(input_ids=ids, pixel_values=pixels, return_loss=True, **masking).loss
        optimize_step(loss, optimizer, schedule, progress)
    progress.stop()
    return model.eval()


def pretrain_vae(catalogue: Catalogue, config: BaseTrainConfig, progress: Progress):
    vae = build_tiny_vae(seed=config.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = cosine_schedule(optimizer, config.vae_steps)
    rng = np.random.default_rng(config.seed + 2)
    progress.start("pre-training tiny VAE", config.vae_steps)
    for _ in range(config.vae_steps):
        x = catalogue.tensor(rng.choice(len(catalogue.images), size=config.batch_size // 2, replace=False)) * 2 - 1
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(reconstruction, x) + F.mse_loss(reconstruction, x) + 1e-6 * posterior.kl().mean()
        optimize_step(loss, optimizer, schedule, progress)
    progress.stop()
    vae.eval()
    with torch.no_grad():
        sample = catalogue.tensor(np.arange(min(512, len(catalogue.images)))) * 2 - 1
        latents = vae.encode(sample).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae


def pretrain_denoiser(catalogue: Catalogue, model: torch.nn.Module, latents_of: Callable, text_of: Callable,
                      loss_of: Callable, config: BaseTrainConfig, progress: Progress, what: str, seed: int):
    """What the tiny U-Net's and the tiny transformer's pre-training share: the catalogue's latents
    (``latents_of(images in [0, 1])``) and texts (``text_of(texts)``, prompts, captions and the empty text)
    cached once, then ``config.unet_steps`` AdamW steps on batches whose text is the prompt (45 %), the caption
    (45 %) or empty (10 %, for guidance), of ``loss_of(x0, conditions, generator)``; the EMA of the weights is kept."""
    with torch.no_grad():
        latents = torch.cat([latents_of(catalogue.tensor(np.arange(i, min(i + 256, len(catalogue.images)))))
                             for i in range(0, len(catalogue.images), 256)])
        texts = sorted({"", *catalogue.prompts, *catalogue.captions})
        parts = [text_of(texts[i:i + 256]) for i in range(0, len(texts), 256)]
        conditions = type(parts[0]).cat(parts)
    row = {text: i for i, text in enumerate(texts)}
    prompt_rows = torch.tensor([row[p] for p in catalogue.prompts])
    caption_rows = torch.tensor([row[c] for c in catalogue.captions])
    ema = EMAModel(model.parameters(), decay=0.999)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    schedule = cosine_schedule(optimizer, config.unet_steps, warmup=200)
    generator = torch.Generator().manual_seed(seed)
    progress.start(f"pre-training {what}", config.unet_steps)
    for _ in range(config.unet_steps):
        index = torch.randint(len(latents), (config.batch_size,), generator=generator)
        choice = torch.rand(config.batch_size, generator=generator)
        text = torch.where(choice < 0.45, prompt_rows[index], caption_rows[index])
        text = torch.where(choice > 0.9, torch.full_like(text, row[""]), text)
        optimize_step(loss_of(latents[index], conditions[text], generator), optimizer, schedule, progress,
                      clip_norm=1.0)
        ema.step(model.parameters())
    progress.stop()
    ema.copy_to(model.parameters())
    return model.eval()


def pretrain_unet(catalogue: Catalogue, vae, unet, encode: Callable[[list[str]], TextConditions],
                  config: BaseTrainConfig, progress: Progress):
    """ε-prediction on the catalogue's cached latents; ``encode`` gives the text conditions of a list of texts."""
    scheduler = tiny_noise_scheduler()

    def loss(x0: torch.Tensor, text: TextConditions, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(x0.shape, generator=generator)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (len(x0),), generator=generator)
        noisy = scheduler.add_noise(x0, noise, timesteps)
        return F.mse_loss(unet(noisy, timesteps, **text.unet_kwargs()).sample, noise)

    latents_of = lambda images: vae.encode(images * 2 - 1).latent_dist.mean * vae.config.scaling_factor  # noqa: E731
    unet = pretrain_denoiser(catalogue, unet, latents_of, encode, loss, config, progress, "tiny U-Net",
                             config.seed + 3)
    return unet, scheduler


def text_encoder_from_clip(clip) -> CLIPTextModel:
    """The CLIP text tower as a standalone ``CLIPTextModel`` (what SD uses as its text encoder)."""
    encoder = CLIPTextModel(clip.text_model.config)
    encoder.load_state_dict(clip.text_model.state_dict())
    return encoder.eval()


def begin_pretraining(config: BaseTrainConfig, progress: Progress) -> Catalogue:
    """What every pre-training run starts with: threads, the seed, the catalogue drawn."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    progress.start("drawing the catalogue", None)
    catalogue = make_catalogue(config.images, config.seed)
    progress.stop()
    return catalogue


def pretrain_base(out: str | Path, config: BaseTrainConfig, progress: Progress | None = None) -> dict:
    """Train and save the tiny bases; returns timings and final losses."""
    progress = progress or NullProgress()
    out = Path(out)
    started = time.perf_counter()
    catalogue = begin_pretraining(config, progress)
    tokenizer = build_tokenizer()
    timings = {}
    clock = time.perf_counter()
    clip = pretrain_clip(catalogue, tokenizer, config, progress)
    timings["clip_s"] = time.perf_counter() - clock
    with atomic_dir(out / "tiny-clip") as folder:
        clip.to(torch.float16).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    clip.float()
    clock = time.perf_counter()
    vae = pretrain_vae(catalogue, config, progress)
    timings["vae_s"] = time.perf_counter() - clock
    text_encoder = text_encoder_from_clip(clip)
    clock = time.perf_counter()
    unet = build_tiny_unet(text_encoder.config.hidden_size, seed=config.seed)
    unet, scheduler = pretrain_unet(catalogue, vae, unet, lambda texts: encode_prompts([tokenizer], [text_encoder], texts)[0],
                                    config, progress)
    timings["unet_s"] = time.perf_counter() - clock
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler.from_config(scheduler.config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    with atomic_dir(out / "tiny-sd") as folder:
        pipeline.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    timings["total_s"] = time.perf_counter() - started
    return timings


def text_encoder_with_projection(clip) -> CLIPTextModelWithProjection:
    """The CLIP text tower and its projection (SDXL's second encoder, whose projection is the pooled embedding)."""
    config = clip.text_model.config
    config.projection_dim = clip.config.projection_dim
    encoder = CLIPTextModelWithProjection(config)
    encoder.text_model.load_state_dict(clip.text_model.state_dict())
    encoder.text_projection.load_state_dict(clip.text_projection.state_dict())
    return encoder.eval()


def warm_start(unet, source) -> int:
    """Copy every weight of ``source`` whose name and size ``unet`` shares (reshaped: SDXL's linear projections
    hold SD's 1×1 convolutions); returns how many tensors were copied."""
    own, copied = unet.state_dict(), 0
    for name, tensor in source.state_dict().items():
        if name in own and own[name].numel() == tensor.numel() and own[name].dim() in (tensor.dim(), tensor.dim() - 2):
            own[name].copy_(tensor.reshape(own[name].shape))
            copied += 1
    return copied


def tiny_sources(source: Path) -> tuple[CLIPTokenizer, CLIPTextModel, AutoencoderKL]:
    """What the tiny SDXL and FLUX bases start from: the tiny CLIP's tokenizer and text tower, the tiny SD VAE."""
    tokenizer = CLIPTokenizer.from_pretrained(source / "tiny-clip")
    text = text_encoder_from_clip(CLIPModel.from_pretrained(source / "tiny-clip", dtype=torch.float32))
    vae = AutoencoderKL.from_pretrained(source / "tiny-sd", subfolder="vae", torch_dtype=torch.float32).eval()
    return tokenizer, text, vae


def pretrain_sdxl(out: str | Path, config: BaseTrainConfig, source: str | Path, progress: Progress | None = None) -> dict:
    """The tiny SDXL-architecture base, beside the tiny SD one in ``source`` (its ``tiny-clip`` and ``tiny-sd``).

    SDXL's first encoder is the tiny CLIP's text tower (as SDXL's is SD 1.5's CLIP ViT-L text tower); its second
    a wider tiny CLIP trained here contrastively (``clip_steps``), whose projection gives the pooled embedding; its
    VAE the tiny one (SDXL's VAE has SD's architecture). The U-Net has SDXL's conditioning (``build_tiny_sdxl_unet``),
    is warm-started from the tiny SD U-Net where their layouts agree, and trained as ``pretrain_unet`` does, with
    the empty text as zeros (``force_zeros_for_empty_prompt``, as SDXL's pipeline does for guidance)."""
    progress = progress or NullProgress()
    source, out = Path(source), Path(out)
    timings, started = {}, time.perf_counter()
    catalogue = begin_pretraining(config, progress)
    tokenizer, first, vae = tiny_sources(source)
    clock = time.perf_counter()
    second = text_encoder_with_projection(pretrain_clip(catalogue, tokenizer, config, progress, SDXL_TEXT_WIDTH))
    timings["clip_2_s"] = time.perf_counter() - clock
    tokenizers, encoders = [tokenizer, tokenizer], [first, second]

    def encode(texts: list[str]) -> TextConditions:
        conditions = encode_prompts(tokenizers, encoders, texts)[0]
        empty = torch.tensor([text == "" for text in texts])
        conditions.hidden[empty], conditions.pooled[empty] = 0.0, 0.0
        return conditions.sized(IMAGE_SIZE, IMAGE_SIZE)

    unet = build_tiny_sdxl_unet(TEXT_WIDTH + SDXL_TEXT_WIDTH, SDXL_TEXT_WIDTH, seed=config.seed)
    base = UNet2DConditionModel.from_pretrained(source / "tiny-sd", subfolder="unet", torch_dtype=torch.float32)
    timings["warm_started_tensors"] = warm_start(unet, base)
    clock = time.perf_counter()
    unet, scheduler = pretrain_unet(catalogue, vae, unet, encode, config, progress)
    timings["unet_s"] = time.perf_counter() - clock
    pipeline = StableDiffusionXLPipeline(
        vae=vae, text_encoder=first, text_encoder_2=second, tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(scheduler.config), force_zeros_for_empty_prompt=True)
    with atomic_dir(out / "tiny-sdxl") as folder:
        pipeline.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    timings["total_s"] = time.perf_counter() - started
    return timings


def pretrain_siglip(out: str | Path, config: BaseTrainConfig, source: str | Path,
                    progress: Progress | None = None) -> dict:
    """The tiny SigLIP (``--base-model tiny-siglip``, a reward-model base): the tiny CLIP's sizes and tokenizer (from
    ``source``'s ``tiny-clip``), trained on the same catalogue with SigLIP's sigmoid loss (``clip_steps``)."""
    progress = progress or NullProgress()
    out, started = Path(out), time.perf_counter()
    catalogue = begin_pretraining(config, progress)
    tokenizer = CLIPTokenizer.from_pretrained(Path(source) / "tiny-clip")
    siglip = pretrain_towers(build_tiny_siglip(tokenizer, seed=config.seed), catalogue, tokenizer, config, progress,
                             "tiny SigLIP")
    with atomic_dir(out / "tiny-siglip") as folder:
        siglip.to(torch.float16).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return {"siglip_s": time.perf_counter() - started}
