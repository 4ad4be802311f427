"""Apply bodies leave the installed kubernetes client as UTF-8 JSON (through its real REST layer)."""

from __future__ import annotations

import json

from kubernetes import client as k8s

from elastiserve.operator.kube import APPLY, _apply_bodies_as_utf8


class Pool:
    """Stands in for the connection pool only: what the client would send over the wire."""

    def __init__(self):
        self.sent: list[dict] = []

    def request(self, method, url, body=None, fields=None, headers=None, **kw):
        self.sent.append({"method": method, "url": url, "body": body, "headers": dict(headers or {})})
        return type("Response", (), {"status": 200, "reason": "OK", "data": b"{}", "headers": {},
                                     "getheaders": lambda self: {}, "getheader": lambda self, k, d=None: d})()


def test_apply_bodies_go_as_utf8_and_everything_else_as_the_client_sends_it():
    api = k8s.ApiClient(k8s.Configuration(host="https://api.example"))
    pool = api.rest_client.pool_manager = Pool()
    _apply_bodies_as_utf8(api)
    obj = {"kind": "Deployment", "arg": "\U0001F600\x85"}
    api.rest_client.request("PATCH", "https://api.example/x", query_params=[("force", "true")],
                            headers={"Content-Type": APPLY}, body=obj, _preload_content=False)
    sent = pool.sent[-1]
    # beyond U+FFFF raw UTF-8 (not a surrogate pair the YAML decoder refuses); C1 controls escaped
    assert sent["body"] == '{"kind": "Deployment", "arg": "\U0001F600\\u0085"}'.encode()
    assert json.loads(sent["body"]) == obj and sent["url"].endswith("?force=true")
    api.rest_client.request("PATCH", "https://api.example/y", headers={"Content-Type": "application/merge-patch+json"},
                            body=obj, _preload_content=False)
    assert pool.sent[-1]["body"] == json.dumps(obj)  # other requests are untouched
