#!/usr/bin/env python3
"""Open-loop load on loopback: Poisson arrivals at a rate that follows a workload curve.

Requests go round-robin to the model's ready replicas (``endpoints.json`` from the pod twins), or to
the activator while the model has none. Bounded in time and in count, and only ever to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import aiohttp

SENTENCES = [
    "Autoscaling model servers saves money.",
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog.",
    "Forecasts let the cluster scale before the peak.",
    "Quantized replicas absorb short bursts cheaply.",
]


@dataclass
class Stats:
    sent: int = 0
    ok: int = 0
    errors: dict[int, int] = field(default_factory=dict)
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


def _loopback(url: str) -> str:
    host = urlparse(url).hostname or ""
    if not (host == "localhost" or host.startswith("127.")):
        raise ValueError(f"load is only ever sent to loopback addresses, not {url}")
    return url


class LoadGen:
    def __init__(
        self,
        key: str,
        model: str,
        endpoints_file: Path,
        activator_url: str | None,
        rate: Callable[[float], float],
        duration: float,
        max_requests: int = 200_000,
        seed: int = 7,
        timeout: float = 30.0,
    ):
        self.key, self.model = key, model
        self.endpoints_file = Path(endpoints_file)
        self.activator_url = _loopback(activator_url) if activator_url else None
        self.rate, self.duration, self.max_requests = rate, duration, max_requests
        self.rng = random.Random(seed)
        self.timeout = timeout
        self.stats = Stats()
        self._rr = 0
        self._cache: tuple[float, list[str]] = (-1.0, [])
        self._tasks: set[asyncio.Task] = set()

    def endpoints(self) -> list[str]:
        try:
            mtime = self.endpoints_file.stat().st_mtime
        except FileNotFoundError:
            return []
        if mtime != self._cache[0]:
            try:
                data = json.loads(self.endpoints_file.read_text() or "{}")
            except ValueError:
                return self._cache[1]
            self._cache = (mtime, [_loopback(u) for u in data.get(self.key, [])])
        return self._cache[1]

    async def _one(self, session: aiohttp.ClientSession, started: float) -> None:
        eps = self.endpoints()
        headers = {}
        if eps:
            base = eps[self._rr % len(eps)]
            self._rr += 1
        elif self.activator_url:
            base = self.activator_url
            namespace, name = self.key.split("/", 1)
            headers["Host"] = f"{name}.{namespace}.svc"  # the model's Service, as a caller in the cluster reaches it
            self.stats.via_activator += 1
        else:
            self.stats.errors[0] = self.stats.errors.get(0, 0) + 1
            return
        body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [self.rng.choice(SENTENCES)]}]}
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
            now = time.monotonic()
            self.stats.window.append((now, lat))
            if len(self.stats.window) > 20000:
                del self.stats.window[:10000]
        else:
            self.stats.errors[status] = self.stats.errors.get(status, 0) + 1

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
        start = time.monotonic()
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout)) as session:
            t = 0.0
            while t < self.duration and self.stats.sent < self.max_requests and not (stop and stop.is_set()):
                r = max(self.rate(t), 0.0)
                arrivals = sorted(t + self.rng.random() * slice_s for _ in range(self._poisson(r * slice_s)))
                for at in arrivals:
                    delay = start + at - time.monotonic()
                    if delay > 0:
                        try:
                            await asyncio.wait_for((stop or asyncio.Event()).wait(), timeout=delay)
                            break
                        except asyncio.TimeoutError:
                            pass
                    self.stats.sent += 1
                    task = asyncio.create_task(self._one(session, time.monotonic()))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                t += slice_s
                delay = start + t - time.monotonic()
                if delay > 0 and not arrivals:
                    try:
                        await asyncio.wait_for((stop or asyncio.Event()).wait(), timeout=delay)
                        break
                    except asyncio.TimeoutError:
                        pass
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        return self.stats
