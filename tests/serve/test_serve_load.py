"""16 clients × 4 requests against one real server: every request answered or refused with 503 (and when
to retry); every answered request's session recorded exactly once, retries included; requests batched."""

from collections import Counter

import httpx

from perfusion_cli.serving.load import run_load
from tests.helpers import read_jsonl
from tests.serve.conftest import Server


def test_sixteen_clients_are_answered_or_refused_and_no_session_is_lost_or_doubled(serve_workspace, tmp_path):
    # a small queue, so that some of the 16 clients find it full
    with Server(serve_workspace, tmp_path / "logs", "--queue-size", 6, "--max-batch-images", 8,
                "--max-wait-ms", 50) as server:
        report = run_load(server.url(""), clients=16, requests=4, n=2)
        info = httpx.get(server.url("/v1/info")).json()
    assert not report.errors, report.errors
    assert sum(report.statuses.values()) == 64 and set(report.statuses) <= {200, 503}, report.statuses
    assert report.retry_after == report.statuses.get(503, 0)
    assert report.answered >= 16  # each client is answered at least once in four tries, or the queue is starved
    lines = read_jsonl(tmp_path / "logs" / "sessions.jsonl")
    counts = Counter(line["session_id"] for line in lines)
    assert sorted(counts) == sorted(report.sessions) and set(counts.values()) == {1}
    assert len(report.sessions) == report.answered == report.duplicates_acknowledged
    for line in lines:
        assert all((tmp_path / "logs" / c["image"]).is_file() for c in line["candidates"])
    # requests from different clients shared pipeline calls
    assert info["queue"]["requests"] == report.answered and info["queue"]["batches"] < report.answered
