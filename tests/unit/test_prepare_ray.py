"""``prepare --engine ray`` on a local Ray runtime (2 CPUs): the same shards, quarantine, held-out rows,
merchants and manifest as ``--engine local``, byte for byte, bad rows and excluded tokens included; a changed
image is refused."""

import json

import pytest

from perfusion_cli.config import PrepareConfig, SyntheticConfig
from perfusion_cli.data.prepare import prepare
from perfusion_cli.marketplace.synthetic import write_marketplace
from perfusion_cli.errors import ConfigError
from tests.helpers import folder_files

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def runtime():
    yield
    ray.shutdown()


def test_the_ray_engine_writes_what_the_local_engine_writes(tmp_path):
    logs = write_marketplace(tmp_path / "logs", SyntheticConfig(merchants=10, sessions_per_merchant=14, seed=5))
    lines = (logs / "sessions.jsonl").read_text().splitlines()
    (logs / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    bad = {3: ("image", "images/broken.png"), 4: ("image", "../outside.png"), 5: ("image", "images/nowhere.png"),
           6: ("session_id", json.loads(lines[2])["session_id"]), 7: ("merchant_id", "nobody")}
    for offset, (field, value) in bad.items():
        row = json.loads(lines[offset])
        if field == "image":
            row["candidates"][0]["image"] = value
        else:
            row[field] = value
        lines[offset] = json.dumps(row)
    for offset in (10, 11, 12):  # recorded by a serve token the prepare leaves out
        lines[offset] = json.dumps({**json.loads(lines[offset]), "recorded_by": "leaked"})
    lines[8] = "{not json"
    lines.insert(9, "")
    (logs / "sessions.jsonl").write_text("\n".join(lines) + "\n")
    config = PrepareConfig(shard_size=20)  # several shards a split, written by separate Ray tasks

    local = prepare(logs, tmp_path / "local", config, workers=1, exclude_tokens=("leaked",)).raw
    distributed = prepare(logs, tmp_path / "ray", config, workers=2, engine="ray", exclude_tokens=("leaked",)).raw
    assert folder_files(tmp_path / "local") == folder_files(tmp_path / "ray")
    assert local["quarantine"]["reasons"] == {"duplicate_session_id": 1, "image_corrupt": 1, "image_missing": 1,
                                              "image_path_escapes": 1, "invalid_json": 1, "unknown_merchant": 1}
    assert local["held_out"]["reasons"]["excluded_token"] == distributed["accounting"]["excluded_by_token"] == 3
    assert distributed["accounting"]["balanced"] and len(distributed["splits"]["train"]["shards"]) > 1


def test_an_image_changed_after_validation_is_refused_by_the_shard_writing_task(tmp_path, monkeypatch):
    from perfusion_cli.data import ray_engine
    from perfusion_cli.errors import DataError

    logs = write_marketplace(tmp_path / "logs", SyntheticConfig(merchants=4, sessions_per_merchant=12, seed=2))
    first = json.loads((logs / "sessions.jsonl").read_text().splitlines()[0])["candidates"]
    scan = ray_engine.scan

    def scan_then_change(*args, **kwargs):
        found = scan(*args, **kwargs)
        (logs / first[0]["image"]).write_bytes((logs / first[1]["image"]).read_bytes())  # still a valid PNG
        return found

    monkeypatch.setattr(ray_engine, "scan", scan_then_change)
    with pytest.raises(DataError, match="an image changed while preparing"):
        prepare(logs, tmp_path / "out", PrepareConfig(), workers=2, engine="ray")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_ray_workers_read_the_logs_from_their_url(tmp_path):
    """What a cluster does: the workers fetch the images from the logs' URL themselves (here a real HTTP
    server on 127.0.0.1); the output is the local folder's."""
    import functools
    import http.server
    import threading

    pytest.importorskip("aiohttp")
    logs = write_marketplace(tmp_path / "logs", SyntheticConfig(merchants=4, sessions_per_merchant=12, seed=6))
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/logs"
        prepare(url, tmp_path / "ray", PrepareConfig(), workers=2, engine="ray")
    finally:
        server.shutdown()
        server.server_close()
    prepare(logs, tmp_path / "local", PrepareConfig(), workers=1)
    assert folder_files(tmp_path / "ray") == folder_files(tmp_path / "local")


def test_pick_a_pic_stays_on_the_local_engine(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(ConfigError, match="--engine ray reads logs folders"):
        prepare(tmp_path / "x.parquet", tmp_path / "out", PrepareConfig(), engine="ray")
