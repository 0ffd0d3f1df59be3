"""The Python API: trained models in a few lines, without a workspace or the CLI (which is built on it).

    from perfusion_cli.api import load_generator, load_reward

    merchant = {"merchant_id": "101", "style": "classic", "category": "accessories"}  # a line of merchants.jsonl
    pipe = load_generator("runs/gen")                   # a diffusers DiffusionPipeline
    images = pipe("linen dress", merchant=merchant, generator=torch.Generator().manual_seed(0)).images
    reward = load_reward("runs/rm")
    scores = reward.score(merchant, "linen dress", images)  # one float per image: higher, more to its taste

A merchant is its profile, as the raw logs hold it: ``merchant_id`` plus features. Features the model's
vocabulary does not know are an error; an id or a value it never saw is read as unknown (a cold start from
the rest of the profile).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import torch
from PIL import Image

from perfusion_cli.data.decode import decode, render
from perfusion_cli.data.loader import square_tensor
from perfusion_cli.data.merchants import profile_features
from perfusion_cli.errors import ConfigError
from perfusion_cli.models.merchant import MerchantEncoderModel
from perfusion_cli.models.reward import RewardModel, load_reward_model
from perfusion_cli.pipeline import PerFusionPipeline
from perfusion_cli.pipelines import load_pipeline

ImageLike = Union[Image.Image, str, Path, bytes]

__all__ = ["Reward", "load_generator", "load_merchant_encoder", "load_reward"]


def load_generator(run: str | Path, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> PerFusionPipeline:
    """A ``train-gen`` run (or its ``model/`` folder) as a pipeline (a diffusers one for the U-Nets; the flow
    transformers' takes the same call); call it with ``merchant=`` a profile (or one per prompt), and without one
    for the base model's image from the same seed."""
    return load_pipeline(run, device, dtype)


def load_merchant_encoder(folder: str | Path) -> MerchantEncoderModel:
    """``perfusion export``'s ``merchant_encoder/``: ``.embed([profile])`` is the ``u`` a stock pipeline takes."""
    return MerchantEncoderModel.from_pretrained(folder, use_safetensors=True).eval()


@dataclass
class Reward:
    """PerFusionRM for scoring: ``score(merchant, prompt, images)``."""

    model: RewardModel

    @property
    def device(self) -> torch.device:
        return self.model.module.device

    @torch.no_grad()
    def score(self, merchant: dict, prompt: str, images: Sequence[ImageLike] | torch.Tensor) -> list[float]:
        """The merchant's reward for each image with this prompt. ``images``: PIL images, file paths or encoded
        bytes (decoded as a browser shows them: EXIF rotation, transparency on white), or a [N, 3, H, W] tensor
        in [0, 1]. Each is read as the centred square of its shorter side."""
        pixels = self.pixels(images)
        features = (torch.tensor([profile_features(self.model.vocab, merchant)], device=self.device)
                    if self.model.module.config.plugin else torch.zeros(1, 0, dtype=torch.long, device=self.device))
        scores = self.model.score([prompt], pixels.unsqueeze(0).to(self.device), features)
        return [float(value) for value in scores[0]]

    def pixels(self, images: Sequence[ImageLike] | torch.Tensor) -> torch.Tensor:
        size = self.model.module.image_size
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3:
                raise ConfigError(f"images: a tensor must be [N, 3, H, W] in [0, 1], got {tuple(images.shape)}")
            return images.float()
        if not images:
            raise ConfigError("images: nothing to score")
        return torch.stack([square_tensor(_rgb(image), size) for image in images])


def _rgb(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return render(image)
    if isinstance(image, bytes):
        return decode(image)
    if isinstance(image, (str, Path)):
        return decode(Path(image).read_bytes())
    raise ConfigError(f"images: expected PIL images, paths or bytes, got {type(image).__name__}")


def load_reward(run: str | Path, device: str | torch.device = "cpu") -> Reward:
    """A ``train-rm`` run (or its ``model/`` folder); ``zero-shot:BASE`` for the untouched CLIP or SigLIP."""
    return Reward(load_reward_model(run, device))
