"""The streaming loader: padding and masks, deterministic resume, multi-worker coverage, bad shards."""

import pytest
import torch

from perfusion_cli.data.loader import StreamSpec, choose_candidates, eval_batches, train_batches
from perfusion_cli.errors import DataError
from tests.helpers import prepare_logs, session, write_image, write_logs


def test_ragged_groups_are_padded_with_masks(tmp_path):
    for name in ("c", "d", "e"):
        write_image(tmp_path / "logs", f"images/{name}.png")
    rows = [session("three", images=("images/a.png", "images/b.png", "images/c.png"), selected=(False, True, False),
                    timestamp=1),
            session("five", images=tuple(f"images/{n}.png" for n in "abcde"), selected=(True, False, True, False,
                                                                                         False), timestamp=2)]
    root = write_logs(tmp_path / "logs", [{"merchant_id": "m1"}], rows)
    prepare_logs(root, tmp_path / "data", min_records=1, cold_start_fraction=0.0)
    (batch,) = list(eval_batches(StreamSpec(tmp_path / "data", "train", 4, 5, 16)))
    by_id = dict(zip(batch.session_ids, range(len(batch))))
    three, five = by_id["three"], by_id["five"]
    assert batch.valid[three].tolist() == [True, True, True, False, False]
    assert batch.selected[three].tolist() == [False, True, False, False, False]
    assert batch.valid[five].all() and batch.selected[five].tolist() == [True, False, True, False, False]
    assert batch.images[three, 3:].abs().sum() == 0
    assert batch.images.shape == (2, 5, 3, 16, 16) and 0 <= batch.images.min() and batch.images.max() <= 1


def test_large_groups_are_cut_to_k_keeping_a_positive_and_a_negative():
    selected = [False] * 9 + [True]
    for key in ("a", "b", "c", "d"):
        kept = choose_candidates(selected, 3, key)
        assert len(kept) == 3 and 9 in kept and any(not selected[i] for i in kept)
    assert choose_candidates([True, False], 5, "k") == [0, 1]


def test_train_stream_resumes_on_the_same_batches(market):
    data_dir, _ = market
    spec = StreamSpec(data_dir, "train", batch_size=4, group_size=5, resolution=16, shuffle_buffer=50)
    stream = train_batches(spec, steps_per_epoch=5)
    uninterrupted = [next(stream) for _ in range(12)]
    resumed = train_batches(spec, steps_per_epoch=5, start=7)
    for expected in uninterrupted[7:]:
        got = next(resumed)
        assert got.session_ids == expected.session_ids
        assert torch.equal(got.images, expected.images)
    assert uninterrupted[0].session_ids != uninterrupted[5].session_ids  # epochs differ


def test_two_workers_cover_a_split_exactly_once(market):
    data_dir, manifest = market
    spec = StreamSpec(data_dir, "train", batch_size=7, group_size=5, resolution=8, num_workers=2)
    single = sorted(s for b in eval_batches(StreamSpec(data_dir, "train", 7, 5, 8)) for s in b.session_ids)
    assert len(manifest.raw["splits"]["train"]["shards"]) >= 1
    workers = sorted(s for b in eval_batches(spec) for s in b.session_ids)
    assert workers == single and len(single) == manifest.raw["splits"]["train"]["groups"]


def test_truncated_shard_is_named_or_skipped(tmp_path, market):
    data_dir, _ = market
    manifest = prepare_logs(data_dir / "raw", tmp_path / "data", shard_size=20)
    names = [s["name"] for s in manifest.raw["splits"]["train"]["shards"]]
    victim = tmp_path / "data" / "shards" / names[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    spec = StreamSpec(tmp_path / "data", "train", 8, 5, 8)
    with pytest.raises(DataError, match=rf"shard .*{names[0]} has \d+ bytes, the manifest says \d+: it is truncated"):
        list(eval_batches(spec))
    skipping = StreamSpec(tmp_path / "data", "train", 8, 5, 8, skip_bad_shards=True)
    seen = sum(len(b) for b in eval_batches(skipping))
    assert seen == manifest.raw["splits"]["train"]["groups"] - manifest.raw["splits"]["train"]["shards"][0]["groups"]
