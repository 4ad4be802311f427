"""The ModelDeployment spec: the single source of the CRD schema, the defaults and the validation.

Docstrings of models and fields become the CRD's ``description`` fields. Cross-field rules are written
twice on purpose, in the same words: once as a CEL rule (``x-kubernetes-validations``, enforced by the
API server) and once as a pydantic validator (enforced by ``elastiserve validate`` and the operator).
A unit test checks that every CEL rule has a Python twin that rejects the same examples.
"""

from __future__ import annotations

import math
import re
from enum import Enum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from .base import QUANTITY_PATTERN, ApiModel, parse_bytes, parse_quantity

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
URI_PATTERN = r"^(file://|s3://|https?://|/)[^\s]*$"
PROMETHEUS_URL_PATTERN = r"^https?://[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?(/[-A-Za-z0-9._~%/]*)?$"
"""scheme://host[:port][/path]: no user info, query or fragment (a ``#`` would cut off the API path)."""

Name = Annotated[str, StringConstraints(pattern=DNS_LABEL, min_length=1, max_length=40)]
Uri = Annotated[str, StringConstraints(pattern=URI_PATTERN, min_length=1, max_length=1024)]
Quantity = Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN, max_length=32)]
SecretName = Annotated[str, StringConstraints(pattern=DNS_LABEL, min_length=1, max_length=63)]
"""The name of a Secret in the ModelDeployment's own namespace (a DNS-1123 label: no namespace, no path)."""

RUNTIME_OVERHEAD_BYTES = 256 * 2**20
"""Memory a model-server process needs besides model weights (Python, ONNX Runtime arenas): the memory
request is at least the lazy-loading budget plus this."""


def cel(rule: str, message: str, field_path: str | None = None) -> dict:
    """One CEL validation rule for ``x-kubernetes-validations``."""
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


class Precision(str, Enum):
    """Numeric precision of a model variant's artifact."""

    fp32 = "fp32"
    int8 = "int8"
    pruned = "pruned"


class Role(str, Enum):
    """How the decision engine uses a variant."""

    primary = "primary"
    burst = "burst"


class Actuation(str, Enum):
    """How the operator applies its decisions."""

    Deployment = "Deployment"
    HPA = "HPA"


class ForecastMode(str, Enum):
    """Whether forecasts change replicas (Active) or are only reported (Preview)."""

    Active = "Active"
    Preview = "Preview"


class FallbackBehavior(str, Enum):
    """What to do once metrics have been missing for longer than ``fallback.afterSeconds``."""

    static = "static"
    keepCurrent = "keepCurrent"
    currentIfHigher = "currentIfHigher"


class SelectPolicy(str, Enum):
    """HPA semantics: Max picks the policy allowing the largest change, Min the smallest, Disabled forbids."""

    Max = "Max"
    Min = "Min"
    Disabled = "Disabled"


# --------------------------------------------------------------------------- model


Version = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=20)]


class SubModel(ApiModel):
    """A sub-model served by the same replicas and loaded lazily on first request."""

    name: Name
    """Name clients use in the request path (``/v2/models/{name}/infer``)."""
    uri: Uri
    """Where the artifact lives: ``file://``, an absolute path, ``s3://`` or ``http(s)://``."""
    version: Version | None = None
    """This sub-model's own version: ``$version`` in its URI becomes it (default: the model's version).
    Changing it hot-switches the sub-model inside the running replicas, with no pod restart."""


class LazyLoading(ApiModel):
    """Lazy, memory-budgeted loading of sub-models inside each replica."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("quantity(self.memoryBudget).compareTo(quantity('1Mi')) >= 0 && "
                    "quantity(self.memoryBudget).compareTo(quantity('1Ti')) <= 0",
                    "memoryBudget must be between 1Mi and 1Ti", ".memoryBudget"),
            ]
        }
    }

    enabled: bool = True
    """Load sub-models on first request instead of at start-up."""
    memory_budget: Quantity = "1Gi"
    """Bytes of model weights a replica keeps resident; least recently used models are evicted past it."""
    idle_unload_seconds: int = Field(default=600, ge=0, le=86400)
    """Unload a sub-model after this many seconds without a request (0 = never)."""
    preload: list[Name] = Field(default_factory=list, max_length=64)
    """Sub-models loaded (and kept) before a new replica reports ready. The model itself (``model.name``)
    always is, whether listed here or not."""
    hot_set_size: int = Field(default=4, ge=0, le=64)
    """How many of the busiest sub-models (by request rate over ``metrics.windowSeconds``) a new replica
    also loads at start-up, so it does not meet its first requests cold. The operator publishes them
    in the ConfigMap ``<name>-hotset``; they stay evictable. 0 = off."""

    @property
    def memory_budget_bytes(self) -> int:
        return parse_bytes(self.memory_budget)

    @model_validator(mode="after")
    def _budget_bounds(self) -> "LazyLoading":
        if not 2**20 <= parse_quantity(self.memory_budget) <= 2**40:
            raise ValueError(f"memoryBudget must be between 1Mi and 1Ti (got {self.memory_budget})")
        return self


class ModelSpec(ApiModel):
    """The model that the replicas serve."""

    name: Name
    """Name of the main model (the default sub-model)."""
    uri: Uri
    """Where the main model's artifact lives."""
    format: Literal["onnx"] = "onnx"
    """Artifact format. Only ONNX is served today."""
    version: Version = "v1"
    """Model version; changing it starts a rollout. ``$version`` in any URI is replaced by it (sub-models
    with their own ``version`` use that)."""
    sub_models: list[SubModel] = Field(default_factory=list, max_length=256)
    """Further models served by the same replicas, loaded lazily."""
    lazy_loading: LazyLoading = Field(default_factory=LazyLoading)
    credentials_secret: SecretName | None = None
    """A Secret in this namespace with the object store's credentials, for ``s3://`` URIs: keys
    ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (required), ``AWS_SESSION_TOKEN``,
    ``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``, ``AWS_DEFAULT_REGION`` (optional). Only
    these keys are mounted, read-only, into the model servers; the operator never reads the Secret, and
    credentials never go in the spec. Unset: the servers use their environment (e.g. a workload identity)."""

    @field_validator("credentials_secret", mode="before")
    @classmethod
    def _secret_in_this_namespace(cls, v):
        if isinstance(v, str) and not (len(v) <= 63 and re.match(DNS_LABEL, v)):
            raise ValueError(
                f"credentialsSecret must name a Secret in the ModelDeployment's own namespace: a DNS-1123 label "
                f"(lowercase letters, digits and '-', at most 63 characters; no namespace, '/' or '.'), got {v!r}")
        return v


# --------------------------------------------------------------------------- containers


RESERVED_ENV_PREFIX = "ELASTISERVE_"
"""The operator's own model-server variables (store roots, models, budget): a spec may not set them."""


class EnvVar(ApiModel):
    """An environment variable for the model-server container."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("!self.name.startsWith('ELASTISERVE_')",
                    "env names starting with ELASTISERVE_ are reserved for the operator", ".name"),
            ]
        }
    }

    name: Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", min_length=1, max_length=253)]
    """Letters, digits, ``_``, ``-`` and ``.``, not starting with a digit (what every Kubernetes version
    accepts). Names starting with ``ELASTISERVE_`` are the operator's."""
    value: Annotated[str, StringConstraints(max_length=4096)] = ""

    @model_validator(mode="after")
    def _not_reserved(self) -> "EnvVar":
        if self.name.startswith(RESERVED_ENV_PREFIX):
            raise ValueError(
                f"env names starting with ELASTISERVE_ are reserved for the operator (got {self.name}); "
                "the operator sets them from the spec (model, lazyLoading): change those fields instead"
            )
        return self


class ContainerPort(ApiModel):
    """A port the model server listens on."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("self.name.matches('[a-z]')", "a port name needs at least one letter", ".name"),
            ]
        }
    }

    name: Annotated[str, StringConstraints(pattern=r"^([a-z0-9]+-)*[a-z0-9]+$", min_length=1, max_length=15)] = "http"
    """An IANA service name: lowercase letters, digits and single inner hyphens, at least one letter."""
    container_port: int = Field(default=8080, ge=1, le=65535)

    @model_validator(mode="after")
    def _iana(self) -> "ContainerPort":
        if not re.search("[a-z]", self.name):
            raise ValueError(f"a port name needs at least one letter (got {self.name})")
        return self


RESOURCE_NAMES = ("cpu", "memory", "ephemeral-storage")


class Resources(ApiModel):
    """Compute resources (Kubernetes quantities), e.g. ``{"cpu": "1", "memory": "1Gi"}``."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("self.requests.all(k, k in ['cpu', 'memory', 'ephemeral-storage']) && "
                    "self.limits.all(k, k in ['cpu', 'memory', 'ephemeral-storage'])",
                    "resources may name only cpu, memory and ephemeral-storage"),
                cel("self.limits.all(k, !(k in self.requests) || "
                    "quantity(self.requests[k]).compareTo(quantity(self.limits[k])) <= 0)",
                    "a resource request must not exceed its limit"),
            ]
        }
    }

    requests: dict[str, Quantity] = Field(default_factory=dict, max_length=3)
    limits: dict[str, Quantity] = Field(default_factory=dict, max_length=3)

    @model_validator(mode="after")
    def _kubernetes_rules(self) -> "Resources":
        unknown = sorted((set(self.requests) | set(self.limits)) - set(RESOURCE_NAMES))
        if unknown:
            raise ValueError(f"resources may name only cpu, memory and ephemeral-storage (got {', '.join(unknown)})")
        over = [k for k in self.limits if k in self.requests
                and parse_quantity(self.requests[k]) > parse_quantity(self.limits[k])]
        if over:
            raise ValueError(f"a resource request must not exceed its limit ({', '.join(over)}: request "
                             f"{self.requests[over[0]]} > limit {self.limits[over[0]]})")
        return self


class ContainerTemplate(ApiModel):
    """The model-server container shared by all variants."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("self.ports.all(p, self.ports.exists_one(q, q.name == p.name)) && "
                    "self.ports.all(p, self.ports.exists_one(q, q.containerPort == p.containerPort))",
                    "port names and port numbers must be unique", ".ports"),
                cel("self.env.all(e, self.env.exists_one(f, f.name == e.name))",
                    "env names must be unique", ".env"),
            ]
        }
    }

    image: Annotated[str, StringConstraints(min_length=1, max_length=512)] = "ghcr.io/elastiserve/elastiserve:0.1.0"
    """Container image of the model server."""
    args: list[Annotated[str, StringConstraints(max_length=1024)]] = Field(
        default_factory=lambda: ["serve"], max_length=64
    )
    """Arguments after the image's entry point."""
    ports: list[ContainerPort] = Field(default_factory=lambda: [ContainerPort()], min_length=1, max_length=8)
    """Ports; the first one is the HTTP port the Service targets."""
    resources: Resources = Field(
        default_factory=lambda: Resources(requests={"cpu": "1", "memory": "1Gi"}, limits={"memory": "2Gi"})
    )
    env: list[EnvVar] = Field(default_factory=list, max_length=64)
    readiness_path: Annotated[str, StringConstraints(max_length=256)] = "/v2/health/ready"
    """HTTP path of the readiness probe."""

    @model_validator(mode="after")
    def _unique_ports(self) -> "ContainerTemplate":
        names = [p.name for p in self.ports]
        numbers = [p.container_port for p in self.ports]
        if len(set(names)) != len(names) or len(set(numbers)) != len(numbers):
            raise ValueError(f"port names and port numbers must be unique (got {list(zip(names, numbers))})")
        env = [e.name for e in self.env]
        repeated = sorted({n for n in env if env.count(n) > 1})
        if repeated:
            # server-side apply keys the container's env by name: a repeated name cannot be applied
            raise ValueError(f"env names must be unique (repeated: {', '.join(repeated)})")
        return self


# --------------------------------------------------------------------------- replicas & variants


class ReplicaBounds(ApiModel):
    """Lower and upper bound on replicas."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [cel("self.min <= self.max", "min must be less than or equal to max")]
        }
    }

    min: int = Field(default=1, ge=0, le=10000)
    """Fewest replicas. 0 is allowed only with scaleToZero.enabled."""
    max: int = Field(default=10, ge=1, le=10000)
    """Most replicas."""

    @model_validator(mode="after")
    def _min_le_max(self) -> "ReplicaBounds":
        if self.min > self.max:
            raise ValueError(f"min must be less than or equal to max (got min={self.min}, max={self.max})")
        return self


class Variant(ApiModel):
    """One deployable precision of the model, e.g. fp32 (primary) and int8 (burst)."""

    name: Annotated[str, StringConstraints(pattern=DNS_LABEL, min_length=1, max_length=20)]
    """Variant name; the Deployment is called ``<modeldeployment>-<variant>``."""
    precision: Precision = Precision.fp32
    role: Role = Role.primary
    """``primary`` serves the steady load; ``burst`` absorbs peaks beyond what the primary can serve."""
    capacity_qps: float = Field(default=10.0, gt=0, le=1e6)
    """Requests per second one replica serves at its latency SLO (measured with ``elastiserve model compare``)."""
    quality_cost: float = Field(default=0.0, ge=0, le=1)
    """Quality lost against fp32 (1 - mean cosine, from ``elastiserve model compare``). Burst variants take
    overflow in ascending ``qualityCost`` (INT8 before a pruned variant); together they provide at most
    ``burst.qualityBudget`` of the capacity."""
    model_uri: Uri | None = None
    """Artifact of this variant (defaults to the model's URI with the precision as suffix)."""
    image: Annotated[str, StringConstraints(max_length=512)] | None = None
    """Overrides the template's image."""
    args: list[Annotated[str, StringConstraints(max_length=1024)]] | None = Field(default=None, max_length=64)
    """Overrides the template's args."""
    resources: Resources | None = None
    """Overrides the template's resources."""
    replicas: ReplicaBounds | None = None
    """Per-variant bounds; defaults to the model's bounds for the primary and 0..max for burst variants."""


# --------------------------------------------------------------------------- metrics


class SecretKeyRef(ApiModel):
    """A key in a Secret of the ModelDeployment's namespace."""

    name: Name
    key: Annotated[str, StringConstraints(min_length=1, max_length=253)] = "token"


class PrometheusSpec(ApiModel):
    """Where the operator reads metrics. Empty fields use the operator's own settings."""

    url: Annotated[str, StringConstraints(pattern=PROMETHEUS_URL_PATTERN, max_length=1024)] | None = None
    """Prometheus base URL, e.g. ``http://prometheus.monitoring:9090`` (no user info, query or fragment).
    It must be the operator's default Prometheus or on the operator's allowlist
    (``--prometheus-allowed-url``); any other URL is refused before a connection is made."""
    bearer_token_secret: SecretKeyRef | None = None
    """Secret holding a bearer token (never logged), sent only to an allowed URL. The Secret must carry the
    label ``elastiserve.dev/prometheus-token: "true"``."""
    tls_verify: bool = True
    """Verify the server's TLS certificate."""
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    """Timeout of one query."""


class ThresholdRule(ApiModel):
    """Scale up above ``scaleUpAbove``, down below ``scaleDownBelow``; in between, hold.

    Out of the band the new replica count is proportional, as the HPA does:
    ``ceil(current * value / target)`` (target defaults to the middle of the band).
    """

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "self.scaleDownBelow < self.scaleUpAbove",
                    "scaleDownBelow must be lower than scaleUpAbove",
                ),
                cel(
                    "!has(self.target) || (self.target >= self.scaleDownBelow && self.target <= self.scaleUpAbove)",
                    "target must lie between scaleDownBelow and scaleUpAbove",
                ),
            ]
        }
    }

    enabled: bool = True
    scale_up_above: float = Field(ge=0, le=1e9)
    """Scale up when the signal is above this value."""
    scale_down_below: float = Field(ge=0, le=1e9)
    """Scale down when the signal is below this value."""
    target: float | None = Field(default=None, ge=0, le=1e9)
    """Value the proportional formula aims for (default: middle of the band)."""
    query: Annotated[str, StringConstraints(max_length=4096)] | None = None
    """PromQL that overrides the built-in query. ``$namespace``, ``$name``, ``$window`` are substituted."""

    @model_validator(mode="after")
    def _band(self) -> "ThresholdRule":
        if not self.scale_down_below < self.scale_up_above:
            raise ValueError(
                f"scaleDownBelow must be lower than scaleUpAbove "
                f"(got scaleDownBelow={self.scale_down_below}, scaleUpAbove={self.scale_up_above})"
            )
        if self.target is not None and not (self.scale_down_below <= self.target <= self.scale_up_above):
            raise ValueError(
                f"target must lie between scaleDownBelow and scaleUpAbove "
                f"(got target={self.target}, band=[{self.scale_down_below}, {self.scale_up_above}])"
            )
        return self

    @property
    def effective_target(self) -> float:
        return self.target if self.target is not None else (self.scale_up_above + self.scale_down_below) / 2


def _rule(up: float, down: float, target: float | None = None, enabled: bool = True):
    return lambda: ThresholdRule(scale_up_above=up, scale_down_below=down, target=target, enabled=enabled)


class InflightRule(ThresholdRule):
    """In-flight requests per ready replica: requests the model servers are serving or queueing plus those
    the activator holds for the model, divided by the replicas (primary-equivalents), in percent of
    ``concurrency``. Under overload it rises before the latency does (a gauge, no rate window).

    The band works like the other rules (HPA proportional formula). With ``slo.enabled`` the SLO policy
    reads it instead, as the freshest measure of demand (``concurrency`` in-flight requests = one replica's
    ``capacityQps``), and ``panicPeriodSeconds`` runs a scale-up-only check between full cycles."""

    enabled: bool = False
    """Off by default: existing specs keep their meaning (see docs/forecasting.md)."""
    scale_up_above: float = Field(default=100, ge=0, le=1e9)
    """Scale up above this percent of ``concurrency`` per replica."""
    scale_down_below: float = Field(default=40, ge=0, le=1e9)
    """Scale down below this percent of ``concurrency`` per replica."""
    target: float | None = Field(default=70, ge=0, le=1e9)
    """Percent of ``concurrency`` per replica the proportional formula aims for."""
    concurrency: float | None = Field(default=None, gt=0, le=1e6)
    """In-flight requests of one primary replica serving its ``capacityQps`` (Knative's target
    concurrency). Default from Little's law: ``capacityQps × latency objective / ln 20`` (the mean latency
    of a replica at its p95 objective when latency is exponential-tailed, p95 = ln 20 × mean)."""
    panic_period_seconds: int = Field(default=5, ge=0, le=300)
    """How often the operator re-reads in-flight between full cycles and scales up (never down) when it
    exceeds the ready capacity; 0: off. Must be shorter than ``syncPeriodSeconds``."""


class MetricRules(ApiModel):
    """Threshold rules per signal. The highest replica count any enabled rule asks for wins."""

    cpu: ThresholdRule = Field(default_factory=_rule(80, 30))
    """CPU utilisation in percent of the pods' CPU request."""
    memory: ThresholdRule = Field(default_factory=_rule(85, 30, enabled=False))
    """Memory working set in percent of the pods' memory request."""
    qps: ThresholdRule = Field(default_factory=_rule(90, 40, target=70))
    """Requests per second as percent of the variants' ``capacityQps`` (utilisation of serving capacity)."""
    latency: ThresholdRule = Field(default_factory=_rule(200, 50))
    """p95 latency in milliseconds (``scaleUpAbove`` is the latency SLO)."""
    error_rate: ThresholdRule = Field(default_factory=_rule(5, 1, enabled=False))
    """Share of 5xx responses in percent; high error rates are treated as overload."""
    inflight: InflightRule = Field(default_factory=InflightRule)
    """In-flight requests per replica in percent of ``concurrency`` (off by default)."""


class MetricsSpec(ApiModel):
    """Prometheus connection and the scaling rules fed by it."""

    prometheus: PrometheusSpec = Field(default_factory=PrometheusSpec)
    rules: MetricRules = Field(default_factory=MetricRules)
    window_seconds: int = Field(default=60, ge=10, le=3600)
    """Rate window of the built-in queries (``rate(...[window])``)."""
    stale_after_seconds: int = Field(default=90, ge=10, le=3600)
    """Metrics older than this count as missing: the decision holds, it never scales down."""
    latency_quantile: Literal["p95", "p99"] = "p95"
    """Which latency quantile the latency rule reads."""


# --------------------------------------------------------------------------- forecasting


class ForecastingSpec(ApiModel):
    """ARIMA pre-scaling: size for the upper forecast quantile over the horizon."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "self.horizonSeconds < self.historySeconds",
                    "horizonSeconds must be shorter than historySeconds",
                ),
                cel(
                    "self.stepSeconds <= self.horizonSeconds",
                    "stepSeconds must not exceed horizonSeconds",
                ),
            ]
        }
    }

    enabled: bool = False
    method: Literal["arima", "naive"] = "arima"
    mode: ForecastMode = ForecastMode.Active
    order: list[Annotated[int, Field(ge=0, le=5)]] | None = Field(default=None, min_length=3, max_length=3)
    """ARIMA (p, d, q). Empty: chosen by AIC at each refit."""
    seasonal_periods_seconds: list[Annotated[int, Field(ge=60, le=31 * 86400)]] = Field(
        default_factory=lambda: [86400], max_length=4
    )
    """Seasonal periods modelled with Fourier terms (daily by default; add 604800 for weekly)."""
    fourier_terms: int = Field(default=3, ge=0, le=10)
    """Sine/cosine pairs per seasonal period."""
    step_seconds: int = Field(default=60, ge=1, le=3600)
    """Resolution of the history and the forecast."""
    history_seconds: int = Field(default=3 * 86400, ge=600, le=60 * 86400)
    """How much history the model is fitted on."""
    horizon_seconds: int = Field(default=300, ge=1, le=86400)
    """How far ahead to pre-scale (about the time a new replica needs to become ready)."""
    quantile: float = Field(default=0.9, ge=0.5, le=0.999)
    """Upper quantile of the prediction interval the capacity is sized for."""
    refit_seconds: int = Field(default=3600, ge=60, le=7 * 86400)
    """Full refit period; in between, new observations only update the state (cheap)."""
    max_error: float = Field(default=0.5, gt=0, le=2)
    """Recent sMAPE above which forecasts are ignored (ForecastReady=False)."""

    @model_validator(mode="after")
    def _windows(self) -> "ForecastingSpec":
        if not self.horizon_seconds < self.history_seconds:
            raise ValueError(
                f"horizonSeconds must be shorter than historySeconds "
                f"(got horizonSeconds={self.horizon_seconds}, historySeconds={self.history_seconds})"
            )
        if self.step_seconds > self.horizon_seconds:
            raise ValueError(
                f"stepSeconds must not exceed horizonSeconds "
                f"(got stepSeconds={self.step_seconds}, horizonSeconds={self.horizon_seconds})"
            )
        return self


# --------------------------------------------------------------------------- behavior


class ScalingPolicy(ApiModel):
    """At most ``value`` pods (type Pods) or percent (type Percent) of change per ``periodSeconds``."""

    type: Literal["Pods", "Percent"]
    value: int = Field(ge=1, le=10000)
    period_seconds: int = Field(ge=1, le=1800)


class ScalingRules(ApiModel):
    """HPA-compatible rules for one direction."""

    stabilization_window_seconds: int = Field(ge=0, le=3600)
    """Use the highest (scale-down) or lowest (scale-up) recommendation of this window."""
    select_policy: SelectPolicy = SelectPolicy.Max
    policies: list[ScalingPolicy] = Field(min_length=1, max_length=10)


def _scale_up_default() -> ScalingRules:
    # The HPA v2 defaults: no stabilization, double or add 4 pods every 15 s, whichever is more.
    return ScalingRules(
        stabilization_window_seconds=0,
        policies=[
            ScalingPolicy(type="Percent", value=100, period_seconds=15),
            ScalingPolicy(type="Pods", value=4, period_seconds=15),
        ],
    )


def _scale_down_default() -> ScalingRules:
    # The HPA v2 defaults: 300 s stabilization, then any amount per 15 s.
    return ScalingRules(
        stabilization_window_seconds=300,
        policies=[ScalingPolicy(type="Percent", value=100, period_seconds=15)],
    )


class Behavior(ApiModel):
    """Stabilization windows and rate limits with the HPA's semantics."""

    scale_up: ScalingRules = Field(default_factory=_scale_up_default)
    scale_down: ScalingRules = Field(default_factory=_scale_down_default)
    tolerance: float = Field(default=0.1, ge=0, le=1)
    """Relative deviation from the target ignored by proportional rules (HPA: 0.1)."""


# --------------------------------------------------------------------------- burst, zero, fallback


class BurstSpec(ApiModel):
    """When and how burst variants (e.g. INT8) absorb demand."""

    enabled: bool = True
    short_peak_seconds: int = Field(default=900, ge=0, le=86400)
    """A forecast peak shorter than this is served by burst replicas instead of primary ones."""
    quality_budget: float = Field(default=0.5, ge=0, le=1)
    """Largest share of capacity that burst variants may provide."""


class ActivatorSpec(ApiModel):
    """How the activator holds requests while a model scales from zero."""

    queue_size: int = Field(default=1000, ge=1, le=100000)
    """Requests buffered per model while no replica is ready."""
    timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    """A buffered request still waiting after this gets 503 with Retry-After."""


class ScaleToZeroSpec(ApiModel):
    """Serverless mode: no replicas after an idle period; the activator wakes the model up."""

    enabled: bool = False
    idle_seconds: int = Field(default=300, ge=30, le=7 * 86400)
    """Seconds without requests before scaling to zero."""
    cold_start_variant: Annotated[str, StringConstraints(pattern=DNS_LABEL, max_length=20)] | None = None
    """Variant started first from zero (default: a burst variant if any, since it loads faster)."""
    activator: ActivatorSpec = Field(default_factory=ActivatorSpec)


class FallbackSpec(ApiModel):
    """What to do when metrics stay missing (KEDA-style fallback)."""

    behavior: FallbackBehavior = FallbackBehavior.keepCurrent
    after_seconds: int = Field(default=300, ge=0, le=86400)
    """How long metrics must be missing before the fallback applies."""
    replicas: int = Field(default=1, ge=0, le=10000)
    """Replicas used by the ``static`` and ``currentIfHigher`` behaviours."""


class RolloutSpec(ApiModel):
    """How a new model version replaces the old one: traffic steps, each gated on errors and latency."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("self.steps.isSorted() && self.steps.all(s, self.steps.exists_one(t, t == s))",
                    "rollout.steps must be strictly increasing"),
                cel("self.steps[size(self.steps) - 1] == 100", "rollout.steps must end at 100"),
            ]
        }
    }

    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(default_factory=lambda: [10, 50, 100], min_length=1, max_length=10)
    """Percent of each variant's replicas on the new version, step by step (by replica ratio)."""
    step_seconds: int = Field(default=60, ge=10, le=86400)
    """Least time on a step; the gate is evaluated over it."""
    min_requests: int = Field(default=20, ge=0, le=10**7)
    """Requests the new version must serve on a step before the gate can pass."""
    max_error_rate_increase: float = Field(default=1.0, ge=0, le=100)
    """Roll back when the new version's 5xx share exceeds the old one's by more (percentage points)."""
    max_latency_ratio: float = Field(default=1.5, ge=1, le=100)
    """Roll back when the new version's p95 latency exceeds the old one's by this factor."""
    ready_timeout_seconds: int = Field(default=300, ge=10, le=86400)
    """Roll back when the new version has no ready replica after this long (e.g. the artifact is missing)."""

    @model_validator(mode="after")
    def _steps(self) -> "RolloutSpec":
        if any(b <= a for a, b in zip(self.steps, self.steps[1:])):
            raise ValueError(f"rollout.steps must be strictly increasing (got {self.steps})")
        if self.steps[-1] != 100:
            raise ValueError(f"rollout.steps must end at 100 (got {self.steps})")
        return self


# --------------------------------------------------------------------------- service-level objective


class SloSpec(ApiModel):
    """The service-level objective the SLO policy sizes capacity for (``enabled: false``: the rules and the
    forecast floor decide, as before).

    The objective: the latency quantile ``latencyQuantile`` stays at or below ``latencyMs`` (and, when set,
    the 5xx share at or below ``maxErrorRatePercent``) in at least ``attainment`` of the minutes. With it
    on, the request-rate rule's target is replaced by headroom sized from the measured uncertainty of
    demand over each variant's lead time, calibrated online to the attainment actually observed."""

    enabled: bool = False
    """Size capacity for the objective instead of the request-rate rule's fixed target."""
    latency_ms: float | None = Field(default=None, gt=0, le=600000)
    """Latency objective in milliseconds (default: ``metrics.rules.latency.scaleUpAbove``)."""
    latency_quantile: Literal["p95", "p99"] | None = None
    """Latency quantile the objective is about (default and only allowed value: ``metrics.latencyQuantile``,
    the quantile the operator reads)."""
    attainment: float = Field(default=0.99, ge=0.5, le=0.9999)
    """Share of minutes in which the objective must hold (0.99: at most 14 minutes a day in violation)."""
    max_error_rate_percent: float | None = Field(default=None, ge=0, le=100)
    """Optional ceiling on the share of 5xx responses (percent); a minute above it counts as a violation."""


_SLO_RULES = [
    cel(
        "!self.slo.enabled || has(self.slo.latencyMs) || self.metrics.rules.latency.scaleUpAbove > 0",
        "slo.latencyMs is needed when metrics.rules.latency.scaleUpAbove is 0",
        ".slo.latencyMs",
    ),
    cel(
        "!has(self.slo.latencyQuantile) || self.slo.latencyQuantile == self.metrics.latencyQuantile",
        "slo.latencyQuantile must equal metrics.latencyQuantile (the quantile the operator reads)",
        ".slo.latencyQuantile",
    ),
]


_INFLIGHT_RULES = [
    cel(
        "!self.metrics.rules.inflight.enabled || self.metrics.rules.inflight.panicPeriodSeconds == 0 || "
        "self.metrics.rules.inflight.panicPeriodSeconds < self.syncPeriodSeconds",
        "metrics.rules.inflight.panicPeriodSeconds must be shorter than syncPeriodSeconds (or 0: no panic check)",
        ".metrics.rules.inflight.panicPeriodSeconds",
    ),
]


def _check_inflight(spec: "ModelDeploymentSpec") -> None:
    """Python twins of ``_INFLIGHT_RULES``."""
    r = spec.metrics.rules.inflight
    if not r.enabled:
        return
    if r.panic_period_seconds and r.panic_period_seconds >= spec.sync_period_seconds:
        raise ValueError(
            "metrics.rules.inflight.panicPeriodSeconds must be shorter than syncPeriodSeconds (or 0: no panic check) "
            f"(got panicPeriodSeconds={r.panic_period_seconds}, syncPeriodSeconds={spec.sync_period_seconds}): "
            "lower panicPeriodSeconds, e.g. 5"
        )


def _check_slo(spec: "ModelDeploymentSpec") -> None:
    """Python twins of ``_SLO_RULES``."""
    slo = spec.slo
    if slo.enabled and slo.latency_ms is None and spec.metrics.rules.latency.scale_up_above <= 0:
        raise ValueError("slo.latencyMs is needed when metrics.rules.latency.scaleUpAbove is 0 "
                         "(set slo.latencyMs, e.g. 200)")
    if slo.latency_quantile is not None and slo.latency_quantile != spec.metrics.latency_quantile:
        raise ValueError(
            "slo.latencyQuantile must equal metrics.latencyQuantile (the quantile the operator reads) "
            f"(got slo.latencyQuantile={slo.latency_quantile}, metrics.latencyQuantile={spec.metrics.latency_quantile})"
        )


# --------------------------------------------------------------------------- the spec


_SPEC_RULES = [
    cel(
        "self.variants.all(v, self.variants.exists_one(w, w.name == v.name))",
        "variant names must be unique",
        ".variants",
    ),
    cel(
        "self.variants.exists_one(v, v.role == 'primary')",
        "exactly one variant must have role primary",
        ".variants",
    ),
    cel(
        "self.replicas.min > 0 || self.scaleToZero.enabled",
        "replicas.min may be 0 only when scaleToZero.enabled is true",
        ".replicas.min",
    ),
    cel(
        "!(self.actuation == 'HPA' && self.scaleToZero.enabled)",
        "scaleToZero needs actuation Deployment: an HPA cannot scale to 0",
        ".actuation",
    ),
    cel(
        "!has(self.scaleToZero.coldStartVariant) || "
        "self.variants.exists(v, v.name == self.scaleToZero.coldStartVariant)",
        "scaleToZero.coldStartVariant must name one of the variants",
        ".scaleToZero.coldStartVariant",
    ),
    cel(
        "self.model.lazyLoading.preload.all(p, p == self.model.name || "
        "self.model.subModels.exists(s, s.name == p))",
        "model.lazyLoading.preload may only name the model or its subModels",
        ".model.lazyLoading.preload",
    ),
    cel(
        "self.model.subModels.all(s, self.model.subModels.exists_one(t, t.name == s.name))",
        "subModel names must be unique",
        ".model.subModels",
    ),
]


def _memory_limit_fits(limits: str) -> str:
    return (f"(!('memory' in {limits}) || quantity({limits}['memory'])"
            ".compareTo(quantity(self.model.lazyLoading.memoryBudget).add(quantity('256Mi'))) >= 0)")


_APPLY_RULES = [
    # Rules that make every accepted spec one the operator can apply (the objects it builds must pass
    # the API server's own validation).
    cel(
        "self.model.subModels.all(s, s.name != self.model.name)",
        "a subModel must not be named like the model",
        ".model.subModels",
    ),
    cel(
        "!self.model.lazyLoading.enabled || (" + _memory_limit_fits("self.template.resources.limits")
        + " && self.variants.all(v, !has(v.resources) || " + _memory_limit_fits("v.resources.limits") + "))",
        "a memory limit must leave room for the lazy-loading budget plus 256Mi of runtime",
        ".template.resources",
    ),
]


class ModelDeploymentSpec(ApiModel):
    """Desired state of a ModelDeployment: a model, its variants and how to scale them."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {"x-kubernetes-validations": _SPEC_RULES + _APPLY_RULES + _SLO_RULES + _INFLIGHT_RULES}
    }

    model: ModelSpec
    template: ContainerTemplate = Field(default_factory=ContainerTemplate)
    variants: list[Variant] = Field(
        default_factory=lambda: [Variant(name="fp32")], min_length=1, max_length=8
    )
    """Deployable variants; exactly one is primary."""
    replicas: ReplicaBounds = Field(default_factory=ReplicaBounds)
    """Bounds on the primary variant's replicas (and on the model's, in primary-equivalents)."""
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    forecasting: ForecastingSpec = Field(default_factory=ForecastingSpec)
    behavior: Behavior = Field(default_factory=Behavior)
    burst: BurstSpec = Field(default_factory=BurstSpec)
    scale_to_zero: ScaleToZeroSpec = Field(default_factory=ScaleToZeroSpec)
    fallback: FallbackSpec = Field(default_factory=FallbackSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    slo: SloSpec = Field(default_factory=SloSpec)
    """Service-level objective; with ``slo.enabled`` capacity is sized for it (see docs/forecasting.md)."""
    actuation: Actuation = Actuation.Deployment
    sync_period_seconds: int = Field(default=15, ge=5, le=600)
    """How often the operator reads metrics and decides."""

    @model_validator(mode="after")
    def _cross_field(self) -> "ModelDeploymentSpec":
        names = [v.name for v in self.variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variant names must be unique (repeated: {', '.join(dupes)})")
        primaries = [v.name for v in self.variants if v.role == Role.primary]
        if len(primaries) != 1:
            raise ValueError(
                f"exactly one variant must have role primary (got {len(primaries)}: {primaries or 'none'})"
            )
        if self.replicas.min == 0 and not self.scale_to_zero.enabled:
            raise ValueError(
                "replicas.min may be 0 only when scaleToZero.enabled is true "
                "(set replicas.min >= 1 or scaleToZero.enabled: true)"
            )
        if self.actuation == Actuation.HPA and self.scale_to_zero.enabled:
            raise ValueError("scaleToZero needs actuation Deployment: an HPA cannot scale to 0")
        cold = self.scale_to_zero.cold_start_variant
        if cold is not None and cold not in names:
            raise ValueError(
                f"scaleToZero.coldStartVariant must name one of the variants (got {cold!r}, variants: {names})"
            )
        known = {self.model.name} | {s.name for s in self.model.sub_models}
        unknown = [p for p in self.model.lazy_loading.preload if p not in known]
        if unknown:
            raise ValueError(
                f"model.lazyLoading.preload may only name the model or its subModels "
                f"(unknown: {unknown}, known: {sorted(known)})"
            )
        subs = [s.name for s in self.model.sub_models]
        sub_dupes = sorted({n for n in subs if subs.count(n) > 1})
        if sub_dupes:
            raise ValueError(f"subModel names must be unique (repeated: {', '.join(sub_dupes)})")
        return self

    @model_validator(mode="after")
    def _operator_can_apply(self) -> "ModelDeploymentSpec":
        if any(s.name == self.model.name for s in self.model.sub_models):
            raise ValueError(f"a subModel must not be named like the model (got {self.model.name})")
        lazy = self.model.lazy_loading
        if lazy.enabled:
            need = lazy.memory_budget_bytes + RUNTIME_OVERHEAD_BYTES
            for where, res in [("template", self.template.resources)] + [
                    (f"variants[{v.name}]", v.resources) for v in self.variants if v.resources is not None]:
                limit = res.limits.get("memory")
                if limit is not None and parse_quantity(limit) < need:
                    raise ValueError(
                        f"a memory limit must leave room for the lazy-loading budget plus 256Mi of runtime "
                        f"({where}.resources.limits.memory {limit} < memoryBudget {lazy.memory_budget} + 256Mi): "
                        "raise the limit or lower model.lazyLoading.memoryBudget"
                    )
        return self

    @model_validator(mode="after")
    def _slo_cross_field(self) -> "ModelDeploymentSpec":
        _check_slo(self)
        _check_inflight(self)
        return self

    @property
    def slo_latency_ms(self) -> float:
        """The latency objective in ms: ``slo.latencyMs``, else the latency rule's ``scaleUpAbove``."""
        return self.slo.latency_ms if self.slo.latency_ms is not None else self.metrics.rules.latency.scale_up_above

    @property
    def inflight_concurrency(self) -> float:
        """In-flight requests of one primary replica at ``capacityQps``: ``metrics.rules.inflight.concurrency``,
        else Little's law with the mean latency at the p95 objective of an exponential tail (objective / ln 20)."""
        c = self.metrics.rules.inflight.concurrency
        if c is not None:
            return c
        return max(self.primary.capacity_qps * self.slo_latency_ms / 1000 / math.log(20), 1e-6)

    # ---- helpers used by builders and the decision engine (pure)

    @property
    def primary(self) -> Variant:
        return next(v for v in self.variants if v.role == Role.primary)

    @property
    def bursts(self) -> list[Variant]:
        return [v for v in self.variants if v.role == Role.burst]

    def bounds(self, variant: Variant) -> ReplicaBounds:
        """Replica bounds of a variant: its own, else the model's (primary) or 0..max (burst)."""
        if variant.replicas is not None:
            return variant.replicas
        if variant.role == Role.primary:
            return self.replicas
        return ReplicaBounds(min=0, max=self.replicas.max)

    def cold_start_variant(self) -> Variant:
        """The variant that serves the first request after zero."""
        if self.scale_to_zero.cold_start_variant:
            return next(v for v in self.variants if v.name == self.scale_to_zero.cold_start_variant)
        int8 = [v for v in self.bursts if v.precision == Precision.int8]
        return int8[0] if int8 else self.primary
