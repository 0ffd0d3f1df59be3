"""FID with clean-fid, offline (DESIGN §6).

clean-fid downloads its Inception weights on first use, which fails without a network. So FID runs
on one of two feature extractors, always named in the result:

- ``inception``: clean-fid's own TorchScript Inception, from a local copy of
  ``inception-2015-12-05.pt`` passed as ``--fid-inception PATH`` — comparable with published FIDs;
- ``clip``: the image tower of the evaluation CLIP model — a Fréchet distance in CLIP feature space
  (as in Kynkäänniemi et al. 2023), comparable only with numbers computed the same way.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from perfusion_cli.errors import CheckpointError
from perfusion_cli.evaluation.scores import ClipScorer


class ClipFeatures(nn.Module):
    """clean-fid feature extractor: uint8-range float images [B, 3, H, W] → CLIP image features."""

    def __init__(self, scorer: ClipScorer):
        super().__init__()
        self.scorer = scorer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.scorer.image_embeddings(images / 255.0)


@dataclass
class FidResult:
    value: float
    features: str
    generated: int
    reference: int


def inception_extractor(path: str | Path, device: torch.device) -> nn.Module:
    from cleanfid.inception_torchscript import InceptionV3W

    path = Path(path)
    folder = path.parent if path.is_file() else path
    if not (folder / "inception-2015-12-05.pt").is_file():
        raise CheckpointError(f"--fid-inception: no inception-2015-12-05.pt at {path}")
    return InceptionV3W(str(folder), download=False).to(device).eval()


def compute_fid(generated: Path, reference: Path, device: torch.device, clip: ClipScorer | None,
                inception: str | None = None) -> FidResult:
    from cleanfid import fid

    if inception:
        extractor, name = inception_extractor(inception, device), "inception (clean-fid, local weights)"
    elif clip is not None:
        extractor, name = ClipFeatures(clip), f"clip image features of {clip.name} (not Inception)"
    else:
        raise ValueError("FID needs a feature extractor")
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        value = fid.compute_fid(str(generated), str(reference), mode="clean", custom_feat_extractor=extractor,
                                num_workers=0, batch_size=32, device=device, use_dataparallel=False, verbose=False)
    count = lambda folder: sum(1 for f in os.listdir(folder) if f.lower().endswith((".png", ".jpg", ".jpeg")))
    return FidResult(float(value), name, count(generated), count(reference))
