"""Conditions keep their transition time unless their status changes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from elastiserve.operator.status import condition, set_condition, variant_summary

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_transition_time_moves_only_on_status_change():
    conds = set_condition(None, "Ready", True, "Reconciled", "ok", T0)
    later = set_condition(conds, "Ready", True, "Reconciled", "still ok", T0 + timedelta(minutes=5))
    assert condition(later, "Ready")["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    flipped = set_condition(later, "Ready", False, "InvalidSpec", "bad", T0 + timedelta(minutes=6))
    assert condition(flipped, "Ready")["lastTransitionTime"] == "2026-01-01T00:06:00Z"
    assert condition(flipped, "Ready")["status"] == "False"


def test_other_conditions_are_kept():
    conds = set_condition(None, "Ready", True, "R", "", T0)
    conds = set_condition(conds, "MetricsAvailable", False, "Missing", "no data", T0)
    assert [c["type"] for c in conds] == ["Ready", "MetricsAvailable"]


def test_variant_summary():
    assert variant_summary({"fp32": 3, "int8": 1}) == "fp32=3 int8=1"

