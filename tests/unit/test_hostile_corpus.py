"""A hostile-input corpus for ``prepare``: each row a case with its exact quarantine reason, nothing lost.

Every case runs through one prepare; afterwards the accounting identity balances and every input line
is in exactly one of shards / quarantine / held out.
"""

import io
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from perfusion_cli.errors import DataError
from tests.helpers import folder_files, prepare_logs, read_jsonl, session, write_image, write_logs


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


LONG = "x" * 300  # longer than any file system's name limit (255 bytes)
# (sessions.jsonl line content, the expected quarantine reason); line numbers follow this order
SESSION_CASES = [
    (b'{"session_id": "deep", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "invalid_json"),
    ('{"session_id": "s-sur", "merchant_id": "m1", "prompt": "x \\ud800", "timestamp": 1, '
     '"candidates": [{"image": "images/a.png", "selected": true}, {"image": "images/b.png", "selected": false}]}',
     "invalid_unicode"),
    ('{"session_id": "\\udfff", "merchant_id": "m1", "prompt": "linen dress", "timestamp": 1, "candidates": []}',
     "invalid_unicode"),
    ('{"session_id": "s-key", "merchant_id": "m1", "prompt": "linen dress", "\\ud83d": 1, "timestamp": 1, '
     '"candidates": []}', "invalid_unicode"),
    (json.dumps(session("s-big-time", timestamp=10 ** 400)), "bad_value:timestamp"),
    (json.dumps({**session("s-inf-time"), "timestamp": "1e400"}).replace('"1e400"', "1e400"), "bad_value:timestamp"),
    (json.dumps(session("s-long-path", images=(f"images/{LONG}.png", "images/a.png"))), "unreadable_file"),
    (json.dumps(session("s-strip", images=("images/strip.png", "images/a.png"))), "image_aspect_ratio"),
    (json.dumps(session("s-tall", images=("images/tall.png", "images/a.png"))), "image_aspect_ratio"),
    (json.dumps(session("s-ok-wide", images=("images/wide.png", "images/a.png"))), None),  # 4:1 is fine
]
MERCHANT_CASES = [
    ({"merchant_id": "m1", "style": "boho"}, None),
    ('{"merchant_id": "m2", "price": 1e400}', "bad_value:price"),
    ('{"merchant_id": "m3", "followers": ' + "9" * 400 + "}", "bad_value:followers"),
    ('{"merchant_id": "m4", "style": "\\ud800"}', "invalid_unicode"),
    ('{"merchant_id": "m5", "nested": ' + "[" * 100_000 + "]" * 100_000 + "}", "invalid_json"),
]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / "logs"
    root.mkdir()
    write_image(root, "images/strip.png", _png(50_000, 1))  # the 1×50,000 memory bomb (a few hundred bytes)
    write_image(root, "images/tall.png", _png(1, 9))
    write_image(root, "images/wide.png", _png(64, 16))
    sessions = [line for line, _ in SESSION_CASES] + [session(f"good-{i}", "m1", timestamp=i) for i in range(3)]
    write_logs(root, [line for line, _ in MERCHANT_CASES], sessions)
    before = {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}
    manifest = prepare_logs(root, root.parent / "data", min_records=1, cold_start_fraction=0.0)
    return root, root.parent / "data", manifest, before


def test_every_hostile_session_row_is_quarantined_with_its_exact_reason(hostile):
    _, data, _, _ = hostile
    rows = {row["line"]: row for row in read_jsonl(data / "quarantine.jsonl") if row["file"] == "sessions.jsonl"}
    expected = {line: reason for line, (_, reason) in enumerate(SESSION_CASES, start=1) if reason}
    assert {line: row["reason"] for line, row in rows.items()} == expected
    assert "lone surrogate" in rows[2]["detail"] and "too large" in rows[5]["detail"]
    assert "50000x1" in rows[8]["detail"]


def test_every_hostile_merchant_row_is_quarantined_with_its_exact_reason(hostile):
    _, data, _, _ = hostile
    rows = {row["line"]: row["reason"] for row in read_jsonl(data / "quarantine.jsonl")
            if row["file"] == "merchants.jsonl"}
    assert rows == {line: reason for line, (_, reason) in enumerate(MERCHANT_CASES, start=1) if reason}


def test_the_accounting_balances_and_the_input_is_untouched(hostile):
    root, data, manifest, before = hostile
    accounting = manifest.raw["accounting"]
    assert accounting["balanced"] and accounting["session_rows"] == len(SESSION_CASES) + 3
    assert accounting["in_shards"] == 4 and accounting["quarantined"] == len(SESSION_CASES) - 1
    assert {path: path.read_bytes() for path in root.rglob("*") if path.is_file()} == before
    quarantine = (data / "quarantine.jsonl").read_bytes()
    quarantine.decode("ascii")  # every quarantined snippet, surrogates included, is written escaped


def test_a_prompt_with_a_lone_surrogate_never_reaches_training(hostile):
    from perfusion_cli.data.loader import StreamSpec, eval_batches

    _, data, _, _ = hostile
    prompts = [p for split in ("train", "val", "test") for b in eval_batches(StreamSpec(data, split, 8, 2, 16))
               for p in b.prompts]
    assert prompts and all(p.encode("utf-8") for p in prompts)


def test_prepare_refuses_to_write_into_its_own_logs_folder(tmp_path):
    root = write_logs(tmp_path / "data", [{"merchant_id": "m1"}], [session(f"s{i}", timestamp=i) for i in range(3)])
    before = {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}
    with pytest.raises(DataError, match=r"prepare would write into its own input .*/data \(its folder\): "
                                        r"pass --out DIR outside the logs folder"):
        prepare_logs(root, root, min_records=1)
    assert {path: path.read_bytes() for path in root.rglob("*") if path.is_file()} == before


def test_a_prepare_into_a_synthetic_folder_drops_the_old_hidden_tastes(market, tmp_path):
    data_dir, _ = market
    prepare_logs(data_dir / "raw", tmp_path / "data")
    assert (tmp_path / "data" / "truth.json").is_file()
    logs = write_logs(tmp_path / "logs", [{"merchant_id": "m0001"}], [session(f"s{i}", "m0001", timestamp=i)
                                                                        for i in range(3)])
    prepare_logs(logs, tmp_path / "data", min_records=1, cold_start_fraction=0.0)
    assert not (tmp_path / "data" / "truth.json").exists(), "the oracle must not read another marketplace's tastes"


def test_a_failing_re_prepare_keeps_the_old_data(market, tmp_path):
    data_dir, _ = market
    first = prepare_logs(data_dir / "raw", tmp_path / "data")
    bad = write_logs(tmp_path / "bad", [{"merchant_id": "m1"}], ["{nope"])
    with pytest.raises(DataError, match="no valid groups"):
        prepare_logs(bad, tmp_path / "data")
    from perfusion_cli.data.manifest import load_manifest

    assert load_manifest(tmp_path / "data").raw == first.raw
    assert read_jsonl(tmp_path / "data" / "prepare-failed" / "quarantine.jsonl")[0]["reason"] == "invalid_json"


def test_two_prepares_into_one_folder_do_not_interleave(market, tmp_path):
    import fcntl

    data_dir, _ = market
    out = tmp_path / "data"
    out.mkdir()
    with open(out / ".prepare.lock", "a+") as handle:  # another prepare holds the folder
        fcntl.flock(handle, fcntl.LOCK_EX)
        with pytest.raises(DataError, match=r"another `perfusion prepare` is writing to .*/data: wait for it"):
            prepare_logs(data_dir / "raw", out)
    assert not (out / "manifest.json").exists()
    assert prepare_logs(data_dir / "raw", out).raw["accounting"]["balanced"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_image_is_quarantined(tmp_path):
    root = write_logs(tmp_path / "logs", [{"merchant_id": "m1"}],
                      [session(f"s{i}", timestamp=i) for i in range(2)] + [session("locked", images=(
                          "images/locked.png", "images/a.png"))], extra_images=("images/locked.png",))
    (root / "images" / "locked.png").chmod(0)
    prepare_logs(root, tmp_path / "data", min_records=1, cold_start_fraction=0.0)
    assert [r["reason"] for r in read_jsonl(tmp_path / "data" / "quarantine.jsonl")] == ["unreadable_file"]


def test_the_loader_cost_of_an_extreme_image_is_bounded_by_the_output_size():
    """Old shards (or another writer) may still hold a 1×50,000 strip: decoding it never blows it up."""
    import subprocess
    import sys

    script = """
import io, resource, sys
from PIL import Image
from perfusion_cli.data.loader import load_image
data = io.BytesIO(); Image.new("RGB", (int(sys.argv[1]), 1), (9, 9, 9)).save(data, format="PNG")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image = load_image(data.getvalue(), 64)
print(tuple(image.shape), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""
    grown = {}
    for width in (64, 50_000):
        out = subprocess.run([sys.executable, "-c", script, str(width)], capture_output=True, text=True, check=True)
        shape, kilobytes = out.stdout.rsplit(" ", 1)
        assert shape == "(3, 64, 64)"
        grown[width] = int(kilobytes)
    assert grown[50_000] < grown[64] + 20_000, grown  # within 20 MB of a normal image (was +850 MB)


def test_resized_square_matches_resize_then_crop():
    from perfusion_cli.data.loader import load_image

    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (48, 96, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    expected = Image.fromarray(array).resize((64, 32), Image.BICUBIC).crop((16, 0, 48, 32))
    got = (load_image(buffer.getvalue(), 32).permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(got - np.asarray(expected, dtype=np.float32)).mean() < 4.0


# Class 1 of the third hostile pass: a prepare never writes over raw logs, whoever's they are.
def _raw_logs(root):
    return write_logs(root, [{"merchant_id": "m1"}], [session(f"s{i}", timestamp=i) for i in range(3)])


@pytest.mark.parametrize("held", ["both", "merchants only", "sessions only"])
def test_prepare_refuses_an_output_folder_that_holds_someone_elses_raw_logs(tmp_path, held):
    logs = _raw_logs(tmp_path / "logs")
    other = _raw_logs(tmp_path / "serve-logs")  # serve's logs folder, say
    if held != "both":
        (other / ("sessions.jsonl" if held == "merchants only" else "merchants.jsonl")).unlink()
    before = folder_files(other)
    name = "sessions.jsonl" if held != "merchants only" else "merchants.jsonl"
    with pytest.raises(DataError, match=rf"/serve-logs holds raw logs \({name}\): prepare never writes into a logs "
                                        rf"folder — pass --out DIR for the prepared data"):
        prepare_logs(logs, other, min_records=1)
    assert folder_files(other) == before
    from perfusion_cli.config import PrepareConfig, SyntheticConfig
    from perfusion_cli.data.prepare import prepare_synthetic

    with pytest.raises(DataError, match="holds raw logs"):
        prepare_synthetic(other, SyntheticConfig(merchants=2, sessions_per_merchant=1), PrepareConfig())
    assert folder_files(other) == before and not (other / "raw").exists()


def test_a_folder_prepared_by_version_0_1_is_prepared_again_and_its_old_table_goes(tmp_path):
    logs = _raw_logs(tmp_path / "logs")
    data = tmp_path / "data"
    prepare_logs(logs, data, min_records=1, cold_start_fraction=0.0)
    (data / "merchant_table.jsonl").rename(data / "merchants.jsonl")  # what 0.1 wrote
    from perfusion_cli.data.merchants import read_merchants

    assert set(read_merchants(data)) == {"m1"}  # still read
    prepare_logs(logs, data, min_records=1, cold_start_fraction=0.0)
    assert not (data / "merchants.jsonl").exists() and (data / "merchant_table.jsonl").is_file()


# Classes 3, 4, 5 and 7 of the third hostile pass, in one prepare of raw logs: ids in every form, contradictions,
# an oversized session, byte-order marks, a foreign truth.json. Each case: its exact reason, or where it landed.
BOM = b"\xef\xbb\xbf"
NFC, NFD = "caf\u00e9", "cafe\u0301"
THIRD_MERCHANTS = [
    BOM + json.dumps({"merchant_id": "m1", "style": "boho"}).encode(),  # a BOM before line 1 (Excel writes one)
    json.dumps({"merchant_id": 10000}),
    '{"merchant_id": NaN}',
    json.dumps({"merchant_id": "evil\x1b[31m"}),
    json.dumps({"merchant_id": NFC}),
    '{"merchant_id": Infinity}',
]
THIRD_MERCHANT_REASONS = {3: "bad_value:merchant_id", 4: "bad_value:merchant_id", 6: "bad_value:merchant_id"}
THIRD_SESSIONS = [  # (line, reason or None for a valid group)
    (BOM + json.dumps(session("bom", "m1", timestamp=1)).encode(), None),
    (json.dumps(session("int-id", 10000, timestamp=2)), None),
    (json.dumps(session("float-id", 10000.0, timestamp=3)), None),
    (json.dumps(session("nfd-id", NFD, timestamp=4)), None),
    (json.dumps(session("nan-id", timestamp=5)).replace('"m1"', "NaN"), "bad_value:merchant_id"),
    (json.dumps(session("picked-and-not", images=("images/a.png", "./images/../images/a.png", "images/b.png"),
                        selected=(True, False, False))), "contradictory_labels"),
    (json.dumps(session("twice", images=("images/b.png", "images/a.png", "images/a.png"),
                        selected=(True, False, False))), "duplicate_candidate"),
    (json.dumps(session("huge", images=tuple(f"images/none-{i}.png" for i in range(70)),
                        selected=(True,) + (False,) * 69)), "too_many_candidates"),
    (json.dumps(session("ctl\x07id", timestamp=9)), "bad_value:session_id"),
]


@pytest.fixture(scope="module")
def third_pass(tmp_path_factory):
    root = tmp_path_factory.mktemp("third") / "logs"
    write_logs(root, THIRD_MERCHANTS, [line for line, _ in THIRD_SESSIONS])
    (root / "truth.json").write_text('{"owner": "the marketing team", "merchants": ["not", "tastes"]}')
    before = folder_files(root)
    manifest = prepare_logs(root, root.parent / "data", min_records=1, cold_start_fraction=0.0)
    return root, root.parent / "data", manifest, before


def test_third_pass_rows_land_where_they_should(third_pass):
    root, data, manifest, before = third_pass
    quarantine = read_jsonl(data / "quarantine.jsonl")
    sessions = {r["line"]: r["reason"] for r in quarantine if r["file"] == "sessions.jsonl"}
    merchants = {r["line"]: r["reason"] for r in quarantine if r["file"] == "merchants.jsonl"}
    assert sessions == {line: reason for line, (_, reason) in enumerate(THIRD_SESSIONS, start=1) if reason}
    assert merchants == THIRD_MERCHANT_REASONS
    accounting = manifest.raw["accounting"]
    assert accounting["balanced"] and accounting["in_shards"] == 4 and accounting["session_rows"] == len(THIRD_SESSIONS)
    assert folder_files(root) == before  # the input untouched


def test_one_merchant_whatever_form_its_id_takes(third_pass):
    _, data, _, _ = third_pass
    table = {row["merchant_id"]: row["groups"] for row in read_jsonl(data / "merchant_table.jsonl")}
    assert table == {"m1": 1, "10000": 2, NFC: 1}  # int 10000 and float 10000.0; NFC and NFD é
    details = {r["line"]: r["detail"] for r in read_jsonl(data / "quarantine.jsonl") if r["file"] == "merchants.jsonl"}
    assert details[3] == "field 'merchant_id' is nan, not an id"
    assert details[4] == "field 'merchant_id' holds a control character"


def test_a_foreign_truth_json_makes_no_synthetic_data(third_pass):
    from perfusion_cli.marketplace.synthetic import load_truth

    _, data, manifest, _ = third_pass
    assert manifest.raw["synthetic"] is False and not (data / "truth.json").exists()
    (data / "truth.json").write_text('{"merchants": {"m1": {"hue": "red"}}}')  # dropped beside real data later
    assert load_truth(data) is None


def test_a_damaged_truth_json_of_synthetic_data_is_one_line(market, tmp_path):
    from perfusion_cli.marketplace.synthetic import load_truth

    data_dir, _ = market
    shutil.copytree(data_dir, tmp_path / "data", ignore=shutil.ignore_patterns("raw"))
    (tmp_path / "data" / "truth.json").write_text('{"merchants": {"101": {"hue": 0.5}}}')
    with pytest.raises(DataError, match=r"truth.json is not the synthetic marketplace's truth.json \(merchant '101' "
                                        r"has no taste \(hue, lightness, pattern, scale\)\)"):
        load_truth(tmp_path / "data")


@pytest.mark.parametrize("damage, message", [
    (lambda m: m.pop("splits"), 'no "splits" table'),
    (lambda m: m["splits"]["train"].update(groups="12"), "split 'train': groups is '12', not a whole number ≥ 0"),
    (lambda m: m["splits"]["train"]["shards"][0].update(name="../../etc/passwd.tar"),
     "split 'train' lists a shard named '../../etc/passwd.tar', not a .tar file of shards/"),
    (lambda m: m.update(max_candidates=10_000), "max_candidates is 10000, not a whole number in 1..1024"),
    (lambda m: m.update(features={"nope": 1}), "its feature vocabulary cannot be read"),
])
def test_a_damaged_manifest_is_one_line_when_read(market, tmp_path, damage, message):
    from perfusion_cli.data.manifest import load_manifest

    data_dir, _ = market
    shutil.copytree(data_dir, tmp_path / "data", ignore=shutil.ignore_patterns("raw"))
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    damage(manifest)
    (tmp_path / "data" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=re.escape(message)):
        load_manifest(tmp_path / "data")


def test_pickapic_ids_in_int64_and_float64_are_one_user_and_nan_pools_nobody(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [_png(8, 8), _png(9, 9)]
    folder = tmp_path / "pickapic"
    folder.mkdir()
    for name, users in (("train-0-of-2.parquet", pa.array([10000, 10000], pa.int64())),
                        ("train-1-of-2.parquet", pa.array([10000.0, float("nan")], pa.float64()))):
        pq.write_table(pa.table({"caption": ["linen dress"] * 2, "jpg_0": [images[0]] * 2,
                                 "jpg_1": [images[1], images[0]], "label_0": [1.0, 0.0], "user_id": users}),
                       folder / name)
    manifest = prepare_logs(folder, tmp_path / "data", format="pickapic", min_records=1, cold_start_fraction=0.0)
    held = read_jsonl(tmp_path / "data" / "held_out.jsonl")
    quarantine = read_jsonl(tmp_path / "data" / "quarantine.jsonl")
    assert [(r["merchant_id"], r["reason"]) for r in held] == [("10000", "identical_pair")]  # the same bytes twice
    assert [r["reason"] for r in quarantine] == ["bad_value:user_id"]
    table = {row["merchant_id"]: row["groups"] for row in read_jsonl(tmp_path / "data" / "merchant_table.jsonl")}
    assert table == {"10000": 2} and manifest.raw["accounting"]["balanced"]
