"""The tenancy policy for metrics: which Prometheus a ModelDeployment may name, who may run custom PromQL.

A tenant is whoever may create a ModelDeployment in one namespace. The cluster admin configures the
operator (``elastiserve run`` flags, chart values); a spec can only choose within that:

- ``spec.metrics.prometheus.url`` must be the operator's default Prometheus or an entry of the allowlist
  (``--prometheus-allowed-url [NAMESPACE=]URL``: an entry with a namespace is allowed there only). Any
  other URL is refused before a connection is made, so the operator never becomes a client of a
  tenant-chosen HTTP service, and a bearer token Secret is never sent anywhere the admin did not list.
- Custom PromQL (``rules.*.query``) runs only in namespaces the admin lists
  (``--custom-queries-namespace``, ``*`` = every namespace), or against a Prometheus allowlisted for
  that one namespace (the tenant's own). Elsewhere the built-in queries, which select the model's own
  namespace and name, are the only ones run: one tenant cannot read another's series.

Pure: no I/O. The operator builds one ``MetricsPolicy`` at start-up and asks it per cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .errors import MetricsError

TOKEN_SECRET_LABEL = "elastiserve.dev/prometheus-token"
"""A Secret named by ``bearerTokenSecret`` must carry this label with value ``"true"``: its owner's
consent that the operator reads it and sends it to the (allowlisted) Prometheus."""


class NotAllowed(MetricsError):
    """The spec asks for something the operator's tenancy policy does not permit."""


def normalize_url(url: str) -> str:
    """``scheme://host:port/path`` with the default port made explicit, the host lower-cased and no
    trailing slash; raises ValueError for anything else (user info, query, fragment)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    if parts.username or parts.password or parts.query or parts.fragment or "#" in url or "?" in url:
        raise ValueError(f"{url!r} must not carry user info, a query or a fragment")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname.lower()}:{port}{parts.path.rstrip('/')}"


@dataclass(frozen=True)
class AllowedUrl:
    url: str
    """Normalized (see ``normalize_url``)."""
    namespace: str | None = None
    """Allowed for this namespace only; None = every namespace."""


def parse_allowed(entries: list[str]) -> list[AllowedUrl]:
    """``[NAMESPACE=]URL`` entries (flags, or a comma/space-separated environment variable)."""
    out = []
    for raw in entries:
        for entry in raw.replace(",", " ").split():
            ns, sep, url = entry.partition("=")
            if not sep or "://" in ns:
                ns, url = "", entry
            try:
                out.append(AllowedUrl(normalize_url(url), ns or None))
            except ValueError as exc:
                raise ValueError(f"--prometheus-allowed-url {entry!r}: {exc}") from None
    return out


@dataclass(frozen=True)
class MetricsPolicy:
    default_url: str | None = None
    allowed: tuple[AllowedUrl, ...] = ()
    custom_query_namespaces: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def build(cls, default_url: str | None, allowed: list[str] | None = None,
              custom_query_namespaces: list[str] | None = None) -> "MetricsPolicy":
        names = frozenset(n for item in custom_query_namespaces or [] for n in item.replace(",", " ").split())
        return cls(default_url, tuple(parse_allowed(allowed or [])), names)

    def prometheus_url(self, namespace: str, spec_url: str | None) -> tuple[str, bool]:
        """The URL to query for a spec in ``namespace``, and whether it is the namespace's own (allowlisted
        for that namespace only). Raises ``NotAllowed`` naming the field and the fix."""
        if spec_url is None:
            if not self.default_url:
                raise NotAllowed("no Prometheus URL: set spec.metrics.prometheus.url to an allowed URL, "
                                 "or run the operator with --prometheus-url")
            return self.default_url, False
        try:
            wanted = normalize_url(spec_url)
        except ValueError as exc:
            raise NotAllowed(f"spec.metrics.prometheus.url: {exc}") from None
        if self.default_url and wanted == normalize_url(self.default_url):
            return spec_url, False
        for entry in self.allowed:
            if entry.url == wanted and entry.namespace in (None, namespace):
                return spec_url, entry.namespace == namespace
        raise NotAllowed(
            "spec.metrics.prometheus.url is not on the operator's allowlist: remove it to use the default "
            "Prometheus, or ask the cluster admin to add it (--prometheus-allowed-url, chart value "
            "operator.prometheusAllowedUrls)"
        )

    def custom_queries_allowed(self, namespace: str, own_prometheus: bool) -> bool:
        return own_prometheus or "*" in self.custom_query_namespaces or namespace in self.custom_query_namespaces
