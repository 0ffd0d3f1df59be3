"""What the flow-matching transformers' frozen parts share (FLUX.1: ``frozen_flux.py``; SD 3.5: ``frozen_sd3.py``).

The same calls as ``frozen_sd.FrozenSD`` — what the objective calls (``latents``, ``text``, ``predictions``) and
what ``bench --plan`` traces (``encode_pixels``, ``text_from_ids``, ``text_lengths``, ``latent_channels``,
``create_branch``), with ``sd.noise_scheduler`` a ``FlowMatchEulerDiscreteScheduler`` (so ``noise.noise_process``
gives rectified flow). Shared here: the 16-channel VAE's latents, (z − shift_factor)·scaling_factor as both
families' pipelines undo them; the merchant adapter on the joint attention (the family names its class); and
``predictions`` from the family's ``velocity``. A family file adds its text encoders (``text_from_ids``,
``text``, ``text_lengths``) and its transformer call (``velocity``), and says whether classifier-free guidance
doubles its batch (``guided_by_batch``: SD 3.5) or the guidance is an embedded number (FLUX.1-dev).
"""

from __future__ import annotations

import torch

from perfusion_cli.errors import ConfigError
from perfusion_cli.models.backbones import load_part, resolve
from perfusion_cli.models.frozen_sd import DTYPES, weights_digest
from perfusion_cli.models.encoding_cache import CachedEncodings
from perfusion_cli.models.text import TextConditions


def part_loader(path: str, dtype: torch.dtype):
    """``load(what, cls, subfolder)``: one component of a diffusers folder (or hub id), from safetensors, in ``dtype``
    (tokenizers and schedulers as they are), with ``backbones.load_part``'s one-line errors."""
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    def load(what: str, cls, subfolder: str):
        if issubclass(cls, ModelMixin):
            kwargs = {"torch_dtype": dtype, "use_safetensors": True}
        elif issubclass(cls, PreTrainedModel):
            kwargs = {"dtype": dtype, "use_safetensors": True}
        else:
            kwargs = {}
        return load_part(what, path, cls.from_pretrained, path, subfolder=subfolder, **kwargs)

    return load


class JointText(TextConditions):
    """A flow transformer's text: ``hidden`` the text stream's tokens, ``pooled`` the pooled embedding. No size
    conditions (``sized`` leaves it as it is)."""

    def sized(self, height: int, width: int) -> "JointText":
        return self


class FrozenTransformer(CachedEncodings):
    adapter: type  # the family's merchant adapter (``joint_adapter.JointAttentionAdapter``)
    guided_by_batch: bool  # classifier-free guidance runs the prompt and the empty prompt as one batch
    text_conditions = JointText  # what stored text embeddings (prepare --latents) are read back as

    def __init__(self, sd, device: torch.device, dtype: torch.dtype, cache: bool = False):
        self.sd = sd
        for module in sd.frozen_modules:
            module.requires_grad_(False).eval().to(device, dtype)
        self.device, self.dtype = device, dtype
        self.latent_scale = 2 ** (len(sd.vae.config.block_out_channels) - 1)
        self.truncated_prompts = 0
        self.share_encoder = False  # no encoder half: every call runs the whole transformer
        self.fingerprints: dict[str, str] = {}  # set by ``load(fingerprints=True)``
        self.cache, self._latents, self._texts = cache, {}, {}  # cache_latents: each latent and prompt once

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return [module for module in self.sd.frozen_modules if module not in (self.sd.vae, self.sd.transformer)]

    @classmethod
    def components(cls, path: str, dtype: torch.dtype):
        """The family's parts loaded from a diffusers folder or hub id."""
        raise NotImplementedError

    @classmethod
    def load(cls, base_model: str, device: torch.device, mixed_precision: str = "no", attention: str = "sdpa",
             share_encoder: bool = True, cache: bool = False, resolution: int | None = None,
             fingerprints: bool = False) -> "FrozenTransformer":
        """``FrozenSD.load``'s call, for a flow transformer's folder (``families.load_frozen`` picks the class);
        ``fingerprints``: hash the VAE's and the text encoders' weights (what stored latents are checked against)."""
        if attention != "sdpa":
            raise ConfigError(f"--attention {attention}: the flow transformers run diffusers' SDPA attention "
                              f"(--attention sdpa)")
        dtype = DTYPES[mixed_precision]
        frozen = cls(cls.components(resolve(base_model, "sd"), dtype), device, dtype, cache)
        if resolution is not None:
            frozen.check_resolution(resolution)
        if fingerprints:  # loaded in the run's precision (T5-XXL in fp32 is 19 GB): digests of the weights in bf16
            frozen.fingerprints = {"vae": weights_digest(frozen.sd.vae, rounded_to=torch.bfloat16),
                                   "text_encoder": weights_digest(*frozen.text_encoders, rounded_to=torch.bfloat16)}
        return frozen

    def check_resolution(self, resolution: int) -> None:
        if resolution % (2 * self.latent_scale):
            raise ConfigError(f"resolution {resolution} must be a multiple of {2 * self.latent_scale} for this VAE "
                              f"and the transformer's 2×2 patches")

    @property
    def latent_channels(self) -> int:
        return self.sd.vae.config.latent_channels

    def create_branch(self, config, vocab, base_model: str):
        """The merchant adapter on the transformer's joint attention (the one branch kind on transformers so far)."""
        if config.branch != "adapter":
            raise ConfigError(f"--branch {config.branch} is not built for flow transformers yet: use --branch adapter")
        branch = self.adapter.from_transformer(self.sd.transformer, vocab, config.merchant, config.adapter_tokens,
                                               base_model, config.resolution)
        branch.attach(self.sd.transformer)
        if config.gradient_checkpointing:  # gradients flow back through the frozen transformer
            self.sd.transformer.enable_gradient_checkpointing()
        return branch

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [−1, 1] → the transformer's latents [N, 16, h, w] (unpacked): (z − shift)·scale."""
        config = self.sd.vae.config
        mean = self.sd.vae.encode(pixels).latent_dist.mean
        return ((mean - (config.shift_factor or 0.0)) * config.scaling_factor).to(self.dtype)

    def velocity(self, noisy: torch.Tensor, times: torch.Tensor, text: TextConditions, extra: dict | None = None,
                 guidance: float | None = None) -> torch.Tensor:
        """The transformer's velocity at ``noisy`` [N, C, h, w] and noise-process ``times`` [N] (σ·1000); ``extra``:
        a branch's keyword arguments; ``guidance``: an embedded guidance other than the training one."""
        raise NotImplementedError

    def full_predictions(self, policy, noisy, times, text: TextConditions,
                         features) -> tuple[torch.Tensor, torch.Tensor]:
        """Diffusion-DPO as its authors train it (``bench``'s baseline): ``policy``, a trainable copy of the whole
        transformer, in the frozen one's place for one call."""
        with torch.no_grad():
            reference = self.velocity(noisy, times, text)
        frozen, self.sd.transformer = self.sd.transformer, policy
        try:
            return self.velocity(noisy, times, text), reference
        finally:
            self.sd.transformer = frozen

    def predictions(self, branch, noisy, times, text: TextConditions, features) -> tuple[torch.Tensor, torch.Tensor]:
        """(v_θ with gradients into ``branch``, v_ref without)."""
        extra = branch(noisy, times, text, features=features)
        with torch.no_grad():
            reference = self.velocity(noisy, times, text)
        return self.velocity(noisy, times, text, extra), reference
