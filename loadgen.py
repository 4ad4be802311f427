"""Open-loop load against a model server: Poisson arrivals at a rate that follows a curve (a recorded trace,
the demo's compressed day, or a constant), bounded in time and in count. ``elastiserve load`` runs it.

Requests are KServe v2 ``infer`` calls with a short sentence, sent round-robin to the model's endpoints (a
fixed list, or a JSON file the caller rewrites as replicas come and go), or to the activator while there
are none. Load only ever goes to loopback addresses (127.0.0.0/8, localhost), or to the address ranges a
caller names as this machine's own (``local_networks``: the demo passes the local cluster's pod and Service
ranges, which the real node's egress guard keeps from leaving the machine): this is a tool for local
clusters, the demo and benchmarks, never a way to send traffic elsewhere.
"""

from __future__ import annotations

import asyncio
import bisect
import ipaddress
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp

SENTENCES = [
    "Autoscaling model servers saves money.",
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog.",
    "Forecasts let the cluster scale before the peak.",
    "Quantized replicas absorb short bursts cheaply.",
]

Rate = Callable[[float], float]
"""Requests per second at ``t`` seconds from the start of the load."""


# --------------------------------------------------------------------------- rate curves


def _smoothstep(a: float, b: float, x: float) -> float:
    t = min(1.0, max(0.0, (x - a) / (b - a)))
    return t * t * (3 - 2 * t)


@dataclass(frozen=True)
class CompressedDay:
    """Request rate over one compressed day of ``period`` seconds, smooth so a Fourier model can learn it.

    The cycle starts with the night (no requests → scale to zero), then morning traffic (wake from
    zero, INT8 first), a short midday peak (pre-scale before it, INT8 burst), and the evening decline.
    """

    period: float = 600.0
    base: float = 6.0
    peak: float = 45.0

    def __call__(self, t: float) -> float:
        x = (t % self.period) / self.period
        day = _smoothstep(0.33, 0.43, x) * (1 - _smoothstep(0.88, 0.98, x))
        bump = math.exp(-(((x - 0.68) / 0.06) ** 2))
        return day * (self.base + (self.peak - self.base) * bump)


@dataclass(frozen=True)
class Constant:
    qps: float

    def __call__(self, t: float) -> float:
        return self.qps


@dataclass(frozen=True)
class TraceCurve:
    """A recorded trace (the ``simulation.traces`` CSV format) replayed in ``period`` seconds, repeating."""

    times: tuple[float, ...]
    values: tuple[float, ...]
    period: float

    @classmethod
    def load(cls, path: Path, period: float | None = None, peak: float | None = None) -> TraceCurve:
        """``period``: seconds to replay the whole trace in (default: its own length, real time).
        ``peak``: scale the rates so the busiest bin has this many requests per second (default: as recorded).
        A file that cannot be used raises ``ValueError`` naming the file and line."""
        from .simulation.traces import load_trace

        trace = load_trace(path)
        rates = [float(v) for v in trace.rate]
        span = trace.duration_seconds
        period = span if period is None else period
        if not period > 0:
            raise ValueError(f"period must be positive (got {period})")
        scale = 1.0 if peak is None else peak / max(max(rates), 1e-9)
        times = tuple(i * trace.step_seconds * period / span for i in range(len(rates)))
        return cls(times, tuple(v * scale for v in rates), period)

    def __call__(self, t: float) -> float:
        i = max(0, bisect.bisect_right(self.times, t % self.period) - 1)
        return self.values[i]


# --------------------------------------------------------------------------- the load


@dataclass
class Stats:
    sent: int = 0
    ok: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    """Failed requests by HTTP status (0: no response, or no endpoint to send to)."""
    via_activator: int = 0
    latencies: list[float] = field(default_factory=list)
    window: list[tuple[float, float]] = field(default_factory=list)
    """(completion time, latency) for recent-percentile reporting."""

    def p95(self, since: float | None = None) -> float | None:
        vals = [lat for t, lat in self.window if since is None or t >= since]
        if not vals:
            return None
        vals.sort()
        return vals[min(len(vals) - 1, int(0.95 * len(vals)))]

    def summary(self, seconds: float) -> dict[str, Any]:
        """What a run did, for people and for JSON: counts, achieved rate and latency quantiles (ms)."""
        lat = sorted(self.latencies)

        def q(p: float) -> float | None:
            return round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 2) if lat else None

        return {"sent": self.sent, "ok": self.ok, "errors": {str(k): v for k, v in sorted(self.errors.items())},
                "via_activator": self.via_activator, "seconds": round(seconds, 3),
                "ok_per_second": round(self.ok / seconds, 3) if seconds > 0 else None,
                "latency_ms": {"p50": q(0.5), "p95": q(0.95), "p99": q(0.99)}}


def loopback(url: str, local_networks: Sequence[str] = ()) -> str:
    """``url``, if it is on this machine (loopback, or an IP address in one of ``local_networks``); otherwise
    ``ValueError`` saying why."""
    host = urlparse(url).hostname or ""
    if host == "localhost" or host.startswith("127.") or host == "::1":
        return url.rstrip("/")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and any(ip in ipaddress.ip_network(n) for n in local_networks):
        return url.rstrip("/")
    allowed = ", ".join(["127.0.0.0/8", "localhost", *local_networks])
    raise ValueError(f"load is only ever sent to this machine's addresses ({allowed}), not {url}")


class LoadGen:
    """Open-loop Poisson load on one model.

    ``key``: ``namespace/name`` of the ModelDeployment (the ``Host`` header through the activator, and the key
    in an endpoints file). ``endpoints``: base URLs of the replicas (or of the model's Service), or a JSON file
    ``{key: [url, ...]}`` that is re-read whenever it changes. ``host``: the ``Host`` header for requests to
    ``endpoints`` (a Service's cluster IP reached from outside the cluster's DNS: the activator, if the Service
    points there, routes by it). ``local_networks``: see the module's docstring. ``keep_alive=False``: every
    request on a new connection, as a client without keep-alive: a Service then spreads the requests over its
    Ready pods as they come and go (kube-proxy picks a pod per connection, so pooled connections stay pinned
    to the pods that were Ready when they opened)."""

    def __init__(
        self,
        key: str,
        model: str,
        endpoints: Path | str | Sequence[str],
        activator_url: str | None,
        rate: Rate,
        duration: float,
        max_requests: int = 200_000,
        seed: int = 7,
        timeout: float = 30.0,
        host: str | None = None,
        local_networks: Sequence[str] = (),
        keep_alive: bool = True,
        on_result: Callable[[float, float, int], None] | None = None,
    ):
        self.key, self.model = key, model
        self.host = host
        self.local_networks = tuple(local_networks)
        self.keep_alive = keep_alive
        if isinstance(endpoints, (str, Path)):
            self.endpoints_file: Path | None = Path(endpoints)
            self._static: list[str] = []
        else:
            self.endpoints_file = None
            self._static = [loopback(u, self.local_networks) for u in endpoints]
        self.activator_url = loopback(activator_url, self.local_networks) if activator_url else None
        self.rate, self.duration, self.max_requests = rate, duration, max_requests
        self.rng = random.Random(seed)
        self.timeout = timeout
        self.on_result = on_result
        """Called once per request with (sent at, seconds after the start of the load; latency s; HTTP status, 0 for
        no response or no endpoint): per-request records for benchmarks (bench/live.py)."""
        self.stats = Stats()
        self._start = time.monotonic()
        self._rr = 0
        self._cache: tuple[float, list[str]] = (-1.0, [])
        self._tasks: set[asyncio.Task] = set()

    def endpoints(self) -> list[str]:
        if self.endpoints_file is None:
            return self._static
        try:
            mtime = self.endpoints_file.stat().st_mtime
        except FileNotFoundError:
            return []
        if mtime != self._cache[0]:
            try:
                data = json.loads(self.endpoints_file.read_text() or "{}")
            except ValueError:
                return self._cache[1]
            self._cache = (mtime, [loopback(u, self.local_networks) for u in data.get(self.key, [])])
        return self._cache[1]

    async def _one(self, session: aiohttp.ClientSession) -> None:
        eps = self.endpoints()
        headers = {}
        if eps:
            base = eps[self._rr % len(eps)]
            self._rr += 1
            if self.host:
                headers["Host"] = self.host
        elif self.activator_url:
            base = self.activator_url
            namespace, name = self.key.split("/", 1)
            headers["Host"] = f"{name}.{namespace}.svc"  # the model's Service, as a caller in the cluster reaches it
            self.stats.via_activator += 1
        else:
            self.stats.errors[0] = self.stats.errors.get(0, 0) + 1
            if self.on_result:
                self.on_result(time.monotonic() - self._start, 0.0, 0)
            return
        body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [self.rng.choice(SENTENCES)]}]}
        sent = time.monotonic() - self._start
        t0 = time.perf_counter()
        try:
            async with session.post(f"{base}/v2/models/{self.model}/infer", json=body, headers=headers) as r:
                await r.read()
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError):
            status = 0
        lat = time.perf_counter() - t0
        if status == 200:
            self.stats.ok += 1
            self.stats.latencies.append(lat)
            self.stats.window.append((time.monotonic(), lat))
            if len(self.stats.window) > 20000:
                del self.stats.window[:10000]
        else:
            self.stats.errors[status] = self.stats.errors.get(status, 0) + 1
        if self.on_result:
            self.on_result(sent, lat, status)

    def _poisson(self, lam: float) -> int:
        """Knuth's method; lam is small here (rate × a 0.1 s slice)."""
        limit, k, p = math.exp(-lam), 0, 1.0
        while True:
            p *= self.rng.random()
            if p <= limit:
                return k
            k += 1

    async def run(self, stop: asyncio.Event | None = None, slice_s: float = 0.1) -> Stats:
        """Non-homogeneous Poisson arrivals: per 0.1 s slice, Poisson(rate × slice) requests at uniform times.

        (Drawing exponential gaps from the current rate would skip whole stretches: at dawn the rate is
        near zero, so one gap can jump past the entire day.)"""
        start = self._start = time.monotonic()
        stop = stop or asyncio.Event()
        # A pooled connection idles at most 5 s here, well under the servers' 15 s keep-alive: a connection the
        # server is closing as idle is never picked for a request (that race loses the request, status 0).
        connector = (aiohttp.TCPConnector(limit=256, keepalive_timeout=5.0) if self.keep_alive
                     else aiohttp.TCPConnector(limit=256, force_close=True))
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout)) as session:
            t = 0.0
            while t < self.duration and self.stats.sent < self.max_requests and not stop.is_set():
                r = max(self.rate(t), 0.0)
                arrivals = sorted(t + self.rng.random() * slice_s for _ in range(self._poisson(r * slice_s)))
                for at in arrivals:
                    if self.stats.sent >= self.max_requests:
                        break
                    delay = start + at - time.monotonic()
                    if delay > 0 and await _stopped(stop, delay):
                        break
                    self.stats.sent += 1
                    task = asyncio.create_task(self._one(session))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                t += slice_s
                delay = start + t - time.monotonic()
                if delay > 0 and not arrivals and await _stopped(stop, delay):
                    break
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        return self.stats


async def _stopped(stop: asyncio.Event, delay: float) -> bool:
    """Wait ``delay`` seconds; True if ``stop`` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
        return True
    except asyncio.TimeoutError:
        return False
