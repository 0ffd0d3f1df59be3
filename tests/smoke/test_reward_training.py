"""Training PerFusionRM on the tiny synthetic marketplace: it runs, saves, reloads, and personalizes."""

import json

import pytest
import torch

from perfusion_cli.evaluation.rm import evaluate_reward_model
from perfusion_cli.models.reward import load_reward_model
from perfusion_cli.reward_scoring import score_split
from perfusion_cli.training.rm import train_reward_model
from tests.helpers import tiny_config


def test_two_steps_train_save_and_reload_identically(market, tmp_path):
    data_dir, _ = market
    summary = train_reward_model(tiny_config("train-rm", max_steps=2, eval_every=2), data_dir, tmp_path / "rm")
    assert summary["steps"] == 2 and summary["batches_per_process"] == [2]
    assert {"map", "gauc", "loss"} <= set(summary["final"])
    rows = [json.loads(line) for line in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    first = load_reward_model(tmp_path / "rm")
    second = load_reward_model(tmp_path / "rm" / "model")
    a = score_split(first, data_dir, "val").scores
    b = score_split(second, data_dir, "val").scores
    assert len(a) > 0 and (a == b).all()


def test_data_without_validation_groups_trains_and_says_validation_is_skipped(tmp_path):
    from tests.helpers import tiny_market

    manifest = tiny_market(tmp_path / "data", merchants=4, sessions=12, val_fraction=0)
    assert manifest.raw["splits"]["val"]["groups"] == 0
    summary = train_reward_model(tiny_config("train-rm", max_steps=2, eval_every=1), tmp_path / "data", tmp_path / "rm")
    assert summary["steps"] == 2 and "gauc" not in summary["final"]
    rows = [json.loads(line) for line in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in rows if r.get("split") == "val"]


def test_freeze_backbone_moves_only_the_plugins(market, tmp_path):
    data_dir, _ = market
    train_reward_model(tiny_config("train-rm", freeze_backbone=True), data_dir, tmp_path / "rm")
    trained = load_reward_model(tmp_path / "rm").module
    untouched = load_reward_model("zero-shot:tiny").module
    for (name, before), after in zip(untouched.clip.state_dict().items(), trained.clip.state_dict().values()):
        assert torch.equal(before, after), name
    moved = [n for n, p in trained.named_parameters() if not n.startswith("clip.") and p.abs().sum() > 0
             and "net.2" in n]
    assert moved, "the zero-initialized last layers of the adaptive networks have been trained"


@pytest.mark.slow
@pytest.mark.parametrize("base", ["tiny", "tiny-siglip"])
def test_perfusion_rm_beats_the_no_plugin_baseline(medium_market, tmp_path, base):
    """On CLIP and on SigLIP (the bundled tiny SigLIP, pre-trained by `pretrain-base --siglip`)."""
    results = {}
    for name, plugin in (("perfusion", True), ("no_plugin", False)):
        config = tiny_config("train-rm", batch_size=16, max_steps=150, eval_every=None, plugin=plugin,
                             base_model=base)
        train_reward_model(config, medium_market, tmp_path / name)
        results[name] = evaluate_reward_model(str(tmp_path / name), medium_market, tiny_config("eval-rm"))["gauc"]
    print(base, results)
    assert results["perfusion"] > results["no_plugin"] + 0.05, results
