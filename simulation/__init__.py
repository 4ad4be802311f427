"""Backtests: replay request-rate traces through our scaling code and through baseline autoscalers.

* ``traces``: the shared CSV format (checked, with line numbers), scaling, compression; ``synthetic``:
  a seeded workload generator;
* ``cluster``: the discrete-time cluster (pods with start-up delay, delayed metrics, the latency model
  of ``latency``);
* policies: ``policy_ours`` (the same ``scaling.decide()`` + forecaster as the operator),
  ``policy_hpa`` (HPA v2), ``policy_kpa`` (Knative KPA), ``policy_oracle`` (perfect foresight);
* ``backtest`` scores them, ``report`` writes Markdown/JSON/PNG, ``cli`` is ``elastiserve backtest``.

Time is virtual throughout: nothing here reads a clock except the CLI's run-time message.
"""

from .backtest import COLUMNS, POLICIES, BacktestResult, run_backtest, score
from .cluster import Scenario, make_scenario, run
from .config import DEFAULT_SPEC_DICT, SimConfig, backtest_spec, default_spec
from .synthetic import synthetic_trace
from .traces import Trace, TraceError, TraceWarning, load_trace, traces_dir

__all__ = [
    "COLUMNS", "DEFAULT_SPEC_DICT", "POLICIES", "BacktestResult", "Scenario", "SimConfig", "Trace", "TraceError",
    "TraceWarning", "backtest_spec", "default_spec", "load_trace", "make_scenario", "run", "run_backtest", "score",
    "synthetic_trace", "traces_dir",
]
