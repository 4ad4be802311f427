"""Kubernetes API calls the operator makes: server-side apply, delete, and reads it cannot get from indexes.

A thin wrapper over the official ``kubernetes`` client (synchronous; calls run in a worker thread so
kopf's event loop never blocks). Everything is server-side apply under a named field manager:
``elastiserve`` owns the templates, ``elastiserve-scaler`` owns ``spec.replicas``. Errors become kopf's
Temporary/Permanent errors with the API server's message, so kopf retries what can succeed later.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from .. import tracing

TEMPLATE_MANAGER = "elastiserve"
SCALER_MANAGER = "elastiserve-scaler"
APPLY = "application/apply-patch+yaml"
TRACER = tracing.tracer("elastiserve.operator.kube")


def _span(verb: str, kind: str, namespace: str, name: str, **attrs: Any):
    """A CLIENT span for one API request (a child of the cycle that made it)."""
    return TRACER.start_as_current_span(f"{verb} {kind}", kind=tracing.SpanKind.CLIENT, attributes={
        "k8s.namespace.name": namespace, "k8s.object.name": name, **attrs})


def api_message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body).get("message", exc.reason)
    except (TypeError, ValueError):
        return str(exc.reason)


_YAML_UNPRINTABLE = re.compile("[\x7f-\x9f\ufffe\uffff]")


def _apply_bodies_as_utf8(api_client: k8s.ApiClient) -> None:
    """Send apply patches as UTF-8 JSON. The client's own ``json.dumps`` escapes characters beyond U+FFFF
    as surrogate pairs (``\\ud800\\udc00``), which the API server's YAML decoder (apply patches are YAML)
    refuses: a spec with such a character in an arg or env value could never be applied.

    The body is re-encoded where it leaves the client, at the connection pool: the client's releases
    differ above it (36.x serialises every apply body itself, and orders request()'s parameters
    differently), the pool's ``request(method, url, body=..., headers=...)`` does not."""
    rest = api_client.rest_client
    if getattr(rest, "_elastiserve_utf8", False):
        return
    pool = rest.pool_manager
    original = pool.request

    def request(method, url, *args, **kwargs):
        headers, body = kwargs.get("headers") or {}, kwargs.get("body")
        if headers.get("Content-Type") == APPLY and isinstance(body, (str, bytes)):
            text = json.dumps(json.loads(body), ensure_ascii=False)
            # YAML refuses DEL and C1 controls raw (and may fold NEL): escape those, keep the rest as UTF-8
            kwargs["body"] = _YAML_UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text).encode()
        return original(method, url, *args, **kwargs)

    pool.request = request
    rest._elastiserve_utf8 = True


class Kube:
    """Typed access to the few resources we own."""

    def __init__(self, api_client: k8s.ApiClient | None = None):
        self.api_client = api_client or k8s.ApiClient()
        self.apps = k8s.AppsV1Api(self.api_client)
        self.core = k8s.CoreV1Api(self.api_client)
        self.autoscaling = k8s.AutoscalingV2Api(self.api_client)
        self.discovery = k8s.DiscoveryV1Api(self.api_client)
        self.calls = 0
        """API requests made (for the scale benchmark)."""
        _apply_bodies_as_utf8(self.api_client)

    def _patcher(self, kind: str):
        return {
            "Deployment": self.apps.patch_namespaced_deployment,
            "Service": self.core.patch_namespaced_service,
            "ConfigMap": self.core.patch_namespaced_config_map,
            "HorizontalPodAutoscaler": self.autoscaling.patch_namespaced_horizontal_pod_autoscaler,
            "EndpointSlice": self.discovery.patch_namespaced_endpoint_slice,
        }[kind]

    def _deleter(self, kind: str):
        return {
            "Deployment": self.apps.delete_namespaced_deployment,
            "Service": self.core.delete_namespaced_service,
            "ConfigMap": self.core.delete_namespaced_config_map,
            "HorizontalPodAutoscaler": self.autoscaling.delete_namespaced_horizontal_pod_autoscaler,
            "EndpointSlice": self.discovery.delete_namespaced_endpoint_slice,
        }[kind]

    def apply_sync(self, obj: dict[str, Any], manager: str = TEMPLATE_MANAGER, dry_run: bool = False) -> None:
        meta = obj["metadata"]
        self.calls += 1
        kwargs = {"dry_run": "All"} if dry_run else {}
        with _span("apply", obj["kind"], meta["namespace"], meta["name"], **{
                "elastiserve.field_manager": manager, "elastiserve.dry_run": dry_run}):
            self._patcher(obj["kind"])(
                meta["name"], meta["namespace"], body=obj, field_manager=manager, force=True, _content_type=APPLY, **kwargs
            )

    def delete_sync(self, kind: str, namespace: str, name: str) -> bool:
        self.calls += 1
        with _span("delete", kind, namespace, name) as span:
            try:
                self._deleter(kind)(name, namespace)
            except ApiException as exc:
                if exc.status == 404:
                    span.set_attribute("elastiserve.found", False)
                    return False
                raise
        return True

    async def apply(self, obj: dict[str, Any], manager: str = TEMPLATE_MANAGER, dry_run: bool = False) -> None:
        try:
            await asyncio.to_thread(self.apply_sync, obj, manager, dry_run)
        except ApiException as exc:
            what = f"{obj['kind']} {obj['metadata']['namespace']}/{obj['metadata']['name']}"
            if exc.status in (400, 403, 422):
                raise kopf.PermanentError(f"cannot apply {what}: {api_message(exc)}") from None
            raise kopf.TemporaryError(f"apply {what} failed ({exc.status}): {api_message(exc)}", delay=5) from None

    async def apply_all(self, objs: list[dict[str, Any]], manager: str = TEMPLATE_MANAGER) -> None:
        """Dry-run every object first, then apply: a spec the API server refuses changes nothing."""
        for obj in objs:
            await self.apply(obj, manager, dry_run=True)
        for obj in objs:
            await self.apply(obj, manager)

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        try:
            return await asyncio.to_thread(self.delete_sync, kind, namespace, name)
        except ApiException as exc:
            raise kopf.TemporaryError(f"delete {kind} {namespace}/{name} failed: {api_message(exc)}", delay=5) from None

    async def read_secret_key(self, namespace: str, name: str, key: str, label: str | None = None) -> str:
        """One key of a Secret. ``label``: the Secret must carry it with value ``"true"`` (its owner's
        consent to this use); otherwise ``PermissionError``. Other failures raise ``LookupError``; the
        messages name the Secret and the fix, never its content."""
        import base64

        def read() -> str:
            self.calls += 1
            secret = self.core.read_namespaced_secret(name, namespace)
            if label and ((secret.metadata.labels or {}).get(label) != "true"):
                raise PermissionError(
                    f"Secret {namespace}/{name} is not labelled {label}=true: label it to allow this use"
                )
            data = secret.data or {}
            if key not in data:
                raise LookupError(f"Secret {namespace}/{name} has no key {key!r}")
            return base64.b64decode(data[key]).decode(errors="replace").strip()

        try:
            return await asyncio.to_thread(read)
        except ApiException as exc:
            raise LookupError(f"cannot read Secret {namespace}/{name}: {api_message(exc)}") from None
