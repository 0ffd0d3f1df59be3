"""Scores for generation: the LAION aesthetic head, CLIP score, win rates."""

import numpy as np
import pytest
import torch

from perfusion_cli.config import EvalGenConfig
from perfusion_cli.errors import CheckpointError
from perfusion_cli.evaluation.generation import EvalPair, Generated, _summarize
from perfusion_cli.evaluation.scores import AestheticHead, AestheticScorer, ClipScorer


def test_aesthetic_head_has_the_laion_layout():
    head = AestheticHead()
    linear = [m for m in head.layers if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(768, 1024), (1024, 128), (128, 64), (64, 16),
                                                                   (16, 1)]
    assert [type(m).__name__ for m in head.layers] == ["Linear", "Dropout", "Linear", "Dropout", "Linear", "Dropout",
                                                       "Linear", "Linear"]
    assert set(head.state_dict()) == {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}


def test_aesthetic_head_loads_a_pth_with_weights_only(tmp_path):
    torch.manual_seed(0)
    head = AestheticHead().eval()
    torch.save(head.state_dict(), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    loaded = AestheticHead.from_file(tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    x = torch.nn.functional.normalize(torch.randn(4, 768), dim=-1)
    assert torch.equal(head(x), loaded(x))
    torch.save({"not": "a head", "code": print}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="is not a plain weights file"):
        AestheticHead.from_file(tmp_path / "evil.pth")
    torch.save({"layers.0.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="does not hold the LAION aesthetic head"):
        AestheticHead.from_file(tmp_path / "other.pth")


def test_aesthetic_head_must_match_the_clip_width(tmp_path):
    clip = ClipScorer("tiny", torch.device("cpu"))
    with pytest.raises(CheckpointError, match="expects 768-dim CLIP image embeddings .* gives 64"):
        AestheticScorer(AestheticHead(), clip)
    scores = AestheticScorer(AestheticHead(64), clip)(torch.rand(3, 3, 64, 64))
    assert scores.shape == (3,)


def test_clip_score_is_100_times_clamped_cosine():
    clip = ClipScorer("tiny", torch.device("cpu"))
    images = torch.rand(4, 3, 64, 64)
    prompts = ["linen dress", "wool hoodie", "red silk skirt", "leather handbag"]
    cosine = (clip.text_embeddings(prompts) * clip.image_embeddings(images)).sum(-1)
    assert torch.allclose(clip.clip_score(prompts, images), 100 * cosine.clamp(min=0))


def test_win_rate_is_the_share_of_pairs_where_personalized_scores_higher():
    pairs = [EvalPair(m, "p", [0], torch.zeros(0)) for m in "abcd"]
    result = Generated(scores={"oracle": {"base": np.array([[1.0, 1.0], [0.0, 0.0], [2.0, 2.0], [0.0, 0.0]]),
                                          "perfusion": np.array([[2.0, 0.5], [1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])}})
    summary = _summarize(result, {"clip": "why not"}, pairs, EvalGenConfig(n_per_prompt=2))
    # per-pair means: base 1, 0, 2, 0; perfusion 1.25, 1, 1, 0 → wins on pairs a and b of 4
    assert summary["win_rate"]["oracle"] == pytest.approx(0.5)
    assert summary["models"]["perfusion"]["oracle"] == pytest.approx(3.25 / 4)
    assert summary["models"]["base"]["clip"] is None and summary["unavailable"] == {"clip": "why not"}
