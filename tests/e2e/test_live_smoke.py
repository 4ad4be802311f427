"""The live replay benchmark in short (``bench/live.py``, issue 17): one contender, the real HPA.

A real control plane with a real node (the real-node fixture), the chart installed from the project's image,
metrics-server and the kube-controller-manager's HPA controller. Two minutes of a shared trace's rise,
compressed ×8 and scaled to 2.5× a pod's stated capacity, are replayed against the Deployment the operator
renders, with an ``autoscaling/v2`` HPA on CPU at 80 %. The full comparison (ours, the HPA at two targets,
KEDA, 40-minute segments) is a benchmark with its figures in docs/backtest.md; this checks that its path
works end to end on every change: the HPA scales on real CPU, every request is answered and scored, the
report is written, and the simulator is run on the same segment. The test cluster's HPA controller syncs every
5 s (``HPA_SYNC_PERIOD_S``), not the default 15 s the benchmark's cluster and the simulated HPA use, so its
figures are not the benchmark's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.real_node import RealCluster

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.cluster, pytest.mark.prometheus, pytest.mark.model, pytest.mark.e2e, pytest.mark.node]

CAPACITY_RPS = 30.0
"""Stated, not measured (measuring takes minutes). The segment then offers 62 req/s on average and 75 at its
peak: twice what one 300m pod serves at full CPU (39 req/s on an idle machine, docs/backtest.md; fewer on a
busy one). A first run stated 15 (mean 31, peak 37.5): one pod carried it at 78 % CPU and the HPA did not
move."""


def test_live_replay_against_the_real_hpa(real_cluster: RealCluster, tmp_path: Path):
    out = tmp_path / "live"
    cmd = [sys.executable, str(ROOT / "bench" / "live.py"), "--trace", "azure_llm_conv_2023_60s.csv",
           "--start-minute", "10", "--minutes", "16", "--compress", "8", "--contenders", "hpa",
           "--capacity-rps", str(CAPACITY_RPS), "--startup-s", "12", "--max-replicas", "3",
           "--run", "smoke", "--out", str(out)]
    env = dict(real_cluster.cluster.env, ELASTISERVE_PROMETHEUS_SD=real_cluster.prometheus_sd)
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]

    run = out / "smoke"
    doc = json.loads((run / "report.json").read_text())
    cfg, hpa = doc["config"], doc["live"]["hpa"]
    report = (run / "report.md").read_text()
    # the report's row for the contender and the simulator's section, with this run's figures
    assert f"| hpa | CPU 80 % | {hpa['pod_seconds']:.0f} |" in report, report
    assert "## The simulator on the same segment" in report
    assert (run / "replicas.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cfg["compress"] == 8 and cfg["replay_seconds"] == pytest.approx(120, abs=8)
    assert cfg["versions"]["kubernetes"] and cfg["targets"]["hpa"] == 80

    # every request sent was answered and scored, none lost
    assert hpa["requests"] > 0.5 * cfg["mean_qps"] * cfg["replay_seconds"]
    assert hpa["ok"] == hpa["requests"] and hpa["errors"] == {}, hpa["errors"]
    # the real HPA scaled the Deployment on the pods' CPU: one pod cannot carry the peak
    assert max(s[1] for s in hpa["samples"]) >= 2, hpa["rescale_events"]
    assert hpa["scale_events"] >= 1 and any("cpu" in (m or "") for m in hpa["rescale_events"]), hpa["rescale_events"]
    assert hpa["pod_seconds"] >= cfg["replay_seconds"] - 2  # at least one pod all along
    # measured from the kubelet's cAdvisor through Prometheus (increase() extrapolates a little past 100 %)
    assert 0 < hpa["mean_cpu_utilisation"] < 120

    # the simulator replayed the same segment and its error against this run is reported
    err = doc["simulator"]["errors"]["hpa"]
    assert err["live_pod_seconds"] == hpa["pod_seconds"] and err["sim_pod_seconds"] > 0
    # beside it, the simulated oracle (the least pod-seconds that meet the objective): at least one pod all along
    oracle = doc["simulator"]["results"]["oracle"]
    assert oracle["pod_seconds"] >= doc["config"]["replay_seconds"] - 1
    assert "The oracle on the same segment" in report
