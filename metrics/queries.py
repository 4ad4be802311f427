"""Built-in PromQL per signal, and how a spec's overrides replace them.

Placeholders (``string.Template`` syntax): ``$namespace``, ``$name`` (the ModelDeployment), ``$window``
(the rate window, e.g. ``60s``), ``$pods`` (a regex matching the model's pods), ``$cpu_request`` (cores
per pod) and ``$memory_request`` (bytes per pod). Users may use the same placeholders in overrides.

The defaults assume the common setup: cAdvisor (kubelet) metrics for CPU and memory, and the
elastiserve model server's own metrics for requests and latency. While a model is scaled to zero its
requests arrive at the activator, so the request rate is the union of both counters.
"""

from __future__ import annotations

import re
from string import Template

from ..api.spec import ModelDeploymentSpec

SERVER_SELECTOR = 'namespace="$namespace",modeldeployment="$name"'

DEFAULT_QUERIES: dict[str, str] = {
    "cpu": (
        '100 * avg(sum by (pod) (rate(container_cpu_usage_seconds_total{namespace="$namespace",'
        'pod=~"$pods",container!="",container!="POD"}[$window]))) / $cpu_request'
    ),
    "memory": (
        '100 * avg(sum by (pod) (container_memory_working_set_bytes{namespace="$namespace",'
        'pod=~"$pods",container!="",container!="POD"})) / $memory_request'
    ),
    "qps": (
        "sum(rate(elastiserve_requests_total{" + SERVER_SELECTOR + "}[$window])"
        " or rate(elastiserve_activator_requests_total{" + SERVER_SELECTOR + "}[$window]))"
    ),
    "latency": (
        "1000 * histogram_quantile($quantile, sum by (le) (rate(elastiserve_request_duration_seconds_bucket{"
        + SERVER_SELECTOR
        + "}[$window])))"
    ),
    "error_rate": (
        '100 * (sum(rate(elastiserve_requests_total{' + SERVER_SELECTOR + ',code=~"5.."}[$window])) or vector(0))'
        " / sum(rate(elastiserve_requests_total{" + SERVER_SELECTOR + "}[$window]))"
    ),
    "pending": "sum(elastiserve_activator_pending_requests{" + SERVER_SELECTOR + "})",
    # Requests being served or queued at the model servers plus those the activator holds for the model
    # (a gauge: no rate window). No model-server series is "unknown" (never read as 0, which would let the
    # rule scale down); no activator series is normal and adds 0.
    "inflight": (
        "sum(elastiserve_inflight_requests{" + SERVER_SELECTOR + "})"
        " + (sum(elastiserve_activator_pending_requests{" + SERVER_SELECTOR + "}) or vector(0))"
    ),
}

_WIRE = {"error_rate": "errorRate"}

_CPU_UNITS = re.compile(r"^([0-9.]+)(m?)$")


def cpu_cores(quantity: str | None, default: float = 1.0) -> float:
    """``"500m"`` → 0.5, ``"2"`` → 2.0."""
    if not quantity:
        return default
    m = _CPU_UNITS.match(quantity.strip())
    if not m:
        return default
    value = float(m.group(1))
    return value / 1000 if m.group(2) else value


def pods_regex(spec: ModelDeploymentSpec, name: str) -> str:
    # Names are DNS labels ([a-z0-9-]), safe in a regex and in a PromQL string as they are.
    variants = "|".join(v.name for v in spec.variants)
    return f"{name}-({variants})-.*"


VERSION_QUERIES: dict[str, str] = {
    # Over the current rollout step ($window = the time spent on it), for one track's pods.
    "requests": 'sum(increase(elastiserve_requests_total{namespace="$namespace",modeldeployment="$name",pod=~"$pods"}[$window]))',
    "error_rate": (
        '100 * (sum(increase(elastiserve_requests_total{namespace="$namespace",modeldeployment="$name",'
        'pod=~"$pods",code=~"5.."}[$window])) or vector(0))'
        ' / sum(increase(elastiserve_requests_total{namespace="$namespace",modeldeployment="$name",pod=~"$pods"}[$window]))'
    ),
    "latency": (
        "1000 * histogram_quantile(0.95, sum by (le) (rate(elastiserve_request_duration_seconds_bucket{"
        'namespace="$namespace",modeldeployment="$name",pod=~"$pods"}[$window])))'
    ),
}


MODEL_RATES_QUERY = (
    'sum by (model) (rate(elastiserve_requests_total{namespace="$namespace",modeldeployment="$name"}[$window]))'
)
"""Request rate per (sub-)model over the rate window: what the hot set is chosen from."""


def render_model_rates(spec: ModelDeploymentSpec, namespace: str, name: str) -> str:
    return Template(MODEL_RATES_QUERY).safe_substitute(
        namespace=namespace, name=name, window=f"{spec.metrics.window_seconds}s"
    )


LOAD_FAILURES_QUERY = (
    "count by (model, cause) (elastiserve_model_load_failing{" + SERVER_SELECTOR + "} == 1)"
)
"""Pods whose latest load of a sub-model failed, per sub-model and cause (the server's bounded ``cause``)."""


def render_load_failures(namespace: str, name: str) -> str:
    return Template(LOAD_FAILURES_QUERY).safe_substitute(namespace=namespace, name=name)


def track_pods_regex(spec: ModelDeploymentSpec, name: str, canary: bool) -> str:
    """Pods of the stable or the canary Deployments: ``<name>-<variant>[-canary]-<hash>-<id>``."""
    variants = "|".join(v.name for v in spec.variants)
    return f"{name}-({variants})-canary-[a-z0-9]+-[a-z0-9]+" if canary else f"{name}-({variants})-[a-z0-9]+-[a-z0-9]+"


def render_version(signal: str, spec: ModelDeploymentSpec, namespace: str, name: str, canary: bool, window_seconds: int) -> str:
    """PromQL for one version's health during a rollout step."""
    return Template(VERSION_QUERIES[signal]).safe_substitute(
        namespace=namespace, name=name, pods=track_pods_regex(spec, name, canary), window=f"{max(window_seconds, 10)}s"
    )


def render(signal: str, spec: ModelDeploymentSpec, namespace: str, name: str, custom_queries: bool = True) -> str:
    """The PromQL for one signal of one ModelDeployment (the spec's override, else the default).

    ``custom_queries`` False (the tenancy policy, see ``metrics.policy``): an override raises
    ``NotAllowed`` instead of running."""
    from ..api.base import parse_bytes
    from .policy import NotAllowed

    override = None
    if signal in ("cpu", "memory", "qps", "latency", "error_rate", "inflight"):
        override = getattr(spec.metrics.rules, signal).query
    if override and not custom_queries:
        raise NotAllowed(
            f"spec.metrics.rules.{_WIRE.get(signal, signal)}.query: custom PromQL is not enabled for namespace "
            f"{namespace}; remove the query to use the built-in one, or ask the cluster admin to allow it "
            "(--custom-queries-namespace, chart value operator.customQueries.namespaces)"
        )
    template = override or DEFAULT_QUERIES[signal]
    requests = spec.template.resources.requests
    quantile = "0.99" if spec.metrics.latency_quantile == "p99" else "0.95"
    return Template(template).safe_substitute(
        namespace=namespace,
        name=name,
        window=f"{spec.metrics.window_seconds}s",
        pods=pods_regex(spec, name),
        cpu_request=f"{cpu_cores(requests.get('cpu')):g}",
        memory_request=str(parse_bytes(requests.get("memory", "1Gi"))),
        quantile=quantile,
    )
