"""The latency model: calibration from capacityQps and the SLO, tails and quantiles."""

from __future__ import annotations

import numpy as np
import pytest

from elastiserve.simulation.latency import LN20, quantile, service_rate, tail


@pytest.mark.parametrize("cap,slo", [(35, 0.2), (10, 0.5), (100, 0.05)], ids=["default", "slow-model", "fast-model"])
def test_p95_equals_the_slo_at_capacity(cap, slo):
    mu = service_rate(cap, slo)
    rho = np.array([cap / mu])
    shares = np.ones((1, 1))
    assert tail(slo, rho, np.zeros(1), np.array([mu]), shares)[0] == pytest.approx(0.05)
    assert quantile(0.95, np.ones(1), rho, np.zeros(1), np.array([mu]), shares) == pytest.approx(slo, rel=1e-6)


def test_more_load_more_latency_and_backlog_adds_wait():
    mu = np.array([50.0])
    shares = np.ones((3, 1))
    rho = np.array([0.3, 0.6, 0.9])
    q = [quantile(0.95, np.ones(1), rho[i : i + 1], np.zeros(1), mu, shares[:1]) for i in range(3)]
    assert q[0] < q[1] < q[2]
    assert q[0] == pytest.approx(LN20 / (50 * 0.7), rel=1e-6)
    waited = quantile(0.95, np.ones(1), rho[:1], np.array([0.5]), mu, shares[:1])
    assert waited == pytest.approx(0.5 + q[0], rel=1e-6)


def test_grouped_quantiles_are_request_weighted():
    mu = np.array([50.0])
    rho = np.array([0.1, 0.1, 0.9, 0.9])
    shares = np.ones((4, 1))
    groups = np.array([0, 0, 1, 1])
    q = quantile(0.95, np.ones(4), rho, np.zeros(4), mu, shares, groups=groups)
    assert q[0] < 0.1 < q[1]
