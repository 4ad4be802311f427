"""The activator: holds requests for a model scaled to zero, wakes it, and forwards once a replica is ready.

Knative's idea, small: while a model has no replicas its Service points here. A request for a model
with no ready endpoint is buffered (up to ``queue_size`` per model, for at most ``timeout`` seconds),
the first one wakes the model (the ``Waker`` annotates the ModelDeployment so the operator decides at
once instead of at its next sync), and every buffered request is forwarded as soon as one replica is
ready. Requests that wait too long get 503 with ``Retry-After``. Nothing is lost or sent twice: each
request is forwarded exactly once or answered with an error.

Which model a request is for: the ``X-Elastiserve-Model: <namespace>/<name>`` header, else the Host
header (``<name>.<namespace>[.svc[.cluster.local]]``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from .. import tracing

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length",
}
MODEL_HEADER = "X-Elastiserve-Model"
TRACE_HEADERS = {"traceparent", "tracestate"}  # replaced by the forward span's own context
WAKE_ANNOTATION = "elastiserve.dev/activate"
TRACER = tracing.tracer("elastiserve.serving.activator")


class EndpointResolver(Protocol):
    """Where the ready replicas of a model are."""

    async def ready(self, key: str) -> list[str]: ...


class Waker(Protocol):
    """Asks for a model to be scaled from zero."""

    async def wake(self, key: str, pending: int) -> None: ...


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
                port = next((p.port for p in s.ports or [] if p.name == self.port_name), None)
                for ep in s.endpoints or []:
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
    ):
        self.resolver = resolver
        self.waker = waker
        self.queue_size = queue_size
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.max_body_bytes = max_body_bytes
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
        self._session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ routing

    @staticmethod
    def model_key(request: web.Request) -> str | None:
        explicit = request.headers.get(MODEL_HEADER)
        if explicit and explicit.count("/") == 1 and all(explicit.split("/")):
            return explicit
        host = (request.headers.get("Host") or "").split(":")[0]
        parts = host.split(".")
        if len(parts) >= 2 and parts[0] and parts[1] and not parts[0].isdigit():
            return f"{parts[1]}/{parts[0]}"
        return None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_cleanup.append(self._close)
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "pending": {k: m.pending for k, m in self.models.items()}})

    async def _close(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------ the hold-and-forward path

    @tracing.server_span(TRACER)
    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = self.model_key(request)
        if key is None:
            return web.json_response(
                {"error": f"cannot tell which model this request is for: set the {MODEL_HEADER}: <namespace>/<name> header"},
                status=400,
            )
        ns, name = key.split("/", 1)
        body = await request.read()
        endpoints = await self.resolver.ready(key)
        if not endpoints:
            with TRACER.start_as_current_span("activator.hold", attributes={"elastiserve.model": key}) as span:
                held = time.perf_counter()
                endpoints, status = await self._hold(key)
                span.set_attribute("elastiserve.held_seconds", round(time.perf_counter() - held, 6))
                span.set_attribute("elastiserve.outcome", "ready" if endpoints else str(status))
                wake = self.models[key].wake_span if key in self.models else None
                if wake is not None and self.models[key].wake_parent != span.get_span_context():
                    span.add_link(wake)  # the wake-up this request waited for (started by another one)
            if not endpoints:
                self.m_requests.labels(ns, name, str(status)).inc()
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
        self.m_requests.labels(ns, name, str(response.status)).inc()
        return response

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
                if model.waking is None or model.waking.done():
                    # No wake under way (first request, or an earlier wake gave up): start one.
                    model.woke_at = time.perf_counter()
                    model.ready_event = asyncio.Event()
                    # The wake task copies this context: its span is a child of this request's hold.
                    model.wake_span, model.wake_parent = None, tracing.current_span_context()
                    model.waking = asyncio.create_task(self._wake_and_watch(key, model, model.ready_event))
                remaining = deadline - loop.time()
                if remaining <= 0:
                    self.m_timeouts.labels(ns, name).inc()
                    return [], 503
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
        base = endpoints[model.endpoint_index % len(endpoints)]
        model.endpoint_index += 1
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in HOP_BY_HOP and k != MODEL_HEADER and k.lower() not in TRACE_HEADERS}
        url = base.rstrip("/") + request.rel_url.path_qs
        try:
            with TRACER.start_as_current_span("activator.forward", kind=tracing.SpanKind.CLIENT,
                                              attributes={"elastiserve.model": key, "server.address": base}):
                tracing.inject(headers)  # the replica's span continues this trace
                return await self._send(request, url, body, headers)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return web.json_response(
                {"error": f"replica {base} of {key} failed: {type(exc).__name__}"}, status=502, headers={"Retry-After": "1"}
            )

    async def _send(self, request: web.Request, url: str, body: bytes, headers: dict[str, str]) -> web.Response:
        assert self._session is not None
        async with self._session.request(request.method, url, data=body, headers=headers) as upstream:
            payload = await upstream.read()
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=upstream.status, body=payload, headers=out_headers)


class _NullWaker:
    async def wake(self, key: str, pending: int) -> None:
        return None


def activator(
    host: str = "0.0.0.0",
    port: int = 8080,
    endpoints_file: Path | None = None,
    kubernetes: bool = False,
    queue_size: int = 1000,
    timeout: float = 30.0,
) -> None:
    """Run the activator: hold requests for zero-scaled models, wake them, forward when ready."""
    import typer  # noqa: F401  (typer builds the CLI from this signature)

    if endpoints_file is None and not kubernetes:
        raise SystemExit("error: pass --endpoints-file FILE (local runs) or --kubernetes (in a cluster)")
    if kubernetes or os.environ.get("KUBERNETES_SERVICE_HOST") or os.environ.get("KUBECONFIG"):
        from kubernetes import config as k8s_config

        try:
            k8s_config.load_incluster_config()
        except k8s_config.ConfigException:
            k8s_config.load_kube_config()
        waker: Waker = KubernetesWaker()
    else:
        waker = _NullWaker()
    resolver: EndpointResolver = FileResolver(endpoints_file) if endpoints_file else KubernetesResolver()
    act = Activator(resolver, waker, queue_size=queue_size, timeout=timeout)
    tracing.configure("elastiserve-activator")
    web.run_app(act.app(), host=host, port=port, print=lambda *_: print(f"activator listening on {host}:{port}", flush=True))
