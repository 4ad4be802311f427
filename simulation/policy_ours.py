"""Our operator in the simulator: the same ``scaling.decide()`` and forecaster the operator runs.

Every ``spec.syncPeriodSeconds`` the policy builds what the operator would read:

* a ``MetricSnapshot`` from the simulated metrics as Prometheus shows them ``scrapeDelaySeconds`` late,
  averaged over ``metrics.windowSeconds`` (qps: arrivals including requests held while at zero; cpu:
  busy share of the ready pods in percent; latency: p95 in ms; pending: the activator's backlog);
* an ``Observation`` of the Deployments (``spec.replicas`` and ready pods per variant);
* the forecaster's ``update()`` with the request-rate history at ``forecasting.stepSeconds`` that the
  delayed metrics have completed (the whole history window the first time, the newest points plus
  overlap afterwards, as the operator queries it);

then calls ``decide()`` and carries its ``ScalerState`` to the next cycle.

With ``metrics.rules.inflight`` on, the snapshot also carries the in-flight gauge
(``SimConfig.inflight_metric_delay_seconds`` old), and every ``panicPeriodSeconds`` between the full cycles
the policy runs ``scaling.panic()`` on a snapshot holding only that gauge, as the operator's panic timer
does: it can only add replicas.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime, timedelta, timezone

import numpy as np

from ..api.decision import Forecast, MetricSnapshot, Observation, ScalerState
from ..api.spec import ModelDeploymentSpec
from ..api.window import MetricWindow
from ..forecasting import ArimaForecaster, Forecaster, ReplayForecaster, make_forecaster
from ..scaling import decide, panic
from .cluster import EPOCH0, ClusterView, Scenario


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


class OursPolicy:
    """``decide()`` + forecaster, driven with simulated metrics."""

    name = "ours"

    def __init__(self, spec: ModelDeploymentSpec, forecaster: Forecaster | None = None, mode: str = "online"):
        self.spec = spec
        rule = spec.metrics.rules.inflight
        self.panic_seconds = rule.panic_period_seconds if rule.enabled else 0
        self.sync_seconds = float(self.panic_seconds or spec.sync_period_seconds)
        """How often the simulator calls ``decide`` here: the panic period when the panic check is on."""
        self.next_full: float | None = None
        self.panics = 0
        """Panic checks that added replicas."""
        self.mode = mode
        self.forecaster = forecaster
        self.state = ScalerState()
        self.fed_until = -1
        self.syncs = 0
        self.forecast_ready = 0
        self.forecast_used = 0
        self.reasons: Counter[str] = Counter()
        self.bands: list[tuple[float, float, float, float, float]] = []
        """(sync time, target time, mean, lower, upper) of the one-horizon-ahead forecast, per new origin."""
        self._last_origin: float | None = None
        self.decisions: list[tuple[float, int, int]] = []
        """(time, reactive total, forecast total or -1)."""

    # ------------------------------------------------------------------ Policy

    def initial(self, sc: Scenario) -> list[int]:
        self.sc = sc
        fc = self.spec.forecasting
        if self.forecaster is None and fc.enabled:
            if self.mode == "replay" and fc.method == "arima":
                # The online forecaster would start at the first sync with the history before it.
                first = int((sc.start_seconds - sc.cfg.scrape_delay_seconds) // sc.fstep) - 1
                path = ArimaForecaster(fc).forecast_path(self._window(0, len(sc.fseries)), first=first)
                self.forecaster = ReplayForecaster(path, fc.horizon_seconds)
                self.path = path
            else:
                self.forecaster = make_forecaster(fc)
        lam0 = sc.lam[max(0, sc.i0 - int(60 / sc.dt)) : sc.i0 + 1].mean()
        target = self.spec.metrics.rules.qps.effective_target / 100
        need = max(self.spec.bounds(self.spec.primary).min, math.ceil(lam0 / (sc.capacity[sc.primary] * target)))
        out = [0] * len(sc.names)
        out[sc.primary] = min(need, self.spec.bounds(self.spec.primary).max)
        return out

    def decide(self, view: ClusterView) -> list[int] | None:
        sc, spec = self.sc, self.spec
        now = _dt(view.epoch)
        inflight_delay = sc.cfg.inflight_metric_delay_seconds
        inflight = view.inflight(inflight_delay) if spec.metrics.rules.inflight.enabled else None
        if self.next_full is not None and view.t + 1e-9 < self.next_full:
            return self._panic(view, now, inflight, inflight_delay)
        self.next_full = (view.t if self.next_full is None else self.next_full) + spec.sync_period_seconds
        delay = sc.cfg.scrape_delay_seconds
        window = spec.metrics.window_seconds
        util = view.utilisation(window, delay)
        latency = (view.latency_p95_ms(window, delay)
                   if spec.metrics.rules.latency.enabled or spec.slo.enabled else None)
        snapshot = MetricSnapshot(
            qps=view.qps(window, delay),
            cpu=None if util is None or sum(view.ready) == 0 else 100.0 * util,
            latency=latency,
            pending=view.backlog if sum(view.ready) == 0 else 0.0,
            inflight=inflight,
            observed_at=now - timedelta(seconds=delay),
        )
        forecast = self._forecast(view, now, delay) if self.forecaster is not None else None
        obs = Observation(replicas=dict(zip(sc.names, view.desired)), ready=dict(zip(sc.names, view.ready)))
        decision = decide(spec, snapshot, forecast, self.state, now, obs)
        self.state = decision.state
        self.syncs += 1
        self.forecast_used += decision.forecast_used
        self.reasons[decision.reasons[0].split(" ")[0] if decision.reasons else ""] += 1
        self.decisions.append((view.t, decision.reactive_total,
                               -1 if decision.forecast_total is None else decision.forecast_total))
        if not decision.valid:
            return None
        return [decision.desired.get(nm, 0) for nm in sc.names]

    def _panic(self, view: ClusterView, now: datetime, inflight: float | None, delay: float) -> list[int] | None:
        """The operator's panic timer: only the in-flight gauge, only scale-up."""
        sc = self.sc
        snapshot = MetricSnapshot(inflight=inflight, observed_at=now - timedelta(seconds=delay))
        obs = Observation(replicas=dict(zip(sc.names, view.desired)), ready=dict(zip(sc.names, view.ready)))
        decision = panic(self.spec, snapshot, self.state, now, obs)
        if decision.desired == obs.replicas:
            return None
        self.state = decision.state
        self.panics += 1
        return [decision.desired.get(nm, 0) for nm in sc.names]

    # ------------------------------------------------------------------ forecasting

    def _window(self, a: int, b: int) -> MetricWindow:
        """Steps ``a..b-1`` of the request-rate series as a MetricWindow (labels at the end of each step)."""
        sc = self.sc
        start = _dt(EPOCH0 + (a + 1) * sc.fstep)
        return MetricWindow(start=start, step_seconds=sc.fstep, values=sc.fseries[a:b], signal="qps")

    def _forecast(self, view: ClusterView, now: datetime, delay: float) -> Forecast | None:
        sc = self.sc
        fc = self.spec.forecasting
        # Steps whose end (label) is at least `delay` old are complete in Prometheus.
        done = int((view.t - delay) // sc.fstep)  # steps 0..done-1 complete
        done = min(done, len(sc.fseries))
        if done <= 0:
            return None
        if self.fed_until < 0:
            a = max(0, done - fc.history_seconds // sc.fstep)
        else:
            a = max(0, min(self.fed_until, done) - 3)  # overlap, as the operator's queries do
        window = self._window(a, done)
        self.fed_until = done
        assert self.forecaster is not None
        forecast = self.forecaster.update(window, now)
        if forecast.ready:
            self.forecast_ready += 1
            origin = forecast.origin.timestamp()
            if origin != self._last_origin and forecast.points:
                self._last_origin = origin
                h = max(1, math.ceil(fc.horizon_seconds / sc.fstep))
                p = forecast.points[min(h, len(forecast.points)) - 1]
                self.bands.append((view.t, origin - EPOCH0 + p.offset_seconds, p.mean, p.lower, p.upper))
        return forecast

    def summary(self) -> dict:
        """Forecast quality over the run: sMAPE of one-horizon-ahead means against the realised rate."""
        sc = self.sc
        out: dict = {
            "syncs": self.syncs,
            "panic_scale_ups": self.panics,
            "forecast_ready_share": self.forecast_ready / self.syncs if self.syncs else 0.0,
            "forecast_used_share": self.forecast_used / self.syncs if self.syncs else 0.0,
        }
        if self.bands:
            b = np.array(self.bands)
            k = np.round(b[:, 1] / sc.fstep).astype(int) - 1  # fseries index of the target step
            ok = (k >= 0) & (k < len(sc.fseries))
            actual = sc.fseries[k[ok]]
            pred = b[ok, 2]
            floor = 0.05 * max(float(np.mean(sc.fseries)), 1e-9)
            denom = np.maximum((np.abs(actual) + np.abs(pred)) / 2, floor)
            out["forecast_smape"] = float(np.mean(np.minimum(2.0, np.abs(actual - pred) / denom))) if ok.any() else None
            out["forecast_coverage"] = float(np.mean(actual <= b[ok, 4])) if ok.any() else None
        else:
            out["forecast_smape"] = None
            out["forecast_coverage"] = None
        return out
