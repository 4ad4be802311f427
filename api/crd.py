"""Render the ModelDeployment CustomResourceDefinition from the pydantic models.

The output is a structural OpenAPI v3 schema: ``$ref`` inlined, ``anyOf [X, null]`` collapsed to X,
``const`` turned into ``enum``, titles dropped, defaults (including those of default factories) kept so
that the API server applies the same defaults as pydantic, and CEL rules carried over from the models'
``x-kubernetes-validations``.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic.json_schema import GenerateJsonSchema, NoDefault

from .spec import ModelDeploymentSpec, cel
from .status import ModelDeploymentStatus

GROUP = "elastiserve.dev"
VERSION = "v1alpha1"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["mdep"]
API_VERSION = f"{GROUP}/{VERSION}"

NAME_MESSAGE = (
    "metadata.name must be a DNS-1035 label of at most 40 characters (lowercase letters, digits and '-', "
    "starting with a letter): it names the Services <name> and <name>-pods"
)
NAME_RULE = cel(
    "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 40",
    NAME_MESSAGE,
)
"""On the root schema (CEL may read metadata.name there): a name every owned object can be built from.
The pydantic twin is ``ObjectMeta._name`` in resource.py."""

class _WithFactoryDefaults(GenerateJsonSchema):
    """Also emit defaults that come from ``default_factory`` (pydantic leaves them out)."""

    def get_default_value(self, schema: Any) -> Any:
        if "default_factory" in schema and not schema.get("default_factory_takes_data"):
            return schema["default_factory"]()
        return schema.get("default", NoDefault)


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Turn one pydantic JSON-schema node into a Kubernetes structural schema node."""
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
        # Field-level keys (description, default) win over the referenced model's.
        target.update(node)
        node = target
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express union {options} structurally")
        inner = options[0]
        merged = dict(inner)
        merged.update(node)
        if "$ref" in merged or "anyOf" in merged:
            return _structural(merged, defs)
        node = merged
    node.pop("title", None)
    if "description" in node:
        node["description"] = node["description"].replace("``", "`")
    if "const" in node:
        node["enum"] = [node.pop("const")]
    # JSON Schema 2020 writes exclusive bounds as numbers; Kubernetes' OpenAPI v3 wants the
    # draft-4 form: a minimum/maximum plus a boolean.
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(node.get(flag), (int, float)) and not isinstance(node.get(flag), bool):
            node[bound] = node.pop(flag)
            node[flag] = True
    if "default" in node:
        if node["default"] is None:
            node.pop("default")  # "no value" is expressed by leaving the field out, not by null
        else:
            node["default"] = _drop_none(node["default"])
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _structural(v, defs) for name, v in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _structural(value, defs) if isinstance(value, dict) else value
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" in out:
        out.pop("additionalProperties", None)  # structural schemas: unknown fields are pruned/rejected
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def openapi_schema(model: type) -> dict[str, Any]:
    """Structural schema of one pydantic model class."""
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_WithFactoryDefaults)
    defs = raw.pop("$defs", {})
    return _structural(raw, defs)


def _strip_status_defaults(node: Any) -> Any:
    # The status is written by the operator only; defaults there would only confuse users.
    if isinstance(node, dict):
        return {k: _strip_status_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_strip_status_defaults(v) for v in node]
    return node


def crd() -> dict[str, Any]:
    """The full CustomResourceDefinition as a dict."""
    spec_schema = openapi_schema(ModelDeploymentSpec)
    status_schema = _strip_status_defaults(openapi_schema(ModelDeploymentStatus))
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "annotations": {"elastiserve.dev/generated-by": "elastiserve crd (api/crd.py); do not edit"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["all", "elastiserve"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Variants", "type": "string", "jsonPath": ".status.variantSummary"},
                        {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
                        {"name": "Desired", "type": "integer", "jsonPath": ".status.desired"},
                        {
                            "name": "Forecast",
                            "type": "number",
                            "jsonPath": ".status.forecast.upper",
                            "description": "Peak forecast request rate (upper quantile) over the horizon",
                        },
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A model served by autoscaled replicas: variants, metrics, forecasts, scale to zero.",
                            "required": ["spec"],
                            "x-kubernetes-validations": [NAME_RULE],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render_yaml() -> str:
    """The CRD as YAML, exactly as stored in ``crds/``."""
    header = "# Generated by `elastiserve crd` from api/ (pydantic models). Do not edit; run `make crds`.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)
