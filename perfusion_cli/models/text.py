"""What a prompt gives a Stable-Diffusion U-Net, for one text encoder (SD 1.x/2.x) or two (SDXL).

SD 1.x/2.x cross-attend to the last hidden state of one CLIP text encoder. SDXL cross-attends to the
penultimate hidden states of both of its encoders, concatenated along the width, and adds a
``text_time`` condition to the time embedding: the second encoder's pooled, projected embedding and six
micro-conditioning numbers (``original_size``, ``crops_coords_top_left``, ``target_size``). Training
images are resized to the run's resolution without cropping, so those are (r, r, 0, 0, r, r).

``TextConditions`` carries all of it through batching, caching, indexing by candidate and classifier-free
guidance; ``unet_kwargs`` is how it reaches any U-Net or ControlNet call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from perfusion_cli.models.backbones import tokenize


@dataclass
class TextConditions:
    hidden: torch.Tensor  # [B, L, d] the token embeddings cross-attention reads
    pooled: torch.Tensor | None = None  # [B, p] SDXL: the second encoder's projected embedding
    time_ids: torch.Tensor | None = None  # [B, 6] SDXL: original size, crop corner, target size

    def __len__(self) -> int:
        return len(self.hidden)

    def __getitem__(self, index) -> "TextConditions":
        return type(self)(self.hidden[index], _maybe(self.pooled, lambda t: t[index]),
                          _maybe(self.time_ids, lambda t: t[index]))

    def to(self, device=None, dtype=None) -> "TextConditions":
        return type(self)(self.hidden.to(device, dtype), _maybe(self.pooled, lambda t: t.to(device, dtype)),
                          _maybe(self.time_ids, lambda t: t.to(device, dtype)))

    @classmethod
    def cat(cls, parts: list["TextConditions"]) -> "TextConditions":
        first = parts[0]
        return cls(torch.cat([p.hidden for p in parts]),
                   None if first.pooled is None else torch.cat([p.pooled for p in parts]),
                   None if first.time_ids is None else torch.cat([p.time_ids for p in parts]))

    def zeros_like(self) -> "TextConditions":
        """SDXL's unconditional input (``force_zeros_for_empty_prompt``): zero embeddings, same sizes."""
        return type(self)(torch.zeros_like(self.hidden), _maybe(self.pooled, torch.zeros_like), self.time_ids)

    def sized(self, height: int, width: int) -> "TextConditions":
        """With SDXL's micro-conditioning for an uncropped ``height`` × ``width`` image (no-op for SD 1.x)."""
        if self.pooled is None:
            return self
        ids = torch.tensor([height, width, 0, 0, height, width], dtype=self.hidden.dtype, device=self.hidden.device)
        return TextConditions(self.hidden, self.pooled, ids.expand(len(self.hidden), 6))

    def unet_kwargs(self) -> dict:
        """The text arguments of a ``UNet2DConditionModel`` or ``ControlNetModel`` call."""
        if self.pooled is None:
            return {"encoder_hidden_states": self.hidden}
        if self.time_ids is None:
            raise ValueError("SDXL text conditions need the image size: call .sized(height, width) first")
        return {"encoder_hidden_states": self.hidden,
                "added_cond_kwargs": {"text_embeds": self.pooled, "time_ids": self.time_ids}}


def _maybe(tensor, apply):
    return None if tensor is None else apply(tensor)


def encode_ids(encoders: list, ids: list[torch.Tensor]) -> TextConditions:
    """Token ids (one tensor per encoder) → conditions without sizes: SD's last hidden state, or SDXL's."""
    if len(encoders) == 1:
        return TextConditions(encoders[0](ids[0])[0])
    outputs = [encoder(tokens, output_hidden_states=True) for encoder, tokens in zip(encoders, ids)]
    # penultimate layers of both, side by side; the last encoder's first output is its projected pooled embedding
    return TextConditions(torch.cat([output.hidden_states[-2] for output in outputs], dim=-1), outputs[-1][0])


def encode_prompts(tokenizers: list, encoders: list, prompts: list[str]) -> tuple[TextConditions, int]:
    """Prompts → (conditions without sizes, how many prompts the first tokenizer truncated)."""
    tokenized = [tokenize(tokenizer, prompts) for tokenizer in tokenizers]
    ids = [tokens.to(encoder.device) for (tokens, _, _), encoder in zip(tokenized, encoders)]
    return encode_ids(encoders, ids), tokenized[0][2]
