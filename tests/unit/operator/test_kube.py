"""kube.py, the thin layer over the kubernetes client: apply bodies leave the installed client as UTF-8 JSON
(through its real REST layer); apply/delete/Secret reads on a fake API map errors to kopf's and keep consent."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import kopf
import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from elastiserve.operator.kube import APPLY, SCALER_MANAGER, Kube, _apply_bodies_as_utf8


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


# --------------------------------------------------------------------------- the thin layer, on a fake API


def api_error(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason="Reason")
    exc.body = json.dumps({"message": message})
    return exc


class FakeApi:
    """Stands in for the generated API classes: records calls, raises what it is told to."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.errors: dict[str, ApiException] = {}
        self.secrets: dict[str, object] = {}

    def __getattr__(self, method):
        def call(name, namespace, **kwargs):
            self.calls.append((method, name, namespace, kwargs))
            if name in self.errors and not (kwargs.get("dry_run") and name.endswith("-dryok")):
                raise self.errors[name]
            return None
        return call

    def read_namespaced_secret(self, name, namespace):
        if name not in self.secrets:
            raise api_error(404, f'secrets "{name}" not found')
        return self.secrets[name]


@pytest.fixture
def kube():
    k = Kube(k8s.ApiClient(k8s.Configuration(host="https://api.example")))
    k.apps = k.core = k.autoscaling = k.discovery = FakeApi()
    return k


def deployment(name="m-fp32"):
    return {"kind": "Deployment", "metadata": {"name": name, "namespace": "ns"}, "spec": {"replicas": 2}}


async def test_apply_is_a_forced_server_side_apply_under_a_field_manager(kube):
    await kube.apply(deployment(), SCALER_MANAGER)
    method, name, namespace, kwargs = kube.apps.calls[-1]
    assert (method, name, namespace) == ("patch_namespaced_deployment", "m-fp32", "ns")
    assert kwargs["field_manager"] == "elastiserve-scaler" and kwargs["force"] is True
    assert kwargs["_content_type"] == APPLY and "dry_run" not in kwargs and kube.calls == 1


@pytest.mark.parametrize("status,error", [(422, kopf.PermanentError), (403, kopf.PermanentError),
                                          (409, kopf.TemporaryError), (500, kopf.TemporaryError)],
                         ids=["invalid", "forbidden", "conflict", "server-error"])
async def test_api_errors_become_kopf_errors_with_the_servers_message(kube, status, error):
    kube.apps.errors["m-fp32"] = api_error(status, "spec.replicas: Invalid value: -1")
    with pytest.raises(error, match=r"Deployment ns/m-fp32.*spec.replicas: Invalid value: -1"):
        await kube.apply(deployment())


async def test_apply_all_dry_runs_everything_before_changing_anything(kube):
    kube.apps.errors["m-int8"] = api_error(422, "bad template")
    with pytest.raises(kopf.PermanentError, match="bad template"):
        await kube.apply_all([deployment("m-fp32"), deployment("m-int8")])
    assert [(c[1], c[3].get("dry_run")) for c in kube.apps.calls] == [("m-fp32", "All"), ("m-int8", "All")]
    kube.apps.calls.clear()
    kube.apps.errors.clear()
    await kube.apply_all([deployment("m-fp32"), deployment("m-int8")])
    assert [(c[1], c[3].get("dry_run")) for c in kube.apps.calls] == [
        ("m-fp32", "All"), ("m-int8", "All"), ("m-fp32", None), ("m-int8", None)]


async def test_delete_of_a_missing_object_is_not_an_error(kube):
    kube.apps.errors["gone"] = api_error(404, "not found")
    assert await kube.delete("Deployment", "ns", "gone") is False
    assert await kube.delete("Deployment", "ns", "there") is True
    kube.core.errors["busy"] = api_error(500, "etcd timeout")
    with pytest.raises(kopf.TemporaryError, match="delete ConfigMap ns/busy failed: etcd timeout"):
        await kube.delete("ConfigMap", "ns", "busy")


def secret(labels, data):
    return SimpleNamespace(metadata=SimpleNamespace(labels=labels), data=data)


async def test_a_secret_is_read_only_with_its_owners_consent(kube):
    token = base64.b64encode(b"s3cr3t\n").decode()
    kube.core.secrets = {"ok": secret({"l": "true"}, {"token": token}), "nolabel": secret({}, {"token": token}),
                         "nokey": secret({"l": "true"}, {"other": token})}
    assert await kube.read_secret_key("ns", "ok", "token", label="l") == "s3cr3t"
    with pytest.raises(PermissionError, match="not labelled l=true") as denied:
        await kube.read_secret_key("ns", "nolabel", "token", label="l")
    assert "s3cr3t" not in str(denied.value)
    with pytest.raises(LookupError, match="has no key 'token'"):
        await kube.read_secret_key("ns", "nokey", "token", label="l")
    with pytest.raises(LookupError, match='cannot read Secret ns/absent: secrets "absent" not found'):
        await kube.read_secret_key("ns", "absent", "token")
