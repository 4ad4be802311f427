"""Stabilization windows and rate limits with the HPA v2 semantics (``behavior``).

Mirrors the algorithm of the Kubernetes HPA controller (``stabilizeRecommendationWithBehaviors`` and
``calculateScaleUp/DownLimitWithScalingRules``) on our explicit, persisted state: recommendations and
scale events are lists of ``TimedValue`` carried in ``ScalerState``.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from ..api.decision import TimedValue
from ..api.spec import Behavior, ScalingRules, SelectPolicy


def clamp(value: float, low: int, high: int) -> int:
    """Round up and clamp a replica count into ``[low, high]``: the one place counts are made integers."""
    if not math.isfinite(value):
        return high if value > 0 else low
    return max(low, min(high, math.ceil(value - 1e-9)))


def within(events: list[TimedValue], now: datetime, seconds: int) -> list[TimedValue]:
    cutoff = now - timedelta(seconds=seconds)
    return [e for e in events if e.time > cutoff]


def stabilize(
    proposal: int, current: int, recommendations: list[TimedValue], behavior: Behavior, now: datetime
) -> tuple[int, list[TimedValue]]:
    """Stabilized recommendation and the updated recommendation history.

    Scale-up uses the *lowest* recommendation of the scale-up window, scale-down the *highest* of the
    scale-down window; the result stays between them, anchored at ``current``.
    """
    up_window = behavior.scale_up.stabilization_window_seconds
    down_window = behavior.scale_down.stabilization_window_seconds
    up_rec = proposal
    down_rec = proposal
    for rec in within(recommendations, now, up_window):
        up_rec = min(up_rec, rec.value)
    for rec in within(recommendations, now, down_window):
        down_rec = max(down_rec, rec.value)
    result = current
    if result < up_rec:
        result = up_rec
    if result > down_rec:
        result = down_rec
    keep = max(up_window, down_window)
    history = within(recommendations, now, keep) + [TimedValue(time=now, value=proposal)]
    return result, history


def _changed_in(events: list[TimedValue], now: datetime, period: int) -> int:
    return sum(e.value for e in within(events, now, period))


def scale_up_limit(
    current: int, ups: list[TimedValue], downs: list[TimedValue], rules: ScalingRules, now: datetime
) -> int:
    """Highest replica count the scale-up policies allow now."""
    if rules.select_policy == SelectPolicy.Disabled:
        return current
    pick = max if rules.select_policy == SelectPolicy.Max else min
    limits = []
    for policy in rules.policies:
        start = current - _changed_in(ups, now, policy.period_seconds) + _changed_in(downs, now, policy.period_seconds)
        if policy.type == "Pods":
            limits.append(start + policy.value)
        else:
            limits.append(math.ceil(start * (1 + policy.value / 100)))
    return max(pick(limits), current)


def scale_down_limit(
    current: int, ups: list[TimedValue], downs: list[TimedValue], rules: ScalingRules, now: datetime
) -> int:
    """Lowest replica count the scale-down policies allow now."""
    if rules.select_policy == SelectPolicy.Disabled:
        return current
    # "Max" selects the policy allowing the biggest change, i.e. the lowest count.
    pick = min if rules.select_policy == SelectPolicy.Max else max
    limits = []
    for policy in rules.policies:
        start = current + _changed_in(downs, now, policy.period_seconds) - _changed_in(ups, now, policy.period_seconds)
        if policy.type == "Pods":
            limits.append(start - policy.value)
        else:
            limits.append(int(start * (1 - policy.value / 100)))
    return min(pick(limits), current)


def rate_limit(
    desired: int, current: int, ups: list[TimedValue], downs: list[TimedValue], behavior: Behavior, now: datetime
) -> tuple[int, str | None]:
    """Apply the rate-limit policies; returns the limited count and a reason when it bit."""
    if desired > current:
        limit = scale_up_limit(current, ups, downs, behavior.scale_up, now)
        if desired > limit:
            return limit, f"scale-up rate limit: at most {limit} now"
    elif desired < current:
        limit = scale_down_limit(current, ups, downs, behavior.scale_down, now)
        if desired < limit:
            return limit, f"scale-down rate limit: at least {limit} now"
    return desired, None


def record_event(
    current: int, new: int, ups: list[TimedValue], downs: list[TimedValue], behavior: Behavior, now: datetime
) -> tuple[list[TimedValue], list[TimedValue]]:
    """Add a scale event to the histories and drop events older than any policy period."""
    keep = max(
        [p.period_seconds for p in behavior.scale_up.policies + behavior.scale_down.policies], default=0
    )
    ups = within(ups, now, keep)
    downs = within(downs, now, keep)
    if new > current:
        ups = ups + [TimedValue(time=now, value=new - current)]
    elif new < current:
        downs = downs + [TimedValue(time=now, value=current - new)]
    return ups, downs
