"""A real Prometheus server for tests (Debian's ``prometheus`` package, 2.42).

Nothing is downloaded at run time: :func:`ensure_prometheus` only finds the
``prometheus`` and ``promtool`` binaries (install them with
``apt-get install -y prometheus``; CI scripts do that).

* :class:`PrometheusServer` runs ``prometheus`` on 127.0.0.1 with a free port, a
  temporary data dir and a generated config scraping the given targets.
* :func:`backfill` writes OpenMetrics text into a data dir with
  ``promtool tsdb create-blocks-from openmetrics``; do it *before* the server
  starts (``PrometheusServer(backfill=...)`` does it for you).
* :func:`openmetrics_gauge` renders samples as OpenMetrics text.
* the ``prometheus_factory`` fixture starts servers and stops them all at teardown.

Since Prometheus 2.39 overlapping blocks are always allowed (the old
``--storage.tsdb.allow-overlapping-blocks`` flag is a deprecated no-op on
2.42), so backfilled blocks that end "now" coexist with the head block.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from . import wait_until

INSTALL_HINT = "apt-get install -y prometheus"


class PrometheusNotInstalled(RuntimeError):
    """The ``prometheus``/``promtool`` binaries are missing."""


class PrometheusError(RuntimeError):
    """Prometheus failed to start, or an API call failed."""


def ensure_prometheus() -> tuple[str, str]:
    """Return the paths of ``prometheus`` and ``promtool``, or raise a clear error.

    ``ELASTISERVE_PROMETHEUS`` / ``ELASTISERVE_PROMTOOL`` override the lookup on PATH.
    """
    found: dict[str, str] = {}
    missing = []
    for name, env in (("prometheus", "ELASTISERVE_PROMETHEUS"), ("promtool", "ELASTISERVE_PROMTOOL")):
        path = os.environ.get(env) or shutil.which(name)
        if path and os.access(path, os.X_OK):
            found[name] = path
        else:
            missing.append(name)
    if missing:
        raise PrometheusNotInstalled(
            f"{' and '.join(missing)} not found on PATH: run `{INSTALL_HINT}` "
            f"(Debian package, provides prometheus and promtool), or set ELASTISERVE_PROMETHEUS/ELASTISERVE_PROMTOOL"
        )
    return found["prometheus"], found["promtool"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- config

Target = str | Mapping[str, Any]


def _static_configs(targets: Iterable[Target]) -> list[dict[str, Any]]:
    """Accept "host:port" strings or {"targets": [...], "labels": {...}} dicts."""
    configs: list[dict[str, Any]] = []
    for t in targets:
        if isinstance(t, str):
            configs.append({"targets": [t]})
        else:
            entry: dict[str, Any] = {"targets": list(t["targets"])}
            if t.get("labels"):
                entry["labels"] = {str(k): str(v) for k, v in t["labels"].items()}
            configs.append(entry)
    return configs


def make_config(
    targets: Iterable[Target] = (),
    *,
    scrape_interval: str = "1s",
    evaluation_interval: str | None = None,
    job_name: str = "test",
    metrics_path: str = "/metrics",
    extra_scrape_configs: Sequence[Mapping[str, Any]] = (),
    rule_files: Sequence[str] = (),
) -> dict[str, Any]:
    """Build a Prometheus config (as a dict) scraping ``targets`` under one job."""
    scrape_configs: list[dict[str, Any]] = []
    static = _static_configs(targets)
    if static:
        scrape_configs.append(
            {
                "job_name": job_name,
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval if _seconds(scrape_interval) < 10 else "10s",
                "metrics_path": metrics_path,
                "static_configs": static,
            }
        )
    scrape_configs.extend(dict(c) for c in extra_scrape_configs)
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": evaluation_interval or scrape_interval,
        },
        "scrape_configs": scrape_configs,
    }
    if rule_files:
        config["rule_files"] = list(rule_files)
    return config


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for suffix in ("ms", "s", "m", "h"):
        if duration.endswith(suffix):
            return float(duration[: -len(suffix)]) * units[suffix]
    return float(duration)


def _write_config(path: Path, config: Mapping[str, Any]) -> None:
    # JSON is valid YAML, so no YAML library is needed.
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- backfill


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def openmetrics_gauge(
    name: str,
    samples: Iterable[tuple[float, float]],
    *,
    labels: Mapping[str, str] | None = None,
    help_text: str = "",
    series: Iterable[tuple[Mapping[str, str], Iterable[tuple[float, float]]]] = (),
    eof: bool = True,
) -> str:
    """Render a gauge as OpenMetrics text: ``samples`` are (unix_seconds, value).

    ``series`` adds more label sets of the same gauge. The text ends with
    ``# EOF`` unless ``eof`` is false (to concatenate several families).
    """
    lines = [f"# HELP {name} {help_text or name}", f"# TYPE {name} gauge"]
    all_series = [(labels or {}, samples), *series]
    for lbls, pts in all_series:
        rendered = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in sorted(lbls.items()))
        prefix = f"{name}{{{rendered}}}" if rendered else name
        for ts, value in sorted(pts, key=lambda p: p[0]):
            lines.append(f"{prefix} {_format_value(value)} {ts:.3f}")
    if eof:
        lines.append("# EOF")
    return "\n".join(lines) + "\n"


def backfill(openmetrics_text: str, data_dir: str | os.PathLike[str], *, promtool: str | None = None) -> str:
    """Create TSDB blocks from OpenMetrics text in ``data_dir`` (before the server starts).

    Returns promtool's output. The text must end with ``# EOF``.
    """
    if promtool is None:
        _, promtool = ensure_prometheus()
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    text = openmetrics_text if openmetrics_text.endswith("\n") else openmetrics_text + "\n"
    if not text.rstrip().endswith("# EOF"):
        text += "# EOF\n"
    with tempfile.NamedTemporaryFile("w", suffix=".om", delete=False, encoding="utf-8") as f:
        f.write(text)
        src = f.name
    try:
        proc = subprocess.run(
            [promtool, "tsdb", "create-blocks-from", "openmetrics", src, str(data)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        os.unlink(src)
    if proc.returncode != 0:
        raise PrometheusError(f"promtool backfill failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout + proc.stderr


# --------------------------------------------------------------------------- server


class PrometheusServer:
    """A ``prometheus`` process on 127.0.0.1 for one test (or one session).

    >>> prom = PrometheusServer(["127.0.0.1:9100"], workdir=tmp_path).start()
    >>> prom.query("up")
    """

    def __init__(
        self,
        targets: Iterable[Target] = (),
        *,
        workdir: str | os.PathLike[str] | None = None,
        scrape_interval: str = "1s",
        job_name: str = "test",
        config: Mapping[str, Any] | None = None,
        backfill: str | None = None,
        port: int | None = None,
        retention: str = "100y",
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        """The address it listens on: loopback, or the real node's bridge address for pods to reach it."""
        self.binary, self.promtool = ensure_prometheus() if binary is None else (binary, ensure_prometheus()[1])
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="elastiserve-prom-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "prometheus.yml"
        self.log_path = self.workdir / "prometheus.log"
        self.port = port or free_port()
        self._fixed_port = port is not None
        self.retention = retention
        self.extra_args = list(extra_args)
        self.config: dict[str, Any] = (
            dict(config)
            if config is not None
            else make_config(targets, scrape_interval=scrape_interval, job_name=job_name)
        )
        self._backfill = backfill
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _args(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address={self.host}:{self.port}",
            "--web.enable-lifecycle",
            "--web.enable-admin-api",
            "--log.level=info",
            *self.extra_args,
        ]

    def start(self, timeout: float = 60) -> PrometheusServer:
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._backfill is not None:
            backfill(self._backfill, self.data_dir, promtool=self.promtool)
            self._backfill = None
        _write_config(self.config_path, self.config)
        for attempt in range(3):
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(  # noqa: S603 - our own binary and args
                    self._args(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    start_new_session=True,
                )
            try:
                self.wait_ready(timeout)
                return self
            except PrometheusError:
                in_use = "address already in use" in self.log_tail(20).lower()
                self._kill()
                if in_use and not self._fixed_port and attempt < 2:
                    self.port = free_port()  # lost a port race: try another one
                    continue
                raise
        raise AssertionError("unreachable")

    def wait_ready(self, timeout: float = 60) -> None:
        """Poll ``/-/ready`` until Prometheus serves queries (or raise with its log)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with code {self._proc.returncode}; log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise PrometheusError(
                    f"prometheus not ready after {timeout:.0f}s on {self.url}; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop the server (idempotent). A workdir we created is removed."""
        self._kill()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reload(self, config: Mapping[str, Any] | None = None, *, targets: Iterable[Target] | None = None) -> None:
        """Write a new config (a full dict, or just new targets) and POST ``/-/reload``."""
        if config is not None:
            self.config = dict(config)
        elif targets is not None:
            job = self.config.get("scrape_configs", [{}])
            first = job[0] if job else {}
            self.config = make_config(
                targets,
                scrape_interval=self.config.get("global", {}).get("scrape_interval", "1s"),
                job_name=first.get("job_name", "test"),
            )
        _write_config(self.config_path, self.config)
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST", data=b"")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                if resp.status != 200:
                    raise PrometheusError(f"reload returned HTTP {resp.status}")
        except urllib.error.HTTPError as exc:
            raise PrometheusError(f"reload failed: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from exc

    # -- HTTP API ------------------------------------------------------------

    def api(self, path: str, params: Mapping[str, Any] | None = None, *, method: str = "GET") -> Any:
        """Call ``/api/v1/<path>`` and return its ``data`` (raise on an error status)."""
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None}, doseq=True)
        url = f"{self.url}/api/v1/{path.lstrip('/')}"
        if method == "GET":
            req = urllib.request.Request(f"{url}?{query}" if query else url)
        else:
            req = urllib.request.Request(
                url,
                data=query.encode(),
                method=method,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                err = json.loads(body)
            except ValueError:
                raise PrometheusError(f"{path}: HTTP {exc.code}: {body[:300]!r}") from exc
            raise PrometheusError(f"{path}: {err.get('errorType')}: {err.get('error')}") from exc
        if not body:
            return None
        payload = json.loads(body)
        if payload.get("status") != "success":
            raise PrometheusError(f"{path}: {payload.get('errorType')}: {payload.get('error')}")
        return payload.get("data")

    def query(self, promql: str, *, time: float | None = None) -> list[dict[str, Any]]:
        """Instant query; returns ``data.result`` (a list of {metric, value})."""
        data = self.api("query", {"query": promql, "time": time}, method="POST")
        return list(data["result"]) if data["resultType"] in ("vector", "matrix") else [data]

    def query_value(self, promql: str, *, time: float | None = None) -> float | None:
        """The value of a single-series instant query (None when empty)."""
        result = self.query(promql, time=time)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{promql!r} returned {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def query_range(self, promql: str, start: float, end: float, step: float | str) -> list[dict[str, Any]]:
        """Range query; returns ``data.result`` (a list of {metric, values})."""
        data = self.api("query_range", {"query": promql, "start": start, "end": end, "step": step}, method="POST")
        return list(data["result"])

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])

    def wait_for_query(self, promql: str, *, timeout: float = 30, predicate: Any = None) -> list[dict[str, Any]]:
        """Poll an instant query until it returns a non-empty result accepted by ``predicate``."""

        def check() -> list[dict[str, Any]] | None:
            result = self.query(promql)
            if result and (predicate is None or predicate(result)):
                return result
            return None

        return wait_until(check, timeout=timeout, interval=0.25, what=f"prometheus query {promql!r}")


# --------------------------------------------------------------------------- fixtures


class PrometheusFactory:
    """Creates started :class:`PrometheusServer` objects; :meth:`stop_all` stops them."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.servers: list[PrometheusServer] = []

    def __call__(self, targets: Iterable[Target] = (), **kwargs: Any) -> PrometheusServer:
        workdir = kwargs.pop("workdir", None) or self.base_dir / f"prom-{len(self.servers)}"
        server = PrometheusServer(targets, workdir=workdir, **kwargs)
        self.servers.append(server)
        return server.start()

    def stop_all(self) -> None:
        errors = []
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as exc:  # noqa: BLE001 - stop the others anyway
                errors.append(exc)
        self.servers.clear()
        if errors:
            raise errors[0]


@pytest.fixture
def prometheus_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusFactory]:
    """Start real Prometheus servers: ``prom = prometheus_factory(["127.0.0.1:PORT"])``.

    Keyword arguments go to :class:`PrometheusServer` (``scrape_interval``,
    ``backfill`` OpenMetrics text, ``config``, ``extra_args`` ...). Every server
    is stopped at teardown. Fails (not skips) when Prometheus is not installed.
    """
    try:
        ensure_prometheus()
    except PrometheusNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    factory = PrometheusFactory(tmp_path_factory.mktemp("prometheus"))
    try:
        yield factory
    finally:
        factory.stop_all()


__all__ = [
    "INSTALL_HINT",
    "PrometheusError",
    "PrometheusFactory",
    "PrometheusNotInstalled",
    "PrometheusServer",
    "backfill",
    "ensure_prometheus",
    "free_port",
    "make_config",
    "openmetrics_gauge",
    "prometheus_factory",
]
