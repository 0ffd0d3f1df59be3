"""``prepare`` from a URL (fsspec): a logs folder served by a real HTTP server on 127.0.0.1 prepares into
the same shards as the folder itself, and an image path that leaves the logs root is refused there too."""

import functools
import http.server
import json
import threading

import pytest

from perfusion_cli.config import PrepareConfig, SyntheticConfig
from perfusion_cli.data.prepare import prepare
from perfusion_cli.marketplace.synthetic import write_marketplace
from perfusion_cli.errors import DataError
from tests.helpers import folder_files, png_bytes

pytest.importorskip("aiohttp")  # fsspec's HTTP filesystem; the dev and remote extras install it


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    """tmp_path over HTTP; yields its base URL."""
    handler = functools.partial(_Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_logs_url_prepares_into_the_same_shards_as_the_folder(tmp_path, served):
    logs = write_marketplace(tmp_path / "logs", SyntheticConfig(merchants=6, sessions_per_merchant=12, seed=3))
    (tmp_path / "secret.png").write_bytes(png_bytes((1, 2, 3)))  # served, but outside the logs root
    (logs / "images" / "with space.png").write_bytes(png_bytes((9, 9, 9)))
    lines = (logs / "sessions.jsonl").read_text().splitlines()
    escapes = ("../secret.png", "images/../../secret.png", "/secret.png")
    # names, as on a disk: never decoded into a traversal or followed to another host
    literal = ("%2e%2e/secret.png", "http://127.0.0.1/secret.png", "images/nowhere.png")
    for offset, image in enumerate((*escapes, *literal, "images/with space.png")):
        row = json.loads(lines[offset])
        row["candidates"][0]["image"] = image
        lines[offset] = json.dumps(row)
    (logs / "sessions.jsonl").write_text("\n".join(lines) + "\n")

    local = prepare(logs, tmp_path / "local", PrepareConfig(min_records=2)).raw
    remote = prepare(f"{served}/logs", tmp_path / "remote", PrepareConfig(min_records=2), workers=2).raw
    assert folder_files(tmp_path / "local") == folder_files(tmp_path / "remote")  # shards, quarantine, manifest, truth
    assert remote["quarantine"]["reasons"] == local["quarantine"]["reasons"] == {
        "image_path_escapes": len(escapes), "image_missing": len(literal)}
    assert remote["accounting"]["balanced"] and remote["synthetic"] is True  # truth.json came along


def test_a_url_without_the_logs_files_says_what_is_missing(tmp_path, served):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no sessions.jsonl at http://127\.0\.0\.1:\d+/empty"):
        prepare(f"{served}/empty", tmp_path / "out", PrepareConfig())


def test_the_cli_takes_the_url_as_given(tmp_path, served):
    from typer.testing import CliRunner

    from perfusion_cli.cli.main import app

    write_marketplace(tmp_path / "logs", SyntheticConfig(merchants=3, sessions_per_merchant=12, seed=1))
    result = CliRunner().invoke(app, ["--workdir", str(tmp_path), "prepare", f"{served}/logs/", "--workers", "1"])
    text = " ".join(result.output.split())
    assert result.exit_code == 0, text
    assert "input rows 36 = in shards 36 + quarantined 0 + held out 0 (balanced)" in text


def test_prepared_data_uploads_to_a_url_with_the_manifest_last(tmp_path, served):
    import fsspec

    logs = write_marketplace(tmp_path / "logs", SyntheticConfig(merchants=4, sessions_per_merchant=12, seed=4))
    local = prepare(logs, tmp_path / "local", PrepareConfig()).raw
    fs = fsspec.filesystem("memory")
    fs.pipe("/prepared/shards/train-999999.tar", b"a stale shard of an earlier run")
    fs.pipe("/prepared/manifest.json", b"{}")
    order = []
    put_file = fs.put_file
    fs.put_file = lambda source, target, **kw: (order.append(target), put_file(source, target, **kw))
    try:
        uploaded = prepare(f"{served}/logs", "memory://prepared", PrepareConfig()).raw
    finally:
        del fs.put_file
    assert uploaded == local
    remote = {path.removeprefix("/prepared/"): fs.cat(path) for path in fs.find("/prepared")}
    assert remote == folder_files(tmp_path / "local")  # the stale shard is gone, nothing else differs
    assert order[-1] == "/prepared/manifest.json"
    fs.rm("/prepared", recursive=True)
