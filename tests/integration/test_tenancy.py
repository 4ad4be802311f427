"""A hostile tenant on the real control plane: no Secret exfiltration or SSRF through the operator, no
steering of the activator across namespaces, no Secret reads by the chart's roles, no token in model pods.

See docs/reliability.md ("Tenancy model") for the rules these tests hold the code to.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support import wait_until
from support.devstack import free_port, manifest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.cluster


class Recorder:
    """A loopback HTTP server that records every request and answers 500 with a marked body."""

    def __init__(self, body: bytes):
        self.seen: list[tuple[str, dict[str, str]]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):  # noqa: N802
                recorder.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(500)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _any

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()


def _status(cluster, ns, name) -> dict:
    return cluster.kubectl_json("get", "mdep", name, "-n", ns).get("status") or {}


def _condition(cluster, ns, name, type_) -> dict:
    return next((c for c in _status(cluster, ns, name).get("conditions", []) if c["type"] == type_), {})


def _secret(cluster, ns, name, token, labels=None) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "labels": labels or {}},
                   "data": {"token": base64.b64encode(token.encode()).decode()}}, namespace=ns)


def test_operator_is_no_ssrf_client_and_leaks_no_secret_or_body(k8s_cluster, namespace, operator_factory):
    token = f"TOPSECRET-{uuid.uuid4().hex}"
    body = f"INTERNAL-BODY-{uuid.uuid4().hex}".encode()
    evil, allowed = Recorder(body), Recorder(body)
    try:
        _secret(k8s_cluster, namespace, "stolen", token)  # somebody else's Secret: no consent label
        _secret(k8s_cluster, namespace, "prom-token", token, {"elastiserve.dev/prometheus-token": "true"})
        op = operator_factory("--prometheus-allowed-url", f"{namespace}={allowed.url}",
                              namespace=namespace, prometheus_url="http://127.0.0.1:9")
        base = {"model": {"name": "m", "uri": "file:///m.onnx"}, "syncPeriodSeconds": 5}
        # 1. a URL of the tenant's choosing (an internal service), with a Secret: refused before any request
        k8s_cluster.apply(manifest("ssrf", **base, metrics={"prometheus": {
            "url": evil.url + "/admin", "bearerTokenSecret": {"name": "stolen"}}}), namespace=namespace)
        # 2. the namespace's allowlisted Prometheus with an unconsented Secret: queried without the token
        k8s_cluster.apply(manifest("noconsent", **base, metrics={"prometheus": {
            "url": allowed.url, "bearerTokenSecret": {"name": "stolen"}}}), namespace=namespace)
        # 3. allowlisted URL, consented Secret: the token goes there (and only there); the body stays out
        k8s_cluster.apply(manifest("allowed", **base, metrics={"prometheus": {
            "url": allowed.url, "bearerTokenSecret": {"name": "prom-token"}}}), namespace=namespace)

        wait_until(lambda: "allowlist" in _condition(k8s_cluster, namespace, "ssrf", "MetricsAvailable").get("message", ""),
                   timeout=90, what="ssrf: MetricsAvailable=False naming the allowlist")
        wait_until(lambda: "prometheus-token=true" in _condition(k8s_cluster, namespace, "noconsent",
                                                                    "MetricsAvailable").get("message", ""),
                   timeout=90, what="noconsent: the Secret's missing label named")
        wait_until(lambda: "HTTP 500" in _condition(k8s_cluster, namespace, "allowed", "MetricsAvailable").get("message", ""),
                   timeout=90, what="allowed: the query failed with HTTP 500")

        assert evil.seen == [], f"the operator contacted a URL off the allowlist: {evil.seen[:3]}"
        with_token = [h for _, h in allowed.seen if h.get("authorization") == f"Bearer {token}"]
        assert with_token, "the consented token reaches the allowlisted Prometheus"
        assert all(p.startswith("/api/v1/query") for p, _ in allowed.seen)
        # Nothing of the response body or the Secret anywhere a tenant (or a log reader) looks.
        everything = json.dumps(k8s_cluster.kubectl_json("get", "mdep", "-n", namespace))
        everything += json.dumps(k8s_cluster.kubectl_json("get", "events", "-n", namespace))
        everything += op.text()
        assert body.decode() not in everything
        assert token not in everything
        assert "ssrf" in everything and "allowlist" in everything  # the checks above read real text

        # Model pods: no ServiceAccount token mounted, RuntimeDefault seccomp (admitted by the API server).
        def pod():
            items = k8s_cluster.kubectl_json("get", "pods", "-n", namespace,
                                             "-l", "elastiserve.dev/modeldeployment=allowed")["items"]
            return items[0] if items else None

        spec = wait_until(pod, timeout=90, what="a model pod")["spec"]
        assert spec["automountServiceAccountToken"] is False
        assert not [v for v in spec.get("volumes", []) if v["name"].startswith("kube-api-access")]
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    finally:
        evil.close()
        allowed.close()


def _post(url: str, host: str, extra: dict | None = None) -> tuple[int, dict, str]:
    req = urllib.request.Request(url, data=b'{"inputs": []}', method="POST",
                                 headers={"Host": host, "Content-Type": "application/json", **(extra or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def test_activator_routes_only_by_the_service_within_its_namespaces(k8s_cluster, crd, namespace, tmp_path):
    other = f"other-{uuid.uuid4().hex[:6]}"
    k8s_cluster.kubectl("create", "namespace", other)
    try:
        zero = {"model": {"name": "m", "uri": "file:///m.onnx"}, "replicas": {"min": 0, "max": 2},
                "scaleToZero": {"enabled": True}}
        k8s_cluster.apply(manifest("zero", **zero), namespace=namespace)
        k8s_cluster.apply(manifest("plain", model={"name": "m", "uri": "file:///m.onnx"}), namespace=namespace)
        k8s_cluster.apply(manifest("zero", **zero), namespace=other)
        # A hand-written EndpointSlice claiming to back zero-pods, pointing somewhere else (the API server
        # refuses loopback addresses in EndpointSlices, so: a TEST-NET address; forwarding there would
        # answer 502 after the client timeout, holding answers 503 "no ready replica").
        k8s_cluster.apply({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                           "metadata": {"name": "zero-pods-forged", "labels": {"kubernetes.io/service-name": "zero-pods"}},
                           "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                           "endpoints": [{"addresses": ["192.0.2.10"], "conditions": {"ready": True},
                                          "targetRef": {"kind": "Pod", "name": "fake", "namespace": namespace}}]},
                          namespace=namespace)
        act_port = free_port()
        log = (tmp_path / "activator.log").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "elastiserve.cli", "activator", "--kubernetes", "--host",
                                 "127.0.0.1", "--port", str(act_port), "--namespace", namespace, "--timeout", "3"],
                                env=dict(k8s_cluster.env), stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{act_port}/v2/models/m/infer"
        try:
            wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{act_port}/healthz", timeout=2).status == 200,
                       timeout=60, what="activator up")
            code, _, text = _post(url, f"zero.{other}.svc")
            assert code == 404 and f"namespace {other} is not served" in text
            code, _, text = _post(url, "127.0.0.1", {"X-Elastiserve-Model": f"{other}/zero"})
            assert code == 400  # a caller-chosen name steers nothing
            code, _, text = _post(url, f"plain.{namespace}.svc.cluster.local")
            assert code == 404 and "does not scale to zero" in text
            code, _, text = _post(url, f"ghost.{namespace}.svc")
            assert code == 404 and "no ModelDeployment" in text
            code, headers, text = _post(url, f"zero.{namespace}.svc")
            assert code == 503 and headers.get("Retry-After") == "5" and "no ready replica" in text, text
        finally:
            proc.terminate()
            proc.wait(20)
        annotations = lambda ns: k8s_cluster.kubectl_json("get", "mdep", "zero", "-n", ns)["metadata"].get("annotations") or {}
        assert "elastiserve.dev/activate" in annotations(namespace)  # the model the caller reached was woken
        assert "elastiserve.dev/activate" not in annotations(other)  # the other tenant's was never touched
        assert "Traceback" not in (tmp_path / "activator.log").read_text()
    finally:
        k8s_cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_chart_roles_read_no_secrets_unless_listed(k8s_cluster, crd, namespace):
    release = f"sec-{uuid.uuid4().hex[:6]}"
    k8s_cluster.helm("install", release, str(ROOT / "charts" / "elastiserve"), "-n", namespace,
                     "--set", "crds.install=false", "--set", f"operator.tokenSecrets.namespaces={{{namespace}}}",
                     "--set", "operator.tokenSecrets.names={prom-token}", "--timeout", "3m")
    try:
        def can(verb: str, what: str, sa: str, ns: str) -> bool:
            who = f"--as=system:serviceaccount:{namespace}:{release}-elastiserve-{sa}"
            out = k8s_cluster.kubectl("auth", "can-i", verb, what, who, "-n", ns, check=False).stdout.strip()
            return out == "yes"

        assert can("get", "secrets/prom-token", "operator", namespace)
        assert not can("get", "secrets/other", "operator", namespace)
        assert not can("list", "secrets", "operator", namespace)
        assert not can("get", "secrets/prom-token", "operator", "kube-system")
        assert not can("get", "secrets/prom-token", "operator", "default")
        for verb in ("get", "list"):
            assert not can(verb, "secrets", "activator", namespace)
    finally:
        k8s_cluster.helm("uninstall", release, "-n", namespace, "--wait", check=False)
