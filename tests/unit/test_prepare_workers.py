"""``prepare --workers N`` decodes images in N processes and writes the same bytes as one process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perfusion_cli.config import PrepareConfig, SyntheticConfig
from perfusion_cli.data.image_checks import BLOCK
from perfusion_cli.data.prepare import prepare
from perfusion_cli.marketplace.synthetic import write_marketplace
from tests.helpers import children, folder_files


def test_two_workers_write_byte_identical_data_and_quarantine(tmp_path):
    logs = write_marketplace(tmp_path / "logs", SyntheticConfig(merchants=24, sessions_per_merchant=24, seed=2))
    lines = (logs / "sessions.jsonl").read_text().splitlines()
    assert len(lines) > 2 * BLOCK, "more than one block, so the pool really starts"
    # bad rows among good ones, in the second block: a corrupt image, a missing one, one leaving the folder
    (logs / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    for offset, image in ((300, "images/broken.png"), (301, "images/nowhere.png"), (302, "../outside.png")):
        row = json.loads(lines[offset])
        row["candidates"][0]["image"] = image
        lines[offset] = json.dumps(row)
    (logs / "sessions.jsonl").write_text("\n".join(lines) + "\n")

    one = prepare(logs, tmp_path / "one", PrepareConfig(), workers=1)
    two = prepare(logs, tmp_path / "two", PrepareConfig(), workers=2)
    assert folder_files(tmp_path / "one") == folder_files(tmp_path / "two")
    assert one.raw["quarantine"]["reasons"] == two.raw["quarantine"]["reasons"]
    assert sum(one.raw["quarantine"]["reasons"].values()) == 3 and one.raw["accounting"]["balanced"]


def test_an_image_changed_between_the_passes_is_refused_without_a_second_decode(tmp_path):
    from perfusion_cli.data.images import ImageLimits
    from perfusion_cli.data.logs import LogsSource
    from perfusion_cli.errors import DataError

    logs = write_marketplace(tmp_path / "logs", SyntheticConfig(merchants=2, sessions_per_merchant=2, seed=1))
    source = LogsSource(logs, ImageLimits(4096 * 4096, 32 << 20))
    records = [r for r in source.scan({"101", "102"}) if hasattr(r, "images")]
    assert source.read_images(records[0])[0][1] == (logs / records[0].images[0]).read_bytes()
    (logs / records[0].images[0]).write_bytes((logs / records[0].images[1]).read_bytes())  # still a valid PNG
    with pytest.raises(DataError, match="an image changed while preparing"):
        source.read_images(records[0])


def test_workers_write_the_shards_and_refuse_an_image_changed_after_pass_one(tmp_path, monkeypatch):
    from perfusion_cli.data import prepare as prepare_module
    from perfusion_cli.errors import DataError

    logs = write_marketplace(tmp_path / "logs", SyntheticConfig(merchants=24, sessions_per_merchant=24, seed=2))
    before = prepare(logs, tmp_path / "data", PrepareConfig(shard_size=100), workers=2)
    kept = folder_files(tmp_path / "data")
    assert sum(len(split["shards"]) for split in before.raw["splits"].values()) > 2, "several shards to share out"
    changed = json.loads((logs / "sessions.jsonl").read_text().splitlines()[-1])["candidates"][0]["image"]
    plan_splits, started = prepare_module.plan_splits, []

    def change_an_image_then_plan(records, *args):  # between the passes, with the pool started in pass one
        started.append(any(source._images.pool is not None for source in sources))
        (logs / changed).write_bytes((logs / records[0].images[0]).read_bytes())  # still a valid PNG
        return plan_splits(records, *args)

    sources = []
    open_source = prepare_module.open_source
    monkeypatch.setattr(prepare_module, "open_source", lambda *a: sources.append(open_source(*a)) or sources[-1])
    monkeypatch.setattr(prepare_module, "plan_splits", change_an_image_then_plan)
    with pytest.raises(DataError, match=f"an image changed while preparing: image '{changed}' is not the file"):
        prepare(logs, tmp_path / "data", PrepareConfig(shard_size=100), workers=2)
    assert started == [True], "pass two ran where the worker processes were"
    assert sources[0]._images.pool is None, "and they are stopped"
    assert folder_files(tmp_path / "data") == kept, "the earlier data is untouched"
    assert not (tmp_path / "data" / ".staging").exists(), "nothing half-written is left"


@pytest.mark.slow
def test_a_worker_killed_mid_run_fails_the_prepare_clearly_instead_of_hanging(tmp_path):
    """multiprocessing.Pool replaces a dead worker and waits for ever on the images it held; not us."""
    logs = write_marketplace(tmp_path / "logs", SyntheticConfig(merchants=24, sessions_per_merchant=24, seed=2))
    process = subprocess.Popen([sys.executable, "-m", "perfusion_cli", "prepare", str(logs), "--out",
                                str(tmp_path / "data"), "--workers", "2"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    workers, deadline = [], time.time() + 60
    while not workers and process.poll() is None and time.time() < deadline:
        workers = [pid for pid in children(process.pid) if _is_worker(pid)]
        time.sleep(0.005)
    assert workers, "the worker processes started"
    os.kill(workers[0], signal.SIGKILL)  # as the system's out-of-memory killer would
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1, (out, err)
    assert "a --workers process died while" in err and "nothing was written" in err
    assert not (tmp_path / "data" / "manifest.json").exists() and not (tmp_path / "data" / ".staging").exists()
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers[1:]):
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers[1:]), "the other worker is stopped"


def _is_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
