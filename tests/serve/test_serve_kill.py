"""SIGKILL while sessions stream in: after a restart every acknowledged session is in sessions.jsonl once,
the file parses line by line, retries of everything sent write nothing twice, and prepare reads the folder."""

import json
import threading
import time
from collections import Counter

import httpx

from perfusion_cli.config import PrepareConfig
from perfusion_cli.data.prepare import prepare
from tests.serve.conftest import Server

WRITERS = 4


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_a_killed_server_loses_no_acknowledged_session(serve_workspace, tmp_path):
    logs = tmp_path / "logs"
    server = Server(serve_workspace, logs).start()
    # a candidate is recorded in one session only: each session gets two candidates of its own
    answers = [httpx.post(server.url("/v1/generate"), json={"merchant_id": merchant, "prompt": "linen dress", "n": 6},
                          timeout=120).json() for merchant in ("102", "103", "104") * 8]
    pool = iter([(answer["merchant_id"], [c["id"] for c in answer["candidates"]][k:k + 2])
                 for answer in answers for k in (0, 2, 4)])  # 72 sessions
    acknowledged, sent, lock, stop = [], [], threading.Lock(), threading.Event()

    def writer(index):
        with httpx.Client(timeout=10) as http:
            for number in range(100_000):
                with lock:
                    merchant, ids = next(pool, (None, None))
                if stop.is_set() or ids is None:
                    return
                session = {"session_id": f"kill-{index}-{number}", "merchant_id": merchant, "prompt": "linen dress",
                           "candidates": ids, "selected": ids[1:2]}
                with lock:
                    sent.append(session)
                try:
                    response = http.post(server.url("/v1/sessions"), json=session)
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code == 200 and response.json()["recorded"]:
                    with lock:
                        acknowledged.append(session["session_id"])

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()  # SIGKILL: no shutdown handler runs
    stop.set()
    for thread in threads:
        thread.join()
    assert len(acknowledged) >= 40

    with Server(serve_workspace, logs) as again:  # the journal repairs a torn tail, if the kill left one
        for session in sent:  # every client retries what it sent, answered or not
            response = httpx.post(again.url("/v1/sessions"), json=session, timeout=30)
            assert response.status_code == 200, response.text
            if session["session_id"] in acknowledged:
                assert response.json()["duplicate"] is True
    lines = _lines(logs / "sessions.jsonl")  # every line parses
    counts = Counter(line["session_id"] for line in lines)
    assert set(counts.values()) == {1} and set(counts) == {s["session_id"] for s in sent}
    manifest = prepare(logs, tmp_path / "data", PrepareConfig(min_records=1)).raw
    accounting = manifest["accounting"]
    assert accounting["balanced"] and accounting["session_rows"] == len(sent) == accounting["in_shards"] + \
        accounting["held_out"] and accounting["quarantined"] == 0
