#!/usr/bin/env python3
"""Pod twins: real model-server processes for the fake (kwok) pods of the local control plane.

kwok simulates kubelets: its pods reach Running/Ready but run no containers. For the demo and the
end-to-end tests we want the closed loop to be real, so for every Running pod that elastiserve owns
this starts a real ``elastiserve serve`` process on a loopback port, with the pod's own environment
(what the operator put in the Deployment), and:

- publishes ready twins as endpoints (``endpoints.json``: ``{"ns/modeldeployment": [url, ...]}``), which
  the load generator and the activator read;
- publishes them as Prometheus file-SD targets (``targets.json``) with ``namespace`` and ``pod`` labels,
  like Kubernetes service discovery would;
- exports each twin's real CPU and memory under cAdvisor's names
  (``container_cpu_usage_seconds_total``, ``container_memory_working_set_bytes``) from ``/proc``;
- mounts the pod's ConfigMap volumes like a kubelet: their keys become files in a folder of the twin
  (paths under the mount path in the pod's environment are rewritten to it), refreshed about every
  second, so a ConfigMap edit reaches a running server without a restart.

When a pod goes away its process is stopped. More replicas therefore really do split the load: each
request is served by one of the real processes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

UNPUBLISH_GRACE_S = 1.0
"""From taking a twin out of ``endpoints.json`` to stopping it (a pod also keeps serving while its endpoint goes)."""
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Twin:
    namespace: str
    pod: str
    mdep: str
    variant: str
    port: int
    proc: subprocess.Popen
    started: float
    ready_at: float | None = None
    log: Path | None = None
    volumes: dict[str, Path] = field(default_factory=dict)
    """ConfigMap name → the folder its keys are written to."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
        except (OSError, IndexError, ValueError):
            return 0.0

    def rss_bytes(self) -> int:
        try:
            return int(Path(f"/proc/{self.proc.pid}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            return 0


@dataclass(eq=False)  # hashable by identity: it registers itself as a Prometheus collector
class PodTwins:
    """Keeps one server process per Running pod of the watched namespace."""

    namespace: str
    workdir: Path
    serve_cmd: list[str] = field(default_factory=lambda: [sys.executable, "-m", "elastiserve.cli", "serve"])
    extra_env: dict[str, str] = field(default_factory=dict)
    twins: dict[str, Twin] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False
    """Set by stop_all: a sync still running in another thread must not start new processes after it."""
    volumes_refreshed: float = 0.0
    retiring: list[tuple[threading.Timer, Twin]] = field(default_factory=list)
    """Twins out of the endpoints, to be stopped after UNPUBLISH_GRACE_S."""

    def __post_init__(self) -> None:
        from kubernetes import client as k8s

        self.core = k8s.CoreV1Api()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.endpoints_file = self.workdir / "endpoints.json"
        self.targets_file = self.workdir / "targets.json"
        self._write_files()

    # ------------------------------------------------------------------ pod → process

    def _env(self, pod) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        container = pod.spec.containers[0]
        for e in container.env or []:
            if e.value is not None:
                env[e.name] = e.value
            elif e.value_from and e.value_from.field_ref:
                env[e.name] = pod.metadata.namespace if "namespace" in e.value_from.field_ref.field_path else pod.metadata.name
            elif e.value_from and e.value_from.config_map_key_ref:
                ref = e.value_from.config_map_key_ref
                try:
                    cm = self.core.read_namespaced_config_map(ref.name, pod.metadata.namespace)
                    env[e.name] = (cm.data or {}).get(ref.key, "")
                except Exception:
                    env[e.name] = ""
        # The kubelet expands $(VAR) references to variables defined earlier in the list; so do we.
        for e in container.env or []:
            if e.value and "$(" in e.value:
                env[e.name] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), ""), e.value)
        return env

    def _volumes(self, pod) -> tuple[dict[str, Path], dict[str, Path]]:
        """ConfigMap volumes of the pod: (mount path → local folder, ConfigMap name → local folder)."""
        by_volume = {v.name: v.config_map.name for v in pod.spec.volumes or [] if v.config_map is not None}
        mounts, folders = {}, {}
        for m in pod.spec.containers[0].volume_mounts or []:
            if m.name in by_volume:
                folder = self.workdir / "volumes" / pod.metadata.name / m.name
                folder.mkdir(parents=True, exist_ok=True)
                mounts[m.mount_path.rstrip("/")] = folder
                folders[by_volume[m.name]] = folder
        return mounts, folders

    def _refresh_volumes(self, namespace: str, folders: dict[str, Path], read: dict | None = None) -> None:
        """Write each ConfigMap's keys as files (atomic replace, only when the content changed).
        ``read``: ConfigMaps already read in this pass, by (namespace, name), so replicas share one read."""
        read = {} if read is None else read
        for cm_name, folder in folders.items():
            key = (namespace, cm_name)
            if key not in read:
                try:
                    read[key] = self.core.read_namespaced_config_map(cm_name, namespace).data or {}
                except Exception:
                    read[key] = None  # not created yet, or the API server is busy: keep what is there
            data = read[key]
            if data is None:
                continue
            for key, value in data.items():
                path = folder / key
                if not path.exists() or path.read_text() != value:
                    tmp = folder / f".{key}.tmp"
                    tmp.write_text(value)
                    tmp.replace(path)

    def _start(self, pod) -> Twin:
        labels = pod.metadata.labels or {}
        port = free_port()
        log = self.workdir / f"{pod.metadata.name}.log"
        env = self._env(pod)
        mounts, folders = self._volumes(pod)
        self._refresh_volumes(pod.metadata.namespace, folders)
        for key, value in env.items():
            for mount, folder in mounts.items():
                if value == mount or value.startswith(mount + "/"):
                    env[key] = str(folder) + value[len(mount):]
        proc = subprocess.Popen(
            [*self.serve_cmd, "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return Twin(
            namespace=pod.metadata.namespace,
            pod=pod.metadata.name,
            mdep=labels.get("elastiserve.dev/modeldeployment", ""),
            variant=labels.get("elastiserve.dev/variant", ""),
            port=port,
            proc=proc,
            started=time.monotonic(),
            log=log,
            volumes=folders,
        )

    @staticmethod
    def _stop(twin: Twin) -> None:
        if twin.proc.poll() is None:
            try:
                os.killpg(twin.proc.pid, signal.SIGTERM)
                twin.proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(twin.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _ready(self, twin: Twin) -> bool:
        try:
            with urllib.request.urlopen(f"{twin.url}/v2/health/ready", timeout=0.5) as r:
                return r.status == 200
        except OSError:
            return False

    def sync(self) -> bool:
        """One pass: start twins for new Running pods, stop those whose pod is gone. True if anything changed."""
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector="app.kubernetes.io/managed-by=elastiserve"
        ).items
        running = {
            p.metadata.name: p for p in pods if p.status and p.status.phase == "Running" and not p.metadata.deletion_timestamp
        }
        changed = False
        with self.lock:
            if self.closed:
                return False
            for name, pod in running.items():
                if name not in self.twins:
                    self.twins[name] = self._start(pod)
                    changed = True
            gone = []
            for name in list(self.twins):
                twin = self.twins[name]
                if name not in running or twin.proc.poll() is not None:
                    gone.append(self.twins.pop(name))
                    changed = True
            for twin in self.twins.values():
                if twin.ready_at is None and self._ready(twin):
                    twin.ready_at = time.monotonic()
                    changed = True
            now = time.monotonic()
            if now - self.volumes_refreshed >= 1.0:  # a kubelet syncs ConfigMap volumes periodically, too
                self.volumes_refreshed = now
                read: dict = {}
                for twin in self.twins.values():
                    self._refresh_volumes(twin.namespace, twin.volumes, read)
        if changed:
            self._write_files()
        # Out of the endpoints first, stopped a moment later: a client that read endpoints.json just before
        # still reaches a live server (stopping first refused such requests: the demo lost 3 of 4629 so).
        for twin in gone:
            self._retire(twin)
        return changed

    def _retire(self, twin: Twin) -> None:
        timer = threading.Timer(UNPUBLISH_GRACE_S, self._stop, (twin,))
        timer.daemon = True
        with self.lock:
            self.retiring = [(t, tw) for t, tw in self.retiring if t.is_alive()]
            self.retiring.append((timer, twin))
        timer.start()

    def _write_files(self) -> None:
        endpoints: dict[str, list[str]] = {}
        targets = []
        for t in self.twins.values():
            if t.ready_at is None:
                continue
            endpoints.setdefault(f"{t.namespace}/{t.mdep}", []).append(t.url)
            targets.append({"targets": [f"127.0.0.1:{t.port}"], "labels": {"namespace": t.namespace, "pod": t.pod}})
        for path, data in ((self.endpoints_file, endpoints), (self.targets_file, targets)):
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1))
            tmp.replace(path)  # atomic: readers never see half a file

    def stop_all(self) -> None:
        with self.lock:
            self.closed = True
            for timer, twin in self.retiring:
                timer.cancel()
                self._stop(twin)
            self.retiring.clear()
            for twin in self.twins.values():
                self._stop(twin)
            self.twins.clear()
        self._write_files()

    # ------------------------------------------------------------------ cAdvisor-style metrics

    def collect(self):
        cpu = CounterMetricFamily(
            "container_cpu_usage_seconds", "CPU time of the pod twin's real process.", labels=["namespace", "pod", "container"]
        )
        mem = GaugeMetricFamily(
            "container_memory_working_set_bytes", "RSS of the pod twin's real process.", labels=["namespace", "pod", "container"]
        )
        with self.lock:
            for t in self.twins.values():
                cpu.add_metric([t.namespace, t.pod, "model-server"], t.cpu_seconds())
                mem.add_metric([t.namespace, t.pod, "model-server"], t.rss_bytes())
        yield cpu
        yield mem

    def serve_metrics(self, port: int) -> None:
        registry = CollectorRegistry()
        registry.register(self)
        start_http_server(port, addr="127.0.0.1", registry=registry)

    def run(self, stop: threading.Event, interval: float = 0.25) -> None:
        while not stop.is_set():
            try:
                self.sync()
            except Exception as exc:  # the API server restarting must not kill the twins
                print(f"podtwin: sync failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            stop.wait(interval)


def main() -> None:
    import argparse

    from kubernetes import config as k8s_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--namespace", "-n", required=True)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--metrics-port", type=int, default=0)
    args = ap.parse_args()
    k8s_config.load_kube_config()
    twins = PodTwins(args.namespace, args.workdir)
    if args.metrics_port:
        twins.serve_metrics(args.metrics_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        twins.run(stop)
    finally:
        twins.stop_all()


if __name__ == "__main__":
    main()
