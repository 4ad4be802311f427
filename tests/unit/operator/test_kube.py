"""The apply-body encoding wraps the client's REST call by parameter name, whatever the client's version."""

from __future__ import annotations

from kubernetes import client as k8s

from elastiserve.operator.kube import APPLY, _apply_bodies_as_utf8


def test_apply_bodies_go_as_utf8_and_other_arguments_pass_through():
    api = k8s.ApiClient()
    seen: dict = {}

    # The signature of kubernetes 36's RESTClientObject.request: query_params sits before headers.
    def request(method, url, query_params=None, headers=None, body=None, post_params=None,
                _preload_content=True, _request_timeout=None):
        seen.update(method=method, query_params=query_params, headers=headers, body=body, timeout=_request_timeout)
        return "sent"

    api.rest_client.request = request
    _apply_bodies_as_utf8(api)
    assert api.rest_client.request("PATCH", "https://api/x", query_params=[("force", True)],
                                   headers={"Content-Type": APPLY}, body={"arg": "\U0001F600\x85"},
                                   _request_timeout=30) == "sent"
    # beyond U+FFFF raw UTF-8 (not a surrogate pair the YAML decoder refuses); C1 controls escaped
    assert seen["body"] == '{"arg": "\U0001F600\\u0085"}'.encode()
    assert seen["query_params"] == [("force", True)] and seen["timeout"] == 30
    # other requests are untouched
    api.rest_client.request("GET", "https://api/y", headers={"Accept": "application/json"}, body={"k": "v"})
    assert seen["body"] == {"k": "v"}
