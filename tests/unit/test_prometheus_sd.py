"""hack/prometheus-sd.py: the Prometheus config for a local cluster discovers every target (no static list)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("prometheus_sd", ROOT / "hack" / "prometheus-sd.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_every_job_is_discovered_with_the_service_accounts_credentials():
    cfg = _module().make_config("https://127.0.0.1:6443", "/x/token", "/x/ca.crt", "5s")
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"model-servers", "elastiserve-operator", "elastiserve-activator", "cadvisor"}
    for job in jobs.values():
        assert "static_configs" not in job
        (sd,) = job["kubernetes_sd_configs"]
        assert sd["api_server"] == "https://127.0.0.1:6443"
        assert sd["authorization"]["credentials_file"] == "/x/token" and sd["tls_config"]["ca_file"] == "/x/ca.crt"
    assert jobs["cadvisor"]["kubernetes_sd_configs"][0]["role"] == "node"
    # the operator's queries select model-server series by namespace and pod: both come from discovery
    targets = {r.get("target_label") for r in jobs["model-servers"]["relabel_configs"]}
    assert {"namespace", "pod", "__address__", "__metrics_path__"} <= targets
    # operator and activator series carry the model's namespace: kept as scraped
    assert jobs["elastiserve-operator"]["honor_labels"] and jobs["elastiserve-activator"]["honor_labels"]
    assert not jobs["model-servers"]["honor_labels"]


def test_cadvisor_is_read_through_the_api_servers_node_proxy():
    job = next(j for j in _module().make_config("https://127.0.0.1:6443", "t", "c")["scrape_configs"]
               if j["job_name"] == "cadvisor")
    rules = job["relabel_configs"]
    assert {"target_label": "__address__", "replacement": "127.0.0.1:6443"} in rules
    path = next(r for r in rules if r.get("target_label") == "__metrics_path__")
    assert path["replacement"] == "/api/v1/nodes/$1/proxy/metrics/cadvisor"
    assert any(r.get("action") == "drop" and "kwok" in r["source_labels"][0] for r in rules)
