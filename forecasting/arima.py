"""ARIMA pre-scaling forecaster: SARIMAX on the request rate with Fourier seasonality as exogenous regressors.

Model, on ``z = log1p(qps)`` (or on ``qps`` itself, see ``ArimaSettings.transform``)::

    z_t = c + X_t β + u_t,   u_t ~ ARIMA(p, d, q)

where ``X_t`` holds sine/cosine pairs for each seasonal period of the spec (daily by default, weekly
optionally). A long season is never a seasonal ARIMA order (a daily order at 60 s steps would be 1440
lags); a few Fourier terms carry it instead.

Cost control (STYLE habit 9):

* a full ``fit()`` only at a *refit*: the first time, every ``refitSeconds`` of data time (the labels of
  the observations, never a wall clock), or when the errors drift; bounded by ``maxiter``, warm-started
  from the previous parameters, the order chosen by AIC over a small grid only every few refits;
* between refits each new observation is filtered with the fitted parameters by ``results.extend()``,
  which touches only the new points, and the forecast propagates the filter's newest state a few steps
  through the state-space matrices (``get_forecast()``'s numbers without its model clone): a cycle
  costs milliseconds (``bench/forecast.py`` measures it);
* for backtests, ``forecast_path()`` filters a whole stretch at once (``extend()`` per refit segment, or
  ``apply()`` with a model fitted once) and computes the forecast from every origin in one vectorised pass.

Prediction intervals come from the state-space forecast variance (Gaussian in the transformed scale); a
log1p transform turns them into skewed intervals on the rate and the mean is bias-corrected
(``exp(mu + s²/2) - 1``). Rates are clipped at 0.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from statistics import NormalDist
from typing import Literal

import numpy as np

from ..api.decision import Forecast
from ..api.spec import ForecastingSpec
from ..api.window import MetricWindow
from .base import ErrorTracker, StepSeries, epoch, feed_window, from_epoch, make_points, not_ready
from .fourier import Seasonality, plan_seasonality

# The Kalman filter multiplies matrices of a few rows; OpenBLAS worker threads only add overhead there
# (measured: one log-likelihood evaluation 35 ms with the default threads against 1.5 ms with one, on a
# busy 2-core machine). This takes effect only if scipy's BLAS is not loaded yet; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from statsmodels.tsa.statespace.sarimax import SARIMAX  # noqa: E402  (after the BLAS setting)

Order = tuple[int, int, int]

ORDER_GRID: tuple[Order, ...] = ((1, 0, 0), (2, 0, 0), (1, 0, 1), (2, 0, 1), (1, 1, 1))
"""Orders tried by AIC when the spec gives none. Small on purpose: each candidate is a full fit."""


@dataclass(frozen=True)
class ArimaSettings:
    """Tuning knobs of the ARIMA forecaster that are not part of the CRD (the spec's fields come first)."""

    transform: Literal["auto", "log1p", "none"] = "auto"
    """``auto``: log1p when the history has no negative value (request rates), else none."""
    maxiter: int = 50
    """Optimizer iterations of a cold fit (the time bound of a fit)."""
    warm_maxiter: int = 20
    """Optimizer iterations of a refit started from the previous parameters."""
    reselect_every: int = 6
    """Choose the order by AIC on the first fit and then on every n-th refit (others keep the order)."""
    order_grid: tuple[Order, ...] = ORDER_GRID
    min_points: int = 30
    """Fewest observations for a non-seasonal model."""
    error_window: int | None = None
    """sMAPE terms in the rolling error (default: one hour of steps, 10 to 240)."""
    drift_ratio: float = 4.0
    """Refit early when the mean squared standardized innovation of the last ``error_window`` updates exceeds this."""
    drift: bool = True
    """Refit early on drift (high sMAPE or innovations); off gives refits on the schedule only."""
    min_refit_gap_steps: int = 10
    """Steps between a refit and an early (drift) refit."""
    extra_steps: int = 2
    """Steps computed past the horizon by ``forecast_path`` so replays can cover a lagging ``now``."""


@dataclass
class _Fit:
    """The state of one fitted model: its results, extended with every observation since."""

    results: object
    order: Order
    params: np.ndarray
    log: bool
    fit_label: int
    end_label: int
    points: int
    aic: float
    updates: int = 0


@dataclass
class ForecastPath:
    """Forecasts from every origin of a series (``forecast_path``): row ``i`` is conditioned on label ``labels[i]``."""

    step: int
    labels: np.ndarray
    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    ready: np.ndarray
    error: np.ndarray
    """Rolling sMAPE known at each origin (NaN when none yet)."""
    reasons: list[str]
    reason_index: np.ndarray
    """Index into ``reasons`` for each origin."""
    quantile: float
    method: str = "arima"
    fits: list[dict] = field(default_factory=list)


class ArimaForecaster:
    """SARIMAX + Fourier terms, fitted on a schedule of data time, updated with ``extend()`` in between."""

    method = "arima"

    def __init__(self, spec: ForecastingSpec, settings: ArimaSettings | None = None):
        self.spec = spec
        self.settings = settings or ArimaSettings()
        self.series: StepSeries | None = None
        self.step = 0
        self.season = Seasonality()
        self.season_notes: list[str] = []
        self.steps_ahead = 0
        self.fit: _Fit | None = None
        self.fits = 0
        self.failures = 0
        self.last_failure = ""
        self.tracker = ErrorTracker()
        self._innovations: deque[float] = deque()
        self._cached: tuple[tuple[int, int], Forecast] | None = None
        self._last_attempt: int | None = None
        self._z = NormalDist().inv_cdf(spec.quantile)

    # ------------------------------------------------------------------ set-up

    def _setup(self, window_step: int) -> None:
        spec = self.spec
        # A window coarser than the spec's step cannot be upsampled: the model then works on the window's step.
        self.step = spec.step_seconds if window_step <= spec.step_seconds else window_step
        capacity = max(1, spec.history_seconds // self.step)
        self.series = StepSeries(self.step, capacity)
        self.season, self.season_notes = plan_seasonality(
            spec.seasonal_periods_seconds, spec.fourier_terms, self.step, spec.history_seconds
        )
        if self.step != spec.step_seconds:
            self.season_notes.append(f"step {self.step} s from the data (spec asks {spec.step_seconds} s)")
        self.steps_ahead = max(1, math.ceil(spec.horizon_seconds / self.step))
        window = self.settings.error_window or min(240, max(10, 3600 // self.step))
        self.tracker = ErrorTracker(window)
        self._innovations = deque(maxlen=window)

    def required_points(self) -> int:
        """Observations needed before the first fit: two of the longest season, or a minimum count."""
        need = max(self.settings.min_points, 2 * self.steps_ahead + 10)
        if self.season.periods:
            need = max(need, math.ceil(2 * self.season.longest / self.step))
        return need

    # ------------------------------------------------------------------ online path

    def update(self, window: MetricWindow, now: datetime) -> Forecast:
        """Consume the new points of ``window`` and forecast; never raises for data or model problems."""
        try:
            return self._update(window, now)
        except Exception as exc:  # noqa: BLE001 - a forecaster problem must not stop the scaling loop
            self.fit = None
            self._cached = None
            return not_ready(now, self.method, f"forecaster error: {type(exc).__name__}: {exc}", self.spec.quantile)

    def _update(self, window: MetricWindow, now: datetime) -> Forecast:
        early, first, new = feed_window(self, window, now)
        if early is not None:
            return early
        series = self.series
        assert series is not None and series.end_label is not None
        origin = from_epoch(series.end_label)
        have, need = series.observed, self.required_points()
        if have < need:
            return not_ready(origin, self.method, self._short_history(have, need), self.spec.quantile)
        stale = epoch(now) - series.end_label
        if stale > max(self.spec.horizon_seconds, 3 * self.step) + self.step:
            return not_ready(origin, self.method, f"no new data for {stale:.0f} s", self.spec.quantile,
                             self.tracker.smape)

        if self.fit is None or self._refit_due(series.end_label):
            if not self._refit(series.values, series.end_label):
                if self.fit is None:
                    return not_ready(origin, self.method, f"fit failed: {self.last_failure}", self.spec.quantile,
                                     self.tracker.smape)
                # Keep the previous model; filter the new points with it when they connect.
                if len(new) and first == self.fit.end_label + self.step:
                    self._extend(first, new)
        elif len(new):
            if first != self.fit.end_label + self.step:
                # The history restarted (a long gap): the old filter state does not connect.
                if not self._refit(series.values, series.end_label):
                    return not_ready(origin, self.method, f"fit failed: {self.last_failure}", self.spec.quantile)
            else:
                self._extend(first, new)
        return self._forecast(now)

    def _short_history(self, have: int, need: int) -> str:
        what = f"two periods of {self.season.describe()}" if self.season.periods else "the minimum"
        notes = f"; {'; '.join(self.season_notes)}" if self.season_notes else ""
        return f"history {have} of {need} steps of {self.step} s ({what}){notes}"

    def _refit_due(self, end_label: int) -> bool:
        fit = self.fit
        assert fit is not None
        since = end_label - max(fit.fit_label, self._last_attempt or fit.fit_label)
        if since >= self.spec.refit_seconds:
            return True
        if not self.settings.drift or since < self.settings.min_refit_gap_steps * self.step:
            return False
        err = self.tracker.smape
        if err is not None and err > self.spec.max_error and len(self.tracker.terms) >= self.tracker.window // 2:
            return True
        inn = self._innovations
        return len(inn) >= (inn.maxlen or 1) // 2 and float(np.mean(inn)) > self.settings.drift_ratio

    # ------------------------------------------------------------------ fitting

    def _design(self, labels: np.ndarray) -> np.ndarray | None:
        return self.season.design(labels) if self.season.periods else None

    def _use_log(self, y: np.ndarray) -> bool:
        t = self.settings.transform
        if t == "log1p":
            return bool(np.nanmin(y) > -1)
        return t == "auto" and bool(np.nanmin(y) >= 0)

    def _refit(self, values: np.ndarray, end_label: int) -> bool:
        """Fit on ``values`` (ending at ``end_label``); on failure keep the previous fit and return False."""
        self._last_attempt = end_label
        labels = end_label - self.step * np.arange(len(values) - 1, -1, -1, dtype=np.int64)
        log = self._use_log(values)
        z = np.log1p(values) if log else values.astype(float)
        X = self._design(labels)
        prev = self.fit
        if self.spec.order is not None:
            candidates: tuple[Order, ...] = (tuple(self.spec.order),)  # type: ignore[assignment]
        elif prev is None or self.fits % self.settings.reselect_every == 0:
            candidates = self.settings.order_grid
        else:
            candidates = (prev.order,)
        best: _Fit | None = None
        errors: list[str] = []
        for order in candidates:
            warm = prev.params if prev is not None and prev.order == order and prev.log == log else None
            try:
                res, params = self._fit_one(z, X, order, warm)
            except Exception as exc:  # noqa: BLE001 - statsmodels raises many types on bad data
                errors.append(f"{order}: {type(exc).__name__}: {exc}")
                continue
            aic = float(res.aic)
            if not np.all(np.isfinite(params)) or not math.isfinite(aic):
                errors.append(f"{order}: non-finite parameters")
                continue
            if best is None or aic < best.aic:
                best = _Fit(res, order, params, log, end_label, end_label, int(np.count_nonzero(~np.isnan(z))), aic)
        self.fits += 1
        if best is None:
            self.failures += 1
            self.last_failure = "; ".join(errors) or "no candidate order"
            return False
        self.fit = best
        self._innovations.clear()
        self._cached = None
        return True

    def _fit_one(self, z: np.ndarray, X: np.ndarray | None, order: Order, warm: np.ndarray | None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = SARIMAX(z, exog=X, order=order, trend="c" if order[1] == 0 else "n")
            maxiter = self.settings.warm_maxiter if warm is not None else self.settings.maxiter
            params = mod.fit(start_params=warm, disp=False, maxiter=maxiter, return_params=True)
            # Filter only (no smoother, no parameter covariance): that is all extend() and forecasts need.
            res = mod.filter(params, cov_type="none")
        return res, np.asarray(params, dtype=float)

    def _extend(self, first: int, new: np.ndarray) -> None:
        fit = self.fit
        assert fit is not None
        labels = first + self.step * np.arange(len(new), dtype=np.int64)
        z = np.log1p(new) if fit.log else new.astype(float)
        X = self._design(labels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit.results = fit.results.extend(z, exog=X)
        fit.end_label = int(labels[-1])
        fit.updates += len(new)
        std = np.asarray(fit.results.filter_results.standardized_forecasts_error[0], dtype=float)
        self._innovations.extend(float(v) ** 2 for v in std if math.isfinite(v))
        self._cached = None

    # ------------------------------------------------------------------ forecasting

    def _forecast(self, now: datetime) -> Forecast:
        fit = self.fit
        assert fit is not None
        end = fit.end_label
        # Cover [now, now + horizon] even when the newest observation lags behind now.
        steps = max(self.steps_ahead, math.ceil((epoch(now) - end + self.spec.horizon_seconds) / self.step - 1e-9))
        key = (end, steps)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        # The filter's one-step-ahead predicted state propagated through the state-space matrices: the
        # numbers of ``get_forecast()`` (tests/unit/forecasting/test_arima.py checks them against it)
        # without the model clone it costs, most of a cycle's time when a new point arrives.
        states = (fit.results.predicted_state[:, -1:], fit.results.predicted_state_cov[:, :, -1:])
        mu, var = (a[0] for a in self._propagate(fit, states, np.array([end], dtype=np.int64), steps))
        mean, lower, upper = self._bands(mu, var, fit.log)
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(upper))):
            return not_ready(from_epoch(end), self.method, "forecast is not finite", self.spec.quantile,
                             self.tracker.smape)
        # Plausibility ceiling: never more than twice the highest rate in the history. A log-space
        # model's interval can explode after a regime switch (e.g. idle zeros next to a peak), and
        # the decision engine must not pre-scale to the maximum on such a number.
        seen = self.series.values if self.series is not None else np.empty(0)
        if len(seen) and np.isfinite(np.nanmax(seen)):
            ceiling = 2.0 * float(np.nanmax(seen)) + 1.0
            mean, lower, upper = (np.minimum(a, ceiling) for a in (mean, lower, upper))
        self.tracker.predict(end + self.steps_ahead * self.step, float(mean[self.steps_ahead - 1]))
        forecast = Forecast(
            origin=from_epoch(end),
            points=make_points(self.step, mean, lower, upper),
            quantile=self.spec.quantile,
            method=self.method,
            error=self.tracker.smape,
            ready=True,
            reason=self.describe(),
        )
        self._cached = (key, forecast)
        return forecast

    def _bands(self, mu: np.ndarray, var: np.ndarray, log: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sd = np.sqrt(np.clip(var, 0.0, None))
        lo, up = mu - self._z * sd, mu + self._z * sd
        if log:
            with np.errstate(over="ignore"):
                return np.expm1(mu + var / 2), np.expm1(lo), np.expm1(up)
        return mu, lo, up

    def describe(self) -> str:
        fit = self.fit
        if fit is None:
            return "arima: not fitted"
        p, d, q = fit.order
        tr = " log1p" if fit.log else ""
        return (
            f"arima({p},{d},{q}) + fourier {self.season.describe()}{tr}; fitted on {fit.points} steps of "
            f"{self.step} s at {from_epoch(fit.fit_label).isoformat()}, {fit.updates} updates since"
        )

    # ------------------------------------------------------------------ batch path (backtests)

    def forecast_path(self, window: MetricWindow, refit: bool = True, first: int = 0) -> ForecastPath:
        """Forecasts from every step of ``window``, as the online path would give them, computed in bulk.

        The window is resampled like ``update()`` does. Refits happen at the same labels as online (every
        ``refitSeconds`` of data time; drift refits are not replayed). Between refits, one ``extend()`` call
        filters the whole segment; with ``refit=False`` the model is fitted once, on the first usable
        history, and ``apply()`` filters the entire series with those parameters. Forecasts for all origins
        are then propagated through the state-space matrices at once (``_propagate``), which gives the same
        numbers as ``get_forecast()`` from each origin. ``first`` is the index of the first origin wanted
        (the first fit happens there, or later if the history is still too short), as when an online
        forecaster is started at that point with the history before it.
        """
        self._setup(window.step_seconds)
        series = self.series
        assert series is not None
        series.capacity = 10**9  # keep everything; each fit takes its own history slice
        first_label, values = series.feed(window)
        n = len(values)
        labels = first_label + self.step * np.arange(n, dtype=np.int64)
        k = self.steps_ahead + self.settings.extra_steps
        out = ForecastPath(
            step=self.step, labels=labels, mean=np.full((n, k), np.nan), lower=np.full((n, k), np.nan),
            upper=np.full((n, k), np.nan), ready=np.zeros(n, dtype=bool), error=np.full(n, np.nan),
            reasons=[], reason_index=np.zeros(n, dtype=np.int64), quantile=self.spec.quantile,
        )
        capacity = max(1, self.spec.history_seconds // self.step)
        observed = np.cumsum(~np.isnan(values))
        need = self.required_points()
        out.reasons.append(f"history shorter than {need} steps of {self.step} s")
        i = max(0, first)
        while i < n:
            lo = max(0, i - capacity + 1)
            have = observed[i] - (observed[lo - 1] if lo > 0 else 0)
            if have < need:
                i += 1
                continue
            ok = self._refit(values[lo : i + 1], int(labels[i]))
            if not ok:
                out.reasons.append(f"fit failed: {self.last_failure}")
                out.reason_index[i] = len(out.reasons) - 1
                i += 1
                continue
            fit = self.fit
            assert fit is not None
            out.fits.append({"label": int(labels[i]), "order": fit.order, "aic": fit.aic, "points": fit.points})
            if refit:
                stop = min(n, i + max(1, math.ceil(self.spec.refit_seconds / self.step)))
            else:
                stop = n
            seg = slice(i + 1, stop)
            z = values[seg]
            zt = np.log1p(z) if fit.log else z
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if refit or stop == i + 1:
                    res = fit.results.extend(zt, exog=self._design(labels[seg])) if stop > i + 1 else None
                    states = self._states(fit.results, res)
                else:
                    # Fitted once: apply() re-filters the whole series with the fitted parameters.
                    full = slice(lo, stop)
                    zf = np.log1p(values[full]) if fit.log else values[full]
                    applied = fit.results.apply(zf, exog=self._design(labels[full]))
                    a = applied.predicted_state[:, i - lo + 1 :]
                    p = applied.predicted_state_cov[:, :, i - lo + 1 :]
                    states = (a, p)
            origins = slice(i, stop)
            mu, var = self._propagate(fit, states, labels[origins], k)
            mean, lower, upper = self._bands(mu, var, fit.log)
            out.mean[origins], out.lower[origins], out.upper[origins] = mean, lower, upper
            out.ready[origins] = np.isfinite(mean).all(axis=1) & np.isfinite(upper).all(axis=1)
            out.reasons.append(self.describe())
            out.reason_index[origins] = len(out.reasons) - 1
            i = stop
        out.error = self._path_errors(values, out)
        return out

    @staticmethod
    def _states(fitted, extended) -> tuple[np.ndarray, np.ndarray]:
        """One-step-ahead predicted states after each origin: the fit's last one, then the segment's."""
        a0 = fitted.predicted_state[:, -1:]
        p0 = fitted.predicted_state_cov[:, :, -1:]
        if extended is None:
            return a0, p0
        return (
            np.concatenate([a0, extended.predicted_state[:, 1:]], axis=1),
            np.concatenate([p0, extended.predicted_state_cov[:, :, 1:]], axis=2),
        )

    def _propagate(self, fit: _Fit, states, origins: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of the 1..k-step forecasts from every origin, in the transformed scale."""
        a, P = states
        ssm = fit.results.model.ssm
        m = a.shape[0]
        # Time-invariant matrices (SARIMAX); the getters return them without the time axis.
        Z = np.asarray(ssm["design"], dtype=float).reshape(m)
        T = np.asarray(ssm["transition"], dtype=float).reshape(m, m)
        R = np.asarray(ssm["selection"], dtype=float).reshape(m, -1)
        Q = np.asarray(ssm["state_cov"], dtype=float).reshape(R.shape[1], R.shape[1])
        H = float(np.asarray(ssm["obs_cov"], dtype=float).reshape(-1)[0])
        c = np.asarray(ssm["state_intercept"], dtype=float).reshape(m, -1)[:, -1]
        RQR = R @ Q @ R.T
        names = fit.results.model.param_names
        exog_names = fit.results.model.exog_names or []
        beta = np.array([fit.params[names.index(nm)] for nm in exog_names]) if exog_names else None
        n = a.shape[1]
        mu = np.empty((n, k))
        var = np.empty((n, k))
        a = a.copy()
        P = P.copy()
        for h in range(k):
            mu[:, h] = Z @ a
            if beta is not None:
                mu[:, h] += self.season.design(origins + (h + 1) * self.step) @ beta
            var[:, h] = np.einsum("i,ijn,j->n", Z, P, Z) + H
            a = T @ a + c[:, None]
            P = np.einsum("ij,jkn,lk->iln", T, P, T) + RQR[:, :, None]
        return mu, var

    def _path_errors(self, values: np.ndarray, out: ForecastPath) -> np.ndarray:
        """The rolling sMAPE the online tracker would report at each origin."""
        h = self.steps_ahead
        n = len(values)
        window = self.tracker.window
        terms = np.full(n, np.nan)  # term realised at label j (forecast made at j - h)
        pred = np.full(n, np.nan)
        pred[h:] = np.where(out.ready[:-h], out.mean[:-h, h - 1], np.nan) if n > h else pred[h:]
        recent = _rolling_nanmean(values, window)
        floor = np.maximum(0.05 * np.abs(np.nan_to_num(recent)), 1e-9)
        ok = np.isfinite(pred) & np.isfinite(values)
        denom = np.maximum((np.abs(values) + np.abs(pred)) / 2, floor)
        terms[ok] = np.minimum(2.0, np.abs(values[ok] - pred[ok]) / denom[ok])
        errors = np.full(n, np.nan)
        have = np.isfinite(terms)
        idx = np.flatnonzero(have)
        if len(idx):
            cs = np.concatenate([[0.0], np.cumsum(terms[idx])])
            # at origin j: mean of the last `window` terms with label <= j
            upto = np.searchsorted(idx, np.arange(n), side="right")
            start = np.maximum(upto - window, 0)
            cnt = upto - start
            with np.errstate(invalid="ignore", divide="ignore"):
                errors = np.where(cnt > 0, (cs[upto] - cs[start]) / np.maximum(cnt, 1), np.nan)
        return errors


def _rolling_nanmean(values: np.ndarray, window: int) -> np.ndarray:
    ok = np.isfinite(values)
    v = np.where(ok, values, 0.0)
    cs = np.concatenate([[0.0], np.cumsum(v)])
    cn = np.concatenate([[0], np.cumsum(ok)])
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    cnt = cn[idx] - cn[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, (cs[idx] - cs[lo]) / np.maximum(cnt, 1), np.nan)
