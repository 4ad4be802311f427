"""Sub-models the model servers cannot load, as the ModelDeployment reports them (pure).

Input: what ``PrometheusSource.load_failures`` read from the servers' ``elastiserve_model_load_failing``
gauge (pods failing per ``(model, cause)``) and the previous ``status.subModelLoadFailures``. Output: the
new status list, the ``SubModelsLoaded`` condition and the Events to post - only for changes, so a failure
that persists makes one Warning, not one per cycle.

``read_load_failures`` is the one call with I/O (the query, off the event loop); the handler wires both.

Label values come from the tenant's own pods: they are cut to the characters and length of a model name
and an unknown cause becomes ``other`` before they reach the status or an Event.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..api.spec import ModelDeploymentSpec
from ..metrics import MetricsError

MAX_ENTRIES = 32
"""Failures listed in status (the busiest first); the condition's message gives the total."""

MAX_EVENTS = 5
"""Warning Events per cycle; beyond them one Event sums up the rest."""

CONDITION = "SubModelsLoaded"

CAUSES: dict[str, str] = {
    "no_credentials": "no S3 credentials: name a Secret in model.credentialsSecret or give the pods AWS_* variables",
    "access_denied": "access denied: check the credentials and the bucket policy",
    "no_such_key": "no such key: the object is not in the bucket (publish it or fix the URI)",
    "endpoint_unreachable": "the object store is unreachable (the servers retry)",
    "transfer_failed": "the download was interrupted (the servers retry)",
    "server_error": "the object store answered with an error (the servers retry)",
    "checksum_mismatch": "checksum mismatch: the object differs from its SHA256SUMS entry or ETag",
    "disk_budget": "the artifact does not fit the artifact cache's disk budget",
    "too_large": "the model is larger than model.lazyLoading.memoryBudget",
    "invalid_model": "the files are no usable ONNX sentence encoder (corrupt, wrong inputs or no tokenizer)",
    "other": "see the model server's log",
}

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class LoadFailureReport:
    entries: list[dict[str, Any]]
    """``status.subModelLoadFailures``: ``{"model", "cause", "pods", "message"}``, sorted by model."""
    loaded: bool
    """The ``SubModelsLoaded`` condition's status."""
    reason: str
    message: str
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """``(type, reason, message)``: Warning ``SubModelLoadFailed`` for a new (model, cause), Normal
    ``SubModelLoaded`` for a model no longer failing."""


def _model(value: str) -> str:
    return _UNSAFE.sub("_", str(value))[:63] or "_"


def _cause(value: str) -> str:
    return value if value in CAUSES else "other"


def load_failure_report(failures: Mapping[tuple[str, str], int],
                        previous: Sequence[Mapping[str, Any]] | None) -> LoadFailureReport:
    """See the module docstring. ``failures``: pods failing per ``(model, cause)``; ``previous``: the
    ``status.subModelLoadFailures`` written last cycle (None or [] when there were none)."""
    merged: dict[tuple[str, str], int] = {}
    for (model, cause), pods in failures.items():
        if pods and pods > 0:
            key = (_model(model), _cause(cause))
            merged[key] = merged.get(key, 0) + int(pods)
    ranked = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))
    entries = [{"model": m, "cause": c, "pods": n, "message": f"{CAUSES[c]} ({n} pod{'s' if n != 1 else ''})"}
               for (m, c), n in sorted(ranked[:MAX_ENTRIES])]

    before = {(str(e.get("model")), str(e.get("cause"))) for e in previous or []}
    events: list[tuple[str, str, str]] = []
    new = [e for e in entries if (e["model"], e["cause"]) not in before]
    for e in new[:MAX_EVENTS]:
        events.append(("Warning", "SubModelLoadFailed",
                       f"sub-model {e['model']!r} cannot be loaded: {e['cause']}: {e['message']}"))
    if len(new) > MAX_EVENTS:
        events.append(("Warning", "SubModelLoadFailed", f"{len(new) - MAX_EVENTS} more sub-model(s) cannot be "
                       "loaded: see status.subModelLoadFailures"))
    failing_now = {m for m, _ in merged}
    for model in sorted({m for m, _ in before} - failing_now):
        events.append(("Normal", "SubModelLoaded", f"sub-model {model!r} loads again"))

    if not merged:
        return LoadFailureReport([], True, "AllLoaded", "no sub-model is failing to load", events)
    models = sorted(failing_now)
    shown = ", ".join(f"{m} ({', '.join(sorted(c for mm, c in merged if mm == m))})" for m in models[:8])
    more = f" and {len(models) - 8} more" if len(models) > 8 else ""
    return LoadFailureReport(entries, False, "LoadFailed",
                             f"{len(models)} sub-model(s) cannot be loaded: {shown}{more}", events)


async def read_load_failures(source: Any, mspec: ModelDeploymentSpec, namespace: str,
                             name: str) -> dict[tuple[str, str], int] | None:
    """The failing pods per ``(model, cause)`` from ``source`` (a ``PrometheusSource``); None when there are
    no sub-models or the query failed or is not allowed (then status keeps what it said last)."""
    read = getattr(source, "load_failures", None)
    if not mspec.model.sub_models or read is None:
        return None
    try:
        return await asyncio.to_thread(read, namespace, name)
    except MetricsError:
        return None
