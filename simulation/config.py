"""The example spec the backtests run with, and the simulator's own settings.

``DEFAULT_SPEC`` is a ModelDeployment spec tuned for the simulated model server (see ``latency.py``):

* **variants**: ``fp32`` primary at 35 qps per replica; ``int8`` burst at 52 qps (1.5×, same CPU request,
  so its cost factor is 1.0), quality cost 0.02;
* **rules**: only the request-rate rule is on, with a target of 90 % of capacity (band 75-100 %). The
  forecast floor sizes for the p90 forecast at the same target. CPU and latency rules are off: in
  ``decide()`` a rule inside its band *holds* the current count, and the highest recommendation wins, so
  a CPU or latency rule that sits in its band blocks every scale-down the rate rule asks for (the HPA's
  max-over-metrics semantics). The latency SLO stays in the spec (``rules.latency.scaleUpAbove`` = 200
  ms): the simulator scores every policy against it;
* **in-flight**: ``metrics.rules.inflight`` on with its defaults (concurrency from Little's law at the
  objective, panic check every 5 s): under ``slo`` it only adds replicas (docs/forecasting.md, step 7);
* **behavior**: scale-up as the HPA default; scale-down stabilization 60 s (the forecast floor already
  protects upcoming peaks, so the HPA's 300 s mostly holds replicas that are no longer needed);
* **forecasting**: on, ARIMA with daily Fourier terms, p90, horizon 300 s, refit every 6 h of data.

``backtest_spec(...)`` adapts the forecasting windows to a trace (its step, its length, and the seasons
its autocorrelation shows); a spec given by the user is used as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..api.spec import ModelDeploymentSpec, Precision, Variant

HOUR = 3600
DAY = 86400
WEEK = 7 * DAY

DEFAULT_SPEC_DICT: dict = {
    "model": {"name": "minilm", "uri": "file:///models/minilm.onnx"},
    "variants": [
        {"name": "fp32", "precision": "fp32", "role": "primary", "capacityQps": 35},
        {"name": "int8", "precision": "int8", "role": "burst", "capacityQps": 52, "qualityCost": 0.02,
         "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}},
    ],
    "replicas": {"min": 1, "max": 80},
    "metrics": {
        "rules": {
            "qps": {"scaleUpAbove": 100, "scaleDownBelow": 75, "target": 90},
            "cpu": {"enabled": False, "scaleUpAbove": 80, "scaleDownBelow": 30},
            "latency": {"enabled": False, "scaleUpAbove": 200, "scaleDownBelow": 50},
            "inflight": {"enabled": True},
        },
        "windowSeconds": 60,
    },
    "forecasting": {
        "enabled": True, "method": "arima", "seasonalPeriodsSeconds": [DAY], "fourierTerms": 3,
        "stepSeconds": 60, "historySeconds": 3 * DAY, "horizonSeconds": 300, "quantile": 0.9,
        "refitSeconds": 6 * 3600, "maxError": 0.5,
    },
    "behavior": {
        "scaleDown": {"stabilizationWindowSeconds": 60, "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]},
    },
    "burst": {"enabled": True, "shortPeakSeconds": 900, "qualityBudget": 0.5},
    "slo": {"enabled": True, "attainment": 0.99},
    "syncPeriodSeconds": 15,
}


def default_spec() -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(DEFAULT_SPEC_DICT)


def suggest_periods(rate: np.ndarray, step_seconds: float, candidates=(HOUR, DAY, WEEK)) -> list[int]:
    """Seasonal periods that show in a rate series: an autocorrelation peak at the period.

    A period counts when the trace spans at least three of it (two to learn, one to score), the
    autocorrelation at that lag is at least 0.2, and it beats the autocorrelation at half the lag by 0.1
    (plain persistence decays with the lag; a season comes back).
    """
    x = np.asarray(rate, dtype=float)
    x = x - x.mean()
    var = float(np.dot(x, x))
    out: list[int] = []
    if var <= 0:
        return out
    for p in candidates:
        lag = int(round(p / step_seconds))
        if lag < 2 or len(x) < 3 * lag or abs(lag * step_seconds - p) > 1e-6:
            continue
        acf = float(np.dot(x[:-lag], x[lag:]) / var)
        half = lag // 2
        acf_half = float(np.dot(x[:-half], x[half:]) / var)
        if acf >= 0.2 and acf > acf_half + 0.1:
            out.append(int(p))
    return out


def backtest_spec(
    step_seconds: float, span_seconds: float, base: ModelDeploymentSpec | None = None, rate: np.ndarray | None = None
) -> ModelDeploymentSpec:
    """The default spec with forecasting windows fitted to a trace's step, length and seasons.

    * step: the trace's step, at least 15 s (finer bins are averaged), at most 300 s (coarser bins are
      interpolated by the simulator, and a 5-minute forecast step keeps pre-scaling timely);
    * seasonality: the periods among 1 h, 1 d and 1 w that ``suggest_periods`` finds in ``rate`` (the
      trace's rate per bin); without ``rate``, daily when the trace spans 3 days or more. History keeps
      3 days, or 15 days with a weekly period; 5 Fourier pairs with an hourly period (sharp hourly
      spikes), else 3;
    * horizon: 300 s (120 s on traces shorter than a day), at least one step.

    A ``base`` spec (given by the user) is returned unchanged.
    """
    if base is not None:
        return base
    spec = default_spec()
    fc = spec.forecasting
    step = int(min(300, max(15, math.ceil(step_seconds))))
    if rate is not None:
        periods = [p for p in suggest_periods(rate, step_seconds) if 3 * p <= span_seconds]
    else:
        periods = [DAY] if span_seconds >= 3 * DAY else []
    history = 15 * DAY if WEEK in periods else 3 * DAY
    horizon = 300 if span_seconds >= DAY else 120
    horizon = max(horizon, step)
    update = {
        "step_seconds": step, "seasonal_periods_seconds": periods, "history_seconds": history,
        "horizon_seconds": horizon, "fourier_terms": 5 if HOUR in periods else fc.fourier_terms,
    }
    return spec.model_copy(update={"forecasting": fc.model_copy(update=update)})


@dataclass
class SimConfig:
    """How the simulated cluster behaves, and the baselines' settings. Times in seconds."""

    tick_seconds: float = 2.0
    """Simulation step (the KPA's tick is 2 s)."""
    startup_seconds: dict[str, float] = field(default_factory=lambda: {"fp32": 30.0, "int8": 10.0, "pruned": 20.0})
    """Pod start-up until ready, per precision (INT8 models load faster)."""
    scrape_delay_seconds: float = 15.0
    """Age of the metrics the operator and the HPA see (Prometheus / metrics-server scrape)."""
    inflight_metric_delay_seconds: float = 5.0
    """Age of the in-flight gauge our operator reads (its panic check every ``panicPeriodSeconds`` and its full
    cycle): one scrape interval of the model servers and the activator at the 5 s the panic path asks for
    (docs/backtest.md); a gauge has no rate window on top."""
    kpa_metric_delay_seconds: float = 2.0
    """Age of the metrics the KPA sees (queue-proxy scraped every second)."""
    hpa_metric_window_seconds: float = 15.0
    """CPU averaging window of metrics-server: the time between its two newest scrapes of the kubelet
    (metrics-server v0.9.0 ``pkg/storage/types.go: resourceUsage``), i.e. its ``--metric-resolution``,
    15 s in its own manifest and in ``hack/node.sh``. It was 30 s until the live runs of issue 17 showed
    the simulated HPA reacting a burst too late (docs/backtest.md, "The simulated HPA's CPU window")."""
    target_utilisation: float = 0.70
    """HPA-like and KPA-like target: this share of ``capacityQps`` per pod."""
    client_timeout_seconds: float = 30.0
    """Requests waiting longer than this are dropped (backlog bound)."""
    interpolate: bool | None = None
    """Interpolate the trace linearly between bins (default: for bins of 300 s and more)."""
    forecast: str = "auto"
    """How the operator policy forecasts: ``online`` (update() every cycle, as the operator does),
    ``replay`` (the same forecasts precomputed with ``forecast_path``), or ``auto`` (replay for runs
    longer than 2 days)."""
    warmup_seconds: float | None = None
    """History before the scored span, seen only by the forecaster (default: what it needs, capped at half the trace)."""
    cost_factors: dict[str, float] | None = None
    """Cost of one replica of each variant relative to the primary (default: CPU request ratio)."""
    initial_primary: int | None = None
    """Primary replicas (Ready) every policy starts the scored span with, instead of what the starting load
    needs: a live run starts from the state it was given (``simulation/live.py``: one warmed pod)."""

    def startup(self, variant: Variant) -> float:
        return float(self.startup_seconds.get(variant.precision.value if isinstance(variant.precision, Precision)
                                              else str(variant.precision), 30.0))


def cpu_of(spec: ModelDeploymentSpec, variant: Variant) -> float:
    """CPU request (cores) of a variant, from its resources or the template's."""
    res = variant.resources or spec.template.resources
    raw = res.requests.get("cpu", spec.template.resources.requests.get("cpu", "1"))
    raw = str(raw)
    return float(raw[:-1]) / 1000 if raw.endswith("m") else float(raw)


def cost_factors(spec: ModelDeploymentSpec, cfg: SimConfig) -> dict[str, float]:
    if cfg.cost_factors is not None:
        return {v.name: float(cfg.cost_factors.get(v.name, 1.0)) for v in spec.variants}
    base = cpu_of(spec, spec.primary)
    return {v.name: cpu_of(spec, v) / base for v in spec.variants}
