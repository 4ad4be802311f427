"""The activator: holds requests for a model scaled to zero, wakes it, and forwards once a replica is ready.

Knative's idea, small: while a model has no replicas its Service points here. A request for a model
with no ready endpoint is buffered (up to ``queue_size`` per model, for at most ``timeout`` seconds),
the first one wakes the model (the ``Waker`` annotates the ModelDeployment so the operator decides at
once instead of at its next sync), and every buffered request is forwarded as soon as one replica is
ready. Requests that wait too long get 503 with ``Retry-After``. Nothing is lost or sent twice: each
request is forwarded exactly once or answered with an error.

Which model a request is for: the Service the caller reached, from the Host header
(``<name>.<namespace>[.svc[.cluster.local]]``), never a caller-chosen header. Only models in the
configured namespaces (``--namespace``; ``--all-namespaces``) are served, and in a cluster only
ModelDeployments that exist with scale to zero enabled; requests are forwarded only to the ready pods
behind the model's own ``<name>-pods`` Service (EndpointSlices the Kubernetes controller manages).

Bounds: request bodies in memory (held or being forwarded) never exceed ``max_held_bytes`` (503 with
``Retry-After`` past it, before the body is read); per-model state and metric series of a model idle
for ``forget_seconds`` are dropped; every listener has read timeouts and a connection cap
(``listener.py``).

Shutdown (SIGTERM: a rollout, a node drain): for ``drain_seconds`` the activator serves on, each answer
closing its connection, while ``/readyz`` reports 503 so the Service's endpoints drop it; then it stops
accepting and waits for the requests it holds (each at most ``timeout`` s) before it exits. The chart's
grace period covers both.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import re

import aiohttp
import typer
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from .. import tracing
from .listener import close_when_draining, draining, read_body, run_bounded

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length",
}
WAKE_ANNOTATION = "elastiserve.dev/activate"
TRACE_HEADERS = {"traceparent", "tracestate"}  # replaced by the forward span's own context
TRACER = tracing.tracer("elastiserve.serving.activator")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
SLICE_CONTROLLER = "endpointslice-controller.k8s.io"
"""Only EndpointSlices the Kubernetes controller wrote (from the Service's selector) are trusted."""


class EndpointResolver(Protocol):
    """Where the ready replicas of a model are."""

    async def ready(self, key: str) -> list[str]: ...


class Waker(Protocol):
    """Asks for a model to be scaled from zero."""

    async def wake(self, key: str, pending: int) -> None: ...


class Admission(Protocol):
    """Whether a model may be served (None) or why not (a message for a 404)."""

    async def refuse(self, key: str) -> str | None: ...


class AllowAll:
    """Local runs (endpoints file): every model in the configured namespaces."""

    async def refuse(self, key: str) -> str | None:
        return None


class KubernetesAdmission:
    """A model is served only if its ModelDeployment exists with scale to zero enabled (cached briefly,
    so a burst costs one API read; the cache is bounded and swept with idle models)."""

    def __init__(self, ttl: float = 5.0, clock=time.monotonic):
        from kubernetes import client as k8s

        self.custom = k8s.CustomObjectsApi()
        self.ttl, self.clock = ttl, clock
        self.cache: dict[str, tuple[float, str | None]] = {}

    async def refuse(self, key: str) -> str | None:
        hit = self.cache.get(key)
        now = self.clock()
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        namespace, name = key.split("/", 1)

        def read() -> str | None:
            from kubernetes.client.exceptions import ApiException

            try:
                obj = self.custom.get_namespaced_custom_object(
                    "elastiserve.dev", "v1alpha1", namespace, "modeldeployments", name)
            except ApiException as exc:
                if exc.status in (403, 404):
                    return f"no ModelDeployment {key}"
                raise
            if not ((obj.get("spec") or {}).get("scaleToZero") or {}).get("enabled"):
                return f"ModelDeployment {key} does not scale to zero"
            return None

        verdict = await asyncio.to_thread(read)
        if len(self.cache) >= 10000:
            self.cache.clear()
        self.cache[key] = (now, verdict)
        return verdict

    def forget(self, key: str) -> None:
        self.cache.pop(key, None)


class FileResolver:
    """Ready endpoints from a JSON file ``{"ns/name": ["http://127.0.0.1:8081", ...]}`` (local runs, tests)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._mtime = -1.0
        self._data: dict[str, list[str]] = {}

    async def ready(self, key: str) -> list[str]:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return []
        if mtime != self._mtime:
            try:
                self._data = json.loads(self.path.read_text() or "{}")
                self._mtime = mtime
            except (OSError, ValueError):
                return []  # a half-written file: read it again next time
        return list(self._data.get(key, []))


class KubernetesResolver:
    """Ready endpoints from the EndpointSlices of the model's private Service ``<name>-pods``."""

    def __init__(self, port_name: str = "http"):
        from kubernetes import client as k8s

        self.discovery = k8s.DiscoveryV1Api()
        self.port_name = port_name

    async def ready(self, key: str) -> list[str]:
        namespace, name = key.split("/", 1)

        def read() -> list[str]:
            slices = self.discovery.list_namespaced_endpoint_slice(
                namespace, label_selector=f"kubernetes.io/service-name={name}-pods"
            )
            out = []
            for s in slices.items:
                if (s.metadata.labels or {}).get("endpointslice.kubernetes.io/managed-by") != SLICE_CONTROLLER:
                    continue  # hand-written slices could point anywhere
                port = next((p.port for p in s.ports or [] if p.name == self.port_name), None)
                for ep in s.endpoints or []:
                    ref = ep.target_ref
                    if ref is None or ref.kind != "Pod" or (ref.namespace or namespace) != namespace:
                        continue
                    if port and ep.conditions and ep.conditions.ready:
                        out += [f"http://{addr}:{port}" for addr in ep.addresses]
            return out

        return await asyncio.to_thread(read)


class KubernetesWaker:
    """Wakes a model by annotating its ModelDeployment; the operator reacts to the annotation at once."""

    def __init__(self) -> None:
        from kubernetes import client as k8s

        self.custom = k8s.CustomObjectsApi()

    async def wake(self, key: str, pending: int) -> None:
        namespace, name = key.split("/", 1)
        body = {"metadata": {"annotations": {WAKE_ANNOTATION: f"{time.time():.3f}:{pending}"}}}

        def patch() -> None:
            self.custom.patch_namespaced_custom_object(
                "elastiserve.dev", "v1alpha1", namespace, "modeldeployments", name, body,
                _content_type="application/merge-patch+json",
            )

        await asyncio.to_thread(patch)


@dataclass
class _Model:
    pending: int = 0
    waking: asyncio.Task | None = None
    woke_at: float | None = None
    wake_span: Any = None  # the span context of the wake under way: held requests link to it
    wake_parent: Any = None  # the hold span that started it (its wake is its child, not a link)
    endpoint_index: int = 0
    ready_event: asyncio.Event = field(default_factory=asyncio.Event)
    last_seen: float = 0.0
    inflight: int = 0
    codes: set[str] = field(default_factory=set)
    """Status codes counted for this model (its request series, removed when it is forgotten)."""


class Activator:
    """The request-holding proxy. ``poll_interval`` is how often it looks for a ready endpoint while holding."""

    def __init__(
        self,
        resolver: EndpointResolver,
        waker: Waker,
        *,
        queue_size: int = 1000,
        timeout: float = 30.0,
        poll_interval: float = 0.05,
        max_body_bytes: int = 8 * 2**20,
        max_held_bytes: int = 256 * 2**20,
        namespaces: list[str] | None = None,
        admission: Admission | None = None,
        read_timeout: float = 30.0,
        forget_seconds: float = 600.0,
        clock=time.monotonic,
    ):
        self.resolver = resolver
        self.waker = waker
        self.queue_size = queue_size
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.max_body_bytes = max_body_bytes
        self.max_held_bytes = max(max_held_bytes, max_body_bytes)
        self.namespaces = set(namespaces) if namespaces else None  # None: every namespace
        self.admission: Admission = admission or AllowAll()
        self.read_timeout = read_timeout
        self.forget_seconds = forget_seconds
        self.clock = clock
        self.held_bytes = 0
        """Bytes of request bodies in memory now (held or being forwarded)."""
        self.models: dict[str, _Model] = {}
        self.registry = CollectorRegistry()
        labels = ("namespace", "modeldeployment")
        self.m_requests = Counter(
            "elastiserve_activator_requests_total", "Requests received by the activator.", labels + ("code",),
            registry=self.registry,
        )
        self.m_pending = Gauge(
            "elastiserve_activator_pending_requests", "Requests held while the model has no ready replica.", labels,
            registry=self.registry,
        )
        self.m_cold = Histogram(
            "elastiserve_activator_cold_start_seconds", "From the first held request to a ready replica.", labels,
            buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60), registry=self.registry,
        )
        self.m_timeouts = Counter(
            "elastiserve_activator_timeouts_total", "Held requests answered 503 after the timeout.", labels,
            registry=self.registry,
        )
        self.m_refused = Counter(
            "elastiserve_activator_refused_total",
            "Requests refused before holding: unknown model or namespace, or the held-bytes bound.", ("reason",),
            registry=self.registry,
        )
        self.m_held_bytes = Gauge(
            "elastiserve_activator_held_bytes", "Bytes of request bodies in memory (held or being forwarded).",
            registry=self.registry,
        )
        self._session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ routing

    @staticmethod
    def model_key(request: web.Request) -> str | None:
        """``namespace/name`` of the Service the caller reached (its DNS name in the Host header)."""
        host = (request.headers.get("Host") or "").split(":")[0].rstrip(".")
        parts = host.split(".")
        if len(parts) not in (2, 3, 5) or (len(parts) >= 3 and parts[2] != "svc"):
            return None
        if len(parts) == 5 and parts[3:] != ["cluster", "local"]:
            return None
        name, namespace = parts[0], parts[1]
        if not (_DNS_LABEL.fullmatch(name) and _DNS_LABEL.fullmatch(namespace)):
            return None
        return f"{namespace}/{name}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[close_when_draining])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self._start_janitor)
        app.on_cleanup.append(self._close)
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        # no per-model detail: which models exist is not every caller's business
        return web.json_response({"status": "ok", "models": len(self.models),
                                  "pending": sum(m.pending for m in self.models.values()),
                                  "held_bytes": self.held_bytes})

    async def _readyz(self, request: web.Request) -> web.Response:
        """Readiness: 503 once SIGTERM has arrived, so no new traffic is routed here (liveness stays on ``/healthz``)."""
        busy = draining(request.app)
        return web.json_response({"ready": not busy, "draining": busy}, status=503 if busy else 200)

    async def _start_janitor(self, app: web.Application) -> None:
        self._janitor = asyncio.create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, min(60.0, self.forget_seconds / 4)))
            self.forget_idle()

    def forget_idle(self) -> list[str]:
        """Drop the state and metric series of models without requests for ``forget_seconds``."""
        now = self.clock()
        gone = [k for k, m in self.models.items()
                if m.pending == 0 and m.inflight == 0 and (m.waking is None or m.waking.done())
                and now - m.last_seen >= self.forget_seconds]
        for key in gone:
            codes = self.models.pop(key).codes
            ns, name = key.split("/", 1)
            for metric in (self.m_pending, self.m_cold, self.m_timeouts):
                try:
                    metric.remove(ns, name)
                except KeyError:
                    pass
            for code in codes:
                self.m_requests.remove(ns, name, code)
            forget = getattr(self.admission, "forget", None)
            if forget is not None:
                forget(key)
        return gone

    async def _close(self, app: web.Application) -> None:
        task = getattr(self, "_janitor", None)
        if task is not None:
            task.cancel()
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------ the hold-and-forward path

    @tracing.server_span(TRACER)
    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = self.model_key(request)
        if key is None:
            self.m_refused.labels("no_model").inc()
            return web.json_response(
                {"error": "cannot tell which model this request is for: call the model's Service "
                          "(<name>.<namespace>.svc), whose Host header names it"},
                status=400,
            )
        ns, name = key.split("/", 1)
        if self.namespaces is not None and ns not in self.namespaces:
            self.m_refused.labels("namespace").inc()
            return web.json_response({"error": f"namespace {ns} is not served by this activator"}, status=404)
        why = await self.admission.refuse(key)
        if why is not None:
            self.m_refused.labels("unknown_model").inc()
            return web.json_response({"error": why}, status=404)
        # Reserve the body's bytes before reading it: past the bound, answer at once without reading.
        reserve = request.content_length if request.content_length is not None else self.max_body_bytes
        if self.held_bytes + reserve > self.max_held_bytes:
            self.m_refused.labels("held_bytes").inc()
            return web.json_response(
                {"error": "the activator holds as many request bytes as it may; retry shortly"},
                status=503, headers={"Retry-After": "2"},
            )
        self._reserve(reserve)
        model = self.models.setdefault(key, _Model())
        model.last_seen = self.clock()
        model.inflight += 1
        try:
            try:
                body = await read_body(request, self.read_timeout)
            except web.HTTPRequestTimeout as exc:
                return web.json_response({"error": exc.text}, status=408)
            self._reserve(len(body) - reserve)
            reserve = len(body)
            endpoints = await self.resolver.ready(key)
            if not endpoints:
                endpoints, status = await self._traced_hold(key)
                if not endpoints:
                    self._count(model, ns, name, status)
                    if status == 503:
                        return web.json_response(
                            {"error": f"model {key} has no ready replica after {self.timeout:g} s; retry shortly"},
                            status=503, headers={"Retry-After": "5"},
                        )
                    return web.json_response(
                        {"error": f"model {key} already has {self.queue_size} requests waiting; retry shortly"},
                        status=429, headers={"Retry-After": "2"},
                    )
            response = await self._forward(key, endpoints, request, body)
            self._count(model, ns, name, response.status)
            return response
        finally:
            self._reserve(-reserve)
            model.inflight -= 1
            model.last_seen = self.clock()

    def _count(self, model: _Model, ns: str, name: str, status: int) -> None:
        model.codes.add(str(status))
        self.m_requests.labels(ns, name, str(status)).inc()

    def _reserve(self, n: int) -> None:
        self.held_bytes += n
        self.m_held_bytes.set(self.held_bytes)

    async def _traced_hold(self, key: str) -> tuple[list[str], int]:
        with TRACER.start_as_current_span("activator.hold", attributes={"elastiserve.model": key}) as span:
            held = time.perf_counter()
            endpoints, status = await self._hold(key)
            span.set_attribute("elastiserve.held_seconds", round(time.perf_counter() - held, 6))
            span.set_attribute("elastiserve.outcome", "ready" if endpoints else str(status))
            model = self.models.get(key)
            if model is not None and model.wake_span is not None and model.wake_parent != span.get_span_context():
                span.add_link(model.wake_span)  # the wake-up this request waited for (started by another one)
            return endpoints, status

    async def _hold(self, key: str) -> tuple[list[str], int]:
        """Wait (bounded) until the model has a ready replica; wake it if no wake is under way."""
        ns, name = key.split("/", 1)
        model = self.models.setdefault(key, _Model())
        if model.pending >= self.queue_size:
            return [], 429
        model.pending += 1
        self.m_pending.labels(ns, name).set(model.pending)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            while True:
                # The deadline first: a request that has run out of time leaves without starting a wake it
                # will not wait for (the next request wakes the model if it is still needed).
                remaining = deadline - loop.time()
                if remaining <= 0:
                    self.m_timeouts.labels(ns, name).inc()
                    return [], 503
                if model.waking is None or model.waking.done():
                    # No wake under way (first request, or an earlier wake gave up): start one.
                    model.woke_at = time.perf_counter()
                    model.ready_event = asyncio.Event()
                    # The wake task copies this context: its span is a child of this request's hold.
                    model.wake_span, model.wake_parent = None, tracing.current_span_context()
                    model.waking = asyncio.create_task(self._wake_and_watch(key, model, model.ready_event))
                # Wake up when a replica is ready, or when this wake gives up (then start another).
                ready = asyncio.ensure_future(model.ready_event.wait())
                try:
                    await asyncio.wait({ready, model.waking}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    ready.cancel()
                if not model.ready_event.is_set():
                    continue
                endpoints = await self.resolver.ready(key)
                if endpoints:
                    return endpoints, 200
                model.waking = None  # the replica went away again: wake anew
        finally:
            model.pending -= 1
            self.m_pending.labels(ns, name).set(model.pending)

    async def _wake_and_watch(self, key: str, model: _Model, ready: asyncio.Event) -> None:
        with TRACER.start_as_current_span("activator.wake", attributes={"elastiserve.model": key}) as span:
            model.wake_span = span.get_span_context()
            await self._wake_until_ready(key, model, ready)
            span.set_attribute("elastiserve.ready", ready.is_set())

    async def _wake_until_ready(self, key: str, model: _Model, ready: asyncio.Event) -> None:
        ns, name = key.split("/", 1)
        try:
            await self.waker.wake(key, model.pending)
        except Exception as exc:  # a failed wake is retried by the next held request or the operator's own check
            print(f"activator: wake {key} failed: {type(exc).__name__}: {exc}", flush=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while loop.time() < deadline:
            if await self.resolver.ready(key):
                if model.woke_at is not None:
                    self.m_cold.labels(ns, name).observe(time.perf_counter() - model.woke_at)
                ready.set()
                return
            await asyncio.sleep(self.poll_interval)

    async def _forward(self, key: str, endpoints: list[str], request: web.Request, body: bytes) -> web.Response:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        model = self.models.setdefault(key, _Model())
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in HOP_BY_HOP and k.lower() not in TRACE_HEADERS}
        # A replica that refuses or drops the connection (killed, evicted, restarting) is skipped and the
        # next ready one is tried, so no request is lost while one replica is left; a slow replica (a
        # timeout) is not retried elsewhere, which would only double the load.
        failure = ""
        for _ in range(len(endpoints)):
            base = endpoints[model.endpoint_index % len(endpoints)]
            model.endpoint_index += 1
            url = base.rstrip("/") + request.rel_url.path_qs
            attempt = dict(headers)
            try:
                with TRACER.start_as_current_span("activator.forward", kind=tracing.SpanKind.CLIENT,
                                                  attributes={"elastiserve.model": key, "server.address": base}):
                    tracing.inject(attempt)  # the replica's span continues this trace
                    return await self._send(request, url, body, attempt)
            except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
                failure = f"replica {base} of {key} failed: {type(exc).__name__}"
                # aiohttp's ServerTimeoutError is a ClientConnectionError too: a timeout is never retried
                if isinstance(exc, asyncio.TimeoutError) or not isinstance(exc, aiohttp.ClientConnectionError):
                    break
        return web.json_response({"error": failure}, status=502, headers={"Retry-After": "1"})

    async def _send(self, request: web.Request, url: str, body: bytes, headers: dict[str, str]) -> web.Response:
        assert self._session is not None
        async with self._session.request(request.method, url, data=body, headers=headers) as upstream:
            payload = await upstream.read()
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
            response = web.Response(status=upstream.status, body=payload, headers=out_headers)
            # The model has a Ready replica now, and its Service is pointed back at the pods within a cycle. A
            # client's kept-alive connection would stay on the activator (kube-proxy chose it when the
            # connection opened): close it, so the next request connects through the Service again.
            response.force_close()
            return response


class _NullWaker:
    async def wake(self, key: str, pending: int) -> None:
        return None


def activator(
    host: str = "0.0.0.0",
    port: int = 8080,
    endpoints_file: Path | None = None,
    kubernetes: bool = False,
    namespace: list[str] = typer.Option([], "--namespace", "-n",
                                        help="Serve models of this namespace (repeatable)."),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A", help="Serve models of every namespace."),
    queue_size: int = 1000,
    timeout: float = 30.0,
    max_held_bytes: str = typer.Option("256Mi", help="Request bytes in memory at most (503 + Retry-After past it)."),
    forget_seconds: float = typer.Option(600.0, help="Drop a model's state and metric series after this idle time."),
    read_timeout: float = typer.Option(30.0, help="Seconds a client may take to send a request body (408 after)."),
    keepalive_timeout: float = typer.Option(15.0, help="Seconds to receive a request's headers, and to keep an "
                                                       "idle connection open."),
    max_connections: int = typer.Option(2048, help="Open connections at most; further ones are closed at once."),
    drain_seconds: float = typer.Option(5.0, help="After SIGTERM, serve on this long (not ready, each answer closing "
                                                  "its connection) before closing the listener; held requests are "
                                                  "still answered after that, each within --timeout."),
) -> None:
    """Run the activator: hold requests for zero-scaled models, wake them, forward when ready."""
    from .loader import parse_bytes

    if not 0 <= drain_seconds <= 300:
        raise SystemExit(f"error: --drain-seconds must be within 0..300, not {drain_seconds:g}")
    if timeout <= 0:
        raise SystemExit(f"error: --timeout must be positive, not {timeout:g}")

    if endpoints_file is None and not kubernetes:
        raise SystemExit("error: pass --endpoints-file FILE (local runs) or --kubernetes (in a cluster)")
    if kubernetes and not namespace and not all_namespaces:
        raise SystemExit("error: pass --namespace NS (repeatable) or --all-namespaces: the namespaces whose models "
                         "this activator may wake and forward to")
    admission: Admission = AllowAll()
    if kubernetes or os.environ.get("KUBERNETES_SERVICE_HOST") or os.environ.get("KUBECONFIG"):
        from kubernetes import config as k8s_config

        try:
            k8s_config.load_incluster_config()
        except k8s_config.ConfigException:
            k8s_config.load_kube_config()
        waker: Waker = KubernetesWaker()
        if kubernetes:
            admission = KubernetesAdmission()
    else:
        waker = _NullWaker()
    resolver: EndpointResolver = FileResolver(endpoints_file) if endpoints_file else KubernetesResolver()
    act = Activator(resolver, waker, queue_size=queue_size, timeout=timeout, max_held_bytes=parse_bytes(max_held_bytes),
                    namespaces=None if all_namespaces else (namespace or None), admission=admission,
                    read_timeout=read_timeout, forget_seconds=forget_seconds)
    tracing.configure("elastiserve-activator")
    run_bounded(act.app(), host, port, keepalive_timeout=keepalive_timeout, max_connections=max_connections,
                on_start=lambda: print(f"activator listening on {host}:{port}", flush=True),
                drain_seconds=drain_seconds, shutdown_timeout=timeout + 1.0)
