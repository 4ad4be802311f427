"""Start the operator: kopf settings, clients in ``memo``, the metrics endpoint, then kopf's loop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from .. import tracing
from . import handlers  # noqa: F401  (registers the handlers)
from . import telemetry


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    # Watches: a server-side timeout well below common load-balancer idle timeouts (about 5 minutes)
    # so that a silently dropped connection is noticed and re-established (kopf issues #232, #585).
    settings.watching.server_timeout = 240
    settings.watching.client_timeout = 270
    # Requests: fail fast and retry instead of hanging a handler on a stuck API server.
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    # kopf's bookkeeping lives in annotations under a prefix of its own: the status schema is structural
    # and would prune anything kopf wrote there. The prefix must not be `elastiserve.dev` itself: kopf
    # leaves annotations under its prefix out of the diff, and the activator's wake-up signal
    # (`elastiserve.dev/activate`) must reach the field handler.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.elastiserve.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kopf.elastiserve.dev", key="last-handled"
    )
    settings.persistence.finalizer = "elastiserve.dev/finalizer"
    # Events: only warnings from log lines. At INFO kopf turned every "Timer 'scale' succeeded" into an
    # Event: ~3 Events per object per sync (bench/scale_cluster.py measured 273 per cycle for 100 models).
    # Our own Normal Events (Scaled, RoutedToPods, ...) are posted explicitly (apply.post).
    settings.posting.level = logging.WARNING
    # Invalid specs raise PermanentError; Temporary errors (Prometheus down, API hiccups) retry soon.
    settings.execution.max_workers = 16
    peering = getattr(memo, "peering", None)
    if peering:
        # HA: replicas share a peering object; the highest priority acts, the others stand by. A dead
        # active replica is noticed when its peering record expires (lifetime), so takeover takes
        # at most about `lifetime` seconds.
        settings.peering.name = peering
        settings.peering.mandatory = True
        settings.peering.clusterwide = getattr(memo, "all_namespaces", True)
        settings.peering.priority = getattr(memo, "priority", 0)
        settings.peering.lifetime = getattr(memo, "peering_lifetime", 60)
    else:
        settings.peering.standalone = True


def run_operator(
    *,
    namespaces: list[str],
    all_namespaces: bool,
    prometheus_url: str | None,
    metrics_port: int,
    liveness: str | None,
    peering: str | None,
    verbose: bool,
    activator_service: str | None = None,
    activator_address: list[str] | None = None,
    activator_settle_seconds: float = 10.0,
    priority: int = 0,
    peering_lifetime: int = 60,
    prometheus_allowed_urls: list[str] | None = None,
    custom_queries_namespaces: list[str] | None = None,
) -> None:
    """Blocking: run kopf until SIGINT/SIGTERM."""
    from ..metrics.policy import MetricsPolicy

    try:
        policy = MetricsPolicy.build(prometheus_url, prometheus_allowed_urls, custom_queries_namespaces)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    from kubernetes import config as k8s_config
    from prometheus_client import start_http_server

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A refused Prometheus connection is reported once per cycle in the condition; urllib3's own
    # retry warnings would repeat every query URL.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    logging.getLogger("kopf.objects").addFilter(_QuietRoutine())
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()
    if metrics_port:
        start_http_server(metrics_port, registry=telemetry.REGISTRY)
    from .handlers import shared_memo
    from .kube import Kube

    activator, followed = _activator(activator_service, activator_address)
    memo = shared_memo(
        kube=Kube(),
        activator=activator,
        activator_service=followed,
        activator_settle_s=activator_settle_seconds,
        # model-server pods send their spans to the same place as the operator
        pod_env=tracing.inherited_env() if tracing.configure("elastiserve-operator") else None,
        metrics_policy=policy,
        prometheus_url=prometheus_url,
        peering=peering,
        priority=priority,
        peering_lifetime=peering_lifetime,
        all_namespaces=all_namespaces,
    )
    asyncio.run(
        kopf.operator(
            clusterwide=all_namespaces,
            namespaces=list(namespaces),
            liveness_endpoint=liveness,
            memo=memo,
            standalone=peering is None,
            peering_name=peering,
        )
    )


def _activator(service: str | None, addresses: list[str] | None) -> tuple[tuple[list[str], int] | None, tuple[str, str] | None]:
    """Where zero-scaled models' Services point, and the activator Service to follow (if given): given
    addresses, or the Ready pods behind the activator Service (read again every few seconds by the cycles:
    see ``observe.refresh_activator``)."""
    if addresses:
        ips, ports = zip(*(a.rsplit(":", 1) for a in addresses))
        if len(set(ports)) != 1:
            raise SystemExit("error: every --activator-address must use the same port")
        return (list(ips), int(ports[0])), None
    if not service:
        return None, None
    if service.count("/") != 1:
        raise SystemExit(f"error: --activator-service must be NAMESPACE/NAME (got {service!r})")
    from .observe import read_activator

    ref = (service.split("/")[0], service.split("/")[1])
    found, port = read_activator(ref)
    # No slice yet (the activator starts with the operator): an empty list until the first refresh finds it.
    return (found, port or 0), ref


class _QuietRoutine(logging.Filter):
    """Drop kopf's per-tick "succeeded" lines for the timer and the index (every 5 s per object)."""

    ROUTINE = ("Timer 'scale' succeeded", "Indexer 'owned_deployments' succeeded", "Handler 'deployment_event' succeeded")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(str(record.msg).startswith(r) for r in self.ROUTINE)
