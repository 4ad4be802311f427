"""The ModelDeployment object as a whole, and validation that reports errors by field path."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .crd import API_VERSION, KIND, NAME_MESSAGE
from .spec import ModelDeploymentSpec
from .status import ModelDeploymentStatus


_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _label_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _SUBDOMAIN.fullmatch(prefix)):
        return "its prefix must be a DNS subdomain"
    if not name or len(name) > 63 or not _QUALIFIED.fullmatch(name):
        return "its name must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
    return None


class ObjectMeta(BaseModel):
    """The subset of Kubernetes metadata the operator reads, checked as the API server checks it."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str
    namespace: str = Field(default="default", min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if len(name) > 40 or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
            raise ValueError(f"{NAME_MESSAGE} (got {name[:60]!r})")
        return name

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            why = _label_key_problem(key)
            if why:
                raise ValueError(f"label key {key[:80]!r}: {why}")
            if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
                raise ValueError(f"label {key!r}: the value must be at most 63 letters, digits, '-', '_' or '.', "
                                 "starting and ending with a letter or digit")
        return labels

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, annotations: dict[str, str]) -> dict[str, str]:
        for key in annotations:
            why = _label_key_problem(key)
            if why:
                raise ValueError(f"annotation key {key[:80]!r}: {why}")
        if sum(len(k) + len(v) for k, v in annotations.items()) > 256 * 1024:
            raise ValueError("annotations may total at most 256 KiB")
        return annotations


class ModelDeployment(BaseModel):
    """A whole ModelDeployment manifest."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: Literal["elastiserve.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ModelDeployment"]
    metadata: ObjectMeta
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None


class SpecError(ValueError):
    """A manifest failed validation. ``problems`` lists ``(field path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str = ""):
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        lines = [f"{where}invalid ModelDeployment ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"]
        lines += [f"  - {path}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _message(err: dict[str, Any]) -> str:
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "extra_forbidden":
        return "unknown field (check its spelling against `kubectl explain modeldeployment.spec`)"
    if err["type"] in ("enum", "literal_error"):
        return f"{msg} (got {_excerpt(err.get('input'))})"
    if err["type"] in ("greater_than_equal", "less_than_equal", "greater_than", "less_than", "string_pattern_mismatch",
                       "too_short", "too_long", "string_too_long", "string_too_short", "int_parsing", "float_parsing",
                       "bool_parsing", "int_from_float", "int_type", "float_type", "bool_type", "string_type",
                       "finite_number", "dict_type", "list_type", "model_type"):
        return f"{msg} (got {_excerpt(err.get('input'))})"
    return msg


def _excerpt(value: Any, limit: int = 60) -> str:
    """A short excerpt of a bad value: never the whole of a huge (or alias-expanded) input."""
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'} of {len(value)} item(s)"
    text = repr(value) if not isinstance(value, str) or len(value) <= limit else repr(value[:limit]) + "…"
    return text if len(text) <= limit + 5 else text[:limit] + "…"


def problems_of(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Field-named problems from a pydantic ValidationError, using the wire (camelCase) names."""
    out = []
    for err in exc.errors():
        path = _path(err["loc"])
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        out.append((path or "(top level)", _message(err)))
    return out


def parse_manifest(obj: Any, source: str = "") -> ModelDeployment:
    """Validate a ModelDeployment manifest (dict). Raises SpecError naming every bad field."""
    if not isinstance(obj, dict):
        raise SpecError([("(top level)", f"expected a mapping, got {type(obj).__name__}")], source)
    text = _as_json(obj, "", source)
    try:
        return ModelDeployment.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise SpecError(problems_of(exc), source) from None


def _as_json(obj: Any, prefix: str, source: str) -> str:
    """The manifest as the API server receives it from kubectl: JSON (YAML dates become strings, as
    kubectl's conversion makes them). Validation then runs in strict JSON mode, as the structural schema
    does: ``"2"`` is not an integer, ``"true"`` is not a boolean, ``true`` is not a number. JSON has no
    ``.inf`` or ``.nan``: such values are an error naming their field."""
    bad = _non_finite(obj, prefix, source)
    if bad:
        raise SpecError([(path, f"must be a finite number (got {value})") for path, value in bad[:20]], source)
    return json.dumps(obj, default=str, allow_nan=False)


MAX_VALUES = 100_000
"""Most values (scalars, mappings, lists) one manifest may hold once YAML aliases are expanded: a real
spec has a few hundred; a "billion laughs" document would otherwise take minutes and gigabytes."""


def _non_finite(node: Any, path: str, source: str) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    stack = [(node, path)]
    seen = 0
    while stack:  # iterative: never recurse on data
        value, where = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise SpecError([(path or "(top level)", f"more than {MAX_VALUES} values (YAML aliases expanded?): "
                              "not a ModelDeployment")], source)
        if isinstance(value, float) and not math.isfinite(value):
            out.append((where or "(top level)", value))
        elif isinstance(value, dict):
            stack += [(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return sorted(out)


def parse_spec(spec: Any, source: str = "") -> ModelDeploymentSpec:
    """Validate a bare spec (as kopf hands it to a handler)."""
    text = _as_json(dict(spec or {}), "spec", source)
    try:
        return ModelDeploymentSpec.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise SpecError(problems_of(exc, prefix="spec"), source) from None
