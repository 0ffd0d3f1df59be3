"""Contracts of prepare: reproducible bytes, atomic writes, time splits, vocabulary, Pick-a-Pic."""

import io

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from perfusion_cli.config import PrepareConfig
from perfusion_cli.data import prepare as prepare_module
from perfusion_cli.data.loader import StreamSpec, eval_batches
from perfusion_cli.data.logs import LogsSource
from perfusion_cli.data.manifest import load_manifest
from perfusion_cli.data.source import InputSource
from perfusion_cli.data.vocab import OOV
from perfusion_cli.errors import DataError
from tests.helpers import children, many_sessions, prepare_logs, read_jsonl, write_logs


def _checksums(manifest):
    return {s["name"]: s["sha256"] for split in manifest.raw["splits"].values() for s in split["shards"]}


def test_prepare_twice_and_from_raw_give_byte_identical_shards(market, tmp_path):
    data_dir, manifest = market
    again = prepare_logs(data_dir / "raw", tmp_path / "again")
    assert _checksums(again) == _checksums(manifest)
    assert (tmp_path / "again" / "merchant_table.jsonl").read_bytes() == (data_dir / "merchant_table.jsonl").read_bytes()


def test_splits_are_by_time_per_merchant_and_cold_start_merchants_are_whole(market):
    data_dir, manifest = market
    seen = {}
    for split in ("train", "val", "test", "cold_start"):
        spec = StreamSpec(data_dir, split, batch_size=64, group_size=5, resolution=8)
        for batch in eval_batches(spec):
            for merchant, session_id in zip(batch.merchant_ids, batch.session_ids):
                seen.setdefault(merchant, {}).setdefault(split, []).append(session_id)
    raw = {row["session_id"]: row["timestamp"] for row in read_jsonl(data_dir / "raw" / "sessions.jsonl")}
    roles = {row["merchant_id"]: row["role"] for row in read_jsonl(data_dir / "merchant_table.jsonl")}
    for merchant, splits in seen.items():
        if roles[merchant] == "cold_start":
            assert set(splits) == {"cold_start"}
            continue
        assert set(splits) == {"train", "val", "test"}
        latest_train = max(raw[s] for s in splits["train"])
        assert latest_train <= min(raw[s] for s in splits["val"]) <= min(raw[s] for s in splits["test"])
    assert "cold_start" in roles.values()
    held = [m for m, role in roles.items() if role == "held_out"]
    assert held, "the synthetic marketplace has new merchants with few sessions"
    assert not set(held) & set(seen)
    assert manifest.raw["held_out"]["reasons"]["few_records"] == sum(
        1 for row in read_jsonl(data_dir / "held_out.jsonl") if row["merchant_id"] in held)


def test_vocabulary_is_built_from_training_merchants_only(market):
    data_dir, manifest = market
    table = read_jsonl(data_dir / "merchant_table.jsonl")
    names = [f["name"] for f in manifest.raw["features"]]
    assert names[0] == "merchant_id"
    kinds = {f["name"]: f["kind"] for f in manifest.raw["features"]}
    assert kinds["price_level"] == "numeric" and kinds["style"] == "categorical"
    for row in table:
        merchant_slot = row["feature_ids"][0]
        assert (merchant_slot != OOV) == (row["role"] == "train"), row
    price = next(f for f in manifest.raw["features"] if f["name"] == "price_level")
    assert price["size"] == len(price["boundaries"]) + 2


def test_min_records_holds_out_and_counts(tmp_path):
    rows = many_sessions("big", 12) + many_sessions("small", 3, start=100)
    root = write_logs(tmp_path / "logs", [{"merchant_id": "big"}, {"merchant_id": "small"}], rows)
    manifest = prepare_logs(root, tmp_path / "data", min_records=10, cold_start_fraction=0.0)
    assert manifest.raw["held_out"]["reasons"] == {"few_records": 3}
    assert manifest.raw["merchants"] == {"held_out": 1, "train": 1}
    assert manifest.raw["splits"]["train"]["groups"] + manifest.raw["splits"]["val"]["groups"] \
        + manifest.raw["splits"]["test"]["groups"] == 12


def test_interrupted_prepare_leaves_the_earlier_data_untouched(market, tmp_path, monkeypatch):
    data_dir, _ = market
    out = tmp_path / "data"
    before = prepare_logs(data_dir / "raw", out)  # a complete earlier run in the same folder
    files = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and ".staging" not in p.parts}
    calls = {"n": 0}
    original = LogsSource.read_images

    def dying(self, record):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return original(self, record)

    monkeypatch.setattr(LogsSource, "read_images", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare_module.prepare(data_dir / "raw", out, PrepareConfig(shard_size=3))
    assert load_manifest(out).raw == before.raw, "the earlier data is still what a reader gets"
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and ".staging" not in p.parts}
    assert after == files, "not one byte of the earlier data changed"
    assert not list(out.rglob("*.tmp")), "the half-written shard is removed"


@pytest.mark.slow
def test_sigkilled_prepare_leaves_no_readable_data(market, tmp_path):
    data_dir, _ = market
    out = tmp_path / "data"
    process = subprocess.Popen([sys.executable, "-m", "perfusion_cli", "prepare", str(data_dir / "raw"),
                                "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    staged = out / ".staging" / "shards"
    while time.time() < deadline and process.poll() is None:
        if staged.exists() and list(staged.glob("*.tmp")):
            break
        time.sleep(0.01)
    workers = children(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(staged.glob("*.tmp")), "killed while a shard was being written"
    assert workers, "the shards are written in --workers processes (2 by default here)"
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "the workers end with their prepare"
    with pytest.raises(DataError, match="no prepared data"):
        load_manifest(out)
    assert not (out / "shards").exists(), "nothing half-made is where a reader looks"
    again = prepare_logs(data_dir / "raw", out)  # and the next run recovers cleanly
    assert not list(out.rglob("*.tmp")) and not (out / ".staging").exists()
    assert again.raw["accounting"]["balanced"]


def _jpeg(colour) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), colour, dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _pickapic(path, rows):
    columns = {name: [row[i] for row in rows] for i, name in enumerate(["caption", "jpg_0", "jpg_1", "label_0",
                                                                           "user_id"])}
    pq.write_table(pa.table(columns), path, row_group_size=4)


def test_pickapic_rows_become_groups_of_two_and_ties_are_held_out(tmp_path):
    red, blue = _jpeg((200, 0, 0)), _jpeg((0, 0, 200))
    rows = [("a red dress", red, blue, 1.0, "u1"), ("a blue dress", red, blue, 0.0, "u1"),
            ("either", red, blue, 0.5, "u1"), ("corrupt", b"nope", blue, 1.0, "u1"),
            ("", red, blue, 1.0, "u1"), ("odd label", red, blue, 0.3, "u1"), ("no user", red, blue, 1.0, None)]
    rows += [(f"more {i}", red, blue, float(i % 2), "u2") for i in range(5)]
    _pickapic(tmp_path / "pick.parquet", rows)
    manifest = prepare_module.prepare(tmp_path / "pick.parquet", tmp_path / "data",
                                      PrepareConfig(format="pickapic", min_records=1, cold_start_fraction=0.0))
    assert manifest.raw["held_out"]["reasons"] == {"tie": 1}
    quarantine = {row["line"]: row["reason"] for row in read_jsonl(tmp_path / "data" / "quarantine.jsonl")}
    assert quarantine == {4: "image_corrupt", 5: "empty_prompt", 6: "bad_value:label_0", 7: "missing_field:user_id"}
    accounting = manifest.raw["accounting"]
    assert accounting["session_rows"] == 12 and accounting["in_shards"] == 7 and accounting["balanced"]
    groups = {}
    for split in ("train", "val", "test"):
        for batch in eval_batches(StreamSpec(tmp_path / "data", split, 16, 2, 8)):
            for prompt, selected, valid in zip(batch.prompts, batch.selected, batch.valid):
                groups[prompt] = selected.tolist()
                assert valid.all()
    assert groups["a red dress"] == [True, False]
    assert groups["a blue dress"] == [False, True]


def test_both_input_formats_provide_the_input_source_contract(market, tmp_path):
    red, blue = _jpeg((200, 0, 0)), _jpeg((0, 0, 200))
    _pickapic(tmp_path / "pick.parquet", [("a red dress", red, blue, 1.0, "u1")])
    logs = prepare_module.open_source(market[0] / "raw", PrepareConfig())
    pick = prepare_module.open_source(tmp_path / "pick.parquet", PrepareConfig())
    members = [name for name in dir(InputSource) if not name.startswith("_")]
    assert {"location", "scan", "write_shards", "read_images", "input_files", "describe", "close"} <= set(members)
    for source, kind in ((logs, "logs"), (pick, "pickapic")):
        assert isinstance(source, InputSource) and source.kind == kind
        assert all(hasattr(type(source), name) or hasattr(source, name) for name in members)
    assert Path(logs.location).resolve() == (market[0] / "raw").resolve() and pick.location == tmp_path / "pick.parquet"
    assert logs.synthetic and not pick.synthetic


def test_pickapic_missing_column_is_a_clear_error(tmp_path):
    pq.write_table(pa.table({"caption": ["x"], "jpg_0": [b""], "jpg_1": [b""], "user_id": ["u"]}),
                   tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet lacks the Pick-a-Pic column\(s\) label_0"):
        prepare_module.prepare(tmp_path / "bad.parquet", tmp_path / "data", PrepareConfig(format="pickapic"))

