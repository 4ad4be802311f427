"""Prometheus metrics of one server instance (a private registry, so tests can run several).

The operator's default PromQL depends on these names and labels; keep them stable.
"""

from __future__ import annotations

import os

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: Label value used for requests that name no known model (bounded cardinality).
UNKNOWN_MODEL = "_unknown"

METRIC_NAMES = (
    "elastiserve_requests_total",
    "elastiserve_request_duration_seconds",
    "elastiserve_inflight_requests",
    "elastiserve_models_loaded",
    "elastiserve_model_loaded",
    "elastiserve_model_loaded_bytes",
    "elastiserve_model_loads_total",
    "elastiserve_model_unloads_total",
    "elastiserve_model_cache_hits_total",
    "elastiserve_model_cache_misses_total",
    "elastiserve_model_load_duration_seconds",
    "elastiserve_model_version_info",
    "elastiserve_model_switches_total",
    "elastiserve_model_load_failing",
)

#: The disk cache of artifacts (``serving.diskcache``), exported when the server has one (remote stores):
#: name -> (type, help, key in ``ArtifactCache.status()``).
ARTIFACT_CACHE_METRICS: dict[str, tuple[str, str, str]] = {
    "elastiserve_artifact_cache_hits_total": ("counter", "Artifact fetches served from the disk cache", "hits"),
    "elastiserve_artifact_cache_misses_total": ("counter", "Artifact fetches that had to download", "misses"),
    "elastiserve_artifact_cache_downloads_total": ("counter", "Completed, verified downloads", "downloads"),
    "elastiserve_artifact_cache_download_errors_total": ("counter", "Downloads that failed (after retries)",
                                                         "download_errors"),
    "elastiserve_artifact_cache_download_bytes_total": ("counter", "Bytes downloaded into the cache",
                                                        "download_bytes"),
    "elastiserve_artifact_cache_download_seconds_total": ("counter", "Seconds spent in completed downloads "
                                                          "(divide by downloads_total for the mean)",
                                                          "download_seconds"),
    "elastiserve_artifact_cache_evictions_total": ("counter", "Entries removed by the disk budget (LRU)",
                                                   "evictions"),
    "elastiserve_artifact_cache_stale_uses_total": ("counter", "Cached copies used while the store was "
                                                    "unreachable", "stale_uses"),
    "elastiserve_artifact_cache_optimized_graphs_total": ("counter", "ONNX Runtime optimized graphs written "
                                                          "next to artifacts", "derived"),
    "elastiserve_artifact_cache_used_bytes": ("gauge", "Bytes on disk (artifacts and their optimized graphs)",
                                              "used_bytes"),
    "elastiserve_artifact_cache_budget_bytes": ("gauge", "The disk budget (--artifact-cache-budget)",
                                                "budget_bytes"),
    "elastiserve_artifact_cache_entries": ("gauge", "Cached artifacts", "entries"),
}


class _ArtifactCacheCollector:
    """Reads the cache's counters at scrape time (the cache itself knows nothing of Prometheus)."""

    def __init__(self, status: Callable[[], dict], labels: dict[str, str]):
        self.status, self.labels = status, labels

    def describe(self):
        return []  # collected on demand only

    def collect(self):
        st = self.status()
        names, values = list(self.labels), list(self.labels.values())
        for name, (kind, doc, key) in ARTIFACT_CACHE_METRICS.items():
            if kind == "counter":
                fam = CounterMetricFamily(name.removesuffix("_total"), doc, labels=names)
            else:
                fam = GaugeMetricFamily(name, doc, labels=names)
            fam.add_metric(values, float(st.get(key, 0)))
            yield fam

#: Values of the ``cause`` label of ``elastiserve_model_load_failing`` (bounded: anything else is ``other``).
#: The remote ones are ``serving.remote``'s; ``too_large``: over the memory budget; ``invalid_model``: the
#: files were read but are no usable model (corrupt, wrong inputs, missing tokenizer).
LOAD_FAILURE_CAUSES = ("no_credentials", "access_denied", "no_such_key", "endpoint_unreachable", "transfer_failed",
                       "server_error", "checksum_mismatch", "disk_budget", "too_large", "invalid_model", "other")


def load_failure_cause(cause: str | None) -> str:
    """The bounded ``cause`` label for a load error's cause (None: the files were no usable model)."""
    if cause is None:
        return "invalid_model"
    return cause if cause in LOAD_FAILURE_CAUSES else "other"


class ServingMetrics:
    def __init__(self, modeldeployment: str | None = None, variant: str | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.modeldeployment = os.environ.get("ELASTISERVE_MODELDEPLOYMENT", "") if modeldeployment is None else modeldeployment
        self.variant = os.environ.get("ELASTISERVE_VARIANT", "") if variant is None else variant
        const = ["modeldeployment", "variant"]
        r = self.registry
        self.requests = Counter("elastiserve_requests_total", "HTTP requests by model and status code",
                                const + ["model", "code"], registry=r)
        self.request_duration = Histogram("elastiserve_request_duration_seconds", "HTTP request duration",
                                          const + ["model"], buckets=REQUEST_BUCKETS, registry=r)
        self.inflight = Gauge("elastiserve_inflight_requests", "Requests being served", const, registry=r)
        self.models_loaded = Gauge("elastiserve_models_loaded", "Sub-models resident in memory", const, registry=r)
        self.model_loaded = Gauge("elastiserve_model_loaded", "1 if the sub-model is resident", const + ["model"], registry=r)
        self.model_loaded_bytes = Gauge("elastiserve_model_loaded_bytes", "Bytes accounted to the resident sub-model",
                                        const + ["model"], registry=r)
        self.loads = Counter("elastiserve_model_loads_total", "Sub-model loads by result (success|error|refused)",
                             const + ["model", "result"], registry=r)
        self.unloads = Counter("elastiserve_model_unloads_total", "Sub-model unloads by reason (idle|evicted|replaced)",
                               const + ["model", "reason"], registry=r)
        self.cache_hits = Counter("elastiserve_model_cache_hits_total", "Requests that found the sub-model resident",
                                  const + ["model"], registry=r)
        self.cache_misses = Counter("elastiserve_model_cache_misses_total", "Requests that had to wait for a load",
                                    const + ["model"], registry=r)
        self.load_duration = Histogram("elastiserve_model_load_duration_seconds", "Sub-model load time",
                                       const + ["model"], buckets=LOAD_BUCKETS, registry=r)
        self.version_info = Gauge("elastiserve_model_version_info",
                                  "1 for the active version of each sub-model (one series per model)",
                                  const + ["model", "version"], registry=r)
        self.switches = Counter("elastiserve_model_switches_total",
                                "Hot switches of a sub-model version by result (success|error)",
                                const + ["model", "result"], registry=r)
        self.load_failing = Gauge("elastiserve_model_load_failing",
                                  "1 while the sub-model's latest load attempt failed, labelled with the cause "
                                  "(no series once a load succeeds)", const + ["model", "cause"], registry=r)
        self._failing: dict[str, str] = {}  # model -> cause label of its exported failure series
        self._c = {"modeldeployment": self.modeldeployment, "variant": self.variant}
        self.inflight.labels(**self._c)
        self.models_loaded.labels(**self._c).set(0)

    # --- helpers used by the server and the cache ------------------------------------------------
    def c(self, **labels: str) -> dict:
        return {**self._c, **labels}

    def observe_request(self, model: str, code: int, seconds: float) -> None:
        self.requests.labels(**self.c(model=model, code=str(code))).inc()
        self.request_duration.labels(**self.c(model=model)).observe(seconds)

    def on_hit(self, model: str) -> None:
        self.cache_hits.labels(**self.c(model=model)).inc()

    def on_miss(self, model: str) -> None:
        self.cache_misses.labels(**self.c(model=model)).inc()

    def on_load(self, model: str, result: str, seconds: float | None = None, nbytes: int = 0) -> None:
        self.loads.labels(**self.c(model=model, result=result)).inc()
        if seconds is not None:
            self.load_duration.labels(**self.c(model=model)).observe(seconds)
        if result == "success":
            self.model_loaded.labels(**self.c(model=model)).set(1)
            self.model_loaded_bytes.labels(**self.c(model=model)).set(nbytes)

    def set_load_failure(self, model: str, cause: str | None) -> None:
        """The latest load of ``model`` failed with ``cause`` (a :data:`LOAD_FAILURE_CAUSES` value), or
        succeeded (``cause=None``: its failure series is removed)."""
        old = self._failing.pop(model, None)
        if old is not None and old != cause:
            try:
                self.load_failing.remove(self.modeldeployment, self.variant, model, old)
            except KeyError:
                pass
        if cause is not None:
            self.load_failing.labels(**self.c(model=model, cause=cause)).set(1)
            self._failing[model] = cause

    def on_unload(self, model: str, reason: str) -> None:
        self.unloads.labels(**self.c(model=model, reason=reason)).inc()
        self.model_loaded.labels(**self.c(model=model)).set(0)
        self.model_loaded_bytes.labels(**self.c(model=model)).set(0)

    def declare_model(self, model: str) -> None:
        """Export the 0-valued per-model series up front so dashboards see every configured model.

        The request counter (code 200) and the latency histogram start at zero too: an idle replica then
        reports a request rate of 0 instead of no series at all, which an autoscaler would have to
        treat as "unknown"."""
        self.model_loaded.labels(**self.c(model=model)).set(0)
        self.model_loaded_bytes.labels(**self.c(model=model)).set(0)
        self.requests.labels(**self.c(model=model, code="200"))
        self.request_duration.labels(**self.c(model=model))
        self.switches.labels(**self.c(model=model, result="success"))

    def set_version(self, model: str, version: str, previous: str | None = None) -> None:
        """Info-style: exactly one ``elastiserve_model_version_info`` series (value 1) per model."""
        if previous is not None and previous != version:
            try:
                self.version_info.remove(self.modeldeployment, self.variant, model, previous)
            except KeyError:
                pass
        self.version_info.labels(**self.c(model=model, version=version)).set(1)

    def on_switch(self, model: str, result: str) -> None:
        self.switches.labels(**self.c(model=model, result=result)).inc()

    def on_version_released(self, model: str) -> None:
        """The swapped-out session of a hot switch was freed (the model itself stays loaded)."""
        self.unloads.labels(**self.c(model=model, reason="replaced")).inc()

    def set_model_bytes(self, model: str, nbytes: int) -> None:
        """Accounted bytes of a model, both versions while a hot switch's old session still serves."""
        self.model_loaded_bytes.labels(**self.c(model=model)).set(nbytes)

    def set_resident(self, count: int) -> None:
        self.models_loaded.labels(**self._c).set(count)

    def watch_artifact_cache(self, status: Callable[[], dict]) -> None:
        """Export the disk cache's figures (:data:`ARTIFACT_CACHE_METRICS`); ``status``: its ``status()``."""
        self.registry.register(_ArtifactCacheCollector(status, dict(self._c)))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
