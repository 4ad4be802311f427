"""The alerting rules (charts/elastiserve/files/rules.yaml) are valid and behave as their unit tests say."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "charts" / "elastiserve" / "files" / "rules.yaml"
RULES_TEST = Path(__file__).with_name("rules_test.yaml")

REQUIRED_ALERTS = {
    "ElastiserveForecastErrorHigh": "forecast error too high",
    "ElastiserveMetricsMissing": "metrics missing",
    "ElastiserveLatencySLOBurnFast": "latency SLO burn (fast)",
    "ElastiserveLatencySLOBurnSlow": "latency SLO burn (slow)",
    "ElastiserveOperatorNotReconciling": "operator not reconciling",
    "ElastiserveReplicasAtMax": "replicas at max",
}


def _alerts() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def _run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, check=False)


def test_rules_file_is_valid(promtool):
    proc = _run(promtool, "check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rules_unit_tests_pass(promtool):
    proc = _run(promtool, "test", "rules", str(RULES_TEST))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


@pytest.mark.parametrize("alert", sorted(REQUIRED_ALERTS), ids=sorted(REQUIRED_ALERTS))
def test_required_alert_exists_with_severity_and_docs(alert):
    rule = _alerts().get(alert)
    assert rule is not None, f"{alert} ({REQUIRED_ALERTS[alert]}) missing from {RULES.name}"
    assert rule["labels"]["severity"] in ("warning", "critical")
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_alert_has_a_firing_and_a_quiet_case():
    """Each alert appears in rules_test.yaml at least once firing and once not firing."""
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for t in tests:
        for case in t.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    alerts = set(_alerts())
    assert alerts <= firing, f"no firing test for {sorted(alerts - firing)}"
    assert alerts <= quiet, f"no quiet test for {sorted(alerts - quiet)}"


def test_alerts_group_by_model():
    """Every alert names the ModelDeployment it is about (routing and the annotations rely on it)."""
    for name, rule in _alerts().items():
        assert "namespace, modeldeployment" in rule["expr"] or "elastiserve:" in rule["expr"], name
