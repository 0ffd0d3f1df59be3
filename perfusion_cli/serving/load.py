"""A load generator for ``perfusion serve``: many clients, each asking in turn and recording its picks.

Each client sends ``requests`` generate requests one after another; every answered request is followed
by its session (the first candidate picked), sent twice, as a client retrying after a lost reply would.
What it returns is what the concurrency test checks and ``scripts/serve_load.py`` reports.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class LoadReport:
    clients: int
    requests: int
    images_per_request: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # answered generate requests, seconds
    statuses: dict[int, int] = field(default_factory=dict)
    retry_after: int = 0  # 503 answers that said when to retry
    sessions: list[str] = field(default_factory=list)  # acknowledged session ids (first answers)
    duplicates_acknowledged: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def images_per_second(self) -> float:
        return self.answered * self.images_per_request / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[round(q) - 1]


def run_load(base_url: str, clients: int = 16, requests: int = 4, n: int = 2, merchants: list[str] | None = None,
             prompt: str = "linen dress", token: str | None = None, timeout: float = 600.0) -> LoadReport:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    merchants = merchants or httpx.get(f"{base_url}/v1/merchants", headers=headers, timeout=30).json()["merchants"]
    report = LoadReport(clients, requests, n)
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(base_url=base_url, headers=headers, timeout=timeout) as http:
            for number in range(requests):
                merchant = merchants[(index * requests + number) % len(merchants)]
                started = time.perf_counter()
                try:
                    response = http.post("/v1/generate", json={"merchant_id": merchant, "prompt": prompt, "n": n})
                except httpx.HTTPError as exc:
                    with lock:
                        report.errors.append(f"client {index}: {type(exc).__name__}: {exc}")
                    continue
                elapsed = time.perf_counter() - started
                with lock:
                    report.statuses[response.status_code] = report.statuses.get(response.status_code, 0) + 1
                    if response.status_code == 503 and response.headers.get("retry-after"):
                        report.retry_after += 1
                if response.status_code != 200:
                    continue
                answer = response.json()
                ids = [c["id"] for c in answer["candidates"]]
                session = {"session_id": f"load-{index}-{number}", "merchant_id": merchant, "prompt": prompt,
                           "candidates": ids, "selected": ids[:1]}
                first, retry = (http.post("/v1/sessions", json=session) for _ in range(2))
                with lock:
                    report.latencies.append(elapsed)
                    if first.status_code == 200 and first.json()["recorded"]:
                        report.sessions.append(session["session_id"])
                    else:
                        report.errors.append(f"session {session['session_id']}: {first.status_code} {first.text}")
                    if retry.status_code == 200 and retry.json()["duplicate"]:
                        report.duplicates_acknowledged += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.seconds = time.perf_counter() - started
    return report
