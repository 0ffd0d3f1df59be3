"""The session journal on its own: durable appends in the raw-log format, idempotent on session_id, a torn
last line repaired at open, one writer per folder."""

import json

import pytest

from perfusion_cli.data.logs import LogsSource
from perfusion_cli.data.images import ImageLimits
from perfusion_cli.errors import DataError
from perfusion_cli.serving.journal import Pick, SessionConflict, SessionJournal
from tests.helpers import png_bytes, read_jsonl

IDS = ["a" * 32, "b" * 32, "c" * 32]
OTHER_IDS = ["d" * 32, "e" * 32]
IMAGES = {image_id: png_bytes((40 * i, 90, 200 - 40 * i)) for i, image_id in enumerate(IDS + OTHER_IDS)}
PROFILE = {"category": "dress", "price_level": 30.0}


def _pick(session_id="s1", selected=("b" * 32,), merchant="m1", candidates=IDS):
    return Pick(session_id, merchant, "linen dress", tuple(candidates), frozenset(selected))


def test_a_recorded_session_is_a_raw_log_line_with_its_images_and_merchant(tmp_path):
    journal = SessionJournal(tmp_path)
    assert journal.record(_pick(), IMAGES, PROFILE) is True
    journal.close()
    [line] = read_jsonl(tmp_path / "sessions.jsonl")
    assert line["session_id"] == "s1" and line["merchant_id"] == "m1" and line["prompt"] == "linen dress"
    assert [c["selected"] for c in line["candidates"]] == [False, True, False]
    for candidate, image_id in zip(line["candidates"], IDS):
        assert candidate["image"] == f"images/{image_id}.png"
        assert (tmp_path / candidate["image"]).read_bytes() == IMAGES[image_id]
    assert read_jsonl(tmp_path / "merchants.jsonl") == [{"merchant_id": "m1", **PROFILE}]
    # the folder reads as raw logs: every line validates
    source = LogsSource(tmp_path, ImageLimits(4096 * 4096, 1 << 20, 8.0))
    profiles, rejected = source.merchants()
    records = list(source.scan(set(profiles)))
    assert not rejected and [r.session_id for r in records] == ["s1"]


def test_a_retry_writes_nothing_and_other_content_under_the_same_id_is_refused(tmp_path):
    journal = SessionJournal(tmp_path)
    assert journal.record(_pick(), IMAGES, PROFILE) is True
    assert journal.record(_pick(), IMAGES, PROFILE) is False
    with pytest.raises(SessionConflict, match="session_id 's1' is already recorded with other"):
        journal.record(_pick(selected=("a" * 32,)), IMAGES, PROFILE)
    # the same candidates under a new session id, picks reversed: the opposite preference from one generation
    with pytest.raises(SessionConflict, match=f"candidate {'a' * 32} is already recorded in session 's1': a "
                                              f"generation's picks are recorded once"):
        journal.record(_pick("s1-again", selected=("a" * 32, "c" * 32)), IMAGES, PROFILE)
    assert journal.record(_pick("s2", selected=("d" * 32,), candidates=OTHER_IDS), IMAGES, PROFILE) is True
    journal.close()
    # a new journal on the same folder knows what is recorded (the index is the file)
    again = SessionJournal(tmp_path)
    assert again.record(_pick(), IMAGES, PROFILE) is False and len(again) == 2
    with pytest.raises(SessionConflict, match="is already recorded in session 's1'"):  # after a restart too
        again.record(_pick("s3"), IMAGES, PROFILE)
    again.close()
    assert [r["session_id"] for r in read_jsonl(tmp_path / "sessions.jsonl")] == ["s1", "s2"]
    assert len(read_jsonl(tmp_path / "merchants.jsonl")) == 1  # one line per merchant


def test_a_torn_last_line_is_moved_aside_and_a_complete_one_gets_its_newline(tmp_path):
    journal = SessionJournal(tmp_path)
    journal.record(_pick(), IMAGES, PROFILE)
    journal.close()
    good = (tmp_path / "sessions.jsonl").read_bytes()
    torn = b'{"session_id": "s2", "merchant_id": "m1", "prom'
    (tmp_path / "sessions.jsonl").write_bytes(good + torn)
    journal = SessionJournal(tmp_path)
    assert f"torn last line ({len(torn)} bytes, never acknowledged) moved to sessions.jsonl.torn-" in journal.repair
    assert (tmp_path / "sessions.jsonl").read_bytes() == good
    [aside] = tmp_path.glob("sessions.jsonl.torn-*")
    assert aside.read_bytes() == torn
    journal.record(_pick("s2", selected=("d" * 32,), candidates=OTHER_IDS), IMAGES, PROFILE)  # after the repaired end
    journal.close()
    assert [r["session_id"] for r in read_jsonl(tmp_path / "sessions.jsonl")] == ["s1", "s2"]

    complete = json.dumps({"session_id": "s3", "merchant_id": "m1", "prompt": "linen dress", "timestamp": 0,
                           "candidates": [{"image": f"images/{IDS[0]}.png", "selected": True},
                                          {"image": f"images/{IDS[1]}.png", "selected": False}]}).encode()
    with open(tmp_path / "sessions.jsonl", "ab") as handle:
        handle.write(complete)
    journal = SessionJournal(tmp_path)
    assert journal.repair == "sessions.jsonl: its last line had no newline; added" and len(journal) == 3
    journal.close()
    assert (tmp_path / "sessions.jsonl").read_bytes().endswith(complete + b"\n")


def test_one_journal_per_logs_folder(tmp_path):
    journal = SessionJournal(tmp_path)
    with pytest.raises(DataError, match="another `perfusion serve` is recording into"):
        SessionJournal(tmp_path)
    journal.close()
    SessionJournal(tmp_path).close()

