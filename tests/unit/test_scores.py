"""Scores for generation: the LAION aesthetic head, CLIP score, win rates."""

import numpy as np
import pytest
import torch

from perfusion_cli.config import EvalGenConfig
from perfusion_cli.errors import CheckpointError
from perfusion_cli.evaluation.gen import EvalPair, Generated, _summarize
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


@torch.no_grad()
def test_clip_score_is_100_times_clamped_cosine():
    scorer = ClipScorer("tiny", torch.device("cpu"))
    images = torch.rand(4, 3, 64, 64)  # already at the tiny CLIP's 64 px: only normalization applies
    prompts = ["linen dress", "wool hoodie", "red silk skirt", "leather handbag"]
    # written independently of the scorer: transformers' own feature functions, OpenAI's pixel statistics
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    tokens = scorer.tokenizer(prompts, padding="max_length", max_length=scorer.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt")
    text = scorer.clip.get_text_features(**tokens).pooler_output
    image = scorer.clip.get_image_features(pixel_values=(images - mean) / std).pooler_output
    cosine = torch.nn.functional.cosine_similarity(text, image, dim=-1)
    assert (cosine < 0).any() or (cosine > 0).all()
    assert torch.allclose(scorer.clip_score(prompts, images), 100 * cosine.clamp(min=0), atol=1e-4)
    assert torch.allclose(scorer.clip_score(prompts, images)[cosine < 0], torch.zeros(int((cosine < 0).sum())))


def test_win_rate_is_the_share_of_pairs_where_personalized_scores_higher():
    pairs = [EvalPair(m, "p", [0], torch.zeros(0)) for m in "abcd"]
    result = Generated(scores={"oracle": {"base": np.array([[1.0, 1.0], [0.0, 0.0], [2.0, 2.0], [0.0, 0.0]]),
                                          "perfusion": np.array([[2.0, 0.5], [1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])}})
    summary = _summarize(result, {"clip": "why not"}, pairs, EvalGenConfig(n_per_prompt=2))
    # per-pair means: base 1, 0, 2, 0; perfusion 1.25, 1, 1, 0 → wins on pairs a and b of 4
    assert summary["win_rate"]["oracle"] == pytest.approx(0.5)
    assert summary["models"]["perfusion"]["oracle"] == pytest.approx(3.25 / 4)
    assert summary["models"]["base"]["clip"] is None and summary["unavailable"] == {"clip": "why not"}
    # gains 0.25, 1, -1, 0 (mean 0.0625): merchants resampled, the interval brackets the gain and the win rate
    oracle = summary["intervals"]["oracle"]
    (low, high), (win_low, win_high) = oracle["gain_interval"], oracle["win_rate_interval"]
    assert oracle["gain"] == pytest.approx(0.0625) and -1 <= low < 0.0625 < high <= 1 and 0 <= win_low < 0.5 < win_high <= 1
    assert set(summary["intervals"]) == {"oracle"}, "no interval for a metric that was not measured"
    # the same four pairs from one merchant: resampling merchants cannot move them
    one = _summarize(result, {}, [EvalPair("a", "p", [0], torch.zeros(0)) for _ in range(4)], EvalGenConfig(n_per_prompt=2))
    assert one["intervals"]["oracle"] == {"gain": 0.0625, "gain_interval": [0.0625, 0.0625],
                                          "win_rate_interval": [0.5, 0.5]}


def test_frechet_distance_equals_clean_fids_formula_and_survives_rank_deficiency():
    from cleanfid.fid import frechet_distance as clean_fid_distance

    from perfusion_cli.evaluation.fid import frechet_distance

    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(300, 16)), rng.normal(size=(200, 16)) * 1.3 + 0.2
    expected = clean_fid_distance(first.mean(0), np.cov(first, rowvar=False), second.mean(0),
                                  np.cov(second, rowvar=False))
    assert frechet_distance(first, second) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(first, first) == pytest.approx(0.0, abs=1e-6)
    # fewer images than feature dimensions (any small CLIP-feature evaluation): finite, and fast
    value = frechet_distance(rng.normal(size=(4, 768)), rng.normal(size=(6, 768)))
    assert np.isfinite(value) and value > 0
