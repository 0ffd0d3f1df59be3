"""The frozen Stable-Diffusion parts PerFusion trains against: latents, text embeddings, predictions.

``predictions`` gives the personalized ε_θ (frozen U-Net + the branch's residuals, gradients only
into the branch) and the reference ε_ref (the frozen U-Net alone) on the same noisy latents. With
``share_encoder`` the U-Net's encoder half runs once for both (``unet_halves``). Text is a
``TextConditions`` (one encoder's hidden states; for SDXL both encoders', the pooled embedding and the
size conditions), so every call below is the same for SD 1.x/2.x and SDXL.
"""

from __future__ import annotations

import hashlib

import torch

from perfusion_cli.errors import ConfigError
from perfusion_cli.models.backbones import SDComponents, load_sd
from perfusion_cli.models.branch_kinds import create_branch
from perfusion_cli.models.encoding_cache import CachedEncodings
from perfusion_cli.models.text import TextConditions, encode_ids, encode_prompts
from perfusion_cli.models.unet_halves import decode, encode, supports_split

# the U-Net keyword arguments of a branch that only adds residuals (decode's order)
RESIDUALS = ("down_block_additional_residuals", "mid_block_additional_residual")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}


def set_attention(sd: SDComponents, attention: str) -> None:
    """SDPA is diffusers' default on torch 2; xFormers when asked for and installed."""
    if attention == "xformers":
        try:
            import xformers  # noqa: F401
        except ImportError:
            raise ConfigError("attention 'xformers' needs xformers: pip install 'perfusion[gpu]'") from None
        sd.unet.enable_xformers_memory_efficient_attention()
        sd.vae.enable_xformers_memory_efficient_attention()


def weights_digest(*modules: torch.nn.Module, rounded_to: torch.dtype | None = None) -> str:
    """SHA-256 of modules' weights (names, dtypes, shapes, bytes): which VAE or text encoders made a latent.
    ``rounded_to``: of the weights cast to that dtype (the same digest whichever precision they were loaded in)."""
    digest = hashlib.sha256()
    for position, module in enumerate(modules):
        prefix = f"{position}." if position else ""  # one module: the digest it always had
        for name, tensor in sorted(module.state_dict().items()):
            tensor = tensor if rounded_to is None or not tensor.is_floating_point() else tensor.to(rounded_to)
            digest.update(f"{prefix}{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def vae_dtype(sd: SDComponents, dtype: torch.dtype) -> torch.dtype:
    """SDXL's VAE overflows in fp16: when its config says ``force_upcast`` it runs in fp32, as in diffusers' SDXL
    pipeline (a fixed VAE, e.g. madebyollin/sdxl-vae-fp16-fix in the base's ``vae/``, says false and stays fp16).
    SD 1.x configs carry the flag by default and are left alone, as diffusers' SD pipeline does."""
    upcast = sd.is_sdxl and dtype == torch.float16 and getattr(sd.vae.config, "force_upcast", False)
    return torch.float32 if upcast else dtype


class FrozenSD(CachedEncodings):
    text_conditions = TextConditions  # what stored text embeddings (prepare --latents) are read back as

    def __init__(self, sd: SDComponents, device: torch.device, dtype: torch.dtype, share_encoder: bool,
                 cache: bool):
        self.sd = sd
        for module in sd.frozen_modules:
            module.requires_grad_(False).eval().to(device)
            wanted = vae_dtype(sd, dtype) if module is sd.vae else dtype
            if module.dtype != wanted:
                module.to(dtype=wanted)
        self.device, self.dtype = device, dtype
        self.latent_scale = 2 ** (len(sd.vae.config.block_out_channels) - 1)  # pixels per latent cell
        self.share_encoder = share_encoder and supports_split(sd.unet)  # and a branch that allows it
        self.cache = cache
        self._latents: dict[tuple[str, int], torch.Tensor] = {}
        self._texts: dict[str, TextConditions] = {}
        self.truncated_prompts = 0
        self.fingerprints: dict[str, str] = {}  # set by ``load(fingerprints=True)``

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return self.sd.text_encoders

    @classmethod
    def load(cls, base_model: str, device: torch.device, mixed_precision: str = "no", attention: str = "sdpa",
             share_encoder: bool = True, cache: bool = False, resolution: int | None = None,
             fingerprints: bool = False) -> "FrozenSD":
        """``fingerprints``: also hash the VAE's and text encoder's weights as loaded (before any cast), which
        stored latents are checked against."""
        sd = load_sd(base_model)
        set_attention(sd, attention)
        prints = ({"vae": weights_digest(sd.vae), "text_encoder": weights_digest(*sd.text_encoders)} if fingerprints
                  else {})
        frozen = cls(sd, device, DTYPES[mixed_precision], share_encoder, cache)
        if resolution is not None:
            frozen.check_resolution(resolution)
        frozen.fingerprints = prints
        return frozen

    def check_resolution(self, resolution: int) -> None:
        if resolution % self.latent_scale:
            raise ConfigError(f"resolution {resolution} must be a multiple of {self.latent_scale} for this VAE")

    @property
    def latent_channels(self) -> int:
        return self.sd.unet.config.in_channels

    @property
    def text_lengths(self) -> list[int]:
        """Tokens per text encoder (CLIP's 77; fewer for the tiny ones)."""
        return [min(77, encoder.config.max_position_embeddings) for encoder in self.sd.text_encoders]

    def create_branch(self, config, vocab, base_model: str):
        """``config.branch``'s kind, attached to the frozen U-Net."""
        return create_branch(config, self.sd.unet, vocab, base_model)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [−1, 1] → scaled latent means [N, 4, h, w] (in the VAE's dtype)."""
        return self.sd.vae.encode(pixels).latent_dist.mean * self.sd.vae.config.scaling_factor

    def text_from_ids(self, ids: list[torch.Tensor]) -> TextConditions:
        """Token ids, one tensor per text encoder → conditions without sizes."""
        return encode_ids(self.sd.text_encoders, ids)

    def encode_text(self, prompts: list[str]) -> TextConditions:
        """Distinct prompts' conditions (``text`` is what callers use: it encodes each prompt once)."""
        conditions, truncated = encode_prompts(self.sd.tokenizers, self.sd.text_encoders, prompts)
        self.truncated_prompts += truncated
        return conditions

    def predictions(self, branch, noisy, timesteps, text: TextConditions, features) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε_θ with gradients into ``branch``, ε_ref without); ``branch`` is any branch kind."""
        unet = self.sd.unet
        extra = branch(noisy, timesteps, text, features=features)
        if self.share_encoder and set(extra) == set(RESIDUALS):  # the branch only adds to skips and middle block
            with torch.no_grad():
                encoding = encode(unet, noisy, timesteps, text)
                reference = decode(unet, encoding)
            return decode(unet, encoding, *(extra[key] for key in RESIDUALS)), reference
        with torch.no_grad():
            reference = unet(noisy, timesteps, **text.unet_kwargs()).sample
        return unet(noisy, timesteps, **text.unet_kwargs(), **extra).sample, reference

    def full_predictions(self, policy_unet, noisy, timesteps, text: TextConditions,
                              features) -> tuple[torch.Tensor, torch.Tensor]:
        """Diffusion-DPO as its authors train it: a trainable copy of the whole U-Net is the policy."""
        with torch.no_grad():
            reference = self.sd.unet(noisy, timesteps, **text.unet_kwargs()).sample
        return policy_unet(noisy, timesteps, **text.unet_kwargs()).sample, reference
