"""Choosing a forecaster from the spec, and the named fallback from ARIMA to the naive baseline.

The fallback is a policy, not an ``except: pass`` (STYLE habit 7): when the ARIMA model *fails* (its fit
raises, or its forecast is not finite) the naive forecaster answers instead and the reason says so. While
ARIMA only lacks history, the forecast stays not ready: a naive forecast on the same short history would
not be better, and ``decide()`` then runs on its rules alone.
"""

from __future__ import annotations

from datetime import datetime

from ..api.decision import Forecast
from ..api.spec import ForecastingSpec, ModelDeploymentSpec
from ..api.window import MetricWindow
from .arima import ArimaForecaster, ArimaSettings
from .base import Forecaster
from .naive import NaiveForecaster

FAILURE_PREFIXES = ("fit failed", "forecaster error", "forecast is not finite")
"""Reasons of a not-ready ARIMA forecast that hand over to the fallback."""


class FallbackForecaster:
    """``primary`` when it can forecast, ``fallback`` when it fails; both see every window."""

    def __init__(self, primary: Forecaster, fallback: Forecaster):
        self.primary = primary
        self.fallback = fallback
        self.method = primary.method
        self.fallback_active = False

    def update(self, window: MetricWindow, now: datetime) -> Forecast:
        main = self.primary.update(window, now)
        backup = self.fallback.update(window, now)
        self.fallback_active = not main.ready and main.reason.startswith(FAILURE_PREFIXES) and backup.ready
        if not self.fallback_active:
            return main
        return backup.model_copy(update={"reason": f"{self.primary.method} {main.reason} → {backup.method} fallback: "
                                                   f"{backup.reason}"})


def make_forecaster(spec: ForecastingSpec | ModelDeploymentSpec, settings: ArimaSettings | None = None) -> Forecaster:
    """The forecaster the spec asks for: ARIMA with the naive fallback, or naive alone."""
    fc = spec.forecasting if isinstance(spec, ModelDeploymentSpec) else spec
    if fc.method == "naive":
        return NaiveForecaster(fc)
    return FallbackForecaster(ArimaForecaster(fc, settings), NaiveForecaster(fc))
