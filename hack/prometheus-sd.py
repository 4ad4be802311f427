#!/usr/bin/env python3
"""A Prometheus config that DISCOVERS what it scrapes on a local cluster (kubernetes_sd_configs).

Prometheus runs on the host (Debian's package) and talks to the cluster as a ServiceAccount of its
own, like an in-cluster Prometheus would:

* ``elastiserve-monitoring/prometheus`` with a ClusterRole to list/watch pods, endpoints, services
  and nodes and to read ``nodes/proxy`` and ``nodes/metrics`` (created or updated here with
  ``kubectl apply``); a token for it (TokenRequest, ``kubectl create token``) and the cluster's CA
  are written next to the config;
* jobs, mirroring the chart's PodMonitor/ServiceMonitors (``charts/elastiserve/templates/monitoring``):
  ``model-servers`` (pods labelled ``app.kubernetes.io/managed-by=elastiserve`` and
  ``app.kubernetes.io/component=model-server``, scraped on their ``prometheus.io/port``; ``namespace``
  and ``pod`` come from discovery), ``elastiserve-operator`` and ``elastiserve-activator`` (pods of the
  chart's components, ``honor_labels``: their series carry the model's namespace), and ``cadvisor``:
  every node's kubelet ``/metrics/cadvisor`` through the API server's node proxy (container CPU and
  memory measured by the kubelet, labelled namespace/pod/container).

Usage: hack/prometheus-sd.py --out DIR [--kubeconfig FILE] [--interval 1s] [--duration 24h]
Writes DIR/prometheus.yml (JSON, which is YAML), DIR/token and DIR/ca.crt and prints the config's path.
See docs/local-cluster.md ("Prometheus discovers its targets").
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

NAMESPACE = "elastiserve-monitoring"
ACCOUNT = "prometheus"

RBAC = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT, "namespace": NAMESPACE}},
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "elastiserve-prometheus"},
        "rules": [
            {"apiGroups": [""], "resources": ["nodes", "pods", "services", "endpoints"],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
            # the kubelet's /metrics/cadvisor through the API server (nodes/proxy), or directly (nodes/metrics)
            {"apiGroups": [""], "resources": ["nodes/proxy", "nodes/metrics"], "verbs": ["get"]},
            {"nonResourceURLs": ["/metrics", "/metrics/cadvisor"], "verbs": ["get"]},
        ],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "elastiserve-prometheus"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "elastiserve-prometheus"},
        "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": NAMESPACE}],
    },
]


def _annotation(name: str) -> str:
    return "__meta_kubernetes_pod_annotation_" + name.replace(".", "_").replace("/", "_")


def _label(name: str) -> str:
    return "__meta_kubernetes_pod_label_" + name.replace(".", "_").replace("/", "_").replace("-", "_")


def _pod_job(name: str, component: str, sd: dict[str, Any], interval: str, *, honor_labels: bool) -> dict[str, Any]:
    """Scrape the Running pods of one component at the port and path their prometheus.io annotations name."""
    keep = [
        {"source_labels": [_annotation("prometheus.io/scrape")], "regex": "true", "action": "keep"},
        {"source_labels": [_label("app.kubernetes.io/component")], "regex": component, "action": "keep"},
        {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Running", "action": "keep"},
    ]
    if component == "model-server":
        keep.append({"source_labels": [_label("app.kubernetes.io/managed-by")], "regex": "elastiserve",
                     "action": "keep"})
    return {
        "job_name": name,
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "honor_labels": honor_labels,
        "kubernetes_sd_configs": [dict(sd, role="pod")],
        "relabel_configs": keep + [
            # one target per pod (the pod role yields one per container port): the annotated port
            {"source_labels": ["__address__", _annotation("prometheus.io/port")],
             "regex": r"([^:]+)(?::\d+)?;(\d+)", "replacement": "$1:$2", "target_label": "__address__"},
            {"source_labels": [_annotation("prometheus.io/path")], "regex": "(.+)", "target_label": "__metrics_path__"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
        ],
    }


def make_config(api_server: str, token_file: str, ca_file: str, interval: str = "1s") -> dict[str, Any]:
    auth = {"authorization": {"type": "Bearer", "credentials_file": token_file}, "tls_config": {"ca_file": ca_file}}
    sd = dict(auth, api_server=api_server)
    proxy_host = api_server.split("://", 1)[1].rstrip("/")
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            _pod_job("model-servers", "model-server", sd, interval, honor_labels=False),
            _pod_job("elastiserve-operator", "operator", sd, interval, honor_labels=True),
            _pod_job("elastiserve-activator", "activator", sd, interval, honor_labels=True),
            dict(
                auth,
                job_name="cadvisor",
                scheme="https",
                scrape_interval=interval,
                scrape_timeout=interval,
                # the series' own namespace/pod/container labels are the containers' (the target has none)
                honor_labels=True,
                kubernetes_sd_configs=[dict(sd, role="node")],
                relabel_configs=[
                    {"target_label": "__address__", "replacement": proxy_host},
                    {"source_labels": ["__meta_kubernetes_node_name"], "regex": "(.+)",
                     "target_label": "__metrics_path__", "replacement": "/api/v1/nodes/$1/proxy/metrics/cadvisor"},
                    {"source_labels": ["__meta_kubernetes_node_name"], "target_label": "node"},
                    # kwok's fake nodes run no kubelet
                    {"source_labels": ["__meta_kubernetes_node_annotation_kwok_x_k8s_io_node"], "regex": "fake",
                     "action": "drop"},
                ],
            ),
        ],
    }


def _kubectl(args: list[str], kubeconfig: str, *, stdin: str | None = None) -> str:
    cmd = [os.environ.get("KUBECTL", "kubectl"), "--kubeconfig", kubeconfig, *args]
    res = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        raise SystemExit(f"prometheus-sd: {' '.join(cmd[3:])} failed: {res.stderr.strip()}")
    return res.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--out", required=True, type=Path, help="folder for prometheus.yml, token and ca.crt")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="admin kubeconfig (default $KUBECONFIG)")
    p.add_argument("--interval", default="1s", help="scrape interval (default 1s)")
    p.add_argument("--duration", default="24h", help="lifetime of the ServiceAccount token (default 24h)")
    args = p.parse_args(argv)
    if not args.kubeconfig:
        p.error("no kubeconfig: pass --kubeconfig or set KUBECONFIG (eval \"$(hack/cluster.sh env)\")")
    kc = yaml.safe_load(Path(args.kubeconfig).read_text())
    current = kc.get("current-context") or kc["contexts"][0]["name"]
    ctx = next(c["context"] for c in kc["contexts"] if c["name"] == current)
    cluster = next(c["cluster"] for c in kc["clusters"] if c["name"] == ctx["cluster"])
    args.out.mkdir(parents=True, exist_ok=True)
    ca = args.out / "ca.crt"
    if "certificate-authority-data" in cluster:
        ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    else:
        ca.write_bytes(Path(cluster["certificate-authority"]).read_bytes())
    _kubectl(["apply", "-f", "-"], args.kubeconfig, stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": RBAC}))
    token = _kubectl(["-n", NAMESPACE, "create", "token", ACCOUNT, "--duration", args.duration], args.kubeconfig).strip()
    token_file = args.out / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    config = make_config(cluster["server"], str(token_file.resolve()), str(ca.resolve()), args.interval)
    out = args.out / "prometheus.yml"
    out.write_text(json.dumps(config, indent=2) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
