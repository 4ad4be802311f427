"""The demo's summary counts the pods each variant started and deleted (issue 15, item 7)."""

from __future__ import annotations

import sys
from pathlib import Path

from support import load_hack

HACK = Path(__file__).resolve().parents[2] / "hack"


def _live():
    if str(HACK) not in sys.path:
        sys.path.insert(0, str(HACK))  # hack/live.py imports its sibling demo_stack as the demo does
    return load_hack("live")


def test_pod_churn_counts_rises_and_falls_of_the_desired_count_per_variant():
    live = _live()
    desired = [{"fp32": 1, "int8": 0}, {"fp32": 3, "int8": 1}, {"fp32": 3, "int8": 0}, {"fp32": 2, "int8": 1},
               {"fp32": 2, "int8": 0}]
    samples = [live.Sample(t=900.0 * i, offered=0.0, forecast=None, desired=d, ready=d, p95_ms=None, reason="",
                           phase="") for i, d in enumerate(desired)]
    churn = live.pod_churn(samples)
    assert churn["fp32"] == {"started": 2, "deleted": 1, "started_per_hour": 2.0, "deleted_per_hour": 1.0}
    assert churn["int8"] == {"started": 2, "deleted": 2, "started_per_hour": 2.0, "deleted_per_hour": 2.0}


def test_pod_churn_of_a_single_sample_has_no_rate():
    live = _live()
    one = [live.Sample(t=0.0, offered=0.0, forecast=None, desired={"fp32": 1}, ready={"fp32": 1}, p95_ms=None,
                       reason="", phase="")]
    assert live.pod_churn(one) == {"fp32": {"started": 0, "deleted": 0, "started_per_hour": None,
                                            "deleted_per_hour": None}}
