"""The only code that talks to Prometheus: instant values and history windows, cleaned.

Built on ``prometheus-api-client``. Every failure becomes a typed ``MetricsError``; NaN, Inf and
negative values become "unknown" (``None``) in one place (``clean``), never zero.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

import numpy as np
import requests
from urllib3.util.retry import Retry
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect

from .. import tracing
from ..api.decision import SIGNALS, MetricSnapshot
from ..api.spec import ModelDeploymentSpec
from ..api.window import MetricWindow
from .errors import AmbiguousSeries, MetricsError, NoData, QueryFailed
from .queries import render, render_load_failures, render_model_rates, render_version

_STATUS = re.compile(r"HTTP Status Code (\d{3})")


TRACER = tracing.tracer("elastiserve.metrics")


def clean(value: float | str | None) -> float | None:
    """NaN, Inf, negative or unparsable values are unknown."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v >= 0 else None


class MetricSource(Protocol):
    """What the operator needs from a metrics backend (Prometheus, or an in-memory stub in benchmarks)."""

    def snapshot(self, spec: ModelDeploymentSpec, namespace: str, name: str, at: datetime | None = None) -> MetricSnapshot: ...

    def model_rates(self, spec: ModelDeploymentSpec, namespace: str, name: str) -> dict[str, float]: ...

    def history(
        self, spec: ModelDeploymentSpec, namespace: str, name: str, end: datetime, seconds: int, step: int
    ) -> MetricWindow: ...


@dataclass
class PrometheusSource:
    """Reads one Prometheus. ``token`` is a bearer token (kept out of ``repr`` and logs).

    ``custom_queries``: whether the spec's ``rules.*.query`` overrides may run (the tenancy policy,
    ``metrics.policy``); when False a signal with an override is reported as not allowed, never queried.
    Nothing Prometheus answers besides the samples (a response body, an error text) reaches a message:
    messages go to status and Events, which the tenant reads."""

    url: str
    token: str | None = None
    tls_verify: bool = True
    timeout: float = 5.0
    custom_queries: bool = True

    def __post_init__(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        # One quick retry for a refused connection, none for a read timeout: a slow Prometheus must not
        # stretch one query to several timeouts and the cycle past its period.
        retry = Retry(total=1, connect=1, read=False, status=0, backoff_factor=0)
        session = requests.Session()
        session.verify = self.tls_verify
        session.max_redirects = 0  # a redirect would take the query (and its token) somewhere not allowlisted
        session.trust_env = False  # no proxy or .netrc credentials from the environment
        self._client = PrometheusConnect(
            url=self.url.rstrip("/"), headers=headers, disable_ssl=not self.tls_verify, timeout=self.timeout,
            retry=retry, session=session,
        )

    def __repr__(self) -> str:  # never print the token
        return f"PrometheusSource(url={self.url!r}, tls_verify={self.tls_verify}, timeout={self.timeout})"

    # ------------------------------------------------------------------ raw queries

    def _call(self, fn, query: str, **kwargs):
        # A span per query (part of the operator's cycle trace): its PromQL and how long it took.
        with TRACER.start_as_current_span(f"prometheus {fn.__name__}", kind=tracing.SpanKind.CLIENT, attributes={
                "db.system": "prometheus", "db.query.text": query}):
            return self._request(fn, query, **kwargs)

    def _request(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except requests.Timeout:
            raise QueryFailed(f"Prometheus timed out after {self.timeout:g} s") from None
        except requests.TooManyRedirects:
            raise QueryFailed("Prometheus answered with a redirect, which is not followed") from None
        except requests.RequestException as exc:
            raise QueryFailed(f"Prometheus unreachable: {type(exc).__name__}") from None
        except PrometheusApiClientException as exc:
            # Only the status code: the body is whatever the server chose to send.
            m = _STATUS.search(str(exc))
            code = m.group(1) if m else "unknown"
            raise QueryFailed(f"Prometheus answered HTTP {code}{_HINTS.get(code, '')}") from None
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            # Malformed JSON, or JSON without data.result: prometheus-api-client indexes it blindly.
            raise QueryFailed(f"Prometheus sent a malformed response ({type(exc).__name__})") from None

    def instant(self, query: str, at: datetime | None = None) -> tuple[float, datetime]:
        """One scalar: the value and its timestamp. Raises NoData / AmbiguousSeries / QueryFailed."""
        params = {"time": f"{at.timestamp():.3f}"} if at else None
        result = self._call(self._client.custom_query, query, params=params)
        if not isinstance(result, list):
            raise QueryFailed("Prometheus sent a malformed response: result is not a vector")
        if not result:
            raise NoData("no series")
        if len(result) > 1:
            raise AmbiguousSeries(f"{len(result)} series; aggregate the query with sum() or avg()")
        try:
            ts, raw = result[0]["value"]
            ts = float(ts)
        except (KeyError, TypeError, ValueError, IndexError):
            raise QueryFailed("Prometheus sent a malformed response: sample without value") from None
        value = clean(raw)
        if value is None:
            raise NoData(f"value {raw}")
        if not math.isfinite(ts) or not 0 <= ts < 1e11:
            raise QueryFailed(f"Prometheus sent a malformed response: timestamp {ts}")
        return value, datetime.fromtimestamp(ts, tz=timezone.utc)

    def range(self, query: str, start: datetime, end: datetime, step: int, signal: str = "qps") -> MetricWindow:
        """A history window on an even grid. Short gaps are interpolated; leading gaps are dropped."""
        result = self._call(self._client.custom_query_range, query, start_time=start, end_time=end, step=f"{step}s")
        if not isinstance(result, list):
            raise QueryFailed("Prometheus sent a malformed response: result is not a matrix")
        if not result:
            raise NoData("no series in range")
        if len(result) > 1:
            raise AmbiguousSeries(f"{len(result)} series; aggregate the query with sum() or avg()")
        n = int((end - start).total_seconds() // step) + 1
        grid = np.full(n, np.nan)
        t0 = start.timestamp()
        series = result[0] if isinstance(result[0], dict) else {}
        for pair in series.get("values", []) if isinstance(series.get("values"), list) else []:
            try:
                ts, raw = pair
                i = int(round((float(ts) - t0) / step))
            except (TypeError, ValueError, OverflowError):
                continue
            v = clean(raw)
            if 0 <= i < n and v is not None:
                grid[i] = v
        known = np.flatnonzero(~np.isnan(grid))
        if known.size == 0:
            raise NoData("only NaN in range")
        first = known[0]
        grid = grid[first:]
        idx = np.arange(grid.size)
        ok = ~np.isnan(grid)
        grid = np.interp(idx, idx[ok], grid[ok])
        return MetricWindow(
            start=datetime.fromtimestamp(t0 + first * step, tz=timezone.utc), step_seconds=step, values=grid, signal=signal
        )

    # ------------------------------------------------------------------ per ModelDeployment

    def snapshot(self, spec: ModelDeploymentSpec, namespace: str, name: str, at: datetime | None = None,
                 signals: tuple[str, ...] | None = None) -> MetricSnapshot:
        """The spec's signals now (or ``signals`` only: the panic check reads just ``("inflight",)``)."""
        values: dict[str, float | None] = {}
        errors: dict[str, str] = {}
        newest: datetime | None = None
        wanted = [s for s in SIGNALS if getattr(spec.metrics.rules, s).enabled] + ["pending"]
        if spec.slo.enabled:  # the SLO policy calibrates on the latency (and error ceiling) it observes
            wanted += [s for s in ("latency", "error_rate") if s not in wanted and
                       (s == "latency" or spec.slo.max_error_rate_percent is not None)]
        if signals is not None:
            wanted = list(signals)
        for signal in wanted:
            try:
                value, ts = self.instant(render(signal, spec, namespace, name, self.custom_queries), at)
            except MetricsError as exc:
                values[signal] = None
                if signal != "pending":  # no activator series is normal
                    errors[signal] = f"{type(exc).__name__}: {exc}"
                continue
            values[signal] = value
            newest = ts if newest is None or ts > newest else newest
        return MetricSnapshot(**values, observed_at=newest, errors=errors)

    def version_health(
        self, spec: ModelDeploymentSpec, namespace: str, name: str, canary: bool, window_seconds: int
    ) -> dict[str, float | None]:
        """Requests, error rate and p95 latency of one track (stable or canary) over the rollout step."""
        out: dict[str, float | None] = {}
        for signal in ("requests", "error_rate", "latency"):
            try:
                out[signal], _ = self.instant(render_version(signal, spec, namespace, name, canary, window_seconds))
            except MetricsError:
                out[signal] = None
        return out

    def model_rates(self, spec: ModelDeploymentSpec, namespace: str, name: str) -> dict[str, float]:
        """Requests per second of each (sub-)model over the rate window ({} when nothing was served)."""
        result = self._call(self._client.custom_query, render_model_rates(spec, namespace, name))
        if not isinstance(result, list):
            raise QueryFailed("Prometheus sent a malformed response: result is not a vector")
        out: dict[str, float] = {}
        for series in result:
            try:
                model = series["metric"]["model"]
                value = clean(series["value"][1])
            except (KeyError, TypeError, IndexError):
                continue
            if value is not None:
                out[model] = value
        return out

    def load_failures(self, namespace: str, name: str) -> dict[tuple[str, str], int]:
        """Pods failing to load each sub-model, by ``(model, cause)`` ({} when every load succeeded)."""
        result = self._call(self._client.custom_query, render_load_failures(namespace, name))
        if not isinstance(result, list):
            raise QueryFailed("Prometheus sent a malformed response: result is not a vector")
        out: dict[tuple[str, str], int] = {}
        for series in result:
            try:
                key = (str(series["metric"]["model"]), str(series["metric"].get("cause") or "other"))
                value = clean(series["value"][1])
            except (KeyError, TypeError, IndexError):
                continue
            if value is not None and value >= 1:
                out[key] = int(value)
        return out

    def history(
        self, spec: ModelDeploymentSpec, namespace: str, name: str, end: datetime, seconds: int, step: int
    ) -> MetricWindow:
        from datetime import timedelta

        query = render("qps", spec, namespace, name, self.custom_queries)
        return self.range(query, end - timedelta(seconds=seconds), end, step, signal="qps")


_HINTS = {
    "400": " (bad query: check the PromQL)",
    "401": " (check prometheus.bearerTokenSecret)",
    "403": " (check prometheus.bearerTokenSecret)",
    "422": " (the query could not be executed)",
    "503": " (unavailable)",
}
