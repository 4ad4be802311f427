"""A real ``elastiserve serve`` process on a free loopback port, spoken to over HTTP (httpx)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from . import wait_until

READY_DEADLINE = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``args`` go after ``serve --host 127.0.0.1 --port N``; ``env`` is added to this process's environment;
    the server's output goes to ``log``."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "elastiserve.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port), *args]
        self._logf = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.client = httpx.Client(base_url=self.base, timeout=30.0)

    def wait_ready(self, deadline: float = READY_DEADLINE) -> None:
        """Poll readiness; fail at once (with the log's tail) if the process exits."""

        def ready_or_exited() -> bool:  # an exited server ends the wait at once
            if self.proc.poll() is not None:
                return True
            try:
                return self.client.get("/v2/health/ready", timeout=2.0).status_code == 200
            except httpx.TransportError:
                return False

        try:
            wait_until(ready_or_exited, timeout=deadline, interval=0.05, what="server ready")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.log.read_text()[-3000:]}") from None
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")

    def metrics(self) -> str:
        return self.client.get("/metrics").text

    def stop(self) -> int:
        """SIGTERM (a clean shutdown exits 0), SIGKILL after 15 s; returns the exit code."""
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
        return self.proc.returncode
