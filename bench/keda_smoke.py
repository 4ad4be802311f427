"""Proof that hack/keda.sh wires KEDA end to end, on a kwok cluster (no real node needed); prints JSON.

    ELASTISERVE_CLUSTER_DIR=/tmp/kc hack/cluster.sh up && eval "$(ELASTISERVE_CLUSTER_DIR=/tmp/kc hack/cluster.sh env)"
    hack/keda.sh build      # once (~40 min cold)
    ELASTISERVE_CLUSTER_DIR=/tmp/kc python bench/keda_smoke.py

A real Prometheus (Debian's, ``tests/support/prometheus.py``) scrapes a gauge ``keda_smoke_queue`` served here on
127.0.0.1. ``hack/keda.sh up`` starts KEDA's operator and metrics API server (host processes, APIService
``v1beta1.external.metrics.k8s.io``); a Deployment (kwok pods) gets a ScaledObject with the Prometheus scaler on
``sum(keda_smoke_queue)``, threshold 10 per replica, 1..8 replicas, scale-down without stabilization. The gauge goes
0 -> 50 -> 0: the real kube-controller-manager's HPA, reading the external metric through the aggregation layer
from KEDA's adapter (which asks KEDA's operator over gRPC, which queries Prometheus), must scale 1 -> 5 -> 1.
Times are from the gauge change to the Deployment's ``spec.replicas``. ``hack/keda.sh down`` at the end.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

from real_pod import wait  # bench/ is this script's folder: its sibling's poll-with-a-deadline

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
NS = "keda-smoke"


def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
    res = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, timeout=120, check=False)
    if check and res.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args[:3])} failed: {res.stderr.strip()[-600:]}")
    return res.stdout


def main() -> None:
    from support.prometheus import PrometheusServer

    if not os.environ.get("KUBECONFIG") or not os.environ.get("ELASTISERVE_CLUSTER_DIR"):
        raise SystemExit('set ELASTISERVE_CLUSTER_DIR and KUBECONFIG (eval "$(hack/cluster.sh env)") for a running cluster')
    value = {"v": 0.0}

    class Gauge(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = f"# TYPE keda_smoke_queue gauge\nkeda_smoke_queue {value['v']}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    gauge = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gauge)
    threading.Thread(target=gauge.serve_forever, daemon=True).start()
    result: dict = {}
    with PrometheusServer([f"127.0.0.1:{gauge.server_address[1]}"], scrape_interval="1s") as prom:
        t = time.monotonic()
        subprocess.run([str(REPO / "hack" / "keda.sh"), "up"], check=True, timeout=600)
        result["keda_up_s"] = round(time.monotonic() - t, 1)
        try:
            kubectl("create", "namespace", NS)
            kubectl("apply", "-f", "-", input=json.dumps({
                "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "work", "namespace": NS},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "work"}},
                         "template": {"metadata": {"labels": {"app": "work"}},
                                      "spec": {"containers": [{"name": "c", "image": "fake"}]}}}}))
            kubectl("apply", "-f", "-", input=json.dumps({
                "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "work", "namespace": NS},
                "spec": {"scaleTargetRef": {"name": "work"}, "minReplicaCount": 1, "maxReplicaCount": 8,
                         "pollingInterval": 5,
                         "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
                             "scaleDown": {"stabilizationWindowSeconds": 0}}}},
                         "triggers": [{"type": "prometheus", "metadata": {
                             "serverAddress": prom.url, "query": "sum(keda_smoke_queue)", "threshold": "10"}}]}}))

            def hpa_active():
                out = kubectl("-n", NS, "get", "hpa", "keda-hpa-work", "-o", "json", check=False)
                if not out:
                    return False
                conds = {c["type"]: c["status"] for c in json.loads(out).get("status", {}).get("conditions", [])}
                return conds.get("ScalingActive") == "True"

            t = time.monotonic()
            wait(hpa_active, 180, "KEDA's HPA keda-hpa-work ScalingActive (external metric readable)")
            result["hpa_active_s"] = round(time.monotonic() - t, 1)
            hpa = json.loads(kubectl("-n", NS, "get", "hpa", "keda-hpa-work", "-o", "json"))
            metric = hpa["spec"]["metrics"][0]["external"]["metric"]
            result["external_metric"] = metric["name"]
            sel = ",".join(f"{k}={v}" for k, v in metric.get("selector", {}).get("matchLabels", {}).items())
            ext = json.loads(kubectl("get", "--raw", f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{NS}/"
                                     f"{metric['name']}?labelSelector={urllib.parse.quote(sel)}"))
            result["external_metric_value_at_0"] = ext["items"][0]["value"] if ext.get("items") else None

            def replicas() -> int:
                return int(json.loads(kubectl("-n", NS, "get", "deployment", "work", "-o", "json"))["spec"]["replicas"])

            value["v"] = 50.0
            t = time.monotonic()
            wait(lambda: replicas() == 5, 180, "the Deployment scaled to 5 (50 / threshold 10)")
            result["scale_up_to_5_s"] = round(time.monotonic() - t, 1)
            value["v"] = 0.0
            t = time.monotonic()
            wait(lambda: replicas() == 1, 240, "the Deployment back at 1")
            result["scale_down_to_1_s"] = round(time.monotonic() - t, 1)
            events = json.loads(kubectl("-n", NS, "get", "events", "--field-selector", "reason=SuccessfulRescale",
                                        "-o", "json"))["items"]
            result["rescale_events"] = [e["message"] for e in events]
            result["ok"] = True
        finally:
            kubectl("delete", "namespace", NS, "--wait=false", "--ignore-not-found", check=False)
            subprocess.run([str(REPO / "hack" / "keda.sh"), "down"], check=False, timeout=120)
            gauge.shutdown()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
