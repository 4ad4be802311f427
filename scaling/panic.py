"""The fast panic check: between full cycles, scale up (never down) when in-flight requests say the ready
replicas are past capacity.

``decide()`` runs every ``syncPeriodSeconds`` on rate windows that are a sync period and a scrape old
before a surge shows in them. :func:`panic` is the cheap path the operator (and the simulator) runs every
``metrics.rules.inflight.panicPeriodSeconds`` in between, on the in-flight gauge alone: no forecast, no
calibration step, no rate window. It is sized by the same model as the SLO policy's plan (the demand the
in-flight requests imply, plus the calibrated quantile of the rise over *its own* lead time, times the
calibrated headroom; without ``slo`` the inflight rule's target), so the full cycle that follows finds
the count it would have asked for and its scale-down stabilization (which sees the panic's
recommendation) keeps it for the usual window. Pure: ``now`` is an argument; the result is a
``Decision`` whose ``desired`` is never below the current replicas of any variant.
"""

from __future__ import annotations

import math
from datetime import datetime

from ..api.decision import Decision, MetricSnapshot, Observation, ScalerState, SloState, SloSummary, TimedValue
from ..api.spec import ModelDeploymentSpec
from . import slo as slo_policy
from .engine import _bridge
from .limits import record_event, within
from .variants import equivalents, max_equivalents, split


def _unchanged(current: dict[str, int], state: ScalerState, why: str) -> Decision:
    return Decision(desired=dict(current), reasons=[why], state=state, reactive_total=0)


def panic_lead_seconds(spec: ModelDeploymentSpec, slo: SloState | None, metrics_age: float) -> dict[str, float]:
    """Lead time per variant on the panic path: age of the in-flight sample + a panic period + start-up."""
    base = max(metrics_age, 0.0) + spec.metrics.rules.inflight.panic_period_seconds
    learned = slo.startup_seconds if slo is not None else {}
    return {v.name: base + learned.get(v.name, slo_policy.STARTUP_PRIOR) for v in spec.variants}


def panic(
    spec: ModelDeploymentSpec,
    metrics: MetricSnapshot,
    state: ScalerState,
    now: datetime,
    observed: Observation,
) -> Decision:
    """Scale-up-only decision from the in-flight gauge. ``desired == current`` means nothing to do."""
    state = state.model_copy()  # lists below are replaced, never changed in place
    if state.slo is not None:
        state.slo = state.slo.model_copy(update={"starting_since": dict(state.slo.starting_since)})
    current = {v.name: max(0, observed.replicas.get(v.name, 0)) for v in spec.variants}
    rule = spec.metrics.rules.inflight
    if not rule.enabled or rule.panic_period_seconds == 0:
        return _unchanged(current, state, "panic check off (metrics.rules.inflight)")
    conc = slo_policy.concurrency_qps(spec, metrics.inflight)
    if conc is None or metrics.observed_at is None:
        return _unchanged(current, state, "panic check: in-flight unknown → hold")
    age = (now - metrics.observed_at).total_seconds()
    if age > spec.metrics.stale_after_seconds:
        return _unchanged(current, state, f"panic check: in-flight {age:.0f} s old → hold")
    ready_qps = sum(observed.ready.get(v.name, 0) * v.capacity_qps for v in spec.variants)
    if conc <= ready_qps * 1.0001:
        return _unchanged(current, state, f"panic check: in-flight {metrics.inflight:.3g} ≈ {conc:.3g} qps "
                                          f"≤ ready capacity {ready_qps:.3g} qps")
    cap = spec.primary.capacity_qps
    leads = panic_lead_seconds(spec, state.slo, age)
    slo = state.slo if spec.slo.enabled else None
    if slo is not None:
        q = slo_policy.quantile(slo, spec)
        headroom = math.exp(slo.headroom_log)
        sync = spec.sync_period_seconds

        def demand(lead: float) -> float:
            rise = slo_policy.rise_quantile(slo.demand, max(1, math.ceil(lead / sync)), q)
            grown = conc * slo_policy.PRIOR_GROWTH if rise is None else conc + max(rise, 0.0)
            return headroom * grown

        need_qps = demand(leads[spec.primary.name])
        sizing = f"p{q * 100:.3g} over {leads[spec.primary.name]:.0f} s, headroom ×{headroom:.2f}"
    else:
        target = rule.effective_target / 100

        def demand(lead: float) -> float:
            return conc / target

        need_qps = demand(0.0)
        sizing = f"at {rule.effective_target:g} % of concurrency {spec.inflight_concurrency:.3g}"
    total = min(math.ceil(need_qps / cap - 1e-9), max_equivalents(spec))
    cur_total = math.ceil(equivalents(spec, current) - 1e-9)
    why = (f"panic: in-flight {metrics.inflight:.3g} ≈ {conc:.3g} qps > ready capacity {ready_qps:.3g} qps; "
           f"sized {sizing}: {need_qps:.3g} qps → {total}")
    if total <= cur_total:
        return _unchanged(current, state, f"{why}; {cur_total} already asked for → hold")
    split_total, reasons = split(spec, total)
    desired = {n: max(split_total[n], current[n]) for n in current}
    reasons = [why, *reasons]
    if slo is not None and spec.burst.enabled and spec.bursts:
        # Burst path: the fast variants cover what the ready replicas cannot while the primary starts.
        fast_qps = min(demand(leads[b.name]) for b in spec.bursts)
        summary = SloSummary(quantile=slo_policy.quantile(slo, spec), headroom=math.exp(slo.headroom_log),
                             lead_seconds=leads, demand_qps=round(need_qps, 3), forecast_weight=0.0, panic=True)
        _bridge(spec, slo_policy.SloPlan(total=total, fast_qps=fast_qps, panic=True, summary=summary),
                current, desired, observed, state, now, reasons)
        desired = {n: max(desired[n], current[n]) for n in current}
    new_total = math.ceil(equivalents(spec, desired) - 1e-9)
    keep = max(spec.behavior.scale_up.stabilization_window_seconds, spec.behavior.scale_down.stabilization_window_seconds)
    # The full cycle's scale-down stabilization sees this recommendation and keeps the count for its window.
    state.recommendations = within(state.recommendations, now, keep) + [TimedValue(time=now, value=new_total)]
    if desired != current:
        state.scale_up_events, state.scale_down_events = record_event(
            cur_total, new_total, state.scale_up_events, state.scale_down_events, spec.behavior, now)
        state.last_scale_time = now
        state.panic_at = now
        if state.slo is not None:
            slo_policy.note_scale_up(state.slo, current, desired, observed, now)
        moves = ", ".join(f"{n} {current[n]}→{desired[n]}" for n in desired if desired[n] != current[n])
        reasons.append(f"scale {moves}")
    return Decision(desired=desired, reasons=reasons, state=state, reactive_total=new_total, panic=True)
