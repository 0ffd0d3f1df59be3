"""FID with clean-fid, offline (DESIGN §6).

clean-fid downloads its Inception weights on first use, which fails without a network. So FID runs
on one of two feature extractors, always named in the result:

- ``inception``: clean-fid's own TorchScript Inception, from a local copy of
  ``inception-2015-12-05.pt`` passed as ``--fid-inception PATH`` — comparable with published FIDs;
- ``clip``: the image tower of the evaluation CLIP model — a Fréchet distance in CLIP feature space
  (as in Kynkäänniemi et al. 2023), comparable only with numbers computed the same way.

clean-fid reads and resizes the images and extracts the features (``get_folder_features``, its
"clean" mode). The distance itself is computed here with the symmetric form
``Tr(√(Σ₁^½ Σ₂ Σ₁^½))`` through eigendecompositions, which equals clean-fid's ``sqrtm(Σ₁Σ₂)`` but
stays fast and stable when the covariances are rank-deficient (fewer images than feature
dimensions, as in any small evaluation with 768-dim CLIP features): there scipy's ``sqrtm`` took
over ten minutes for one 768×768 matrix.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
    features = []
    quiet = io.StringIO()
    for folder in (generated, reference):
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            features.append(fid.get_folder_features(str(folder), extractor, num_workers=0, batch_size=32,
                                                    device=device, mode="clean", verbose=False))
    if min(len(f) for f in features) < 2:
        raise CheckpointError(f"FID needs at least 2 images on each side (got {len(features[0])} generated, "
                              f"{len(features[1])} reference)")
    return FidResult(frechet_distance(*features), name, len(features[0]), len(features[1]))


def frechet_distance(first: np.ndarray, second: np.ndarray) -> float:
    """‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2·√(Σ₁^½ Σ₂ Σ₁^½)) between two feature sets [N, D]."""
    mu1, mu2 = first.mean(0), second.mean(0)
    sigma1, sigma2 = np.cov(first, rowvar=False), np.cov(second, rowvar=False)
    values, vectors = np.linalg.eigh(sigma1)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_mean = np.sqrt(np.clip(inner, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_mean)
