"""Property: on any mix of valid, mutated and garbage log lines, prepare never crashes and balances."""

import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perfusion_cli.config import PrepareConfig
from perfusion_cli.data.prepare import prepare
from perfusion_cli.errors import DataError
from tests.helpers import png_bytes, read_jsonl

IMAGES = ["images/a.png", "images/b.png", "images/c.png", "images/bad.png", "images/empty.png", "../x.png",
          "/etc/hosts", "images/missing.png", ""]
MERCHANTS = ["m1", "m2", "m3"]

scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=8))
candidate = st.fixed_dictionaries({"image": st.one_of(st.sampled_from(IMAGES), scalar),
                                   "selected": st.one_of(st.booleans(), scalar)})
session = st.fixed_dictionaries({
    "session_id": st.one_of(st.text(min_size=1, max_size=4), st.integers(0, 20), scalar),
    "merchant_id": st.one_of(st.sampled_from(MERCHANTS + ["nobody"]), scalar),
    "prompt": st.one_of(st.sampled_from(["linen dress", "", "  "]), st.text(max_size=30), scalar),
    "timestamp": st.one_of(st.floats(0, 2e9), st.sampled_from(["2026-01-01T00:00:00", "soon"]), scalar),
    "candidates": st.one_of(st.lists(candidate, max_size=5), scalar),
})


def _mutate(row: dict, drop: list[str]) -> dict:
    return {k: v for k, v in row.items() if k not in drop}


line = st.one_of(
    session.map(lambda row: json.dumps(row).encode()),
    st.tuples(session, st.lists(st.sampled_from(list(session.wrapped_strategy.mapping)), max_size=2)).map(
        lambda pair: json.dumps(_mutate(*pair)).encode()),
    st.binary(max_size=40),
    st.text(max_size=40).map(str.encode),
    st.just(b""),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(line, max_size=25), min_records=st.integers(1, 3))
def test_prepare_never_crashes_and_every_row_is_accounted_for(lines, min_records):
    root = Path(tempfile.mkdtemp())
    try:
        for name in ("a", "b", "c"):
            (root / "images").mkdir(exist_ok=True)
            (root / "images" / f"{name}.png").write_bytes(png_bytes())
        (root / "images" / "bad.png").write_bytes(b"\x89PNG garbage")
        (root / "images" / "empty.png").write_bytes(b"")
        (root / "merchants.jsonl").write_text("".join(json.dumps({"merchant_id": m, "tier": i}) + "\n"
                                                      for i, m in enumerate(MERCHANTS)))
        (root / "sessions.jsonl").write_bytes(b"\n".join(l.replace(b"\n", b" ") for l in lines) + b"\n")
        non_blank = sum(1 for l in lines if l.replace(b"\n", b" ").strip())
        try:
            manifest = prepare(root, root / "out", PrepareConfig(min_records=min_records, cold_start_fraction=0.0))
        except DataError as error:
            assert "no valid groups" in str(error) or "--min-records" in str(error)
            if "no valid groups" in str(error):  # every row was rejected, and each is listed
                failed = root / "out" / "prepare-failed" / "quarantine.jsonl"
                assert str(failed) in str(error)
                rows = [r for r in read_jsonl(failed) if r["file"] == "sessions.jsonl"]
                assert len(rows) == non_blank
            return
        accounting = manifest.raw["accounting"]
        assert accounting["session_rows"] == non_blank
        assert accounting["balanced"]
        assert accounting["session_rows"] == (accounting["in_shards"] + accounting["quarantined"]
                                              + accounting["held_out"])
        quarantined = [r for r in read_jsonl(root / "out" / "quarantine.jsonl") if r["file"] == "sessions.jsonl"]
        held = read_jsonl(root / "out" / "held_out.jsonl")
        assert len(quarantined) == accounting["quarantined"] and len(held) == accounting["held_out"]
        assert sum(split["groups"] for split in manifest.raw["splits"].values()) == accounting["in_shards"]
        lines_seen = sorted([r["line"] for r in quarantined] + [h["line"] for h in held])
        assert len(set(lines_seen)) == len(lines_seen), "no row is counted twice"
    finally:
        shutil.rmtree(root)
