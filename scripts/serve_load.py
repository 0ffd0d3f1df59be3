"""`perfusion serve` under load: micro-batched against one request at a time (docs/benchmarks.md,
"Data, serving and step cost").

    .venv/bin/python scripts/serve_load.py --workdir demo [--clients 16] [--requests 4] [--n 2] [--steps 20]

Needs a workspace with a trained generator (`make demo` makes one). Starts the server twice on
127.0.0.1, in one run: with the shipped micro-batching settings, then with `--max-batch-images 1
--max-wait-ms 0` (each request its own pipeline call); each time CLIENTS clients send REQUESTS
generate requests of N images in turn and record a session for each answer. Prints p50/p95 latency,
images/s, 503s and the sessions recorded; the logs go to a temporary folder.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from perfusion_cli.serving.load import run_load

PERFUSION = str(Path(sys.executable).with_name("perfusion"))


def serve(workdir: Path, logs: Path, steps: int, *args: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([PERFUSION, "--workdir", str(workdir), "serve", "--port", str(port), "--logs", str(logs),
                                "--steps", str(steps), "--queue-size", "64", *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    rows = []
    for name, flags in (("micro-batched (16 images, 25 ms)", ()),
                        ("one request at a time", ("--max-batch-images", "1", "--max-wait-ms", "0"))):
        with tempfile.TemporaryDirectory() as logs:
            process, url = serve(args.workdir, Path(logs) / "logs", args.steps, *flags)
            try:
                httpx.post(f"{url}/v1/generate", json={"merchant_id": httpx.get(f"{url}/v1/merchants").json()
                                                       ["merchants"][0], "prompt": "warm-up", "n": 1}, timeout=600)
                report = run_load(url, args.clients, args.requests, args.n)
                queue = httpx.get(f"{url}/v1/info").json()["queue"]
            finally:
                process.terminate()
                process.wait()
        rows.append((name, report, queue))
        print(f"{name}: {report.answered}/{args.clients * args.requests} answered, 503s {report.statuses.get(503, 0)}, "
              f"p50 {report.percentile(50):.2f} s, p95 {report.percentile(95):.2f} s, "
              f"{report.images_per_second:.2f} images/s, {queue['requests'] / max(queue['batches'], 1):.1f} "
              f"requests per pipeline call, sessions recorded {len(report.sessions)} "
              f"(retries acknowledged as duplicates {report.duplicates_acknowledged}), errors {len(report.errors)}",
              flush=True)
    batched, alone = rows[0][1], rows[1][1]
    print(f"throughput ×{batched.images_per_second / alone.images_per_second:.2f}, "
          f"p50 ×{batched.percentile(50) / alone.percentile(50):.2f}, p95 ×{batched.percentile(95) / alone.percentile(95):.2f} "
          f"(micro-batched / one at a time)")


if __name__ == "__main__":
    sys.exit(main())
