"""Request-rate forecasting for pre-scaling: a small ``Forecaster`` contract and its implementations.

* ``ArimaForecaster``: SARIMAX with Fourier seasonality, refitted on a schedule of data time and updated
  with ``extend()`` in between; ``forecast_path`` computes a whole backtest's forecasts in bulk.
* ``NaiveForecaster``: seasonal-naive / last-value baseline and fallback.
* ``make_forecaster(spec)``: what the operator and the simulator call.

Imports only ``elastiserve.api``, numpy and statsmodels; never reads a clock.
"""

from .arima import ORDER_GRID, ArimaForecaster, ArimaSettings, ForecastPath
from .base import ErrorTracker, Forecaster, StepSeries
from .fallback import FallbackForecaster, make_forecaster
from .fourier import Seasonality, plan_seasonality
from .naive import NaiveForecaster
from .replay import ReplayForecaster

__all__ = [
    "ORDER_GRID", "ArimaForecaster", "ArimaSettings", "ErrorTracker", "FallbackForecaster", "ForecastPath",
    "Forecaster", "NaiveForecaster", "ReplayForecaster", "Seasonality", "StepSeries", "make_forecaster",
    "plan_seasonality",
]
