"""Fleet overview: every ModelDeployment at a glance — models, replicas by variant, cost, SLO, scaling."""

from __future__ import annotations

from .queries import SLO_BUCKETS, SLO_TARGET_PERCENT
from .spec import Dashboard, Panel, Row, Target, Variable

BY_MODEL = "namespace, modeldeployment"
MODEL_LEGEND = "{{namespace}}/{{modeldeployment}}"
REPLICA_HOURS = "avg_over_time(elastiserve_operator_replicas[$__range])) * $__range_s / 3600"

DASHBOARD = Dashboard(
    uid="elastiserve-fleet",
    title="elastiserve / Fleet overview",
    description="All ModelDeployments: replicas by variant, cost in replica-hours, latency SLO attainment and scale events.",
    variables=(
        Variable(
            name="slo_latency",
            label="Latency SLO (s)",
            options=SLO_BUCKETS,
            description=f"A request meets the SLO when it is faster than this; the objective is {SLO_TARGET_PERCENT} %.",
        ),
    ),
    rows=(
        Row(
            "Fleet",
            (
                Panel(
                    "Models",
                    (Target("count(count by (namespace, modeldeployment) (elastiserve_operator_replicas))"),),
                    kind="stat",
                    width=4,
                    height=4,
                    description="ModelDeployments the operator manages.",
                ),
                Panel(
                    "Replicas",
                    (Target("sum(elastiserve_operator_replicas)"),),
                    kind="stat",
                    width=4,
                    height=4,
                    description="spec.replicas summed over every variant Deployment.",
                ),
                Panel(
                    "Ready replicas",
                    (Target("sum(elastiserve_operator_ready_replicas)"),),
                    kind="stat",
                    width=4,
                    height=4,
                ),
                Panel(
                    "Scaled to zero",
                    (Target("sum(elastiserve_operator_scaled_to_zero)"),),
                    kind="stat",
                    width=4,
                    height=4,
                    description="Models currently at zero replicas (their traffic goes to the activator).",
                ),
                Panel(
                    "Requests/s",
                    (Target("sum(rate(elastiserve_requests_total[$__rate_interval]))"),),
                    kind="stat",
                    unit="reqps",
                    width=4,
                    height=4,
                ),
                Panel(
                    "Replica-hours (time range)",
                    (Target(f"sum({REPLICA_HOURS}"),),
                    kind="stat",
                    width=4,
                    height=4,
                    description="Cost proxy: replicas integrated over the selected time range.",
                ),
            ),
        ),
        Row(
            "Capacity and cost",
            (
                Panel(
                    "Replicas by variant",
                    (Target("sum by (variant) (elastiserve_operator_replicas)", "{{variant}}"),),
                    stack=True,
                    min=0,
                    description="Primary (e.g. fp32) and burst (e.g. int8) replicas across the fleet.",
                ),
                Panel(
                    "Replicas by model",
                    (Target(f"sum by ({BY_MODEL}) (elastiserve_operator_replicas)", MODEL_LEGEND),),
                    stack=True,
                    min=0,
                ),
                Panel(
                    "Cost in replica-hours by model and variant (time range)",
                    (
                        Target(
                            f"sum by ({BY_MODEL}, variant) ({REPLICA_HOURS}",
                            "{{namespace}}/{{modeldeployment}} {{variant}}",
                        ),
                    ),
                    kind="bargauge",
                    width=24,
                ),
            ),
        ),
        Row(
            "Service level",
            (
                Panel(
                    "Latency SLO attainment (time range)",
                    (
                        Target(
                            f"100 * sum by ({BY_MODEL}) (increase(elastiserve_request_duration_seconds_bucket"
                            f'{{le="$slo_latency"}}[$__range])) / sum by ({BY_MODEL}) '
                            "(increase(elastiserve_request_duration_seconds_count[$__range]))",
                            MODEL_LEGEND,
                        ),
                    ),
                    kind="bargauge",
                    unit="percent",
                    min=0,
                    max=100,
                    base_color="red",
                    thresholds=((SLO_TARGET_PERCENT - 5, "orange"), (SLO_TARGET_PERCENT, "green")),
                    width=8,
                    description=f"Share of requests faster than $slo_latency s; the objective is {SLO_TARGET_PERCENT} %.",
                ),
                Panel(
                    "Requests/s by model",
                    (
                        Target(
                            f"sum by ({BY_MODEL}) (rate(elastiserve_requests_total[$__rate_interval]))",
                            MODEL_LEGEND,
                        ),
                    ),
                    unit="reqps",
                    width=8,
                ),
                Panel(
                    "p95 latency by model",
                    (
                        Target(
                            f"1000 * histogram_quantile(0.95, sum by ({BY_MODEL}, le) "
                            "(rate(elastiserve_request_duration_seconds_bucket[$__rate_interval])))",
                            MODEL_LEGEND,
                        ),
                    ),
                    unit="ms",
                    width=8,
                ),
            ),
        ),
        Row(
            "Scaling",
            (
                Panel(
                    "Scale events",
                    (
                        Target(
                            f"sum by ({BY_MODEL}, direction) (increase(elastiserve_operator_scale_events_total[$__interval]))",
                            "{{namespace}}/{{modeldeployment}} {{direction}}",
                        ),
                    ),
                    bars=True,
                    min_interval="1m",
                    description="Replica changes the operator applied, per interval.",
                ),
                Panel(
                    "Forecast vs observed requests/s",
                    (
                        Target(f"sum by ({BY_MODEL}) (elastiserve_operator_observed_qps)", "observed " + MODEL_LEGEND),
                        Target(
                            f'sum by ({BY_MODEL}) (elastiserve_operator_forecast_qps{{bound="upper"}})',
                            "forecast (upper) " + MODEL_LEGEND,
                        ),
                    ),
                    unit="reqps",
                ),
            ),
        ),
    ),
)
