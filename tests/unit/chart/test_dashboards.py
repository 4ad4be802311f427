"""Dashboards as code: generated files in sync, every panel's PromQL parses (promtool), queries mirror the operator's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]

SAMPLE_VALUES = {
    "namespace": "ml",
    "modeldeployment": "minilm",
    "variant": ["fp32", "int8"],
    "slo_latency": "0.25",
    "__interval": "1m",
    "__rate_interval": "2m",
    "__range": "6h",
    "__range_s": "21600",
}


def _all_targets(dashboards):
    for d in dashboards.DASHBOARDS:
        for p in d.panels:
            for i, t in enumerate(p.targets):
                yield f"{d.uid}/{p.title}/{chr(ord('A') + i)}", t


def test_generated_files_are_in_sync(grafana_sdk, dashboards):
    from dashboards.generate import outputs, stale

    bad = stale(outputs())
    assert not bad, f"run hack/sync-chart.py: stale {[str(p.relative_to(ROOT)) for p in bad]}"


def test_generated_json_holds_the_spec_queries(dashboards):
    """The JSON under dashboards/generated is what the spec says (no hand edits that the check could miss)."""
    for d in dashboards.DASHBOARDS:
        data = json.loads((ROOT / "dashboards" / "generated" / d.filename).read_text())
        assert data["uid"] == d.uid and data["title"] == d.title
        panels = [p for p in data["panels"] if p["type"] != "row"]
        assert [p["title"] for p in panels] == [p.title for p in d.panels]
        for jp, sp in zip(panels, d.panels):
            assert [t["expr"] for t in jp["targets"]] == [t.expr for t in sp.targets]
            assert all(t["datasource"]["uid"] == "${datasource}" for t in jp["targets"])


def test_dashboard_structure(dashboards):
    uids = [d.uid for d in dashboards.DASHBOARDS]
    assert len(set(uids)) == len(uids) == 3
    for d in dashboards.DASHBOARDS:
        titles = [p.title for p in d.panels]
        assert len(set(titles)) == len(titles), f"{d.uid}: duplicate panel titles"
        for row in d.rows:
            assert sum(p.width for p in row.panels) % 24 == 0, f"{d.uid}/{row.title}: rows fill whole grid lines"
        for p in d.panels:
            assert p.targets, f"{d.uid}/{p.title} has no query"
            if p.band:
                legends = {t.legend for t in p.targets}
                assert set(p.band) <= legends, f"{d.uid}/{p.title}: band names unknown legends"


def test_every_variable_used_is_defined(dashboards):
    from dashboards.spec import variables_used

    builtin = {"__interval", "__rate_interval", "__range", "__range_s"}
    for d in dashboards.DASHBOARDS:
        defined = {v.name for v in d.variables} | builtin
        for p in d.panels:
            for t in p.targets:
                unknown = variables_used(t.expr) - defined
                assert not unknown, f"{d.uid}/{p.title}: undefined variables {unknown}"
        for v in d.variables:
            if v.query:
                assert variables_used(v.query) <= defined


def test_required_panels_exist(dashboards):
    titles = {d.uid: " | ".join(p.title for p in d.panels).lower() for d in dashboards.DASHBOARDS}
    for word in ("models", "replicas by variant", "replica-hours", "slo attainment", "scale events"):
        assert word in titles["elastiserve-fleet"], word
    for word in ("actual vs forecast", "p95 / p99 vs slo", "error rate", "cpu", "memory", "desired vs ready",
                 "int8 share", "loaded sub-models", "cold start"):
        assert word in titles["elastiserve-model"], word
    for word in ("cycle time", "prometheus", "forecast error"):
        assert word in titles["elastiserve-operator"], word


def test_model_dashboard_mirrors_the_operator_queries(dashboards):
    """QPS, latency and error-rate panels run the operator's own default PromQL for the selected model."""
    from string import Template

    from elastiserve.metrics.queries import DEFAULT_QUERIES

    model = next(d for d in dashboards.DASHBOARDS if d.uid == "elastiserve-model")
    exprs = {t.expr for p in model.panels for t in p.targets}
    for signal, quantile in (("qps", None), ("latency", "0.95"), ("latency", "0.99"), ("error_rate", None)):
        expected = Template(DEFAULT_QUERIES[signal]).safe_substitute(
            namespace="$namespace", name="$modeldeployment", window="$__rate_interval", quantile=quantile or ""
        )
        assert expected in exprs, f"{signal}: the model dashboard does not run the operator's query"


def test_every_panel_query_parses(dashboards, promtool, tmp_path):
    """Each target, with its variables substituted the way Grafana does, is valid PromQL for promtool."""
    from dashboards.spec import expand

    rules = []
    for i, (where, target) in enumerate(_all_targets(dashboards)):
        rules.append({"record": f"dashboard_query_{i}", "expr": expand(target.expr, SAMPLE_VALUES),
                      "labels": {"panel": where[:200]}})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, sort_keys=False))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout + proc.stderr


def test_a_broken_query_is_caught(promtool, tmp_path):
    """The parse check above is real: promtool rejects an unbalanced query."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [{"record": "r", "expr": "sum(rate(x[5m])"}]}]}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0


@pytest.mark.parametrize(
    "expr,values,expected",
    [
        ('x{ns="$namespace"}', {"namespace": "a"}, 'x{ns="a"}'),
        ('x{v=~"$variant"}', {"variant": ["fp32", "int8"]}, 'x{v=~"(fp32|int8)"}'),
        ("rate(x[$__rate_interval])", {"__rate_interval": "2m"}, "rate(x[2m])"),
        ('x{v=~"${variant:regex}"}', {"variant": "a.b"}, 'x{v=~"a\\.b"}'),
    ],
    ids=["single", "multi", "builtin", "regex-format"],
)
def test_expand_formats_like_grafana(dashboards, expr, values, expected):
    from dashboards.spec import expand

    assert expand(expr, values) == expected


def test_expand_rejects_unknown_variables(dashboards):
    from dashboards.spec import expand

    with pytest.raises(KeyError, match="namspace"):
        expand('x{ns="$namspace"}', {"namespace": "a"})


def test_builtins_follow_grafana_rate_interval(dashboards):
    from dashboards.spec import builtins

    assert builtins(range_seconds=3600, step_seconds=15, scrape_seconds=15) == {
        "__interval": "15s", "__rate_interval": "1m", "__range": "1h", "__range_s": "3600"
    }
    assert builtins(range_seconds=86400, step_seconds=300, scrape_seconds=15)["__rate_interval"] == "315s"
