"""Remote object stores (S3 through s3fs, http(s) through fsspec): settings, errors and retries.

* :class:`S3Settings` - endpoint, region and credentials from the standard AWS environment variables
  (``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``/``AWS_DEFAULT_REGION``,
  ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``), overridden by the files of a
  mounted Secret (``--s3-credentials-dir``: one file per variable, named like the variable). Secret values
  never appear in a spec, a log line or an error message.
* :func:`classify` turns whatever a backend raised into a :class:`FetchError` with a ``cause``
  (``no_credentials``, ``access_denied``, ``no_such_key``, ``endpoint_unreachable``, ``transfer_failed``,
  ``server_error``, ``checksum_mismatch``, ``disk_budget``, ``error``) and whether a retry can help.
* :class:`RetryPolicy` - bounded attempts with exponential backoff (the sleep is injectable).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar
from urllib.parse import urlsplit

log = logging.getLogger("elastiserve.serving.remote")

T = TypeVar("T")

# the variables read from the environment and, with priority, from the Secret's files
S3_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

RETRYABLE_CAUSES = frozenset({"endpoint_unreachable", "transfer_failed", "server_error", "checksum_mismatch"})

_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
                 "InvalidToken", "ExpiredToken", "AccountProblem", "403", "Forbidden"}
_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "404", "NotFound"}
_SERVER_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "500", "502", "503", "504", "RequestTimeout"}


class FetchError(Exception):
    """A remote read failed. ``cause`` is one of the names in the module docstring; ``retryable`` says
    whether another attempt can succeed (network trouble, a torn transfer, a 5xx)."""

    def __init__(self, uri: str, cause: str, detail: str):
        self.uri, self.cause, self.detail = uri, cause, detail
        self.retryable = cause in RETRYABLE_CAUSES
        super().__init__(f"{uri}: {detail}")


class ChecksumMismatch(Exception):
    pass


# --------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    source: str = "environment"  # where the credentials came from (for messages; never the values)

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, credentials_dir: str | Path | None = None) -> "S3Settings":
        """The environment, overridden by the non-empty files of ``credentials_dir`` (a mounted Secret)."""
        values = {k: v for k, v in (os.environ if env is None else env).items() if k in S3_VARIABLES and v}
        source = "environment"
        if credentials_dir:
            d = Path(credentials_dir)
            if not d.is_dir():
                raise ValueError(f"--s3-credentials-dir {str(d)!r} is not a directory (mount the credentials "
                                 f"Secret there, with keys named {', '.join(S3_VARIABLES[4:6])}, ...)")
            found = []
            for k in S3_VARIABLES:
                f = d / k
                if f.is_file():
                    v = f.read_text().strip()
                    if v:
                        values[k], found = v, found + [k]
            if found:
                source = f"secret files in {d}"
        return cls(endpoint_url=values.get("AWS_ENDPOINT_URL_S3") or values.get("AWS_ENDPOINT_URL"),
                   region=values.get("AWS_REGION") or values.get("AWS_DEFAULT_REGION"),
                   access_key_id=values.get("AWS_ACCESS_KEY_ID"), secret_access_key=values.get("AWS_SECRET_ACCESS_KEY"),
                   session_token=values.get("AWS_SESSION_TOKEN"), source=source)

    def describe(self) -> str:
        return (f"endpoint {self.endpoint_url or 'AWS default'}, region {self.region or 'default'}, "
                f"credentials {'from ' + self.source if self.access_key_id else 'from the AWS default chain'}")

    def __repr__(self) -> str:  # never print the secret
        return f"S3Settings({self.describe()})"


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; before try n+1 wait ``min(base * 2**(n-1), cap)`` seconds."""

    attempts: int = 4
    base_seconds: float = 0.25
    cap_seconds: float = 4.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"fetch attempts must be at least 1, not {self.attempts}")

    def delay(self, attempt: int) -> float:
        return min(self.base_seconds * 2 ** (attempt - 1), self.cap_seconds)


def with_retry(op: Callable[[], T], uri: str, policy: RetryPolicy, *, sleep: Callable[[float], None] = time.sleep,
               on_retry: Callable[[int, FetchError], None] | None = None, what: str = "read") -> T:
    """Run ``op``; on a retryable :class:`FetchError` wait and try again, at most ``policy.attempts`` times.
    The last error is raised with the number of attempts in its detail."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return op()
        except Exception as e:  # noqa: BLE001 - classified below
            err = e if isinstance(e, FetchError) else classify(e, uri)
            if not err.retryable or attempt == policy.attempts:
                if attempt > 1:
                    err = FetchError(uri, err.cause, f"{err.detail} (gave up after {attempt} attempts)")
                raise err from e
            log.warning("%s of %s failed (attempt %d/%d, retrying in %.2fs): %s", what, uri, attempt,
                        policy.attempts, policy.delay(attempt), err.detail)
            if on_retry is not None:
                on_retry(attempt, err)
            sleep(policy.delay(attempt))
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------
def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _client_error_code(e: BaseException) -> str | None:
    resp = getattr(e, "response", None)
    if isinstance(resp, dict):
        err = resp.get("Error") or {}
        code = err.get("Code")
        if code:
            return str(code)
        status = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return str(status) if status else None
    return None


def classify(e: BaseException, uri: str, endpoint: str | None = None) -> FetchError:
    """What went wrong, in words a user can act on."""
    if isinstance(e, FetchError):
        return e
    names = [type(x).__name__ for x in _chain(e)]
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    where = f" ({endpoint})" if endpoint else ""
    for x in _chain(e):
        n = type(x).__name__
        if n in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
            return FetchError(uri, "no_credentials",
                              "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or mount a "
                              "Secret with those keys and pass its folder as --s3-credentials-dir")
        if isinstance(x, ChecksumMismatch):
            return FetchError(uri, "checksum_mismatch", f"checksum mismatch: {x}")
        code = _client_error_code(x)
        if code in _DENIED_CODES:
            return FetchError(uri, "access_denied", f"access denied ({code}): check the credentials and the "
                                                    f"bucket policy")
        if code in _MISSING_CODES:
            return FetchError(uri, "no_such_key", f"no such key ({code}): the object does not exist in the bucket")
        if code in _SERVER_CODES:
            return FetchError(uri, "server_error", f"the S3 server answered {code}{where}")
        if n in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionRefusedError",
                 "ClientConnectorDNSError", "ConnectionClosedError") or isinstance(x, socket.gaierror):
            return FetchError(uri, "endpoint_unreachable", f"endpoint unreachable{where}: {first}")
        if n in ("ClientPayloadError", "ServerDisconnectedError", "IncompleteRead", "ReadTimeoutError",
                 "ConnectionResetError", "ResponseStreamingError", "ClientOSError", "TimeoutError",
                 "FSTimeoutError", "BrokenPipeError", "HTTPClientError", "AioReadTimeoutError"):
            return FetchError(uri, "transfer_failed", f"transfer interrupted{where}: {first}")
    if isinstance(e, PermissionError):
        return FetchError(uri, "access_denied", f"access denied: {first}")
    if isinstance(e, FileNotFoundError):
        return FetchError(uri, "no_such_key", "no such key: the object does not exist")
    if isinstance(e, ImportError):
        scheme = urlsplit(uri).scheme
        return FetchError(uri, "error", f"{scheme}:// needs an fsspec backend that is not installed ({e})")
    if isinstance(e, (ConnectionError, TimeoutError)):
        return FetchError(uri, "endpoint_unreachable", f"endpoint unreachable{where}: {first}")
    return FetchError(uri, "error", f"{' <- '.join(names[:3])}: {first}")


# --------------------------------------------------------------------------------------
# filesystems
# --------------------------------------------------------------------------------------
class Remote:
    """The fsspec filesystems of the remote schemes, created on first use with :class:`S3Settings`.

    s3fs' and botocore's own retries are turned down to one attempt: :func:`with_retry` is the one
    bounded retry loop, so a failure surfaces after a known number of tries.
    """

    def __init__(self, settings: S3Settings | None = None, *, credentials_dir: str | Path | None = None,
                 connect_timeout: float = 5.0, read_timeout: float = 30.0):
        self._settings = settings
        self.credentials_dir = credentials_dir
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._fs: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def settings(self) -> S3Settings:
        if self._settings is None:
            self._settings = S3Settings.load(credentials_dir=self.credentials_dir)
        return self._settings

    def endpoint(self, uri: str) -> str | None:
        scheme = urlsplit(uri).scheme
        if scheme == "s3":
            return self.settings.endpoint_url or "AWS S3"
        return f"{scheme}://{urlsplit(uri).netloc}"

    def fs(self, uri: str):
        scheme = urlsplit(uri).scheme
        with self._lock:
            fs = self._fs.get(scheme)
            if fs is None:
                fs = self._fs[scheme] = self._make(scheme)
            return fs

    def _make(self, scheme: str):
        import fsspec

        if scheme != "s3":
            return fsspec.filesystem(scheme, skip_instance_cache=True)
        try:
            import s3fs
        except ImportError as e:
            raise ImportError(f"s3fs is not installed: {e}") from e
        st = self.settings
        client_kwargs: dict[str, Any] = {}
        if st.endpoint_url:
            client_kwargs["endpoint_url"] = st.endpoint_url
        if st.region:
            client_kwargs["region_name"] = st.region
        kw: dict[str, Any] = dict(skip_instance_cache=True, use_listings_cache=False,
                                  client_kwargs=client_kwargs,
                                  config_kwargs={"connect_timeout": self.connect_timeout,
                                                 "read_timeout": self.read_timeout,
                                                 "retries": {"max_attempts": 1, "mode": "standard"}})
        if st.access_key_id:
            kw.update(key=st.access_key_id, secret=st.secret_access_key, token=st.session_token)
        log.info("S3: %s", st.describe())
        fs = s3fs.S3FileSystem(**kw)
        fs.retries = 1  # s3fs' own retry loop (a class attribute): one try, with_retry() retries
        return fs

    def info(self, uri: str) -> dict:
        fs = self.fs(uri)
        if hasattr(fs, "invalidate_cache"):
            fs.invalidate_cache(uri)
        return fs.info(uri)

    def open(self, uri: str, block_size: int):
        fs = self.fs(uri)
        if urlsplit(uri).scheme == "s3":
            return fs.open(uri, "rb", block_size=block_size, cache_type="none", fill_cache=False)
        # http(s): every read here is sequential (streamed to disk), so a streaming file (block_size=0)
        # needs no Range support; plain file servers (python -m http.server) have none.
        return fs.open(uri, "rb", block_size=0)
