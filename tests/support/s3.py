"""A real S3 server for the tests: SeaweedFS (``weed server -s3``), built by ``hack/s3.sh build`` into the
version-keyed cache, started on free loopback ports with S3 credentials, stopped by its pid.

``s3_server`` (one per test module) and ``s3_server_factory`` (servers a test may stop and restart on the
same ports and data, for fault tests). Without the binary the fixtures skip locally and FAIL under CI
(``CI`` set): run ``hack/s3.sh build`` (``make s3-build``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import missing_input, wait_until

REPO = Path(__file__).resolve().parents[2]
ACCESS_KEY = "elastiserve-test"
SECRET_KEY = "elastiserve-test-secret"
REGION = "us-east-1"
START_DEADLINE = 90.0


def seaweedfs_version() -> str:
    text = (REPO / "hack" / "versions.env").read_text()
    m = re.search(r'^SEAWEEDFS_VERSION="\$\{SEAWEEDFS_VERSION:-([^}]+)\}"', text, re.M)
    if not m:
        raise RuntimeError("SEAWEEDFS_VERSION not found in hack/versions.env")
    return os.environ.get("SEAWEEDFS_VERSION") or m.group(1)


def weed_binary() -> Path:
    cache = Path(os.environ.get("ELASTISERVE_CACHE") or Path.home() / ".cache" / "elastiserve").expanduser()
    return cache / "bin" / f"seaweedfs-{seaweedfs_version()}" / "weed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """One ``weed server`` (master, volume, filer and S3 gateway in one process) on loopback."""

    def __init__(self, workdir: Path, binary: Path | None = None):
        self.binary = binary or weed_binary()
        self.workdir = workdir
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        self.ports = {k: _free_port() for k in ("master", "master_grpc", "volume", "volume_grpc", "filer",
                                                "filer_grpc", "s3", "s3_grpc")}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.config = workdir / "s3.json"
        self.config.write_text(json.dumps({"identities": [{
            "name": "elastiserve", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "weed.log"
        self.starts = 0

    def command(self) -> list[str]:
        p = self.ports
        return [str(self.binary), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.workdir / 'data'}",
                f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
                "-master.volumeSizeLimitMB=64", f"-volume.port={p['volume']}",
                f"-volume.port.grpc={p['volume_grpc']}", "-volume.max=0",
                "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
                "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
                "-s3.port.iceberg=0", "-s3.port.lance=0",  # fixed default ports: off
                f"-s3.config={self.config}"]

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "S3Server":
        self.starts += 1
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(self.command(), stdout=logf, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            wait_until(self._writable, timeout=START_DEADLINE, interval=0.25, what="SeaweedFS S3 to accept writes")
        except AssertionError as e:
            self.stop()
            raise AssertionError(f"{e}\n--- {self.log} ---\n{self.log.read_text()[-3000:]}") from None
        return self

    def _writable(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"weed exited with {self.proc.returncode}")
        fs = self.fs()
        if not fs.exists("health"):
            fs.mkdir("health")
        fs.pipe(f"health/probe-{self.starts}", b"ok")
        return fs.cat(f"health/probe-{self.starts}") == b"ok"

    def stop(self) -> None:
        """SIGTERM the process group by the pid we started; SIGKILL after 15 s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self._remove_sockets()

    def kill(self) -> None:
        """Stop at once (SIGKILL), as a crash would."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """weed binds Unix sockets in /tmp: ``seaweedfs-<service>-grpc-<port>.sock`` per gRPC port and
        ``seaweedfs-<filer|s3>-<port>.sock`` for the filer's and the gateway's HTTP."""
        for svc in ("master", "volume", "filer", "s3"):
            Path(f"/tmp/seaweedfs-{svc}-grpc-{self.ports[svc + '_grpc']}.sock").unlink(missing_ok=True)
        for svc in ("filer", "s3"):
            Path(f"/tmp/seaweedfs-{svc}-{self.ports[svc]}.sock").unlink(missing_ok=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- clients -------------------------------------------------------------------------------
    def env(self, *, key: str = ACCESS_KEY, secret: str = SECRET_KEY) -> dict[str, str]:
        """The standard AWS variables that point a client at this server (no instance metadata lookups)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}

    def fs(self, *, key: str = ACCESS_KEY, secret: str = SECRET_KEY):
        import s3fs

        return s3fs.S3FileSystem(key=key, secret=secret, skip_instance_cache=True, use_listings_cache=False,
                                 client_kwargs={"endpoint_url": self.endpoint, "region_name": REGION},
                                 config_kwargs={"connect_timeout": 2, "read_timeout": 10,
                                                "retries": {"max_attempts": 1}})

    def upload_dir(self, local: Path, dest: str) -> None:
        """Copy the files of ``local`` to ``bucket/prefix`` (created as needed)."""
        fs = self.fs()
        bucket = dest.split("/", 1)[0]
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        for f in sorted(p for p in local.iterdir() if p.is_file()):
            fs.put_file(str(f), f"{dest.rstrip('/')}/{f.name}")


def _require_binary() -> Path:
    binary = weed_binary()
    if not binary.exists():
        missing_input(f"SeaweedFS is not built ({binary} missing): run `hack/s3.sh build` (make s3-build)")
    return binary


class S3ServerFactory:
    def __init__(self, root: Path, binary: Path):
        self.root, self.binary = root, binary
        self.servers: list[S3Server] = []

    def __call__(self) -> S3Server:
        srv = S3Server(self.root / f"s3-{len(self.servers)}", self.binary)
        self.servers.append(srv)
        return srv.start()

    def stop_all(self) -> None:
        for srv in self.servers:
            srv.stop()


@pytest.fixture
def s3_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3ServerFactory]:
    """Start real S3 servers (``srv = s3_server_factory()``); each is stopped by its pid at teardown."""
    factory = S3ServerFactory(tmp_path_factory.mktemp("s3"), _require_binary())
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One real S3 server shared by a test module (do not stop it in a test: use ``s3_server_factory``)."""
    factory = S3ServerFactory(tmp_path_factory.mktemp("s3shared"), _require_binary())
    t0 = time.monotonic()
    try:
        srv = factory()
        srv.start_seconds = time.monotonic() - t0
        yield srv
    finally:
        factory.stop_all()
