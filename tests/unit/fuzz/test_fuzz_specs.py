"""Hypothesis-generated manifests, metric snapshots and CLI inputs: field-named errors, never a crash."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elastiserve.api import MetricSnapshot, Observation, ScalerState, SpecError, parse_manifest
from elastiserve.operator import builders
from elastiserve.scaling import decide

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

names = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
junk = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=12),
                 st.lists(st.integers(), max_size=3))
rule = st.fixed_dictionaries(
    {"scaleUpAbove": st.floats(0, 500), "scaleDownBelow": st.floats(0, 500)},
    optional={"enabled": st.booleans(), "target": st.floats(0, 500)},
)
variant = st.fixed_dictionaries(
    {"name": names},
    optional={
        "precision": st.sampled_from(["fp32", "int8", "pruned", "fp16"]),
        "role": st.sampled_from(["primary", "burst", "leader"]),
        "capacityQps": st.one_of(st.floats(-10, 1000), junk),
        "replicas": st.fixed_dictionaries({"min": st.integers(-1, 12), "max": st.integers(0, 12)}),
    },
)
spec = st.fixed_dictionaries(
    {"model": st.fixed_dictionaries({"name": names, "uri": st.sampled_from(["file:///m.onnx", "s3://b/m", "ftp://x", ""])})},
    optional={
        "variants": st.lists(variant, min_size=0, max_size=4),
        "replicas": st.fixed_dictionaries({"min": st.integers(-1, 20), "max": st.integers(-1, 20)}),
        "metrics": st.fixed_dictionaries({}, optional={"rules": st.fixed_dictionaries({}, optional={"cpu": rule, "qps": rule}),
                                                       "windowSeconds": st.integers(0, 5000)}),
        "forecasting": st.fixed_dictionaries({}, optional={"enabled": st.booleans(), "horizonSeconds": st.integers(0, 10**5),
                                                           "historySeconds": st.integers(0, 10**6), "quantile": st.floats(0, 1.2)}),
        "scaleToZero": st.fixed_dictionaries({}, optional={"enabled": st.booleans(), "idleSeconds": st.integers(0, 10**5)}),
        "actuation": st.sampled_from(["Deployment", "HPA", "KEDA"]),
        "syncPeriodSeconds": st.one_of(st.integers(0, 700), junk),
        "bogus": junk,
    },
)


def _doc(s):
    return {"apiVersion": "elastiserve.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "f"}, "spec": s}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec)
def test_any_manifest_is_accepted_or_rejected_with_field_paths(s):
    try:
        md = parse_manifest(_doc(s))
    except SpecError as exc:
        assert exc.problems, "a rejection lists its problems"
        for path, msg in exc.problems:
            assert path and msg and "Traceback" not in msg
        return
    # Accepted: the operator can build every owned object and decide on it.
    objs = builders.desired_objects(md.spec, "f", "ns", "u")
    assert {o["kind"] for o in objs} >= {"Deployment", "Service"}
    d = decide(md.spec, MetricSnapshot(cpu=50, qps=10, observed_at=T0), None, ScalerState(), T0,
               Observation(replicas=builders.initial_replicas(md.spec)))
    for v in md.spec.variants:
        b = md.spec.bounds(v)
        assert 0 <= d.desired[v.name] <= max(b.max, 0)


finite_or_not = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1e6))


@settings(max_examples=400, deadline=None)
@given(
    cpu=finite_or_not, qps=finite_or_not, latency=finite_or_not, pending=finite_or_not,
    age=st.integers(0, 1000), fp32=st.integers(0, 20), int8=st.integers(0, 5), steps=st.integers(1, 4),
)
def test_decide_never_crashes_and_respects_bounds(cpu, qps, latency, pending, age, fp32, int8, steps):
    md = parse_manifest(_doc({
        "model": {"name": "m", "uri": "/m.onnx"},
        "variants": [{"name": "fp32", "capacityQps": 10}, {"name": "int8", "precision": "int8", "role": "burst",
                                                           "capacityQps": 18, "replicas": {"min": 0, "max": 5}}],
        "replicas": {"min": 0, "max": 20}, "scaleToZero": {"enabled": True},
    }))
    state = ScalerState()
    obs = Observation(replicas={"fp32": fp32, "int8": int8})
    for k in range(steps):
        now = T0 + timedelta(seconds=15 * k)
        snap = MetricSnapshot(cpu=cpu, qps=qps, latency=latency, pending=pending, observed_at=now - timedelta(seconds=age))
        d = decide(md.spec, snap, None, state, now, obs)
        assert 0 <= d.desired["fp32"] <= 20 and 0 <= d.desired["int8"] <= 5
        if not d.metrics_available:
            assert d.desired == obs.replicas or d.fallback_active  # fail-static
        assert all(isinstance(r, str) and r for r in d.reasons)
        state, obs = d.state, Observation(replicas=d.desired, ready=d.desired)


@settings(max_examples=25, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_validate_cli_never_prints_a_traceback(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "in.yaml"
    path.write_text(text)
    result = subprocess.run([sys.executable, "-m", "elastiserve.cli", "validate", str(path)], capture_output=True, text=True)
    assert result.returncode in (0, 1)
    assert "Traceback" not in result.stderr + result.stdout
    if result.returncode == 1:
        assert "error:" in result.stderr or "invalid ModelDeployment" in result.stderr or "expected a mapping" in result.stderr
