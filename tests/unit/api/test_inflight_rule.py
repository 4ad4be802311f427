"""``metrics.rules.inflight``: defaults keep existing specs' meaning; bad values name the field and the fix."""

from __future__ import annotations

import math

import pytest

from elastiserve.api import SpecError, parse_spec

MODEL = {"name": "m", "uri": "file:///m.onnx"}


def test_off_by_default_with_documented_defaults():
    r = parse_spec({"model": MODEL}).metrics.rules.inflight
    assert (r.enabled, r.scale_up_above, r.scale_down_below, r.target, r.concurrency, r.panic_period_seconds) == \
        (False, 100, 40, 70, None, 5)


def test_enabled_alone_derives_the_concurrency_from_littles_law():
    s = parse_spec({"model": MODEL, "variants": [{"name": "fp32", "capacityQps": 35}],
                    "metrics": {"rules": {"inflight": {"enabled": True}}}})
    assert s.inflight_concurrency == pytest.approx(35 * 0.2 / math.log(20))


@pytest.mark.parametrize(
    "inflight,sync,message",
    [
        ({"enabled": True, "panicPeriodSeconds": 15}, 15,
         "metrics.rules.inflight.panicPeriodSeconds must be shorter than syncPeriodSeconds"),
        ({"enabled": True, "panicPeriodSeconds": 301}, 600, "panicPeriodSeconds"),
        ({"enabled": True, "concurrency": 0}, 15, "concurrency"),
        ({"enabled": True, "target": 120}, 15, "target must lie between scaleDownBelow and scaleUpAbove"),
        ({"enabled": True, "panicPeriods": 5}, 15, "panicPeriods"),
    ],
    ids=["panic-not-shorter-than-sync", "panic-too-long", "zero-concurrency", "target-outside-band", "unknown-field"],
)
def test_bad_values_name_the_field(inflight, sync, message):
    with pytest.raises(SpecError) as info:
        parse_spec({"model": MODEL, "syncPeriodSeconds": sync, "metrics": {"rules": {"inflight": inflight}}})
    assert message in str(info.value)
    assert "Traceback" not in str(info.value)


@pytest.mark.parametrize("inflight,sync", [({"enabled": True, "panicPeriodSeconds": 0}, 15),
                                           ({"enabled": False, "panicPeriodSeconds": 30}, 15),
                                           ({"enabled": True, "panicPeriodSeconds": 14}, 15)],
                         ids=["panic-off", "rule-off", "just-shorter"])
def test_accepted(inflight, sync):
    parse_spec({"model": MODEL, "syncPeriodSeconds": sync, "metrics": {"rules": {"inflight": inflight}}})
