"""``decide()``: the pure decision engine shared by the operator and the simulator.

No I/O, no clock: the caller passes ``now`` and everything else. The order of the steps:

1. fail-static: metrics missing or stale → hold (never scale down), fallback after a while;
2. reactive rules per signal → the highest recommendation wins; an unknown signal blocks scale-down;
   with ``slo.enabled`` the SLO policy (``slo.py``) replaces the request-rate rule and the forecast floor:
   capacity for a calibrated quantile of demand over the lead time, a panic path and burst bridging;
3. forecast → a floor sized for the upper quantile of the peak over the horizon (Active mode);
4. scale to zero after the idle period, and wake up on the first request or a forecast of demand;
5. bounds, stabilization windows and rate limits (HPA semantics) on the total;
6. split the total into variants: primary first, burst variants (INT8) for the overflow and short peaks.
"""

from __future__ import annotations

import math
from datetime import datetime

from ..api.decision import SIGNALS, Decision, Forecast, MetricSnapshot, Observation, ScalerState, SloState, TimedValue
from ..api.spec import FallbackBehavior, ForecastMode, ModelDeploymentSpec, Role
from . import slo as slo_policy
from .limits import clamp, rate_limit, record_event, stabilize, within
from .rules import RULES, RuleInput
from .variants import equivalents, max_equivalents, split

HOLD_LEADS = 2.0
"""Scale-downs of the SLO policy wait this many primary lead times (a replica must be worth its start-up)."""


def _ceil(x: float) -> int:
    return math.ceil(x - 1e-9)


def _metrics_problem(spec: ModelDeploymentSpec, m: MetricSnapshot, now: datetime) -> str | None:
    enabled = [s for s in SIGNALS if getattr(spec.metrics.rules, s).enabled]
    # The activator's pending count is a signal too: at zero it may be the only one there is.
    if m.observed_at is None or not any(m.value(s) is not None for s in [*enabled, "pending"]):
        detail = "; ".join(f"{k}: {v}" for k, v in sorted(m.errors.items()))
        return f"no metrics{f' ({detail})' if detail else ''}"
    age = (now - m.observed_at).total_seconds()
    if age > spec.metrics.stale_after_seconds:
        return f"metrics stale {age:.0f} s"
    return None


def _hold(
    spec: ModelDeploymentSpec, current: dict[str, int], state: ScalerState, now: datetime, problem: str
) -> Decision:
    """Fail-static: keep the current replicas; after ``fallback.afterSeconds`` apply the fallback."""
    if state.metrics_missing_since is None:
        state.metrics_missing_since = now
    missing_for = (now - state.metrics_missing_since).total_seconds()
    fb = spec.fallback
    desired = dict(current)
    reasons = [f"{problem} → hold"]
    fallback_active = missing_for >= fb.after_seconds
    cur_total = _ceil(equivalents(spec, current))
    # A held count is a recommendation too: the scale-down window then spans the outage.
    keep = max(spec.behavior.scale_up.stabilization_window_seconds, spec.behavior.scale_down.stabilization_window_seconds)
    state.recommendations = within(state.recommendations, now, keep) + [TimedValue(time=now, value=cur_total)]
    if fallback_active:
        if fb.behavior == FallbackBehavior.static:
            desired, _ = split(spec, fb.replicas)
            reasons = [f"{problem} for {missing_for:.0f} s → fallback static {fb.replicas}"]
        elif fb.behavior == FallbackBehavior.currentIfHigher and fb.replicas > cur_total:
            desired, _ = split(spec, fb.replicas)
            reasons = [f"{problem} for {missing_for:.0f} s → fallback {fb.replicas} (higher than {cur_total})"]
        else:
            reasons = [f"{problem} for {missing_for:.0f} s → fallback keep current {cur_total}"]
    new_total = _ceil(equivalents(spec, desired))
    if new_total != cur_total:
        state.scale_up_events, state.scale_down_events = record_event(
            cur_total, new_total, state.scale_up_events, state.scale_down_events, spec.behavior, now
        )
        state.last_scale_time = now
    return Decision(
        desired=desired,
        reasons=reasons,
        state=state,
        metrics_available=False,
        fallback_active=fallback_active,
        reactive_total=cur_total,
    )


def _prewarm_from_zero(
    spec: ModelDeploymentSpec, forecast: Forecast | None, cur_total: int
) -> tuple[dict[str, int], str] | None:
    """Replicas to start at zero when an Active, usable forecast expects demand within the horizon."""
    fc = spec.forecasting
    if not (spec.scale_to_zero.enabled and cur_total == 0 and fc.enabled and fc.mode == ForecastMode.Active):
        return None
    if forecast is None or not forecast.ready or (forecast.error is not None and forecast.error > fc.max_error):
        return None
    cap = spec.primary.capacity_qps
    target = spec.metrics.rules.qps.effective_target / 100
    if forecast.peak_mean() < 0.1 * cap * target:
        return None
    cold = spec.cold_start_variant()
    desired = {v.name: 0 for v in spec.variants}
    desired[cold.name] = clamp(forecast.peak_mean() / (cold.capacity_qps * target), 1, spec.bounds(cold).max)
    return desired, f"forecast of demand ({forecast.peak_mean():.3g} qps in {fc.horizon_seconds} s) → pre-warm {cold.name}×{desired[cold.name]}"


def _short_peak(forecast: Forecast, threshold_qps: float, limit_seconds: int) -> int | None:
    """Length in seconds of a forecast peak above ``threshold_qps`` that ends within the horizon, else None."""
    above = [p for p in forecast.points if p.upper > threshold_qps]
    if not above or forecast.points[-1].upper > threshold_qps:
        return None
    step = forecast.points[1].offset_seconds - forecast.points[0].offset_seconds if len(forecast.points) > 1 else 0
    length = above[-1].offset_seconds - above[0].offset_seconds + step
    return length if length <= limit_seconds else None


def _copy_state(state: ScalerState) -> ScalerState:
    """A copy ``decide`` may change without touching its input. The SLO state's long lists hold immutable
    items that are replaced, never changed in place, so copying the lists suffices (a deep copy of the
    demand history cost more than the rest of a decision)."""
    slo = state.slo
    out = state.model_copy(update={"slo": None}, deep=True)
    if slo is not None:
        out.slo = slo.model_copy(update={
            "demand": list(slo.demand), "forecast_checks": list(slo.forecast_checks),
            "blend_checks": list(slo.blend_checks),
            "startup_seconds": dict(slo.startup_seconds), "starting_since": dict(slo.starting_since),
        })
    return out


def decide(
    spec: ModelDeploymentSpec,
    metrics: MetricSnapshot,
    forecast: Forecast | None,
    state: ScalerState,
    now: datetime,
    observed: Observation,
) -> Decision:
    """Desired replicas per variant, the reasons, and the next state. Pure: same inputs, same output."""
    state = _copy_state(state)
    current = {v.name: max(0, observed.replicas.get(v.name, 0)) for v in spec.variants}
    cur_eq = equivalents(spec, current)
    cur_total = _ceil(cur_eq)
    cap = spec.primary.capacity_qps
    qps_target = spec.metrics.rules.qps.effective_target / 100

    problem = _metrics_problem(spec, metrics, now)
    if problem is not None:
        prewarm = _prewarm_from_zero(spec, forecast, cur_total)
        if prewarm is not None:
            # At zero there are no pods to report metrics; a forecast of demand is reason enough to wake.
            state.metrics_missing_since = None
            desired, why = prewarm
            return _finish(spec, current, desired, [f"{problem} at zero; {why}"], state, now, 0,
                           _ceil(forecast.peak_upper() / (cap * qps_target)), True, proposal_for_history=1)
        return _hold(spec, current, state, now, problem)
    if state.metrics_missing_since is not None:
        state.metrics_recovered_at = now
    state.metrics_missing_since = None
    reasons: list[str] = []
    since_recovery = None
    if state.metrics_recovered_at is not None:
        since_recovery = (now - state.metrics_recovered_at).total_seconds()
        if since_recovery >= spec.metrics.window_seconds:
            state.metrics_recovered_at = None
            since_recovery = None

    # --- 2. reactive rules (and the SLO policy, which supersedes the request-rate rule)
    slo_plan = None
    if spec.slo.enabled:
        state.slo = state.slo or SloState()
        slo_plan = slo_policy.plan(spec, metrics, forecast, state.slo, now, observed)
    best_eq, best_reason = None, ""
    unknown = []
    results = []
    for signal in SIGNALS:
        rule = getattr(spec.metrics.rules, signal)
        if slo_plan is not None and signal == "qps":
            if metrics.qps is None:
                unknown.append(signal)
            continue
        if slo_plan is not None and signal == "inflight":
            continue  # read by the SLO plan as the freshest measure of demand (scale-up only)
        if not rule.enabled:
            continue
        value = metrics.value(signal)
        if value is None:
            if signal in ("latency", "error_rate") and metrics.qps is not None and metrics.qps <= 0:
                continue  # no requests: no latency or errors to speak of, which is not "unknown"
            unknown.append(signal)
            continue
        if signal != "qps" and cur_eq <= 0:
            continue  # per-replica signals mean nothing without replicas
        results.append(RULES[signal](RuleInput(spec, rule, value, cur_eq, spec.behavior.tolerance)))
    movers = [r for r in results if not r.holds]
    if movers:
        # The highest ask wins. A rule inside its band does not veto another rule's scale-down; it only
        # stops it at the count that would push its own signal over its upper bound (its floor).
        winner = max(movers, key=lambda r: r.desired)
        best_eq, best_reason = winner.desired, winner.reason
        for held in (r for r in results if r.holds):
            if held.floor > best_eq:
                best_eq = held.floor
                best_reason = f"{winner.reason}; {held.reason} → no lower than {_ceil(held.floor)}"
    elif results:
        best_eq, best_reason = cur_eq, "; ".join(r.reason for r in results)
    if slo_plan is not None:
        if best_eq is None or best_eq <= slo_plan.total:
            best_eq, best_reason = float(slo_plan.total), "; ".join(slo_plan.reasons)
        else:
            best_reason = "; ".join(slo_plan.reasons) + f"; {best_reason} → {_ceil(best_eq)}"
    if best_eq is None:
        best_eq, best_reason = cur_eq, "no rule has data → hold"
    if unknown and best_eq < cur_eq:
        best_eq = cur_eq
        best_reason += f"; {', '.join(unknown)} unknown → no scale-down"
    if since_recovery is not None and best_eq < cur_eq:
        best_eq = cur_eq
        best_reason += (f"; metrics back for {since_recovery:.0f} s < {spec.metrics.window_seconds} s rate window"
                        " → no scale-down")
    reactive = _ceil(best_eq)
    reasons.append(best_reason)

    # --- 3. forecast
    forecast_total: int | None = None
    forecast_used = False
    primary_cap: int | None = None
    fc_spec = spec.forecasting
    expects_demand = False
    if slo_plan is not None:
        # The SLO policy weighs the forecast itself (by the quantile loss of its blends with the empirical
        # quantile); demand ahead keeps it awake.
        if forecast is not None and forecast.ready and slo_plan.summary.forecast_weight > 0:
            expects_demand = forecast.peak_mean() >= 0.1 * cap * qps_target
    elif fc_spec.enabled and forecast is not None:
        if not forecast.ready:
            reasons.append(f"forecast not ready ({forecast.reason}) → reactive only")
        elif forecast.error is not None and forecast.error > fc_spec.max_error:
            reasons.append(
                f"forecast error sMAPE {forecast.error:.2f} > {fc_spec.max_error:.2f} → reactive only"
            )
        else:
            peak = forecast.peak_upper()
            forecast_total = _ceil(peak / (cap * qps_target))
            expects_demand = forecast.peak_mean() >= 0.1 * cap * qps_target
            q = round(forecast.quantile * 100)
            horizon = fc_spec.horizon_seconds
            if fc_spec.mode == ForecastMode.Preview:
                reasons.append(f"forecast p{q} {peak:.3g} qps in {horizon} s would floor at {forecast_total} (preview)")
                expects_demand = False
            elif forecast_total > reactive:
                forecast_used = True
                reasons.append(f"forecast p{q} {peak:.3g} qps in {horizon} s → floor {forecast_total}")
                if spec.burst.enabled and spec.bursts:
                    length = _short_peak(forecast, reactive * cap * qps_target, spec.burst.short_peak_seconds)
                    if length is not None:
                        primary_cap = max(reactive, current[spec.primary.name])
                        reasons.append(f"short peak ≈{length} s → burst variants take it")
    proposal = max(reactive, forecast_total if forecast_used else 0)

    # --- 4. scale to zero / from zero
    stz = spec.scale_to_zero
    active = (metrics.qps or 0) > 0 or (metrics.pending or 0) > 0
    if active or state.last_active_time is None:
        state.last_active_time = now
    if stz.enabled:
        if cur_total == 0:
            if active or expects_demand:
                cold = spec.cold_start_variant()
                need = max(1, proposal)
                desired = {v.name: 0 for v in spec.variants}
                if cold.role == Role.primary:
                    desired, _ = split(spec, need)
                else:
                    desired[cold.name] = clamp(need * cap / cold.capacity_qps, 1, spec.bounds(cold).max)
                why = "request while at zero" if active else "forecast of demand while at zero"
                reasons.append(f"{why} → wake {cold.name}×{desired[cold.name]}")
                return _finish(spec, current, desired, reasons, state, now, reactive, forecast_total,
                               forecast_used, proposal_for_history=need)
            reasons.append("idle at zero")
            return _finish(spec, current, dict(current), reasons, state, now, reactive, forecast_total,
                           forecast_used, proposal_for_history=0, zero=True)
        idle_for = (now - state.last_active_time).total_seconds()
        if metrics.qps is not None and not active and idle_for >= stz.idle_seconds and not expects_demand:
            reasons.append(f"no requests for {idle_for:.0f} s ≥ {stz.idle_seconds} s → scale to zero")
            desired = {v.name: 0 for v in spec.variants}
            return _finish(spec, current, desired, reasons, state, now, reactive, forecast_total, forecast_used,
                           proposal_for_history=0, zero=True)

    # --- 5. bounds, stabilization, rate limits
    min_total = spec.bounds(spec.primary).min
    max_total = max_equivalents(spec)
    bounded = clamp(proposal, min_total, max_total)
    if bounded != proposal:
        reasons.append(f"bounded to {bounded} by replicas [{min_total}, {max_total}]")
    behavior = spec.behavior
    if slo_plan is not None:
        # A replica must be worth its start-up: hold scale-downs for HOLD_LEADS of the primary's lead times
        # (on the full cycle, the only path that scales down: the panic check's shorter lead sizes scale-ups only).
        lead = math.ceil(HOLD_LEADS * slo_plan.hold_seconds)
        if lead > behavior.scale_down.stabilization_window_seconds:
            behavior = behavior.model_copy(update={"scale_down": behavior.scale_down.model_copy(
                update={"stabilization_window_seconds": min(lead, 3600)})})
    stabilized, state.recommendations = stabilize(bounded, cur_total, state.recommendations, behavior, now)
    if stabilized != bounded:
        direction = "down" if bounded < cur_total else "up"
        reasons.append(f"scale-{direction} stabilized at {stabilized}")
    limited, why = rate_limit(
        stabilized, cur_total, state.scale_up_events, state.scale_down_events, spec.behavior, now
    )
    if why and slo_plan is not None and slo_plan.panic and limited < stabilized:
        limited, why = stabilized, f"panic: scale-up rate limit waived ({why})"
    if why:
        reasons.append(why)

    # --- 6. split across variants
    if limited == cur_total and primary_cap is None:
        desired = dict(current)  # no change in total: keep the mix as it is (no rounding drift)
    else:
        desired, split_reasons = split(spec, limited, primary_total=primary_cap)
        reasons += split_reasons
    if slo_plan is not None:
        _bridge(spec, slo_plan, current, desired, observed, state, now, reasons)
        slo_policy.note_scale_up(state.slo, current, desired, observed, now)
    decision = _finish(spec, current, desired, reasons, state, now, reactive, forecast_total, forecast_used,
                       ready=observed.ready)
    if slo_plan is not None:
        decision.slo = slo_plan.summary
    return decision


def _bridge(
    spec: ModelDeploymentSpec, plan: slo_policy.SloPlan, current: dict[str, int], desired: dict[str, int],
    observed: Observation, state: ScalerState, now: datetime, reasons: list[str],
) -> None:
    """Burst path of the SLO policy: in panic (demand already past the ready capacity: the recovered
    newest part of the rate window or the in-flight gauge), while primary replicas start, fast burst
    variants (least quality lost first) cover the demand quantile over *their* lead time that the ready
    replicas cannot; they are kept until the primary is Ready and for at least their own lead time (no
    churn).

    Only in panic: a rise that is merely anticipated is what the primary replicas were started a full
    lead time ahead for, and should it come sooner, the panic check sees it within two panic periods and
    bridges then. Bridging on every anticipated scale-up started a burst replica next to primary ones
    that were going to be Ready before any rise (docs/backtest.md, issue-15 cost pass)."""
    if not (spec.burst.enabled and spec.bursts) or state.slo is None:
        return
    primary = spec.primary
    ready_p = observed.ready.get(primary.name, 0)
    starting = ready_p < desired[primary.name]
    cap_p = primary.capacity_qps
    ready_qps = ready_p * cap_p
    budget = spec.burst.quality_budget
    for b in sorted(spec.bursts, key=lambda v: v.quality_cost):
        gap = plan.fast_qps - ready_qps
        if starting and gap > 0 and plan.panic:
            n = math.ceil(gap / b.capacity_qps - 1e-9)
            if budget < 1:
                n = min(n, math.floor(budget / (1 - budget) * desired[primary.name] * cap_p / b.capacity_qps + 1e-9))
            n = clamp(n, spec.bounds(b).min, spec.bounds(b).max)
            if n > desired[b.name]:
                reasons.append(f"{b.name} bridges {primary.name} start-up: {desired[b.name]}→{n} "
                               f"for {gap:.3g} qps over ready capacity")
                desired[b.name] = n
                if n > current[b.name]:
                    state.slo.burst_since = now
        ready_qps += desired[b.name] * b.capacity_qps
        since = state.slo.burst_since
        hold = plan.summary.lead_seconds.get(b.name, 0.0)
        if desired[b.name] < current[b.name] and since is not None and (now - since).total_seconds() < hold:
            desired[b.name] = current[b.name]
            reasons.append(f"{b.name} kept at {current[b.name]}: started {(now - since).total_seconds():.0f} s ago "
                           f"< its lead time {hold:.0f} s")


def _finish(
    spec: ModelDeploymentSpec,
    current: dict[str, int],
    desired: dict[str, int],
    reasons: list[str],
    state: ScalerState,
    now: datetime,
    reactive: int,
    forecast_total: int | None,
    forecast_used: bool,
    *,
    ready: dict[str, int] | None = None,
    proposal_for_history: int | None = None,
    zero: bool = False,
) -> Decision:
    if ready is not None:
        # Hand-over: burst replicas leave only once the primary has the replicas it was asked for ready,
        # so capacity is never lost while primary pods start (e.g. after a wake-up on INT8).
        primary = spec.primary.name
        if ready.get(primary, 0) < desired[primary]:
            for b in spec.bursts:
                if desired[b.name] < current[b.name]:
                    desired[b.name] = current[b.name]
                    reasons.append(f"{b.name} kept at {current[b.name]} until {primary} is ready")
    if proposal_for_history is not None:
        keep = max(spec.behavior.scale_up.stabilization_window_seconds,
                   spec.behavior.scale_down.stabilization_window_seconds)
        state.recommendations = within(state.recommendations, now, keep) + [
            TimedValue(time=now, value=proposal_for_history)
        ]
    cur_total = _ceil(equivalents(spec, current))
    new_total = _ceil(equivalents(spec, desired))
    if desired != current:
        state.last_scale_time = now
        state.scale_up_events, state.scale_down_events = record_event(
            cur_total, new_total, state.scale_up_events, state.scale_down_events, spec.behavior, now
        )
        moves = ", ".join(f"{n} {current[n]}→{desired[n]}" for n in desired if desired[n] != current[n])
        reasons.append(f"scale {moves}")
    state.scaled_to_zero = new_total == 0
    return Decision(
        desired=desired,
        reasons=reasons,
        state=state,
        scale_to_zero=zero and new_total == 0,
        forecast_used=forecast_used,
        reactive_total=reactive,
        forecast_total=forecast_total,
    )
