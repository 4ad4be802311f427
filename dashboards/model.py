"""Per-model detail: traffic vs forecast, latency vs SLO, errors, replicas, SLO policy, resources, INT8, sub-models, cold starts."""

from __future__ import annotations

from .queries import MODEL, MODEL_VARIANTS, SLO_BUCKETS, SLO_TARGET_PERCENT, operator_query
from .spec import Dashboard, Panel, Row, Target, Variable

SERVER = f"{{{MODEL_VARIANTS}}}"
"""Selector of the model servers' series (``{namespace=..., modeldeployment=..., variant=~...}``)."""

OPERATOR = f"{{{MODEL}}}"
PODS = 'namespace="$namespace",pod=~"$modeldeployment-$variant-.*",container!="",container!="POD"'


def _sum_rate(metric: str, selector: str = SERVER, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{selector}[$__rate_interval]))"


def _quantile(q: str, metric: str, selector: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{selector}[$__rate_interval])))"


DASHBOARD = Dashboard(
    uid="elastiserve-model",
    title="elastiserve / Model",
    description="One ModelDeployment: what the operator sees (its own queries), what it decided and how the servers behave.",
    variables=(
        Variable("namespace", "Namespace", query="label_values(elastiserve_operator_replicas, namespace)"),
        Variable(
            "modeldeployment",
            "ModelDeployment",
            query='label_values(elastiserve_operator_replicas{namespace="$namespace"}, modeldeployment)',
        ),
        Variable(
            "variant",
            "Variant",
            query=f"label_values(elastiserve_operator_replicas{OPERATOR}, variant)",
            multi=True,
            include_all=True,
        ),
        Variable(
            "slo_latency",
            "Latency SLO (s)",
            options=SLO_BUCKETS,
            description=f"Latency threshold of the SLO ({SLO_TARGET_PERCENT} % of requests faster).",
        ),
    ),
    rows=(
        Row(
            "Traffic",
            (
                Panel(
                    "Requests/s: actual vs forecast",
                    (
                        Target(operator_query("qps"), "actual"),
                        Target(f'max(elastiserve_operator_forecast_qps{{{MODEL},bound="mean"}})', "forecast (mean)"),
                        Target(f'max(elastiserve_operator_forecast_qps{{{MODEL},bound="upper"}})', "forecast (upper)"),
                        Target(f"max(elastiserve_operator_observed_qps{OPERATOR})", "seen by the operator"),
                    ),
                    unit="reqps",
                    band=("forecast (mean)", "forecast (upper)"),
                    width=16,
                    description="The operator's request-rate query (model servers + activator) and the forecast peak "
                    "over the horizon; the band spans the mean and the upper quantile.",
                ),
                Panel(
                    "Forecast error (sMAPE)",
                    (Target(f"max(elastiserve_operator_forecast_error{OPERATOR})"),),
                    kind="stat",
                    width=8,
                    thresholds=((0.3, "orange"), (0.5, "red")),
                    description="Recent symmetric MAPE of the forecast (0 perfect, 2 useless); the alert fires above 0.5.",
                ),
                Panel(
                    "Latency p95 / p99 vs SLO",
                    (
                        Target(operator_query("latency", quantile="0.95"), "p95"),
                        Target(operator_query("latency", quantile="0.99"), "p99"),
                        Target("vector($slo_latency * 1000)", "SLO"),
                    ),
                    unit="ms",
                    min=0,
                    width=8,
                ),
                Panel(
                    "Error rate",
                    (Target(operator_query("error_rate"), "5xx"),),
                    unit="percent",
                    min=0,
                    width=8,
                    description="The operator's error-rate query: share of 5xx responses.",
                ),
                Panel(
                    "Traffic share by variant (INT8 share)",
                    (
                        Target(
                            f"100 * {_sum_rate('elastiserve_requests_total', by='variant')} / ignoring (variant) "
                            f"group_left {_sum_rate('elastiserve_requests_total')}",
                            "{{variant}}",
                        ),
                    ),
                    unit="percent",
                    stack=True,
                    min=0,
                    max=100,
                    width=8,
                    description="Which variant served the requests: burst (INT8) replicas take the overflow.",
                ),
            ),
        ),
        Row(
            "Replicas",
            (
                Panel(
                    "Replicas: desired vs ready",
                    (
                        Target(f'elastiserve_operator_desired_replicas{{{MODEL_VARIANTS}}}', "desired {{variant}}"),
                        Target(f'elastiserve_operator_ready_replicas{{{MODEL_VARIANTS}}}', "ready {{variant}}"),
                        Target(f'elastiserve_operator_max_replicas{{{MODEL_VARIANTS}}}', "max {{variant}}"),
                    ),
                    min=0,
                    width=12,
                ),
                Panel(
                    "Scale events",
                    (
                        Target(
                            f"sum by (variant, direction) (increase(elastiserve_operator_scale_events_total{{{MODEL_VARIANTS}}}[$__interval]))",
                            "{{variant}} {{direction}}",
                        ),
                    ),
                    bars=True,
                    min_interval="1m",
                    width=6,
                ),
                Panel(
                    "Scaled to zero",
                    (Target(f"max(elastiserve_operator_scaled_to_zero{OPERATOR})"),),
                    kind="stat",
                    width=3,
                ),
                Panel(
                    "Metrics available",
                    (Target(f"min(elastiserve_operator_metrics_available{OPERATOR})"),),
                    kind="stat",
                    width=3,
                    base_color="red",
                    thresholds=((1, "green"),),
                    description="0: the operator cannot read this model's metrics and holds its replicas.",
                ),
            ),
        ),
        Row(
            "SLO policy",
            (
                Panel(
                    "Lead time by variant",
                    (Target(f"max by (variant) (elastiserve_operator_slo_lead_seconds{{{MODEL_VARIANTS}}})", "{{variant}}"),),
                    unit="s",
                    min=0,
                    width=9,
                    description="How far ahead the SLO policy sizes each variant: metric age + half the rate window "
                    "+ sync period + the start-up it learned from observed Ready times (60 s until first seen). "
                    "A lead time that grows means slower pods: the policy then keeps more headroom for them.",
                ),
                Panel(
                    "Demand quantile",
                    (Target(f"max(elastiserve_operator_slo_quantile{OPERATOR})", "quantile"),),
                    unit="percentunit",
                    min=0.5,
                    max=1,
                    width=5,
                    description="Quantile of demand over the lead time that capacity is sized for, calibrated online "
                    "(adaptive conformal inference): violated minutes raise it fast, calm ones lower it slowly. "
                    "Pinned at 99.9 % means the history holds no rise as large as the misses need: "
                    "the headroom multiplier takes over.",
                ),
                Panel(
                    "Headroom multiplier",
                    (Target(f"max(elastiserve_operator_slo_headroom{OPERATOR})", "headroom"),),
                    min=1,
                    width=5,
                    thresholds=((1.5, "orange"), (3, "red")),
                    description="Calibrated factor on top of the demand quantile (1 = none, at most 5). Above 1 only "
                    "while the quantile is at its ceiling and the objective is still missed: capacity is being "
                    "bought blindly, check start-up times and the burst variant.",
                ),
                Panel(
                    "Forecast coverage",
                    (Target(f"max(elastiserve_operator_forecast_coverage{OPERATOR})", "coverage"),),
                    unit="percentunit",
                    min=0,
                    max=1,
                    width=5,
                    base_color="red",
                    thresholds=((0.5, "orange"), (0.8, "green")),
                    description="Share of observed request rates at or below the forecast's upper bound one lead time "
                    "earlier (exponentially weighted). Near forecasting.quantile the forecast is trusted; at 50 % "
                    "or below it gets no weight and the empirical demand growth decides.",
                ),
                Panel(
                    "Panic-path scale-ups",
                    (Target(f"sum by (variant) (increase(elastiserve_operator_panic_scaleups_total{{{MODEL_VARIANTS}}}"
                            "[$__rate_interval]))", "{{variant}}"),),
                    min=0,
                    width=24,
                    description="Scale-ups made by the fast panic check between cycles (in-flight requests past the "
                    "ready capacity, metrics.rules.inflight). A few around surges are its job; many in calm traffic "
                    "mean the full cycle sizes too little headroom, or the in-flight concurrency is set too low.",
                ),
            ),
        ),
        Row(
            "Resources",
            (
                Panel(
                    "CPU by pod",
                    (Target(f"sum by (pod) (rate(container_cpu_usage_seconds_total{{{PODS}}}[$__rate_interval]))", "{{pod}}"),),
                    unit="cores",
                    min=0,
                    description="cAdvisor CPU usage of the model-server pods (the operator's cpu signal divides it by the request).",
                ),
                Panel(
                    "Memory by pod",
                    (Target(f"sum by (pod) (container_memory_working_set_bytes{{{PODS}}})", "{{pod}}"),),
                    unit="bytes",
                    min=0,
                ),
            ),
        ),
        Row(
            "Sub-models (lazy loading)",
            (
                Panel(
                    "Loaded sub-models",
                    (
                        Target(f"sum by (model) (elastiserve_model_loaded{SERVER})", "{{model}}"),
                        Target(f"sum(elastiserve_models_loaded{SERVER})", "total"),
                    ),
                    min=0,
                    width=8,
                    description="Replicas holding each sub-model in memory.",
                ),
                Panel(
                    "Loaded bytes by sub-model",
                    (Target(f"sum by (model) (elastiserve_model_loaded_bytes{SERVER})", "{{model}}"),),
                    unit="bytes",
                    stack=True,
                    min=0,
                    width=8,
                ),
                Panel(
                    "Sub-model cache hit ratio",
                    (
                        Target(
                            f"100 * {_sum_rate('elastiserve_model_cache_hits_total')} / "
                            f"({_sum_rate('elastiserve_model_cache_hits_total')} + {_sum_rate('elastiserve_model_cache_misses_total')})",
                            "hits",
                        ),
                    ),
                    unit="percent",
                    min=0,
                    max=100,
                    width=8,
                ),
                Panel(
                    "Loads and unloads",
                    (
                        Target(
                            f"sum by (result) (increase(elastiserve_model_loads_total{SERVER}[$__interval]))",
                            "load {{result}}",
                        ),
                        Target(
                            f"sum by (reason) (increase(elastiserve_model_unloads_total{SERVER}[$__interval]))",
                            "unload {{reason}}",
                        ),
                    ),
                    bars=True,
                    min_interval="1m",
                ),
                Panel(
                    "Sub-model load time",
                    (
                        Target(_quantile("0.5", "elastiserve_model_load_duration_seconds", SERVER), "p50"),
                        Target(_quantile("0.95", "elastiserve_model_load_duration_seconds", SERVER), "p95"),
                    ),
                    unit="s",
                    min=0,
                ),
                Panel(
                    "Sub-models failing to load",
                    (Target(f"sum by (model, cause) (elastiserve_model_load_failing{SERVER})", "{{model}}: {{cause}}"),),
                    min=0,
                    width=8,
                    description="Pods whose latest load of the sub-model failed, by cause "
                                "(also status.subModelLoadFailures and the SubModelsLoaded condition).",
                ),
                Panel(
                    "Artifact disk cache",
                    (
                        Target(_sum_rate("elastiserve_artifact_cache_hits_total"), "hits"),
                        Target(_sum_rate("elastiserve_artifact_cache_misses_total"), "misses (downloads)"),
                        Target(_sum_rate("elastiserve_artifact_cache_evictions_total"), "evictions"),
                    ),
                    unit="ops",
                    min=0,
                    width=8,
                    description="Artifacts of s3:// and http(s):// stores: fetches served from the pods' disk "
                                "cache vs downloaded, and LRU evictions under the disk budget.",
                ),
                Panel(
                    "Artifact disk cache bytes",
                    (
                        Target(f"sum(elastiserve_artifact_cache_used_bytes{SERVER})", "used"),
                        Target(f"sum(elastiserve_artifact_cache_budget_bytes{SERVER})", "budget"),
                    ),
                    unit="bytes",
                    min=0,
                    width=8,
                ),
            ),
        ),
        Row(
            "Scale from zero",
            (
                Panel(
                    "Cold start time",
                    (
                        Target(_quantile("0.5", "elastiserve_activator_cold_start_seconds", OPERATOR), "p50"),
                        Target(_quantile("0.95", "elastiserve_activator_cold_start_seconds", OPERATOR), "p95"),
                    ),
                    unit="s",
                    min=0,
                    width=8,
                    description="From the first request held by the activator to a ready replica.",
                ),
                Panel(
                    "Activator requests by code",
                    (Target(_sum_rate("elastiserve_activator_requests_total", OPERATOR, by="code"), "{{code}}"),),
                    unit="reqps",
                    min=0,
                    width=8,
                ),
                Panel(
                    "Held requests and timeouts",
                    (
                        Target(f"sum(elastiserve_activator_pending_requests{OPERATOR})", "held"),
                        Target(f"sum(increase(elastiserve_activator_timeouts_total{OPERATOR}[$__interval]))", "timed out"),
                    ),
                    min=0,
                    width=8,
                ),
            ),
        ),
    ),
)
