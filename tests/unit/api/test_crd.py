"""The CRD in crds/ is generated from the models and must not drift from them."""

from __future__ import annotations

from pathlib import Path

import yaml

from elastiserve.api.crd import crd, render_yaml
from elastiserve.api.spec import ModelDeploymentSpec

ROOT = Path(__file__).resolve().parents[3]
CRD_FILE = ROOT / "crds" / "modeldeployments.elastiserve.dev.yaml"


def test_crd_file_is_in_sync_with_models():
    assert CRD_FILE.read_text() == render_yaml(), "crds/ drifted from api/: run `make crds` and commit"


def _walk(node, path=""):
    yield path, node
    if isinstance(node, dict):
        for key, value in node.get("properties", {}).items():
            yield from _walk(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            yield from _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural():
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "const", "title", "$defs"):
            assert banned not in node, f"{path} has {banned}"
        if node.get("type") == "object" and "properties" in node:
            assert "additionalProperties" not in node, path
        assert "type" in node, f"{path} has no type"
        for flag in ("exclusiveMinimum", "exclusiveMaximum"):
            assert flag not in node or node[flag] is True, f"{path}: {flag} must be a boolean (OpenAPI v3)"


def test_crd_identity():
    c = crd()
    assert c["metadata"]["name"] == "modeldeployments.elastiserve.dev"
    names = c["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("ModelDeployment", "modeldeployments", ["mdep"])
    version = c["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [col["name"] for col in version["additionalPrinterColumns"]]
    assert columns[:4] == ["Variants", "Replicas", "Desired", "Forecast"] and "Age" in columns


def test_descriptions_come_from_docstrings():
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["syncPeriodSeconds"]["description"].startswith("How often the operator")
    assert "primary" in spec["properties"]["variants"]["description"]


def test_defaults_match_the_models():
    """The API server applies the schema's defaults; they must equal what pydantic fills in."""
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def apply_defaults(node, value):
        if node.get("type") == "object" and isinstance(value, dict):
            for key, sub in node.get("properties", {}).items():
                if key not in value and "default" in sub:
                    value[key] = yaml.safe_load(yaml.safe_dump(sub["default"]))
                if key in value:
                    value[key] = apply_defaults(sub, value[key])
        elif node.get("type") == "array" and isinstance(value, list):
            value = [apply_defaults(node["items"], v) for v in value]
        return value

    minimal = {"model": {"name": "m", "uri": "/m"}}
    by_server = apply_defaults(schema, minimal)
    by_pydantic = ModelDeploymentSpec.model_validate({"model": {"name": "m", "uri": "/m"}}).to_api()
    assert by_server == by_pydantic


def test_cel_rules_have_python_twins():
    """Each CEL rule's message also appears in a pydantic validator (same words, both enforcers)."""
    import inspect

    import elastiserve.api.crd as crd_module
    import elastiserve.api.resource as resource_module
    import elastiserve.api.spec as spec_module

    source = "".join(inspect.getsource(m) for m in (spec_module, resource_module, crd_module))
    messages = []

    def collect(node):
        if isinstance(node, dict):
            for rule in node.get("x-kubernetes-validations", []):
                messages.append(rule["message"])
            for v in node.values():
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    collect(crd())
    assert len(messages) >= 10
    for message in messages:
        # the message string itself, or the constant that holds it, appears in a rule and in a validator
        assert source.count(message) >= 2 or (message == crd_module.NAME_MESSAGE and "NAME_MESSAGE" in
                                               inspect.getsource(resource_module)), \
            f"CEL message {message!r} has no pydantic twin"


def test_credentials_secret_is_checked_alike_by_the_crd_and_validate():
    """model.credentialsSecret: the API server's schema (pattern, length) and pydantic accept the same names."""
    import re

    import pytest
    from pydantic import ValidationError

    from elastiserve.api.spec import ModelSpec

    node = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "model"]["properties"]["credentialsSecret"]
    assert node["type"] == "string" and "credentials never go in the spec" in node["description"]
    for name in ["creds", "s3-creds-2", "a", "x" * 63, "x" * 64, "Creds", "ns/creds", "a.b", "-a", "a-", "", "../a"]:
        by_server = bool(re.match(node["pattern"], name)) and node.get("minLength", 0) <= len(name) <= node["maxLength"]
        try:
            ModelSpec(name="m", uri="s3://b/m", credentials_secret=name)
            by_validate = True
        except ValidationError:
            by_validate = False
        assert by_server == by_validate, name
    with pytest.raises(ValidationError):
        ModelSpec(name="m", uri="s3://b/m", credentials_secret="other/creds")
