"""The API models: defaults, examples, and field-named validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from elastiserve.api import ModelDeploymentSpec, SpecError, parse_manifest, parse_spec
from elastiserve.api.base import QUANTITY_PATTERN, parse_bytes, parse_quantity
from elastiserve.api.spec import Precision, Role

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))


def _expect(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("# expect: "):
            return line[len("# expect: ") :]
    raise AssertionError(f"{path} has no '# expect:' line")


def test_minimal_spec_gets_documented_defaults():
    spec = parse_spec({"model": {"name": "m", "uri": "file:///m.onnx"}})
    assert [v.name for v in spec.variants] == ["fp32"]
    assert spec.primary.role == Role.primary and spec.primary.precision == Precision.fp32
    assert (spec.replicas.min, spec.replicas.max) == (1, 10)
    assert (spec.metrics.rules.cpu.scale_up_above, spec.metrics.rules.cpu.scale_down_below) == (80, 30)
    assert spec.behavior.scale_down.stabilization_window_seconds == 300
    assert spec.behavior.scale_up.stabilization_window_seconds == 0
    assert spec.sync_period_seconds == 15
    assert spec.actuation.value == "Deployment"
    assert not spec.scale_to_zero.enabled and not spec.forecasting.enabled


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_valid_examples_parse(path: Path):
    md = parse_manifest(yaml.safe_load(path.read_text()), str(path))
    assert md.metadata.name
    assert len([v for v in md.spec.variants if v.role == Role.primary]) == 1


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_examples_are_rejected_naming_the_field(path: Path):
    with pytest.raises(SpecError) as info:
        parse_manifest(yaml.safe_load(path.read_text()), str(path))
    message = str(info.value)
    assert _expect(path) in message
    assert "Traceback" not in message
    # Every problem names a field path under spec (or the top-level object).
    assert all(p.startswith(("spec", "metadata", "kind", "apiVersion", "(top level)")) for p, _ in info.value.problems)


def test_at_least_thirty_invalid_examples():
    assert len(INVALID) >= 30


def test_full_example_sets_every_block():
    md = parse_manifest(yaml.safe_load((EXAMPLES / "full.yaml").read_text()))
    set_fields = md.spec.model_fields_set
    assert set(ModelDeploymentSpec.model_fields) == set_fields


def test_unknown_field_is_an_error_with_a_hint():
    with pytest.raises(SpecError) as info:
        parse_spec({"model": {"name": "m", "uri": "/m"}, "replica": {"min": 1}})
    assert info.value.problems == [
        ("spec.replica", "unknown field (check its spelling against `kubectl explain modeldeployment.spec`)")
    ]


def test_error_reports_the_value_and_the_bound():
    with pytest.raises(SpecError) as info:
        parse_spec({"model": {"name": "m", "uri": "/m"}, "syncPeriodSeconds": 1})
    (path, msg), = info.value.problems
    assert path == "spec.syncPeriodSeconds"
    assert "greater than or equal to 5" in msg and "got 1" in msg


@pytest.mark.parametrize(
    "text,want",
    [("512Mi", 512 * 2**20), ("1Gi", 2**30), ("1G", 10**9), ("1000", 1000), ("1.5Ki", 1536), ("2e9", 2 * 10**9),
     ("2E3", 2000), (".5Gi", 2**29), ("1500m", 2), ("5.", 5)],
    ids=["Mi", "Gi", "G", "plain", "fraction", "exponent", "upper-exponent", "leading-dot", "milli", "trailing-dot"],
)
def test_parse_bytes(text, want):
    assert parse_bytes(text) == want


@pytest.mark.parametrize("text", ["lots", "1.5.5", "-1Gi", "1gi", "1Kb", "NaN", "Infinity", "1_000", "1e999", " 1"])
def test_parse_bytes_rejects_garbage(text):
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_bytes(text)


@settings(max_examples=300, deadline=None)
@given(st.from_regex(QUANTITY_PATTERN, fullmatch=True))
def test_quantities_parse_as_kubernetes_parses_them(text):
    from kubernetes.utils import parse_quantity as kubernetes_parse_quantity

    assert parse_quantity(text) == kubernetes_parse_quantity(text)


def test_round_trip_to_api_keeps_camel_case():
    spec = parse_spec(yaml.safe_load((EXAMPLES / "full.yaml").read_text())["spec"])
    wire = spec.to_api()
    assert "scaleToZero" in wire and "scale_to_zero" not in wire
    assert parse_spec(wire) == spec
