"""Every kind of bad row ends in quarantine.jsonl with its line and exact reason; nothing is lost."""

import json
import os
from pathlib import Path


import pytest

from perfusion_cli.data.manifest import load_manifest
from perfusion_cli.errors import DataError
from tests.helpers import png_bytes, prepare_logs, read_jsonl, session, write_image, write_logs

MERCHANTS = [
    {"merchant_id": "m1", "style": "boho", "price": 10},
    {"merchant_id": "m2", "style": "classic", "price": 20},
    {"merchant_id": "m1", "style": "again"},  # 3: duplicate
    "not json",  # 4
    {"style": "no id"},  # 5
    {"merchant_id": "m3", "tags": ["a", "b"]},  # 6: list-valued feature
]


def _bad_logs(root: Path, outside: Path) -> Path:
    write_image(root, "images/corrupt.png", b"this is not a png")
    write_image(root, "images/empty.png", b"")
    write_image(root, "images/huge.png", png_bytes(size=100))
    outside.write_bytes(png_bytes())
    os.symlink(outside, root / "images" / "link.png")
    sessions = [
        session("s1", "m1", timestamp=1),  # 1 valid
        session("s2", "m1", timestamp=2),  # 2 valid
        b"\xff\xfe{\"session_id\": \"x\"}",  # 3
        "{not json",  # 4
        "[1, 2]",  # 5
        {k: v for k, v in session("s4").items() if k != "session_id"},  # 6
        session("s5", "zzz"),  # 7
        session("s1", "m1"),  # 8 duplicate of line 1
        session("s6", images=("images/missing.png", "images/a.png")),  # 9
        session("s7", images=("images/a.png", "images/corrupt.png")),  # 10
        session("s8", images=("../outside.png", "images/a.png")),  # 11
        session("s9", images=("/etc/passwd", "images/a.png")),  # 12
        session("s10", images=("images/empty.png", "images/a.png")),  # 13
        session("s11", images=("images/huge.png", "images/a.png")),  # 14
        session("s12", selected=(False, False)),  # 15
        session("s13", selected=(True, True)),  # 16
        session("s14", images=("images/a.png",), selected=(True,)),  # 17
        session("s15", prompt="   "),  # 18
        session("s16", timestamp="yesterday"),  # 19
        {**session("s17"), "candidates": "images/a.png"},  # 20
        {**session("s18"), "prompt": 5},  # 21
        "",  # 22: blank, not a row
        session("s19", "m2", timestamp=3),  # 23 valid
        session("s20", images=("images/link.png", "images/a.png")),  # 24: symlink out of the folder
    ]
    return write_logs(root, MERCHANTS, sessions)


EXPECTED_SESSIONS = {
    3: "invalid_utf8", 4: "invalid_json", 5: "not_an_object", 6: "missing_field:session_id",
    7: "unknown_merchant", 8: "duplicate_session_id", 9: "image_missing", 10: "image_corrupt",
    11: "image_path_escapes", 12: "image_path_escapes", 13: "image_empty", 14: "image_too_large",
    15: "no_positive", 16: "no_negative", 17: "too_few_candidates", 18: "empty_prompt",
    19: "bad_type:timestamp", 20: "bad_type:candidates", 21: "bad_type:prompt", 24: "image_path_escapes",
}
EXPECTED_MERCHANTS = {3: "duplicate_merchant_id", 4: "invalid_json", 5: "missing_field:merchant_id",
                      6: "bad_type:tags"}


@pytest.fixture
def prepared(tmp_path):
    root = _bad_logs(tmp_path / "logs", tmp_path / "outside.png")
    manifest = prepare_logs(root, tmp_path / "data", min_records=1, cold_start_fraction=0.0,
                            max_image_pixels=5000)
    return tmp_path / "data", manifest


def test_each_bad_row_is_quarantined_with_its_line_and_exact_reason(prepared):
    out, manifest = prepared
    rows = read_jsonl(out / "quarantine.jsonl")
    sessions = {row["line"]: row["reason"] for row in rows if row["file"] == "sessions.jsonl"}
    merchants = {row["line"]: row["reason"] for row in rows if row["file"] == "merchants.jsonl"}
    assert sessions == EXPECTED_SESSIONS
    assert merchants == EXPECTED_MERCHANTS
    duplicate = next(r for r in rows if r["file"] == "sessions.jsonl" and r["line"] == 8)
    assert "first seen on line 1" in duplicate["detail"]
    assert all(row["raw"] for row in rows), "every quarantined row keeps a snippet of what it was"


def test_accounting_identity_and_reason_counts(prepared):
    _, manifest = prepared
    accounting = manifest.raw["accounting"]
    assert accounting["session_rows"] == 23  # the blank line is not a row
    assert accounting["blank_lines"] == 1
    assert accounting["in_shards"] == 3
    assert accounting["quarantined"] == len(EXPECTED_SESSIONS)
    assert accounting["session_rows"] == accounting["in_shards"] + accounting["quarantined"] + accounting["held_out"]
    assert accounting["balanced"] is True
    assert manifest.raw["quarantine"]["reasons"]["image_path_escapes"] == 3
    assert manifest.raw["quarantine"]["rows"] == len(EXPECTED_SESSIONS) + len(EXPECTED_MERCHANTS)
    assert accounting["merchants_quarantined"] == len(EXPECTED_MERCHANTS)


def test_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"^logs folder not found: .*nowhere$"):
        prepare_logs(tmp_path / "nowhere", tmp_path / "data")


def test_missing_sessions_file_is_one_clear_error(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "merchants.jsonl").write_text("")
    with pytest.raises(DataError, match=r"^no sessions.jsonl in .*logs — a logs folder holds"):
        prepare_logs(tmp_path / "logs", tmp_path / "data")


def test_zero_valid_groups_is_an_error_that_points_at_the_quarantine(tmp_path):
    root = write_logs(tmp_path / "logs", [{"merchant_id": "m1"}], ["{bad", session("s1", "nobody")])
    with pytest.raises(DataError, match=r"no valid groups in .*\(invalid_json ×1, unknown_merchant ×1\)"):
        prepare_logs(root, tmp_path / "data")
    assert len(read_jsonl(tmp_path / "data" / "prepare-failed" / "quarantine.jsonl")) == 2
    with pytest.raises(DataError, match="no prepared data"):
        load_manifest(tmp_path / "data")


def test_iso_timestamps_and_integer_ids_are_accepted(tmp_path):
    rows = [{**session("1", "7"), "session_id": 1, "merchant_id": 7, "timestamp": "2026-01-02T03:04:05Z"},
            {**session("2", "7"), "session_id": 2, "merchant_id": 7, "timestamp": "2026-01-03T00:00:00"}]
    root = write_logs(tmp_path / "logs", [{"merchant_id": 7}], rows)
    manifest = prepare_logs(root, tmp_path / "data", min_records=1, cold_start_fraction=0.0)
    assert manifest.raw["accounting"]["in_shards"] == 2
    assert manifest.raw["quarantine"]["rows"] == 0


def test_numbers_in_json_with_nan_are_rejected_not_crashing(tmp_path):
    root = write_logs(tmp_path / "logs", [{"merchant_id": "m1"}, '{"merchant_id": "m2", "price": NaN}'],
                      [session("s1", "m1"), '{"session_id": "s2", "merchant_id": "m1", "prompt": "x", '
                                            '"timestamp": Infinity, "candidates": []}'])
    manifest = prepare_logs(root, tmp_path / "data", min_records=1, cold_start_fraction=0.0)
    reasons = {(r["file"], r["reason"]) for r in read_jsonl(tmp_path / "data" / "quarantine.jsonl")}
    assert reasons == {("merchants.jsonl", "bad_value:price"), ("sessions.jsonl", "bad_value:timestamp")}
    assert manifest.raw["accounting"]["balanced"]


def test_manifest_records_command_version_and_checksums(prepared):
    out, manifest = prepared
    assert manifest.raw["created_by"]["version"]
    shard = manifest.raw["splits"]["train"]["shards"][0]
    assert len(shard["sha256"]) == 64 and (out / "shards" / shard["name"]).stat().st_size == shard["bytes"]
    assert json.loads((out / "manifest.json").read_text())["format"] == "perfusion-shards/1"

