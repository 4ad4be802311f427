"""The demo's summary: the pods each variant started and deleted (issue 15, item 7), and the verdict that fails
the run when a node went NotReady or a request was lost (issue 16, item 7)."""

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


# ------------------------------------------------------------------ the run fails on a NotReady node or a lost request


def _summary(sent: int, ok: int, errors: dict | None = None, not_ready: dict | None = None) -> dict:
    return {"requests": {"sent": sent, "ok": ok, "lost": sent - ok, "errors": errors or {}, "via_activator": 0},
            "nodes_not_ready": not_ready or {}}


def test_a_clean_run_has_no_problems():
    assert _live().problems(_summary(4629, 4629)) == []


def test_a_lost_request_is_a_problem_that_names_the_count_and_the_cause():
    out = _live().problems(_summary(4629, 4626, errors={"0": 2, "503": 1}))
    assert out == ["3 of 4629 requests were lost (no response: 2, HTTP 503: 1)"]


def test_a_node_not_ready_during_the_run_is_a_problem_even_when_no_request_was_lost():
    out = _live().problems(_summary(100, 100, not_ready={"kwok-node-1": 480.0}))
    assert out == ["node kwok-node-1 was NotReady for 480 s during the run (its heartbeats starved?)"]


def test_a_run_that_sent_nothing_is_a_problem():
    assert _live().problems(_summary(0, 0)) == ["no request was sent"]


def test_not_ready_seconds_adds_the_time_until_the_next_sample_per_node():
    live = _live()
    nodes = [[], ["kwok-node-1"], ["kwok-node-1", "kwok-node-2"], [], ["kwok-node-2"]]
    samples = [live.Sample(t=5.0 * i, offered=0.0, forecast=None, desired={}, ready={}, p95_ms=None, reason="",
                           phase="", not_ready_nodes=n) for i, n in enumerate(nodes)]
    # node-1 from 5 s to 15 s; node-2 from 10 s to 15 s, and again at the last sample (seen, no span after it)
    assert live.not_ready_seconds(samples) == {"kwok-node-1": 10.0, "kwok-node-2": 5.0}
    assert live.not_ready_seconds(samples[:1]) == {}


def test_nodes_not_ready_reads_the_ready_condition_of_each_node():
    from types import SimpleNamespace as NS

    def node(name, conditions):
        return NS(metadata=NS(name=name), status=NS(conditions=[NS(type=t, status=v) for t, v in conditions]))

    nodes = [node("a", [("MemoryPressure", "False"), ("Ready", "True")]), node("b", [("Ready", "Unknown")]),
             node("c", [("Ready", "False")]), node("d", [])]
    assert _live().nodes_not_ready(nodes) == ["b", "c", "d"]
