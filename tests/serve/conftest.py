"""A workspace with a trained tiny generator and reward model, and real ``perfusion serve`` processes on
127.0.0.1 that the tests start and stop themselves."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import pytest


@pytest.fixture(scope="session")
def serve_workspace(trained_workspace):
    return trained_workspace


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``perfusion serve`` in its own process; ``url`` once it answers /healthz."""

    def __init__(self, workspace, logs, *args, token=None):
        self.workspace, self.logs, self.args, self.token = workspace, logs, [str(a) for a in args], token
        self.process = None

    def start(self, timeout: float = 180.0) -> "Server":
        self.port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if self.token:
            env["PERFUSION_TOKEN"] = self.token
        self.output = tempfile.TemporaryFile("w+")
        logs = ["--logs", str(self.logs)] if self.logs else []  # None: the workspace's logs/
        self.process = subprocess.Popen(
            [sys.executable, "-m", "perfusion_cli", "--workdir", str(self.workspace), "serve", "--port",
             str(self.port), *logs, "--steps", "3", *self.args],
            stdout=self.output, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}: {self.text()}")
            try:
                if httpx.get(self.url("/healthz"), timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.3)
        raise AssertionError(f"serve did not answer within {timeout} s: {self.text()}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def text(self) -> str:
        self.output.seek(0)
        return self.output.read()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture
def shop(serve_workspace, tmp_path):
    """The trained workspace's models and data under a fresh root: tokens made here stay out of the shared one."""
    root = tmp_path / "shop"
    root.mkdir()
    for name in ("data", "runs", "perfusion.toml"):
        (root / name).symlink_to(serve_workspace / name)
    return root


def perfusion(workspace, *args) -> tuple[int, str, str]:
    """A ``perfusion`` command in ``workspace``: (exit code, stdout, stderr with its whitespace collapsed)."""
    result = subprocess.run([sys.executable, "-m", "perfusion_cli", "--workdir", str(workspace), *map(str, args)],
                            capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout, " ".join(result.stderr.split())


def add_token(workspace, merchant) -> str:
    """``perfusion token add MERCHANT``'s token: its last line."""
    code, out, err = perfusion(workspace, "token", "add", merchant)
    assert code == 0, err
    return out.strip().splitlines()[-1]
