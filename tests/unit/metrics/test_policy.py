"""The tenancy policy: which Prometheus a spec may name, where custom PromQL may run."""

from __future__ import annotations

import pytest

from elastiserve.metrics.policy import MetricsPolicy, NotAllowed, normalize_url

DEFAULT = "http://prometheus.monitoring:9090"


@pytest.mark.parametrize("spec_url,namespace,want,own", [
    (None, "a", DEFAULT, False),
    ("http://prometheus.monitoring:9090/", "a", "http://prometheus.monitoring:9090/", False),
    ("http://PROMETHEUS.monitoring:9090", "a", "http://PROMETHEUS.monitoring:9090", False),
    ("https://shared.example:443", "b", "https://shared.example:443", False),
    ("https://shared.example", "b", "https://shared.example", False),
    ("http://prom.team-a:9090", "team-a", "http://prom.team-a:9090", True),
], ids=["default", "default-with-slash", "case", "shared-allowlisted", "default-port", "own"])
def test_allowed(spec_url, namespace, want, own):
    policy = MetricsPolicy.build(DEFAULT, ["https://shared.example:443", "team-a=http://prom.team-a:9090"])
    assert policy.prometheus_url(namespace, spec_url) == (want, own)


@pytest.mark.parametrize("spec_url,namespace", [
    ("http://10.0.0.1:8080", "a"),
    ("http://kubernetes.default.svc:443", "a"),
    ("http://prom.team-a:9090", "team-b"),  # team-a's own Prometheus is not team-b's
    ("http://prometheus.monitoring:9090/#", "a"),
    ("http://prometheus.monitoring:9090?x=1", "a"),
    ("http://user@prometheus.monitoring:9090", "a"),
    ("http://prometheus.monitoring:9091", "a"),
], ids=["ip", "apiserver", "other-namespace", "fragment", "query", "userinfo", "other-port"])
def test_refused_with_the_field_and_the_fix(spec_url, namespace):
    policy = MetricsPolicy.build(DEFAULT, ["team-a=http://prom.team-a:9090"])
    with pytest.raises(NotAllowed, match=r"spec\.metrics\.prometheus\.url"):
        policy.prometheus_url(namespace, spec_url)


def test_no_default_and_no_url():
    with pytest.raises(NotAllowed, match="--prometheus-url"):
        MetricsPolicy.build(None).prometheus_url("a", None)


def test_custom_queries_are_opt_in_per_namespace():
    policy = MetricsPolicy.build(DEFAULT, custom_query_namespaces=["team-a, team-b"])
    assert policy.custom_queries_allowed("team-a", False) and policy.custom_queries_allowed("team-b", False)
    assert not policy.custom_queries_allowed("team-c", False)
    assert policy.custom_queries_allowed("team-c", True)  # against its own Prometheus
    assert MetricsPolicy.build(DEFAULT, custom_query_namespaces=["*"]).custom_queries_allowed("x", False)
    assert not MetricsPolicy.build(DEFAULT).custom_queries_allowed("x", False)


@pytest.mark.parametrize("entry", ["ftp://x", "http://u:p@x", "team=http://x/#frag", "http://x?q"])
def test_bad_allowlist_entries_fail_at_start(entry):
    with pytest.raises(ValueError, match="--prometheus-allowed-url"):
        MetricsPolicy.build(DEFAULT, [entry])


def test_normalize():
    assert normalize_url("HTTP://Prom:80/x/") == "http://prom:80/x"
    assert normalize_url("https://prom") == "https://prom:443"
