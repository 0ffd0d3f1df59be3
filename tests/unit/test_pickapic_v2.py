"""Pick-a-Pic v2 as it ships: a folder of parquet files, all 19 columns, rows that carry no preference."""

import io
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from perfusion_cli.config import PrepareConfig
from perfusion_cli.data.loader import StreamSpec, eval_batches
from perfusion_cli.data.prepare import prepare
from tests.helpers import folder_files, read_jsonl

COLUMNS = ["are_different", "best_image_uid", "caption", "created_at", "has_label", "image_0_uid", "image_0_url",
           "image_1_uid", "image_1_url", "jpg_0", "jpg_1", "label_0", "label_1", "model_0", "model_1", "ranking_id",
           "user_id", "num_example_per_prompt", "__index_level_0__"]


def _jpeg(colour) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), colour, dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


RED, BLUE = _jpeg((200, 0, 0)), _jpeg((0, 0, 200))
# (caption, label_0, label_1, has_label, are_different, user) → where the row must end
CASES = [
    ("image 0 won", 1.0, 0.0, True, True, 11, "shard"),
    ("image 1 won", 0.0, 1.0, True, True, 11, "shard"),
    ("unlabeled", 0.0, 0.0, False, True, 11, "held_out:unlabeled"),
    ("a tie", 0.5, 0.5, True, True, 11, "held_out:tie"),
    ("identical pair", 1.0, 0.0, True, False, 11, "held_out:identical_pair"),
    ("both won", 1.0, 1.0, True, True, 11, "quarantine:contradictory_labels"),
    ("nobody won", 0.0, 0.0, True, True, 11, "quarantine:contradictory_labels"),
    ("odd labels", 0.7, 0.3, True, True, 11, "quarantine:bad_value:label_0"),
] + [(f"more {i}", float(i % 2), float(1 - i % 2), True, True, 22, "shard") for i in range(6)]


def _write_v2_folder(folder):
    folder.mkdir()
    start = datetime(2023, 5, 1)
    rows = []
    for index, (caption, label_0, label_1, has_label, different, user, _) in enumerate(CASES):
        rows.append({
            "are_different": different, "best_image_uid": f"b{index}", "caption": caption,
            "created_at": start + timedelta(minutes=index), "has_label": has_label, "image_0_uid": f"i0-{index}",
            "image_0_url": f"https://example/{index}/0.jpg", "image_1_uid": f"i1-{index}",
            "image_1_url": f"https://example/{index}/1.jpg", "jpg_0": RED, "jpg_1": BLUE, "label_0": label_0,
            "label_1": label_1, "model_0": "sdxl", "model_1": "sd2.1", "ranking_id": index, "user_id": user,
            "num_example_per_prompt": 1, "__index_level_0__": index})
    for part, chunk in enumerate((rows[:5], rows[5:9], rows[9:])):
        table = pa.table({name: [row[name] for row in chunk] for name in COLUMNS})
        assert table.schema.field("user_id").type == pa.int64()
        pq.write_table(table, folder / f"train-{part:05d}-of-00003.parquet", row_group_size=2)


def test_only_rows_with_one_winner_reach_the_shards(tmp_path):
    _write_v2_folder(tmp_path / "pickapic_v2")
    manifest = prepare(tmp_path / "pickapic_v2", tmp_path / "data",
                       PrepareConfig(format="pickapic", min_records=1, cold_start_fraction=0.0))
    expected = {index + 1: where for index, (*_, where) in enumerate(CASES)}
    held = {row["line"]: f"held_out:{row['reason']}" for row in read_jsonl(tmp_path / "data" / "held_out.jsonl")}
    quarantined = {row["line"]: f"quarantine:{row['reason']}"
                   for row in read_jsonl(tmp_path / "data" / "quarantine.jsonl")}
    assert {**held, **quarantined} == {line: where for line, where in expected.items() if where != "shard"}
    accounting = manifest.raw["accounting"]
    assert accounting["balanced"] and accounting["session_rows"] == len(CASES)
    assert accounting["in_shards"] == sum(where == "shard" for *_, where in CASES)
    assert manifest.raw["held_out"]["reasons"] == {"identical_pair": 1, "tie": 1, "unlabeled": 1}
    assert manifest.raw["quarantine"]["reasons"] == {"bad_value:label_0": 1, "contradictory_labels": 2}
    labels = {}
    for split in ("train", "val", "test"):
        for batch in eval_batches(StreamSpec(tmp_path / "data", split, 16, 2, 8)):
            labels.update({prompt: selected.tolist() for prompt, selected in zip(batch.prompts, batch.selected)})
    assert set(labels) == {caption for caption, *_, where in CASES if where == "shard"}
    assert labels["image 0 won"] == [True, False] and labels["image 1 won"] == [False, True]
    assert all(sum(selected) == 1 for selected in labels.values()), "every group has exactly one winner"
    assert sorted(manifest.source["files"]) == [f"train-{part:05d}-of-00003.parquet" for part in range(3)]


def test_extra_columns_are_ignored_and_missing_optional_ones_tolerated(tmp_path):
    table = pa.table({"caption": ["a", "b"], "jpg_0": [RED, RED], "jpg_1": [BLUE, BLUE], "label_0": [1.0, 0.0],
                      "user_id": pa.array([5, 5], pa.int64()), "something_new": ["x", "y"]})
    pq.write_table(table, tmp_path / "mirror.parquet")
    manifest = prepare(tmp_path / "mirror.parquet", tmp_path / "data",
                       PrepareConfig(format="pickapic", min_records=1, cold_start_fraction=0.0, val_fraction=0,
                                     test_fraction=0))
    assert manifest.raw["accounting"]["in_shards"] == 2 and manifest.raw["quarantine"]["rows"] == 0


def test_each_image_is_decoded_once(tmp_path, monkeypatch):
    from perfusion_cli.data import image_checks

    decoded = []
    check = image_checks.check_image_bytes
    monkeypatch.setattr(image_checks, "check_image_bytes", lambda data, *a: decoded.append(data) or check(data, *a))
    _write_v2_folder(tmp_path / "pickapic_v2")
    manifest = prepare(tmp_path / "pickapic_v2", tmp_path / "data",
                       PrepareConfig(format="pickapic", min_records=1, cold_start_fraction=0.0))
    groups = sum(split["groups"] for split in manifest.raw["splits"].values())
    assert groups > 0 and len(decoded) == 2 * (groups + manifest.raw["held_out"]["reasons"].get("few_records", 0))


def test_two_workers_decode_a_row_group_and_write_the_same_bytes(tmp_path):
    """A row group of 40 rows (80 images: the pool starts), with a corrupt image, a tie and an unlabeled row."""
    folder = tmp_path / "pickapic_v2"
    folder.mkdir()
    start = datetime(2023, 5, 1)
    rows = []
    for index in range(40):
        label_0, has_label = (0.5, True) if index == 7 else ((1.0, False) if index == 9 else (float(index % 2), True))
        rows.append({
            "are_different": True, "best_image_uid": f"b{index}", "caption": f"caption {index % 5}",
            "created_at": start + timedelta(minutes=index), "has_label": has_label, "image_0_uid": f"i0-{index}",
            "image_0_url": "", "image_1_uid": f"i1-{index}", "image_1_url": "",
            "jpg_0": b"\xff\xd8 not a jpeg" if index == 3 else _jpeg((5 * index, 90, 200)), "jpg_1": BLUE,
            "label_0": label_0, "label_1": 1.0 - label_0 if index != 9 else 0.0, "model_0": "a", "model_1": "b",
            "ranking_id": index, "user_id": index % 3, "num_example_per_prompt": 1, "__index_level_0__": index})
    pq.write_table(pa.table({name: [row[name] for row in rows] for name in COLUMNS}),
                   folder / "train-00000-of-00001.parquet", row_group_size=64)
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"data-{workers}"
        manifest = prepare(folder, out, PrepareConfig(format="pickapic", min_records=1), workers=workers).raw
        outputs.append(folder_files(out))
    assert outputs[0] == outputs[1]
    assert manifest["quarantine"]["reasons"] == {"image_corrupt": 1}
    assert manifest["held_out"]["reasons"] == {"tie": 1, "unlabeled": 1} and manifest["accounting"]["balanced"]
