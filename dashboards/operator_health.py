"""Operator health: reconcile time, Prometheus errors, forecast quality, freshness of decisions."""

from __future__ import annotations

from .spec import Dashboard, Panel, Row, Target

RECONCILE = "elastiserve_operator_reconcile_duration_seconds_bucket"
MODEL_LEGEND = "{{namespace}}/{{modeldeployment}}"

DASHBOARD = Dashboard(
    uid="elastiserve-operator",
    title="elastiserve / Operator health",
    description="Is the operator keeping up: cycle time per phase, failed Prometheus queries, forecast error, decision age.",
    rows=(
        Row(
            "Reconcile",
            (
                Panel(
                    "Cycle time by phase (p95)",
                    (
                        Target(
                            f"histogram_quantile(0.95, sum by (phase, le) (rate({RECONCILE}[$__rate_interval])))",
                            "{{phase}}",
                        ),
                    ),
                    unit="s",
                    min=0,
                    description="One scaling cycle: metrics (Prometheus), forecast, decide, and the whole cycle.",
                ),
                Panel(
                    "Whole cycle p50 / p99",
                    (
                        Target(
                            f'histogram_quantile(0.5, sum by (le) (rate({RECONCILE}{{phase="cycle"}}[$__rate_interval])))',
                            "p50",
                        ),
                        Target(
                            f'histogram_quantile(0.99, sum by (le) (rate({RECONCILE}{{phase="cycle"}}[$__rate_interval])))',
                            "p99",
                        ),
                    ),
                    unit="s",
                    min=0,
                ),
                Panel(
                    "Decisions per minute",
                    (Target("60 * sum(rate(elastiserve_operator_decisions_total[$__rate_interval]))", "decisions"),),
                    min=0,
                ),
                Panel(
                    "Age of the last decision",
                    (
                        Target(
                            "time() - max by (namespace, modeldeployment) "
                            "(elastiserve_operator_last_decision_timestamp_seconds)",
                            MODEL_LEGEND,
                        ),
                    ),
                    unit="s",
                    min=0,
                    thresholds=((60, "orange"), (300, "red")),
                    description="Decisions are due every syncPeriodSeconds; the alert fires after 5 minutes without one.",
                ),
            ),
        ),
        Row(
            "Metrics source",
            (
                Panel(
                    "Failed Prometheus queries by signal",
                    (
                        Target(
                            "sum by (signal) (rate(elastiserve_operator_prometheus_errors_total[$__rate_interval]))",
                            "{{signal}}",
                        ),
                    ),
                    unit="reqps",
                    min=0,
                    width=12,
                ),
                Panel(
                    "Models without metrics",
                    (Target("count(elastiserve_operator_metrics_available == 0) or vector(0)"),),
                    kind="stat",
                    width=6,
                    thresholds=((1, "red"),),
                    description="ModelDeployments whose replicas are frozen because their metrics are missing.",
                ),
                Panel(
                    "Models scaled to zero",
                    (Target("sum(elastiserve_operator_scaled_to_zero)"),),
                    kind="stat",
                    width=6,
                ),
            ),
        ),
        Row(
            "Forecasting",
            (
                Panel(
                    "Forecast error (sMAPE) by model",
                    (Target("max by (namespace, modeldeployment) (elastiserve_operator_forecast_error)", MODEL_LEGEND),),
                    min=0,
                    thresholds=((0.5, "red"),),
                    description="0 is perfect, 2 is useless; the alert fires above 0.5 for 30 minutes.",
                ),
                Panel(
                    "Forecast upper bound vs observed requests/s",
                    (
                        Target(
                            'sum by (namespace, modeldeployment) (elastiserve_operator_forecast_qps{bound="upper"})',
                            "forecast " + MODEL_LEGEND,
                        ),
                        Target(
                            "sum by (namespace, modeldeployment) (elastiserve_operator_observed_qps)",
                            "observed " + MODEL_LEGEND,
                        ),
                    ),
                    unit="reqps",
                    min=0,
                ),
            ),
        ),
    ),
)
