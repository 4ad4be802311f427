"""OpenTelemetry tracing shared by the operator, the activator and the model server.

Configured the standard way, by the ``OTEL_*`` environment variables, so the chart, a ModelDeployment's
pods and a developer's shell all speak the same language:

* ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``): where spans go, over
  OTLP/HTTP. **Tracing is off unless one of them is set** (or ``OTEL_TRACES_EXPORTER`` names an
  exporter); ``OTEL_SDK_DISABLED=true`` turns it off whatever else is set.
* ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``: the SDK's samplers; the default here is
  ``parentbased_traceidratio`` with ratio 1, so a sampled caller is always followed downstream.
* ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``: as usual; the component's own name otherwise.

When tracing is off nothing is installed: the API's no-op tracer answers every call, and
``bench/tracing.py`` shows what that costs next to 1 % and 100 % sampling.

Context crosses processes as W3C ``traceparent`` headers: :func:`extract` on the way in,
:func:`inject` on the way out.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

__all__ = ["Span", "SpanKind", "Status", "StatusCode", "configure", "enabled", "extract", "inject",
           "server_span", "shutdown", "trace_id", "tracer"]

_provider: Any = None

ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
INHERITED_VARS = (*ENDPOINT_VARS, "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                  "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED",
                  "OTEL_PROPAGATORS")
"""What a component passes on to the processes it starts (the operator to its model-server pods)."""


def wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces to be exported."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter) or any(env.get(v, "").strip() for v in ENDPOINT_VARS)


def inherited_env(env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """The tracing settings in ``env`` that child components should run with, as (name, value) pairs."""
    env = os.environ if env is None else env
    return [(k, env[k]) for k in INHERITED_VARS if env.get(k, "").strip()]


def configure(service: str, *, exporter: Any = None, env: Mapping[str, str] | None = None) -> bool:
    """Install a tracer provider for ``service`` if the environment (or ``exporter``) asks for one.

    ``exporter``: a span exporter to use instead of OTLP (tests); spans are then exported
    synchronously. Returns whether tracing is on. Calling it again replaces nothing: the first
    provider stays (OpenTelemetry allows one global provider per process)."""
    global _provider
    if _provider is not None:
        return True
    env = os.environ if env is None else env
    if exporter is None and not wanted(env):
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

    # Our default sampler: parent-based, everything sampled at the root; the SDK's own env variables win.
    sampler = None if env.get("OTEL_TRACES_SAMPLER") else ParentBasedTraceIdRatio(1.0)
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or service})
    provider = TracerProvider(resource=resource, sampler=sampler)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    return True


def enabled() -> bool:
    return _provider is not None


def shutdown() -> None:
    """Flush and stop the exporter (at process exit; idempotent)."""
    if _provider is not None:
        _provider.shutdown()


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def extract(headers: Mapping[str, str]) -> Any:
    """The context a caller sent in W3C ``traceparent``/``tracestate`` headers (empty if none)."""
    return propagate.extract(headers)


def inject(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add the current span's ``traceparent`` to outgoing ``headers`` (nothing when not tracing)."""
    propagate.inject(headers)
    return headers


def current_span_context() -> Any:
    return trace.get_current_span().get_span_context()


def trace_id(span: Span | None = None) -> str | None:
    """The hex trace id of ``span`` (default: the current one), or None when it is not recorded."""
    span = span or trace.get_current_span()
    ctx = span.get_span_context()
    if not ctx.is_valid or not ctx.trace_flags.sampled:
        return None
    return format(ctx.trace_id, "032x")


def server_span(t: trace.Tracer) -> Callable:
    """Decorate an aiohttp handler (a function or method whose last argument is the request) so each
    call is a SERVER span whose parent is the caller's ``traceparent``, named by the route pattern."""

    def wrap(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(handler)
        async def traced(*args: Any) -> Any:
            request = args[-1]
            route = request.match_info.route.resource
            name = f"{request.method} {route.canonical if route is not None else request.path}"
            attrs = {"http.request.method": request.method, "url.path": request.path}
            with t.start_as_current_span(name, context=extract(request.headers), kind=SpanKind.SERVER,
                                         attributes=attrs) as span:
                response = await handler(*args)
                status = getattr(response, "status", None)
                if status is not None:
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                return response

        return traced

    return wrap
