"""Candidates' VAE latents, encoded once per (session, candidate) when the run caches them (``cache_latents``).

What ``FrozenSD`` and the flow transformers' ``FrozenTransformer`` share: both define ``encode_pixels`` (pixels in
[−1, 1] → their scaled latents) and set ``cache``, ``_latents``, ``device`` and ``dtype``.
"""

from __future__ import annotations

import torch


class CachedLatents:
    cache: bool
    _latents: dict

    @torch.no_grad()
    def latents(self, images: torch.Tensor, keys: list[tuple[str, int]] | None = None) -> torch.Tensor:
        """images [N, 3, H, W] in [0, 1] → scaled latent means [N, C, h, w]; with ``cache`` and ``keys``, each key's
        once."""
        cached = self.cache and keys is not None
        missing = [i for i, key in enumerate(keys) if key not in self._latents] if cached else range(len(images))
        fresh = {}
        if len(missing):
            pixels = images[list(missing)].to(self.device, self.sd.vae.dtype) * 2 - 1
            encoded = self.encode_pixels(pixels).to(self.dtype)
            fresh = dict(zip(missing, encoded))
            if cached:
                self._latents.update({keys[i]: fresh[i] for i in missing})
        return torch.stack([fresh[i] if i in fresh else self._latents[keys[i]] for i in range(len(images))])
