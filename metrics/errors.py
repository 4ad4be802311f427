"""Typed problems of a metric source (KEDA-style explicit edge cases)."""


class MetricsError(Exception):
    """A signal could not be read; the message says why, for conditions and Events."""


class NoData(MetricsError):
    """The query returned no series (or only NaN): the signal is unknown, never zero."""


class AmbiguousSeries(MetricsError):
    """The query returned several series where one was expected; aggregate it with sum() or avg()."""


class QueryFailed(MetricsError):
    """Prometheus was unreachable, timed out, or rejected the query (e.g. a PromQL syntax error)."""
