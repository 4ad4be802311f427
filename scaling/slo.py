"""The SLO policy: capacity for a quantile of demand over each variant's lead time, calibrated online.

Pure steps (no I/O, no clock; ``now`` is an argument), each with its own tests. ``decide()`` calls
:func:`plan` when ``spec.slo.enabled``; everything learned lives in ``ScalerState.slo`` (``SloState``),
so a restarted operator and the simulator carry on the same way.

1. :func:`learn_startup`: start-up per variant, measured from the cycle a variant had replicas starting
   (desired above ready) to the cycle they were Ready, smoothed; a prior until the first measurement.
2. :func:`record_demand`: the request rate of every cycle in a bounded ring (``RING`` cycles).
3. :func:`calibrate`: adaptive conformal inference (Gibbs & Candès, 2021) on the quantile. Each cycle
   ``alpha += GAMMA_Q * (target - violated)`` with ``target = TARGET_SHARE * (1 - attainment)`` and
   ``q = 1 - alpha``: violations raise the quantile fast, calm cycles lower it slowly, and the long-run
   share of violated cycles tracks the target whatever the traffic. Where the quantile saturates at
   ``Q_MAX`` (the history holds no growth as large as the misses need), the same step goes to a
   headroom multiplier ``m`` on top, which is spent first when calm returns.
4. :func:`check_forecast`: the forecast's upper bounds are checked against the rates later observed
   (their coverage is reported); :func:`score_blend`: blends of the empirical and the forecast's demand
   quantiles are scored, once the peak demand over the lead time they were for is known, with the
   quantile (pinball) loss; the blend with the least recent loss sets the forecast's weight ``w``.
5. :func:`plan`: per variant, demand over its lead time ``L`` at quantile ``q``: the current rate plus the
   empirical quantile of the rise ``max(d(t, t+L]) - d(t)`` over the ring, blended with the forecast's
   predictive quantile as ``w * forecast + (1 - w) * empirical``, times the calibrated headroom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from ..api.decision import BlendCheck, Forecast, ForecastCheck, MetricSnapshot, Observation, SloState, SloSummary, TimedValue
from ..api.spec import ModelDeploymentSpec

RING = 480
"""Demand samples kept (cycles): 2 h at the default 15 s sync period."""
MIN_SAMPLES = 40
"""Samples of growth needed before the empirical distribution replaces the prior."""
PRIOR_GROWTH = 1.5
"""Growth over a lead time assumed before enough history (the HPA-like 70 % target is 1.43)."""
STARTUP_PRIOR = 60.0
"""Start-up (s) assumed for a variant never seen starting."""
STARTUP_SMOOTHING = 0.3
GAMMA_Q = 0.005
"""Step of the quantile calibration (ACI's gamma)."""
GAMMA = 0.05
"""Step of the headroom calibration above ``Q_MAX`` (log headroom per violated cycle)."""
Q_MIN, Q_MAX = 0.5, 0.999
"""Range of the calibrated quantile."""
TARGET_SHARE = 0.8
"""Aim at this share of the allowed violation rate: the margin that keeps a finite run's attainment above
the objective despite the lag between a violation and its measurement."""
HEADROOM_LOG_BOUNDS = (0.0, 1.6)
"""Calibrated headroom stays within ×1 .. ×5."""
ATTAINMENT_SMOOTHING = 1 / 5760
"""About one day of cycles at 15 s."""
COVERAGE_SMOOTHING = 0.02
LOSS_SMOOTHING = COVERAGE_SMOOTHING
"""Memory of the quantile losses that weigh the forecast (about 50 scored cycles), as the coverage's."""
BLEND_WEIGHTS = tuple(i / 10 for i in range(11))
"""Forecast weights whose blends are scored; the one with the least recent loss is used."""
FORECAST_MIN_CHECKS = 20
BLEND_CHECKS = 64
"""Pending blend checks kept (one per cycle for a lead time's worth of cycles)."""
NEIGHBOURS = 0.1
"""Share of the history, nearest in recent growth, that the conditional rise quantile reads."""
GROWTH_CYCLES = 1
"""Cycles over which the recent growth that conditions the rise quantile is measured."""


@dataclass
class SloPlan:
    """What the SLO step asks for, in primary-equivalent replicas, and why."""

    total: int
    """Replicas (primary-equivalents) sized for the primary's lead time."""
    fast_qps: float
    """Demand quantile over the fastest burst variant's lead time (req/s), for the burst path."""
    panic: bool
    summary: SloSummary
    hold_seconds: float = 0.0
    """The primary's lead time on the full cycle alone (no panic check): scale-downs, which only the full
    cycle makes, wait ``HOLD_LEADS`` of it."""
    reasons: list[str] = field(default_factory=list)


def _z(q: float) -> float:
    """Standard normal quantile (Acklam's rational approximation; |error| < 1.2e-9)."""
    q = min(max(q, 1e-9), 1 - 1e-9)
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
         -3.066479806614716e01, 2.506628277459239e00)
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
         -1.328068155288572e01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
         4.374664141464968e00, 2.938163982698783e00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    lo = 0.02425
    if q < lo:
        r = math.sqrt(-2 * math.log(q))
        return (((((c[0] * r + c[1]) * r + c[2]) * r + c[3]) * r + c[4]) * r + c[5]) / \
            ((((d[0] * r + d[1]) * r + d[2]) * r + d[3]) * r + 1)
    if q > 1 - lo:
        return -_z(1 - q)
    r = q - 0.5
    s = r * r
    return (((((a[0] * s + a[1]) * s + a[2]) * s + a[3]) * s + a[4]) * s + a[5]) * r / \
        (((((b[0] * s + b[1]) * s + b[2]) * s + b[3]) * s + b[4]) * s + 1)


# --------------------------------------------------------------------------- 1. start-up


def learn_startup(state: SloState, spec: ModelDeploymentSpec, observed: Observation, now: datetime) -> None:
    """Measure start-ups from the counts: a variant whose ready count is below its desired count is
    starting; when ready catches up (and rose), the time since is one measurement (an upper bound by at
    most one sync period), smoothed into ``startup_seconds``."""
    for v in spec.variants:
        want = observed.replicas.get(v.name, 0)
        ready = observed.ready.get(v.name, 0)
        since = state.starting_since.get(v.name)
        if ready < want:
            if since is None:
                state.starting_since[v.name] = TimedValue(time=now, value=ready)
            continue
        if since is None:
            continue
        del state.starting_since[v.name]
        if ready > since.value:
            sample = (now - since.time).total_seconds()
            old = state.startup_seconds.get(v.name)
            state.startup_seconds[v.name] = round(
                sample if old is None else old + STARTUP_SMOOTHING * (sample - old), 1)


def note_scale_up(state: SloState, current: dict[str, int], desired: dict[str, int], observed: Observation,
                  now: datetime) -> None:
    """Start the start-up clock of a variant at the decision that adds replicas to it."""
    for name, want in desired.items():
        if want > max(current.get(name, 0), observed.ready.get(name, 0)) and name not in state.starting_since:
            state.starting_since[name] = TimedValue(time=now, value=observed.ready.get(name, 0))


def lead_seconds(state: SloState, spec: ModelDeploymentSpec, metrics_age: float,
                 panic_check: bool = True) -> dict[str, float]:
    """Lead time per variant: the time a rise takes to be seen and acted on, + start-up. Seen by the full
    cycle: age of the metrics (incl. half the rate window) + a sync period. With the panic check on
    (``metrics.rules.inflight``; ``panic_check`` False: the full cycle's lead alone, which scale-downs
    wait on) a rise past the ready capacity is acted on within two panic periods (a gauge scraped once a
    panic period, checked once a panic period), whichever is sooner."""
    base = max(metrics_age, 0.0) + spec.metrics.window_seconds / 2 + spec.sync_period_seconds
    rule = spec.metrics.rules.inflight
    if panic_check and rule.enabled and rule.panic_period_seconds:
        base = min(base, 2.0 * rule.panic_period_seconds)
    return {v.name: base + state.startup_seconds.get(v.name, STARTUP_PRIOR) for v in spec.variants}


# --------------------------------------------------------------------------- 2. demand history


def record_demand(state: SloState, qps: float | None, now: datetime, sync_seconds: int) -> None:
    """Append this cycle's request rate; a gap of more than 4 sync periods starts the history again."""
    if qps is None:
        return
    if state.demand_time is not None and (now - state.demand_time).total_seconds() > 4 * sync_seconds:
        state.demand = []
    if state.demand_time is not None and now <= state.demand_time:
        return  # the same cycle twice (a retried handler): count it once
    state.demand = (state.demand + [float(f"{qps:.4g}")])[-RING:]
    state.demand_time = now


def rise_quantile(demand: list[float], k: int, q: float) -> float | None:
    """Quantile ``q`` of the rise ``max(d[i+1..i+k]) - d[i]`` (req/s) over the history, conditioned on the
    current growth; None with too few samples.

    Rises are additive, not ratios: a spike adds about the same load whatever the level it starts from,
    so at the top of a spike the next spike is not assumed to multiply it again. The distribution is
    read from the ``NEIGHBOURS`` share of past cycles whose own growth in one cycle (``d[i] - d[i-1]``)
    was nearest the newest one (the most recent first among equals): while demand is flat the rises
    that followed flat cycles count, and the tail of rare ramps does not inflate headroom all day; once a
    ramp has started, the rises that followed past ramps do."""
    d = np.asarray(demand, dtype=float)
    g = GROWTH_CYCLES
    if k < 1 or len(d) < k + MIN_SAMPLES + g:
        return None
    ahead = np.lib.stride_tricks.sliding_window_view(d[1:], k).max(axis=1)
    rises = (ahead - d[: len(ahead)])[g:]
    growth = (d[g:] - d[:-g])[: len(rises)]
    n = min(len(rises), max(MIN_SAMPLES, int(NEIGHBOURS * len(rises))))
    if n < len(rises):
        # nearest in growth first, the most recent first among equals
        order = np.lexsort((-np.arange(len(rises)), np.abs(growth - (d[-1] - d[-1 - g]))))
        rises = rises[order[:n]]
    return float(np.quantile(rises, q))


def fresh_rate(state: SloState, qps: float | None, now: datetime, spec: ModelDeploymentSpec) -> float:
    """The rate over the newest sync period, recovered from two consecutive rate windows: a window of
    ``W`` s that moved by ``S`` s changed by ``(new - old) * S / W``, so ``new ≈ avg + (W/S - 1)(avg - prev)``
    (taking the part that left as ``prev``). Knative's panic window from the same metric; used only
    upwards, in panic."""
    if qps is None or not state.demand or state.demand_time is None:
        return 0.0
    gap = (now - state.demand_time).total_seconds()
    if not 0 < gap <= 1.5 * spec.sync_period_seconds:
        return 0.0
    ratio = max(spec.metrics.window_seconds / gap - 1, 0.0)
    return max(qps + ratio * (qps - state.demand[-1]), 0.0)


def concurrency_qps(spec: ModelDeploymentSpec, inflight: float | None) -> float | None:
    """Demand implied by the in-flight requests (req/s), None when the signal is off or unknown.

    Little's law, ``in-flight = rate x latency``, at the operating point the spec states: one primary
    replica at ``capacityQps`` holds ``spec.inflight_concurrency`` requests, so ``N`` in flight stand for
    ``N / concurrency`` replicas' worth of demand. Below capacity latency is shorter and this reads low
    (the request rate then governs); past capacity the queue grows and it reads high before the rate
    window or the latency histogram shows anything: requests queued now must be served too."""
    if inflight is None or not spec.metrics.rules.inflight.enabled:
        return None
    return inflight / spec.inflight_concurrency * spec.primary.capacity_qps


# --------------------------------------------------------------------------- 3. calibration


def violated(spec: ModelDeploymentSpec, metrics: MetricSnapshot, ready_qps: float) -> bool:
    """Was the objective missed in the window the metrics cover? Latency (and the error ceiling) when
    known, else demand above ready capacity (the overload the latency would show)."""
    if metrics.latency is not None:
        if metrics.latency > spec.slo_latency_ms:
            return True
    elif metrics.qps is not None and metrics.qps > ready_qps * 1.0001:
        return True
    ceiling = spec.slo.max_error_rate_percent
    return ceiling is not None and metrics.error_rate is not None and metrics.error_rate > ceiling


def quantile(state: SloState, spec: ModelDeploymentSpec) -> float:
    """The calibrated quantile: ``1 - alpha`` (the objective's attainment until calibrated)."""
    alpha = state.miss_level if state.miss_level is not None else 1 - spec.slo.attainment
    return min(Q_MAX, max(Q_MIN, 1 - alpha))


def calibrate(state: SloState, spec: ModelDeploymentSpec, miss: bool) -> None:
    """One adaptive-conformal step (on the quantile, or on the headroom above ``Q_MAX``), and the
    attainment estimate."""
    target = TARGET_SHARE * (1 - spec.slo.attainment)
    err = 1.0 if miss else 0.0
    alpha = state.miss_level if state.miss_level is not None else 1 - spec.slo.attainment
    lo, hi = HEADROOM_LOG_BOUNDS
    if miss and alpha <= 1 - Q_MAX + 1e-12:
        state.headroom_log = round(min(hi, state.headroom_log + GAMMA * (err - target)), 6)
    elif not miss and state.headroom_log > lo:
        state.headroom_log = round(max(lo, state.headroom_log + GAMMA * (err - target)), 6)
    else:
        alpha = min(1 - Q_MIN, max(1 - Q_MAX, alpha + GAMMA_Q * (target - err)))
    state.miss_level = round(alpha, 6)
    ok = 0.0 if miss else 1.0
    a = state.attainment
    state.attainment = round(ok if a is None else a + ATTAINMENT_SMOOTHING * (ok - a), 6)


# --------------------------------------------------------------------------- 4. forecast calibration


def check_forecast(state: SloState, forecast: Forecast | None, metrics: MetricSnapshot, lead: float) -> None:
    """Score the due forecast checks against the rate now observed, then add one for this forecast: its
    upper bound at the first point one lead time past the metrics' time."""
    seen = metrics.observed_at
    if seen is not None and metrics.qps is not None:
        keep = []
        for c in state.forecast_checks:
            if c.due <= seen:
                hit = 1.0 if metrics.qps <= c.upper else 0.0
                cov = state.forecast_coverage
                state.forecast_coverage = round(hit if cov is None else cov + COVERAGE_SMOOTHING * (hit - cov), 6)
                state.forecast_checked += 1
            else:
                keep.append(c)
        state.forecast_checks = keep
    if forecast is None or not forecast.ready or not forecast.points or seen is None:
        return
    due = seen + timedelta(seconds=lead)
    for p in forecast.points:
        t = forecast.origin + timedelta(seconds=p.offset_seconds)
        if t >= due or p is forecast.points[-1]:
            if not state.forecast_checks or state.forecast_checks[-1].due < t:
                state.forecast_checks = (state.forecast_checks + [ForecastCheck(due=t, upper=float(f"{p.upper:.4g}"))])[-64:]
            break


def pinball(q: float, predicted: float, actual: float) -> float:
    """Quantile (pinball) loss of ``predicted`` as the ``q``-quantile of ``actual``: the proper scoring rule
    for a quantile (Gneiting & Raftery 2007); its expectation is least at the true quantile, so a bound
    that covers by being too high loses to one that is as well calibrated and sharper."""
    u = actual - predicted
    return q * u if u >= 0 else (q - 1) * u


def score_blend(state: SloState, qps: float) -> None:
    """One new demand sample: raise the peak of every pending blend check; a check whose lead time has
    passed scores the blend at each weight of ``BLEND_WEIGHTS`` against the peak demand over that lead
    time (the quantity the plan sized capacity for) and updates their exponentially weighted losses."""
    keep = []
    for c in state.blend_checks:
        peak = max(c.peak, qps)
        if c.left > 1:
            keep.append(c.model_copy(update={"left": c.left - 1, "peak": peak}))
            continue
        losses = [pinball(c.quantile, c.empirical + w * (c.forecast - c.empirical), peak) for w in BLEND_WEIGHTS]
        old = state.blend_losses if len(state.blend_losses) == len(losses) else losses
        state.blend_losses = [float(f"{o + LOSS_SMOOTHING * (n - o):.6g}") for o, n in zip(old, losses)]
        state.blend_checked += 1
    state.blend_checks = keep


def add_blend_check(state: SloState, cycles: int, q: float, empirical: float, forecast: float) -> None:
    """Keep this cycle's two demand quantiles until the peak over the next ``cycles`` samples is known."""
    check = BlendCheck(left=max(1, cycles), peak=0.0, quantile=round(q, 6), empirical=float(f"{empirical:.6g}"),
                       forecast=float(f"{forecast:.6g}"))
    state.blend_checks = (state.blend_checks + [check])[-BLEND_CHECKS:]


def forecast_weight(state: SloState, forecast: Forecast | None, max_error: float) -> float:
    """0..1: the forecast's share of the blend ``w * forecast + (1 - w) * empirical``: the weight of
    ``BLEND_WEIGHTS`` whose blend had the least recent quantile loss on the peak demand over the lead
    time (the smallest among equals: the empirical quantile is anchored on the rate measured now), scaled
    down as the forecast's sMAPE approaches ``max_error``.

    Coverage alone (the share of rates under the forecast's upper bound) does not say whether a forecast
    helps: one that is always high covers perfectly. Scored with the proper scoring rule for a quantile on
    the quantity the plan sizes for, a blend gains from the forecast only when it is sharper there, not
    merely higher (docs/forecasting.md, step 3)."""
    if forecast is None or not forecast.ready or not forecast.points:
        return 0.0
    losses = state.blend_losses
    if len(losses) != len(BLEND_WEIGHTS) or state.blend_checked < FORECAST_MIN_CHECKS:
        return 0.0
    w = BLEND_WEIGHTS[min(range(len(losses)), key=lambda i: (losses[i], i))]
    if forecast.error is not None:
        w *= max(0.0, 1 - forecast.error / max_error)
    return float(min(1.0, max(0.0, w)))


def forecast_quantile(forecast: Forecast, q: float, until_seconds: float) -> float:
    """The forecast's peak at quantile ``q`` up to ``until_seconds`` after its origin (log-normal between
    its mean and its upper bound, as the ARIMA intervals are Gaussian in log1p)."""
    zq, z0 = _z(q), _z(forecast.quantile)
    best = 0.0
    for p in forecast.points:
        s = (math.log1p(p.upper) - math.log1p(max(p.mean, 0.0))) / z0 if z0 > 0 else 0.0
        best = max(best, math.expm1(math.log1p(max(p.mean, 0.0)) + zq * max(s, 0.0)))
        if p.offset_seconds >= until_seconds:
            break
    return best


# --------------------------------------------------------------------------- 5. the plan


def plan(
    spec: ModelDeploymentSpec,
    metrics: MetricSnapshot,
    forecast: Forecast | None,
    state: SloState,
    now: datetime,
    observed: Observation,
) -> SloPlan:
    """Update ``state`` with this cycle's observations and size capacity for the objective."""
    cap = spec.primary.capacity_qps
    ready_qps = sum(observed.ready.get(v.name, 0) * v.capacity_qps for v in spec.variants)
    learn_startup(state, spec, observed, now)
    age = (now - metrics.observed_at).total_seconds() if metrics.observed_at is not None else 0.0
    leads = lead_seconds(state, spec, age)
    primary_lead = leads[spec.primary.name]
    calibrate(state, spec, violated(spec, metrics, ready_qps))
    check_forecast(state, forecast, metrics, primary_lead)
    fresh = fresh_rate(state, metrics.qps, now, spec)
    before = state.demand_time
    record_demand(state, metrics.qps, now, spec.sync_period_seconds)
    if state.demand_time != before:
        if len(state.demand) == 1:
            state.blend_checks = []  # the history started again: the peaks pending are unknown
        score_blend(state, state.demand[-1])

    q = quantile(state, spec)
    level = float(metrics.qps or 0.0)
    conc = concurrency_qps(spec, metrics.inflight)
    if conc is not None:
        fresh = max(fresh, conc)  # the in-flight gauge has no rate window: the freshest measure of demand
    panic = (metrics.qps is not None or conc is not None) and max(level, fresh) > ready_qps * 1.0001 \
        and max(level, fresh) > 0
    if panic:
        level = max(level, fresh)  # size the burst from the newest part of the rate window
    w = forecast_weight(state, forecast, spec.forecasting.max_error) if spec.forecasting.enabled else 0.0
    headroom = math.exp(state.headroom_log)
    sync = spec.sync_period_seconds

    usable = spec.forecasting.enabled and forecast is not None and forecast.ready and bool(forecast.points)

    def parts(lead: float) -> tuple[float, float | None]:
        """Empirical and forecast demand quantiles over ``lead`` (req/s; the forecast's None if unusable)."""
        rise = rise_quantile(state.demand, max(1, math.ceil(lead / sync)), q)
        empirical = level * PRIOR_GROWTH if rise is None else max(level + rise, 0.0)
        if not usable:
            return empirical, None
        until = (now - forecast.origin).total_seconds() + lead
        return empirical, forecast_quantile(forecast, q, until)

    def demand(lead: float, known: tuple[float, float | None] | None = None) -> tuple[float, float]:
        empirical, predicted = known or parts(lead)
        blended = empirical if w <= 0 or predicted is None else w * predicted + (1 - w) * empirical
        return headroom * blended, blended - level

    primary = parts(primary_lead)
    need_qps, rise = demand(primary_lead, primary)
    if primary[1] is not None and metrics.qps is not None:
        # Score both quantiles the plan could size for, whatever the weight now (a forecast at weight 0
        # must be able to earn it back).
        add_blend_check(state, math.ceil(primary_lead / sync), q, primary[0], primary[1])
    fast = [b for b in spec.bursts if spec.burst.enabled]
    fast_qps = min((demand(leads[b.name])[0] for b in fast), default=need_qps)
    total = math.ceil(need_qps / cap - 1e-9)
    summary = SloSummary(
        quantile=q, headroom=round(headroom, 4), lead_seconds={k: round(v, 1) for k, v in leads.items()},
        demand_qps=round(need_qps, 3), forecast_weight=round(w, 3), forecast_coverage=state.forecast_coverage,
        attainment=state.attainment, panic=panic,
    )
    why = (f"slo: p{q * 100:.3g} of demand over {primary_lead:.0f} s = {need_qps:.3g} qps "
           f"({level:.3g} now {rise:+.3g}, forecast weight {w:.2f}, headroom ×{headroom:.2f}) → {total}")
    reasons = [why]
    if panic:
        source = "in-flight requests" if conc is not None and conc >= level - 1e-9 else \
            f"newest {spec.sync_period_seconds} s of the rate window"
        reasons.append(f"panic: {level:.3g} qps ({source}) > ready capacity {ready_qps:.3g} qps")
    hold = lead_seconds(state, spec, age, panic_check=False)[spec.primary.name]
    return SloPlan(total=total, fast_qps=fast_qps, panic=panic, summary=summary, reasons=reasons, hold_seconds=hold)
