"""Pure helpers that shape what the operator writes into ``.status``: conditions and decision summaries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..api.decision import Decision, Forecast


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(stored: Any, new: Any) -> Any:
    """``new`` as a JSON merge patch (RFC 7386) over ``stored``: every key of a stored object that ``new``
    no longer has is sent as null, at any depth, so the API server removes it. Without the nulls a merge
    patch keeps the keys it does not mention (a variant's start-up clock would never stop). Lists and
    scalars replace what is stored, as a merge patch does. Pure."""
    if not isinstance(new, dict) or not isinstance(stored, dict):
        return new
    out = {key: merge_patch(stored.get(key), value) for key, value in new.items()}
    out.update({key: None for key in stored if key not in new})
    return out


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """Conditions with one of them set; ``lastTransitionTime`` changes only when the status does."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    out = []
    found = False
    for cond in conditions or []:
        if cond.get("type") != type_:
            out.append(dict(cond))
            continue
        found = True
        changed = cond.get("status") != value
        out.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message[:1024],
                "lastTransitionTime": iso(now) if changed else cond.get("lastTransitionTime", iso(now)),
                **({"observedGeneration": generation} if generation is not None else {}),
            }
        )
    if not found:
        out.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message[:1024],
                "lastTransitionTime": iso(now),
                **({"observedGeneration": generation} if generation is not None else {}),
            }
        )
    return out


def condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def variant_summary(replicas: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in replicas.items())


def decision_conditions(
    conditions: list[dict[str, Any]] | None,
    decision: Decision,
    forecast: Forecast | None,
    forecasting_enabled: bool,
    now: datetime,
    generation: int | None,
) -> list[dict[str, Any]]:
    """The conditions after a decision: MetricsAvailable, ScalingActive, ForecastReady, Fallback."""
    conds = conditions
    if decision.metrics_available:
        conds = set_condition(conds, "MetricsAvailable", True, "MetricsRead", "all enabled signals read", now, generation)
    else:
        conds = set_condition(conds, "MetricsAvailable", False, "MetricsMissing", decision.summary(), now, generation)
    if decision.scale_to_zero:
        conds = set_condition(conds, "ScalingActive", False, "ScaledToZero", decision.summary(), now, generation)
    elif decision.metrics_available:
        conds = set_condition(conds, "ScalingActive", True, "Decided", decision.summary(), now, generation)
    else:
        conds = set_condition(conds, "ScalingActive", False, "Holding", decision.summary(), now, generation)
    conds = set_condition(
        conds,
        "Fallback",
        decision.fallback_active,
        "FallbackActive" if decision.fallback_active else "NoFallback",
        decision.summary() if decision.fallback_active else "metrics within limits",
        now,
        generation,
    )
    if not forecasting_enabled:
        conds = set_condition(conds, "ForecastReady", False, "Disabled", "forecasting.enabled is false", now, generation)
    elif forecast is None:
        conds = set_condition(conds, "ForecastReady", False, "NoForecast", "no forecast yet", now, generation)
    elif not forecast.ready:
        conds = set_condition(conds, "ForecastReady", False, "NotReady", forecast.reason, now, generation)
    else:
        err = "unknown" if forecast.error is None else f"{forecast.error:.3f}"
        conds = set_condition(
            conds, "ForecastReady", True, "Forecasting", f"{forecast.method}, sMAPE {err}", now, generation
        )
    return conds


def forecast_status(forecast: Forecast | None, horizon: int) -> dict[str, Any] | None:
    if forecast is None or not forecast.ready:
        return None
    return {
        "value": round(forecast.peak_mean(), 3),
        "upper": round(forecast.peak_upper(), 3),
        "horizonSeconds": horizon,
        "error": None if forecast.error is None else round(forecast.error, 4),
        "method": forecast.method,
        "time": iso(forecast.origin),
    }
