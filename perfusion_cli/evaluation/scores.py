"""Per-image scores for generation evaluation (DESIGN §6).

- CLIP score: 100 · max(cos(text, image), 0) with a CLIP model of the user's choice.
- Aesthetic: the LAION improved-aesthetic-predictor head, an MLP over L2-normalized CLIP ViT-L/14
  image embeddings, loaded from its weights file (``.pth`` via ``torch.load(weights_only=True``, or
  safetensors); buildable with random weights for tests.
- PerFusionRM: the trained reward model on (merchant, prompt, image).
- Oracle: the synthetic marketplace's hidden taste (only on synthetic data).

Every scorer takes images as [N, 3, H, W] floats in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from perfusion_cli.errors import CheckpointError
from perfusion_cli.models.backbones import clip_pixels, load_clip, tokenize


class ClipScorer:
    def __init__(self, model_name: str, device: torch.device):
        self.name = model_name
        self.clip, self.tokenizer = load_clip(model_name)
        self.clip = self.clip.to(device).eval()
        self.size = self.clip.config.vision_config.image_size
        self.device = device

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm projected image embeddings [N, P]."""
        output = self.clip.get_image_features(pixel_values=clip_pixels(images.to(self.device), self.size))
        output = output if isinstance(output, torch.Tensor) else output.pooler_output
        return nn.functional.normalize(output.float(), dim=-1)

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        ids, mask, _ = tokenize(self.tokenizer, prompts)
        output = self.clip.get_text_features(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        output = output if isinstance(output, torch.Tensor) else output.pooler_output
        return nn.functional.normalize(output.float(), dim=-1)

    def clip_score(self, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        """[N] CLIP scores for N (prompt, image) pairs."""
        cosine = (self.text_embeddings(prompts) * self.image_embeddings(images)).sum(-1)
        return 100.0 * cosine.clamp(min=0)


class AestheticHead(nn.Module):
    """LAION improved-aesthetic-predictor: Linear(768,1024)→Dropout→Linear(1024,128)→Dropout→
    Linear(128,64)→Dropout→Linear(64,16)→Linear(16,1), no activations; ``layers`` keys as in its .pth."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                    nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, normalized_embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(normalized_embeddings).squeeze(-1)

    @classmethod
    def from_file(cls, path: str | Path) -> "AestheticHead":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"aesthetic weights not found: {path}")
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise CheckpointError(f"{path} is not a plain weights file (loaded with weights_only=True): "
                                      f"{type(exc).__name__}") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        dim = state["layers.0.weight"].shape[1] if "layers.0.weight" in state else 768
        head = cls(dim)
        try:
            head.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"{path} does not hold the LAION aesthetic head: {str(exc).splitlines()[0]}") from None
        return head.eval()


class AestheticScorer:
    def __init__(self, head: AestheticHead, clip: ClipScorer):
        expected = head.layers[0].in_features
        actual = clip.clip.config.projection_dim
        if expected != actual:
            raise CheckpointError(f"the aesthetic head expects {expected}-dim CLIP image embeddings (ViT-L/14), "
                                  f"the CLIP model {clip.name!r} gives {actual}")
        self.head = head.to(clip.device)
        self.clip = clip

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.clip.image_embeddings(images)).float()
