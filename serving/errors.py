"""The serving errors: each maps to one HTTP status and a machine-readable ``code`` in the server."""

from __future__ import annotations

from typing import Iterable


class ServingError(Exception):
    status = 500
    code = "internal"

    def payload(self) -> dict:
        return {"error": str(self), "code": self.code}


class InvalidModelName(ServingError):
    status = 400
    code = "invalid_model_name"


class UnsafeModelURI(ServingError):
    status = 400
    code = "uri_outside_store"


class UnknownModel(ServingError):
    status = 404
    code = "unknown_model"

    def __init__(self, name: str, known: Iterable[str]):
        self.name, self.known = name, sorted(known)
        super().__init__(f"unknown model {name!r}; known models: {', '.join(self.known) or '(none)'}")

    def payload(self) -> dict:
        return {**super().payload(), "model": self.name, "known_models": self.known}


class ModelTooLarge(ServingError):
    status = 507
    code = "model_larger_than_budget"

    def __init__(self, name: str, nbytes: int, budget: int):
        self.name, self.nbytes, self.budget = name, nbytes, budget
        super().__init__(f"model {name!r} needs {nbytes} bytes ({nbytes / 2**20:.1f} MiB) but the memory budget "
                         f"is {budget} bytes ({budget / 2**20:.1f} MiB); refusing to load it")

    def payload(self) -> dict:
        return {**super().payload(), "model": self.name, "model_bytes": self.nbytes, "budget_bytes": self.budget}


class BudgetExhausted(ServingError):
    status = 503
    code = "budget_exhausted"


class SwitchFailed(ServingError):
    """A hot switch did not happen; the previously active version keeps serving."""

    status = 409
    code = "switch_failed"

    def __init__(self, name: str, reason: str, *, active_version: str | None, requested_version: str | None,
                 cause: ServingError | None = None):
        self.name, self.reason = name, reason
        self.active_version, self.requested_version = active_version, requested_version
        self.cause = cause
        if isinstance(cause, BudgetExhausted):
            self.status = 503  # transient: loads in progress hold the budget
        keeps = (f"version {active_version!r} keeps serving" if active_version is not None
                 else "the model was not loaded")
        super().__init__(f"model {name!r}: switch to version {requested_version!r} failed ({keeps}): {reason}")

    def payload(self) -> dict:
        return {**super().payload(), "model": self.name, "reason": self.reason,
                "active_version": self.active_version, "requested_version": self.requested_version,
                "cause": self.cause.code if self.cause is not None else None}


class ModelLoadError(ServingError):
    """A sub-model could not be loaded. ``cause`` names what went wrong when it is known (a remote read:
    ``no_credentials``, ``access_denied``, ``no_such_key``, ``endpoint_unreachable``, ``checksum_mismatch``...);
    trouble reaching the store is a 503 (retry later), anything else a 500."""

    status = 500
    code = "model_load_failed"
    TRANSIENT = frozenset({"endpoint_unreachable", "transfer_failed", "server_error"})

    def __init__(self, name: str, reason: str, *, cause: str | None = None, uri: str | None = None):
        self.name, self.reason, self.cause, self.uri = name, reason, cause, uri
        if cause in self.TRANSIENT:
            self.status = 503
        super().__init__(f"model {name!r} failed to load: {reason}")

    def payload(self) -> dict:
        out = {**super().payload(), "model": self.name}
        if self.cause is not None:
            out.update(cause=self.cause, uri=self.uri)
        return out


class InvalidVersion(ServingError):
    status = 400
    code = "invalid_version"
