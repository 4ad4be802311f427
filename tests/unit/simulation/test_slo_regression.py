"""Regression: on a short trace with a 6× flash crowd, the rules-only policy misses a 99 % objective and
the SLO policy (same spec otherwise, forecasting off to keep it fast) holds it; with the in-flight signal
and its panic check (the example spec's default) it holds it for fewer replica-hours than without."""

from __future__ import annotations

import pytest

from elastiserve.simulation import SimConfig, run_backtest
from elastiserve.simulation.config import default_spec
from elastiserve.simulation.synthetic import generated_trace


def _attainment(slo_on: bool, inflight: bool = True) -> tuple[float, float]:
    base = default_spec()
    rules = base.metrics.rules.model_copy(update={"inflight": base.metrics.rules.inflight.model_copy(
        update={"enabled": inflight})})
    spec = base.model_copy(update={
        "forecasting": base.forecasting.model_copy(update={"enabled": False}),
        "slo": base.slo.model_copy(update={"enabled": slo_on}),
        "metrics": base.metrics.model_copy(update={"rules": rules}),
    })
    trace = generated_trace("flash", days=0.5, seed=1)
    m = run_backtest(trace, spec=spec, cfg=SimConfig(forecast="online"), policies=["ours"]).results["ours"].metrics
    return m["attainment"], m["replica_hours"]


@pytest.mark.parametrize("slo_on,holds", [(False, False), (True, True)], ids=["rules-only-misses", "slo-holds"])
def test_flash_crowd_objective(slo_on, holds):
    objective = default_spec().slo.attainment
    attainment, replica_hours = _attainment(slo_on)
    assert replica_hours > 0
    assert (attainment >= objective) is holds, attainment


def test_inflight_panic_holds_the_objective_for_less():
    objective = default_spec().slo.attainment
    with_panic, rh_with = _attainment(True, inflight=True)
    without, rh_without = _attainment(True, inflight=False)
    assert with_panic >= objective and without >= objective
    assert rh_with < 0.9 * rh_without, (rh_with, rh_without)
