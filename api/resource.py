"""The ModelDeployment object as a whole, and validation that reports errors by field path."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .crd import API_VERSION, KIND
from .spec import ModelDeploymentSpec
from .status import ModelDeploymentStatus


class ObjectMeta(BaseModel):
    """The subset of Kubernetes metadata the operator reads."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(min_length=1, max_length=40, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ModelDeployment(BaseModel):
    """A whole ModelDeployment manifest."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: str = Field(alias="apiVersion", pattern=f"^{API_VERSION}$")
    kind: str = Field(pattern=f"^{KIND}$")
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
        return f"{msg} (got {err.get('input')!r})"
    if err["type"] in ("greater_than_equal", "less_than_equal", "greater_than", "less_than", "string_pattern_mismatch",
                       "too_short", "too_long", "string_too_long", "string_too_short", "int_parsing", "float_parsing",
                       "bool_parsing", "int_from_float"):
        return f"{msg} (got {err.get('input')!r})"
    return msg


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
    try:
        return ModelDeployment.model_validate(obj)
    except ValidationError as exc:
        raise SpecError(problems_of(exc), source) from None


def parse_spec(spec: Any, source: str = "") -> ModelDeploymentSpec:
    """Validate a bare spec (as kopf hands it to a handler)."""
    try:
        return ModelDeploymentSpec.model_validate(dict(spec or {}))
    except ValidationError as exc:
        raise SpecError(problems_of(exc, prefix="spec"), source) from None
