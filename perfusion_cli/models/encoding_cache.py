"""What the frozen parts encode for a step: candidates' VAE latents and prompts' text conditions, each encoded once
per batch and, when the run caches them (``cache_latents``), once per run (per (session, candidate) and per prompt).

What ``FrozenSD`` and the flow transformers' ``FrozenTransformer`` share: both define ``encode_pixels`` (pixels in
[−1, 1] → their scaled latents), ``encode_text`` (distinct prompts → their conditions, counting truncations) and
``text_encoders``, and set ``cache``, ``_latents``, ``_texts``, ``device`` and ``dtype``.

A run that never encodes a prompt (its text stored by ``prepare --latents``) frees the text encoders after the
stored text's fingerprint is checked (``release_text_encoders``): FLUX's and SD 3.5's T5-XXL is 9.5 GB in bf16.
"""

from __future__ import annotations

import torch


class CachedEncodings:
    cache: bool
    _latents: dict
    _texts: dict
    released = False  # release_text_encoders was called

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

    def release_text_encoders(self) -> None:
        """Free the text encoders' memory (their weights move to the meta device); ``text`` refuses afterwards."""
        for module in self.text_encoders:
            module.to("meta")
        self.released = True

    @torch.no_grad()
    def text(self, prompts: list[str]):
        """The prompts' conditions, one row per prompt, each distinct prompt encoded once (with ``cache``, once per
        run); without sizes (``TextConditions.sized`` adds SDXL's)."""
        missing = sorted({p for p in prompts if p not in self._texts}) if self.cache else sorted(set(prompts))
        encoded = {}
        if missing and self.released:
            raise RuntimeError("the text encoders were released (the run trains on stored text): no prompt can be "
                               "encoded")
        if missing:
            conditions = self.encode_text(missing)
            encoded = {prompt: conditions[i:i + 1] for i, prompt in enumerate(missing)}
            if self.cache:
                self._texts.update(encoded)
        rows = [encoded[p] if p in encoded else self._texts[p] for p in prompts]
        return rows[0].cat(rows)
