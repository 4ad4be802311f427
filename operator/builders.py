"""Pure builders: ModelDeployment spec → the manifests the operator owns (Deployments, Service, HPA, hot set).

No I/O here; handlers call these and apply the result with server-side apply. Replica counts are not
part of the Deployment template (the scaler owns ``spec.replicas`` under its own field manager), so
re-applying a template never fights the autoscaler.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from ..api.base import parse_bytes
from ..api.crd import API_VERSION, KIND
from ..api.spec import RESERVED_ENV_PREFIX, RUNTIME_OVERHEAD_BYTES, Actuation, ModelDeploymentSpec, Precision, Variant

LABEL_MDEP = "elastiserve.dev/modeldeployment"
LABEL_VARIANT = "elastiserve.dev/variant"
LABEL_TRACK = "elastiserve.dev/track"
"""``stable`` or ``canary``: part of every selector, so a canary Deployment never overlaps a stable one."""
LABEL_VERSION = "elastiserve.dev/version"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
MANAGER = "elastiserve"
ANNOTATION_HASH = "elastiserve.dev/spec-hash"
CONTAINER = "model-server"
LISTEN_HOST = "0.0.0.0"
"""The model server's listen address in a pod: every address, so the kubelet's probes and the Service reach it."""


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def common_labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "elastiserve-model",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "model-server",
        LABEL_MANAGED: MANAGER,
        LABEL_MDEP: name,
    }


def deployment_name(name: str, variant: str, canary: bool = False) -> str:
    return f"{name}-{variant}-canary" if canary else f"{name}-{variant}"


def hotset_name(name: str) -> str:
    return f"{name}-hotset"


def with_version(uri: str, version: str) -> str:
    return uri.replace("$version", version)


def variant_uri(spec: ModelDeploymentSpec, variant: Variant, version: str | None = None) -> str:
    """The artifact a variant serves: its own URI, else the model's with ``.<precision>`` before the suffix.
    ``$version`` in the URI becomes the version served (the spec's, or a rollout's stable one)."""
    version = version or spec.model.version
    if variant.model_uri:
        return with_version(variant.model_uri, version)
    uri = with_version(spec.model.uri, version)
    if variant.precision == Precision.fp32:
        return uri
    if uri.endswith(".onnx"):
        return f"{uri[: -len('.onnx')]}.{variant.precision.value}.onnx"
    return uri  # a model folder: the server picks the variant's file (ELASTISERVE_MODEL_VARIANT)


def _memory_request(spec: ModelDeploymentSpec, requests: dict[str, str]) -> dict[str, str]:
    """Memory requests follow the lazy-loading budget: at least budget + runtime overhead."""
    out = dict(requests)
    if not spec.model.lazy_loading.enabled:
        return out
    floor = spec.model.lazy_loading.memory_budget_bytes + RUNTIME_OVERHEAD_BYTES
    current = parse_bytes(out["memory"]) if "memory" in out else 0
    if current < floor:
        # Whole MiB when it divides evenly (readable), else exact bytes: never above a limit the spec
        # allows (validation guarantees limit >= budget + overhead).
        out["memory"] = f"{floor // 2**20}Mi" if floor % 2**20 == 0 else str(floor)
    return out


def store_root(uri: str) -> str:
    """The store root a URI lives in: the folder of an ``.onnx`` file, or the model folder itself."""
    trimmed = uri.rstrip("/")
    return trimmed.rsplit("/", 1)[0] if trimmed.endswith(".onnx") else trimmed


def versioned_store_root(uri: str, version: str) -> str:
    """The store root of a sub-model that may change version in place: the part of its URI before
    ``$version`` (every version lives below it), else :func:`store_root` of the resolved URI."""
    if "$version" in uri:
        return uri.split("$version", 1)[0].rstrip("/")
    return store_root(with_version(uri, version))


SUBMODELS_DIR = "/etc/elastiserve/submodels"
ARTIFACTS_DIR = "/var/cache/elastiserve/artifacts"
"""Where a model server keeps artifacts read from s3:// or http(s):// stores: an emptyDir (the root
filesystem is read-only), sized a little above the cache's own budget."""
ARTIFACTS_BUDGET = "4Gi"
ARTIFACTS_SIZE_LIMIT = "5Gi"
REMOTE_SCHEMES = ("s3://", "http://", "https://")
CREDENTIALS_DIR = "/var/run/secrets/elastiserve/s3"
"""Where ``model.credentialsSecret`` is mounted (read-only); the server reads one file per variable."""
CREDENTIAL_KEYS_REQUIRED = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
CREDENTIAL_KEYS_OPTIONAL = ("AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
                            "AWS_DEFAULT_REGION")
ANNOTATION_SUBMODELS = "elastiserve.dev/submodels"
SUBMODELS_KEY = "models"


def submodels_name(name: str, canary: bool = False) -> str:
    return f"{name}-canary-submodels" if canary else f"{name}-submodels"


def submodel_uris(spec: ModelDeploymentSpec, version: str | None = None) -> list[tuple[str, str]]:
    """(name, URI) of each sub-model: ``$version`` is the sub-model's own version, else the model's."""
    version = version or spec.model.version
    return [(s.name, with_version(s.uri, s.version or version)) for s in spec.model.sub_models]


def build_submodels(
    spec: ModelDeploymentSpec, name: str, namespace: str, uid: str, version: str | None = None, canary: bool = False
) -> dict[str, Any]:
    """The sub-model list a track's servers read from a mounted file (``--models-file``). Editing a
    sub-model changes only this ConfigMap: the kubelet refreshes the file and the servers hot-switch,
    so the pods are not restarted."""
    lines = "".join(f"{n}={u}\n" for n, u in submodel_uris(spec, version))
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": submodels_name(name, canary),
            "namespace": namespace,
            "labels": common_labels(name) | {LABEL_TRACK: "canary" if canary else "stable"},
            "ownerReferences": [owner_reference(name, uid)],
        },
        "data": {SUBMODELS_KEY: lines},
    }


def server_env(spec: ModelDeploymentSpec, name: str, variant: Variant, version: str | None = None,
               inherited: Sequence[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    """The model server's configuration (``elastiserve serve`` reads these variables).

    ``inherited``: settings the operator passes on from its own environment (the ``OTEL_*`` tracing
    variables, see ``elastiserve.tracing``); the spec's ``template.env`` comes after them, so a
    ModelDeployment may still choose, say, its own sampling ratio.

    The store roots are exactly the folders of the declared artifacts, so the server refuses any other
    path. ``ELASTISERVE_HOTSET`` comes from the hot set ConfigMap the operator maintains: a new replica
    also loads whatever is hot when it starts (evictable, unlike the spec's preload list).
    """
    version = version or spec.model.version
    lazy = spec.model.lazy_loading
    main_uri = variant_uri(spec, variant, version)
    models = [(spec.model.name, main_uri)]  # sub-models come from the mounted file (build_submodels)
    roots = list(dict.fromkeys([store_root(main_uri)] + [
        versioned_store_root(s.uri, s.version or version) for s in spec.model.sub_models
    ]))
    # The model itself is always loaded before a replica reports ready (lazy loading is for sub-models): a
    # scale-up or canary replica must not meet its first requests with a model load (a real pod at a 500m CPU
    # limit took 1.6 s for a tiny encoder's; the rollout gate read it as a latency regression).
    preload = ",".join(dict.fromkeys([spec.model.name, *lazy.preload]))
    remote = any(r.startswith(REMOTE_SCHEMES) for r in roots)
    env: list[dict[str, Any]] = [
        {"name": "ELASTISERVE_MODELDEPLOYMENT", "value": name},
        {"name": "ELASTISERVE_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "ELASTISERVE_VARIANT", "value": variant.name},
        {"name": "ELASTISERVE_PRECISION", "value": variant.precision.value},
        {"name": "ELASTISERVE_MODEL_VARIANT", "value": variant.precision.value},  # its artifact: model[.int8|.pruned].onnx
        {"name": "ELASTISERVE_MODEL_VERSION", "value": version},
        {"name": "ELASTISERVE_MODEL_STORE", "value": ",".join(roots)},
        {"name": "ELASTISERVE_MODELS", "value": ",".join(f"{n}={u}" for n, u in models)},
        # In bytes: the server's size parser is not the Kubernetes quantity grammar ("500m", "2e9").
        {"name": "ELASTISERVE_MEMORY_BUDGET", "value": str(lazy.memory_budget_bytes)},
        {"name": "ELASTISERVE_IDLE_UNLOAD_SECONDS", "value": str(lazy.idle_unload_seconds)},
        {
            "name": "ELASTISERVE_HOTSET",
            "valueFrom": {"configMapKeyRef": {"name": hotset_name(name), "key": "preload", "optional": True}},
        },
        {"name": "ELASTISERVE_PRELOAD", "value": preload},
    ]
    if spec.model.sub_models:
        env.append({"name": "ELASTISERVE_MODELS_FILE", "value": f"{SUBMODELS_DIR}/{SUBMODELS_KEY}"})
    if remote:
        env += [{"name": "ELASTISERVE_ARTIFACT_CACHE_DIR", "value": ARTIFACTS_DIR},
                {"name": "ELASTISERVE_ARTIFACT_CACHE_BUDGET", "value": ARTIFACTS_BUDGET}]
    if spec.model.credentials_secret:
        env.append({"name": "ELASTISERVE_S3_CREDENTIALS_DIR", "value": CREDENTIALS_DIR})
    if not lazy.enabled:
        env = [{"name": "ELASTISERVE_PRELOAD", "value": "all"} if e["name"] == "ELASTISERVE_PRELOAD" else e for e in env]
    # `elastiserve serve` listens on 127.0.0.1:8080 by default (right for a developer's shell, unreachable
    # in a pod): listen on every address of the pod, on the port the probes and the Service target.
    env += [
        {"name": "ELASTISERVE_HOST", "value": LISTEN_HOST},
        {"name": "ELASTISERVE_PORT", "value": str(spec.template.ports[0].container_port)},
    ]
    # The spec's variables first: for a repeated name the container gets the last one, so the operator's
    # own variables win even if a reserved name slipped past validation (the API rejects them). Inherited
    # tracing settings give way to the spec's own (one entry per name: server-side apply rejects repeats).
    user = [e.to_api() for e in spec.template.env if not e.name.startswith(RESERVED_ENV_PREFIX)]
    named = {e["name"] for e in user}
    return user + [{"name": k, "value": v} for k, v in inherited if k not in named] + env


def build_deployment(
    spec: ModelDeploymentSpec,
    name: str,
    namespace: str,
    uid: str,
    variant: Variant,
    *,
    version: str | None = None,
    canary: bool = False,
    inherited_env: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The Deployment of one variant (stable, or the canary of a rollout), without ``spec.replicas``."""
    t = spec.template
    version = version or spec.model.version
    track = "canary" if canary else "stable"
    labels = common_labels(name) | {
        LABEL_VARIANT: variant.name,
        "elastiserve.dev/precision": variant.precision.value,
        LABEL_TRACK: track,
        LABEL_VERSION: version,
    }
    selector = {LABEL_MDEP: name, LABEL_VARIANT: variant.name, LABEL_TRACK: track}
    resources = (variant.resources or t.resources).to_api()
    resources["requests"] = _memory_request(spec, resources.get("requests", {}))
    port = t.ports[0]
    container = {
        "name": CONTAINER,
        "image": variant.image or t.image,
        "args": list(variant.args if variant.args is not None else t.args),
        "ports": [{"name": p.name, "containerPort": p.container_port, "protocol": "TCP"} for p in t.ports],
        "env": server_env(spec, name, variant, version, inherited_env),
        "resources": resources,
        "readinessProbe": {
            "httpGet": {"path": t.readiness_path, "port": port.name},
            "periodSeconds": 2,
            "failureThreshold": 3,
        },
        # Liveness starts once the server answers: a start under a CPU quota on a busy node (interpreter,
        # imports, preload) took 30-60 s on the real node, and a 60 s liveness budget killed servers
        # that were still starting (restart loops). Up to 5 minutes to start; then liveness as before.
        "startupProbe": {
            "httpGet": {"path": "/v2/health/live", "port": port.name},
            "periodSeconds": 2,
            "failureThreshold": 150,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": port.name},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(name, variant.name, canary),
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(name, uid)],
        },
        "spec": {
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(port.container_port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "containers": [container],
                    # Model servers never call the Kubernetes API: no token to steal. RuntimeDefault seccomp.
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "terminationGracePeriodSeconds": 30,
                },
            },
        },
    }
    if spec.model.sub_models:
        # The servers hot-switch a sub-model whose URI changes in the file, but a new name needs a new
        # process: the names (not the URIs) are part of the pod template, so adding one rolls the pods.
        body["spec"]["template"]["metadata"]["annotations"][ANNOTATION_SUBMODELS] = ",".join(
            s.name for s in spec.model.sub_models)
        container["volumeMounts"] = [{"name": "submodels", "mountPath": SUBMODELS_DIR, "readOnly": True}]
        body["spec"]["template"]["spec"]["volumes"] = [
            {"name": "submodels", "configMap": {"name": submodels_name(name, canary)}}
        ]
    if any(e["name"] == "ELASTISERVE_ARTIFACT_CACHE_DIR" for e in container["env"]):
        container.setdefault("volumeMounts", []).append({"name": "artifacts", "mountPath": ARTIFACTS_DIR})
        body["spec"]["template"]["spec"].setdefault("volumes", []).append(
            {"name": "artifacts", "emptyDir": {"sizeLimit": ARTIFACTS_SIZE_LIMIT}})
    if spec.model.credentials_secret:
        container.setdefault("volumeMounts", []).append(
            {"name": "s3-credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True})
        body["spec"]["template"]["spec"].setdefault("volumes", []).append(
            credentials_volume(spec.model.credentials_secret))
    body["metadata"]["annotations"] = {ANNOTATION_HASH: spec_hash(body["spec"])}
    return body


def credentials_volume(secret: str) -> dict[str, Any]:
    """The pod volume of ``model.credentialsSecret``: a reference by name, so always to a Secret of the pod's
    own namespace (the kubelet reads it; the operator never does). Only the S3 variables are projected, so
    the spec cannot be used to put any other key of any other Secret into the tenant's container; the two
    keys without which S3 cannot work are required (a missing Secret or key stops the pod at mount time with
    the kubelet's FailedMount Event), the others optional. Files are readable by the pod's group only."""
    def items(keys):
        return [{"key": k, "path": k} for k in keys]
    return {"name": "s3-credentials", "projected": {"defaultMode": 0o440, "sources": [
        {"secret": {"name": secret, "items": items(CREDENTIAL_KEYS_REQUIRED)}},
        {"secret": {"name": secret, "items": items(CREDENTIAL_KEYS_OPTIONAL), "optional": True}},
    ]}}


def build_replicas(name: str, namespace: str, variant: str, replicas: int, canary: bool = False) -> dict[str, Any]:
    """The scaler's apply patch: only ``spec.replicas``, under the scaler's own field manager."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deployment_name(name, variant, canary), "namespace": namespace},
        "spec": {"replicas": replicas},
    }


def build_service(spec: ModelDeploymentSpec, name: str, namespace: str, uid: str) -> dict[str, Any]:
    """One Service selecting the pods of every variant."""
    port = spec.template.ports[0]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": common_labels(name),
            "ownerReferences": [owner_reference(name, uid)],
        },
        "spec": {
            "selector": {LABEL_MDEP: name},
            "ports": [{"name": port.name, "port": 80, "targetPort": port.name, "protocol": "TCP"}],
        },
    }


def build_pods_service(spec: ModelDeploymentSpec, name: str, namespace: str, uid: str) -> dict[str, Any]:
    """The private Service ``<name>-pods``: always selects the pods; the activator forwards through it."""
    svc = build_service(spec, name, namespace, uid)
    svc["metadata"]["name"] = f"{name}-pods"
    svc["spec"]["ports"][0]["port"] = spec.template.ports[0].container_port
    return svc


ACTIVATOR_SELECTOR = {"elastiserve.dev/routed-to": "activator"}
"""The public Service's selector while at zero: a label no pod carries, so it selects none.

Not *no* selector: the Kubernetes controllers stop maintaining a Service that loses its selector and leave
what they wrote as it was: the EndpointSlices, and the Endpoints object, which the mirroring controller then
copies into a new slice. Those go on naming the pods that were Ready at the switch (a request at zero went
straight to a replica that was going away). With a selector that matches nothing the controllers empty
them; our EndpointSlice points at the activator."""


def build_service_to_activator(spec: ModelDeploymentSpec, name: str, namespace: str, uid: str) -> dict[str, Any]:
    """The public Service while the model is at zero: a selector that matches no pod (``ACTIVATOR_SELECTOR``);
    our EndpointSlice points at the activator."""
    svc = build_service(spec, name, namespace, uid)
    svc["spec"]["selector"] = dict(ACTIVATOR_SELECTOR)
    svc["metadata"]["annotations"] = {"elastiserve.dev/routing": "activator"}
    return svc


def build_activator_slice(
    name: str, namespace: str, uid: str, addresses: list[str], port: int, port_name: str = "http"
) -> dict[str, Any]:
    """EndpointSlice of the public Service listing the activator's addresses (Knative's approach)."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-activator",
            "namespace": namespace,
            "labels": common_labels(name)
            | {
                "kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": "elastiserve.dev",
            },
            "ownerReferences": [owner_reference(name, uid)],
        },
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses],
    }


def build_hpa(spec: ModelDeploymentSpec, name: str, namespace: str, uid: str, floor: int) -> dict[str, Any]:
    """In HPA mode: an HPA on the primary variant whose ``minReplicas`` the operator raises to pre-scale."""
    primary = spec.primary
    bounds = spec.bounds(primary)
    floor = max(1, min(floor, bounds.max))
    b = spec.behavior
    behavior = {
        direction: {
            "stabilizationWindowSeconds": rules.stabilization_window_seconds,
            "selectPolicy": rules.select_policy.value,
            "policies": [
                {"type": p.type, "value": p.value, "periodSeconds": p.period_seconds} for p in rules.policies
            ],
        }
        for direction, rules in (("scaleUp", b.scale_up), ("scaleDown", b.scale_down))
    }
    cpu = spec.metrics.rules.cpu
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": deployment_name(name, primary.name),
            "namespace": namespace,
            "labels": common_labels(name),
            "ownerReferences": [owner_reference(name, uid)],
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name(name, primary.name)},
            "minReplicas": floor,
            "maxReplicas": bounds.max,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        # int32 and at least 1, as the HPA's validation demands
                        "target": {"type": "Utilization",
                                   "averageUtilization": min(max(1, int(round(cpu.effective_target))), 2**31 - 1)},
                    },
                }
            ],
            "behavior": behavior,
        },
    }


def build_hotset(name: str, namespace: str, uid: str, models: list[str]) -> dict[str, Any]:
    """The hot set new replicas preload, published as a ConfigMap."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": hotset_name(name),
            "namespace": namespace,
            "labels": common_labels(name),
            "ownerReferences": [owner_reference(name, uid)],
        },
        "data": {"preload": ",".join(models)},
    }


def desired_objects(
    spec: ModelDeploymentSpec, name: str, namespace: str, uid: str, stable_version: str | None = None,
    inherited_env: Sequence[tuple[str, str]] = (),
) -> list[dict[str, Any]]:
    """Everything the reconcile handler applies for a spec (the HPA floor starts at the minimum).

    ``stable_version``: during a rollout the stable Deployments keep serving the old version."""
    objs = [build_submodels(spec, name, namespace, uid, stable_version)] if spec.model.sub_models else []
    objs += [build_deployment(spec, name, namespace, uid, v, version=stable_version, inherited_env=inherited_env)
             for v in spec.variants]
    objs.append(build_service(spec, name, namespace, uid))
    objs.append(build_pods_service(spec, name, namespace, uid))
    if spec.actuation == Actuation.HPA:
        objs.append(build_hpa(spec, name, namespace, uid, spec.bounds(spec.primary).min))
    return objs


def initial_replicas(spec: ModelDeploymentSpec) -> dict[str, int]:
    """Replicas of a new ModelDeployment before the first decision: each variant's minimum."""
    return {v.name: spec.bounds(v).min for v in spec.variants}


def spec_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
