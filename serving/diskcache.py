"""A local disk cache of remote model artifacts under a byte budget, with LRU eviction.

* Keyed by URI and version: the entry folder is named from the URI and the object's ETag (or its size
  when the store gives no ETag), so a new object behind the same URI is a new entry.
* Verified: a download is hashed while it streams and checked against a ``SHA256SUMS`` file next to
  the artifact when there is one (``sha256sum`` format), else against the ETag when it is a plain MD5
  (single-part upload), else only its size is checked (logged as such).
* Never partial: bytes stream to a temporary folder inside the cache root, and the folder is renamed
  into place only once complete and verified; leftovers of a crash are removed at start-up.
* One download per artifact: concurrent callers wanting the same entry wait for the one download.
* LRU on disk, independent of the memory budget: before a download, least recently used entries not in
  use are removed until it fits. An artifact larger than the whole budget is refused with a clear error.
* Derived files: a file or folder computed from a verified artifact (ONNX Runtime's optimized graph, see
  ``runtime.write_optimized``) is produced in the background after a load (:meth:`ArtifactCache.derive`, one
  low-priority worker thread) and kept in the artifact's entry; it is counted in the budget and leaves with
  the entry.
* Revalidated: every fetch asks the store for the object's metadata (a HEAD); a deleted object drops its
  entries. When the store cannot be reached, the newest cached copy of that URI is used (with a warning),
  so an evicted model comes back from disk during an outage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .remote import ChecksumMismatch, FetchError, Remote, RetryPolicy, classify, with_retry

log = logging.getLogger("elastiserve.serving.diskcache")

CHECKSUMS_FILE = "SHA256SUMS"
DATA = "data"
META = "meta.json"
TMP = ".tmp"
CHUNK = 16 << 20
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class RemoteObject:
    uri: str
    size: int
    etag: str | None

    @property
    def version_key(self) -> str:
        return f"etag:{self.etag}" if self.etag else f"size:{self.size}"


@dataclass
class CacheEntry:
    key: str
    uri: str
    etag: str | None
    size: int
    digest: str  # algo:hex of the verified bytes
    verified_by: str
    last_used: float
    users: int = 0
    extra: int = 0  # bytes of derived files kept in the entry's folder

    @property
    def disk_bytes(self) -> int:
        return self.size + self.extra


@dataclass
class DiskStats:
    hits: int = 0
    misses: int = 0
    downloads: int = 0
    download_errors: int = 0
    download_bytes: int = 0
    download_seconds: float = 0.0
    evictions: int = 0
    stale_uses: int = 0  # served from disk while the store was unreachable
    retries: int = 0
    derived: int = 0  # derived files produced (optimized graphs)
    derive_errors: int = 0
    derive_seconds: float = 0.0
    events: list[str] = field(default_factory=list)  # recent notable events, newest last


def _key(uri: str, version_key: str) -> str:
    return (hashlib.sha256(uri.encode()).hexdigest()[:24] + "-"
            + hashlib.sha256(version_key.encode()).hexdigest()[:12])


def _uri_prefix(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:24] + "-"


class ArtifactCache:
    """See the module docstring. All methods block (run them in an executor); they are thread-safe.

    ``clock`` (wall seconds) orders the LRU; ``sleep`` is the retry backoff's; ``on_chunk(uri, done, total)``
    and ``on_retry(attempt, error)`` are seams for progress reporting and for fault-injection tests.
    ``keep_derived`` False: loads keep no derived files (the benchmark's side-by-side reference).
    """

    def __init__(self, root: str | Path, *, budget_bytes: int, remote: Remote | None = None,
                 retry: RetryPolicy | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, chunk_bytes: int = CHUNK,
                 on_chunk: Callable[[str, int, int], None] | None = None,
                 on_retry: Callable[[int, FetchError], None] | None = None, keep_derived: bool = True):
        if budget_bytes <= 0:
            raise ValueError("the artifact cache budget must be positive")
        self.root = Path(root).expanduser()
        self.budget = int(budget_bytes)
        self.remote = remote or Remote()
        self.retry = retry or RetryPolicy()
        self.clock, self.sleep = clock, sleep
        self.chunk_bytes = chunk_bytes
        self.on_chunk, self.on_retry = on_chunk, on_retry
        self.keep_derived = keep_derived
        self._deriving: dict[tuple[str, str], Future] = {}
        self._derive_pool: ThreadPoolExecutor | None = None
        self.stats = DiskStats()
        self._lock = threading.Lock()
        self._entries: dict[str, CacheEntry] = {}
        self._inflight: dict[str, Future] = {}
        self._reserved = 0
        self.root.mkdir(parents=True, exist_ok=True)
        self._scan()

    # -- state -----------------------------------------------------------------------------------
    def _scan(self) -> None:
        shutil.rmtree(self.root / TMP, ignore_errors=True)  # partial downloads of an earlier run
        for d in sorted(self.root.iterdir()):
            if d.name == TMP or not d.is_dir():
                continue
            try:
                meta = json.loads((d / META).read_text())
                size = (d / DATA).stat().st_size
                if size != meta["size"]:
                    raise ValueError("size differs from the metadata")
                self._entries[d.name] = CacheEntry(d.name, meta["uri"], meta.get("etag"), size, meta["digest"],
                                                   meta.get("verified_by", "size"), (d / META).stat().st_mtime,
                                                   extra=self._derived_bytes(d, clean=True))
            except (OSError, ValueError, KeyError) as e:
                log.warning("artifact cache: removing unusable entry %s (%s)", d, e)
                shutil.rmtree(d, ignore_errors=True)
        if self._entries:
            log.info("artifact cache %s: %d entries, %d bytes (budget %d)", self.root, len(self._entries),
                     self.used_bytes, self.budget)

    @staticmethod
    def _derived_bytes(d: Path, *, clean: bool = False) -> int:
        """Bytes of the derived files in entry folder ``d``; ``clean``: remove unfinished ones (dot files)."""
        total = 0
        for f in d.iterdir():
            if f.name in (DATA, META):
                continue
            if f.name.startswith("."):
                if clean:
                    _rm(f)
                continue
            with contextlib.suppress(OSError):
                total += sum(x.stat().st_size for x in f.rglob("*") if x.is_file()) if f.is_dir() else f.stat().st_size
        return total

    @property
    def used_bytes(self) -> int:
        return sum(e.disk_bytes for e in self._entries.values())

    def entries(self) -> list[CacheEntry]:
        with self._lock:
            return sorted(self._entries.values(), key=lambda e: e.last_used)

    def status(self) -> dict:
        with self._lock:
            return {"root": str(self.root), "budget_bytes": self.budget, "used_bytes": self.used_bytes,
                    "entries": len(self._entries), "downloading": len(self._inflight),
                    "hits": self.stats.hits, "misses": self.stats.misses, "downloads": self.stats.downloads,
                    "download_errors": self.stats.download_errors, "evictions": self.stats.evictions,
                    "retries": self.stats.retries, "stale_uses": self.stats.stale_uses,
                    "download_bytes": self.stats.download_bytes,
                    "download_seconds": round(self.stats.download_seconds, 6), "derived": self.stats.derived,
                    "derive_errors": self.stats.derive_errors}

    def path_of(self, key: str) -> Path:
        return self.root / key / DATA

    def derived_path(self, data_path: Path, name: str) -> Path:
        """Where a file derived from the artifact at ``data_path`` (as yielded by :meth:`local`) is kept."""
        if not name or "/" in name or name.startswith(".") or name in (DATA, META):
            raise ValueError(f"invalid derived file name {name!r}")
        data_path = Path(data_path)
        if data_path.parent.parent != self.root or data_path.name != DATA:
            raise ValueError(f"{data_path} is not an artifact of the cache {self.root}")
        return data_path.parent / name

    def derive(self, data_path: Path, name: str, produce: Callable[[Path, Path], bool]) -> Future | None:
        """In the background: ``produce(data_path, target)`` writes the derived file or folder ``name`` of the
        artifact at ``data_path`` (as yielded by :meth:`local`) and returns whether it did. One worker thread at
        a lower CPU priority, so the load that asked for it and the requests being served do not wait; the entry
        is kept from eviction meanwhile and the result counted in the budget (:meth:`note_derived`). Returns the
        job, or None when derived files are off, the target exists or is being produced already."""
        if not self.keep_derived:
            return None
        target = self.derived_path(data_path, name)
        key = target.parent.name
        with self._lock:
            e = self._entries.get(key)
            if e is None or target.exists() or (key, name) in self._deriving:
                return None
            if self._derive_pool is None:
                self._derive_pool = ThreadPoolExecutor(1, thread_name_prefix="artifact-derive",
                                                       initializer=_lower_priority)
            e.users += 1
            fut = self._derive_pool.submit(self._run_derive, e, Path(data_path), target, produce)
            self._deriving[(key, name)] = fut
        return fut

    def _run_derive(self, e: CacheEntry, data_path: Path, target: Path, produce: Callable[[Path, Path], bool]) -> None:
        t0 = time.perf_counter()
        try:
            if produce(data_path, target):
                self.note_derived(target)
                self.stats.derived += 1
                self.stats.derive_seconds += time.perf_counter() - t0
                log.info("artifact cache: derived %s of %s in %.3fs", target.name, e.uri, time.perf_counter() - t0)
        except Exception as err:  # noqa: BLE001 - an optimization: log it, never fail a load for it
            self.stats.derive_errors += 1
            log.warning("artifact cache: could not derive %s of %s: %s", target.name, e.uri, err)
        finally:
            with self._lock:
                e.users -= 1
                self._deriving.pop((target.parent.name, target.name), None)

    def wait_derived(self, timeout: float | None = None) -> bool:
        """Wait for the derivations queued so far; False if some are still running after ``timeout``."""
        with self._lock:
            pending = list(self._deriving.values())
        return not wait_futures(pending, timeout=timeout).not_done

    def note_derived(self, path: Path) -> None:
        """Count the derived file or folder ``path`` (from :meth:`derived_path`) in its entry's bytes, evicting least
        recently used entries not in use if the budget is now exceeded; when that is not enough the derived
        file is removed again (it is an optimization, never a reason to fail a load)."""
        path = Path(path)
        victims = []
        with self._lock:
            e = self._entries.get(path.parent.name)
            if e is None or not path.exists():
                return
            e.extra = self._derived_bytes(path.parent)
            for v in sorted(self._entries.values(), key=lambda x: x.last_used):
                if self.used_bytes + self._reserved <= self.budget:
                    break
                if v.users == 0 and v is not e:
                    self._remove(v)
                    victims.append(v)
            if self.used_bytes + self._reserved > self.budget:
                _rm(path)
                e.extra = self._derived_bytes(path.parent)
        for v in victims:
            self.stats.evictions += 1
            log.info("artifact cache: evicted %s (etag %s, %d bytes, LRU) for a derived file", v.uri, v.etag,
                     v.disk_bytes)

    def _note(self, msg: str) -> None:
        self.stats.events = (self.stats.events + [msg])[-50:]

    # -- remote metadata -------------------------------------------------------------------------
    def _endpoint(self, uri: str) -> str | None:
        try:
            return self.remote.endpoint(uri)
        except Exception:  # settings unreadable: classify() reports the real error elsewhere
            return None

    def _classified(self, op: Callable, uri: str) -> Callable:
        def run():
            try:
                return op()
            except FetchError:
                raise
            except Exception as e:  # noqa: BLE001 - every backend error is classified
                raise classify(e, uri, self._endpoint(uri)) from e
        return run

    def _retrying(self, op: Callable, uri: str, what: str):
        def counted(attempt: int, err: FetchError) -> None:
            self.stats.retries += 1
            if self.on_retry is not None:
                self.on_retry(attempt, err)
        return with_retry(self._classified(op, uri), uri, self.retry, sleep=self.sleep, on_retry=counted, what=what)

    def stat(self, uri: str) -> RemoteObject:
        """Size and ETag of the object (a HEAD), with the bounded retry."""
        def head() -> RemoteObject:
            info = self.remote.info(uri)
            if info.get("type") == "directory":
                raise FileNotFoundError(uri)
            size = info.get("size")
            if size is None:
                raise FetchError(uri, "error", "the store did not report the object's size")
            etag = info.get("ETag") or info.get("etag")
            return RemoteObject(uri, int(size), str(etag).strip('"') if etag else None)
        return self._retrying(head, uri, "HEAD")

    def size(self, uri: str) -> int:
        """The object's size: from the store, else (store unreachable) from the newest cached copy."""
        try:
            return self._revalidate(uri).size
        except FetchError as e:
            if e.retryable:
                with self._lock:
                    cands = [c for c in self._entries.values() if c.uri == uri]
                if cands:
                    return max(cands, key=lambda c: c.last_used).size
            raise

    # -- the main entry point --------------------------------------------------------------------
    @contextlib.contextmanager
    def local(self, uri: str, *, optional: bool = False) -> Iterator[Path | None]:
        """``with cache.local(uri) as path:`` a verified local copy of ``uri``, kept from eviction
        meanwhile. ``optional``: yield None when the object does not exist."""
        try:
            entry = self._acquire(uri)
        except FetchError as e:
            if optional and e.cause == "no_such_key":
                yield None
                return
            raise
        try:
            yield self.path_of(entry.key)
        finally:
            with self._lock:
                entry.users -= 1

    def fetch(self, uri: str) -> Path:
        """A verified local copy of ``uri`` (not protected from eviction afterwards: prefer :meth:`local`)."""
        with self.local(uri) as p:
            return p

    def drop(self, uri: str, reason: str) -> int:
        """Remove every unused entry of ``uri`` (e.g. its content did not load). Returns how many."""
        with self._lock:
            victims = [e for e in self._entries.values() if e.uri == uri and e.users == 0]
            for e in victims:
                self._remove(e)
        for e in victims:
            log.warning("artifact cache: dropped %s (%s)", uri, reason)
            self._note(f"dropped {uri}: {reason}")
        return len(victims)

    def _revalidate(self, uri: str) -> RemoteObject:
        """:meth:`stat`; an object gone from the store takes its cached copies with it."""
        try:
            return self.stat(uri)
        except FetchError as e:
            if e.cause == "no_such_key":
                self.drop(uri, "the object was deleted from the store")
            raise

    def _acquire(self, uri: str) -> CacheEntry:
        try:
            obj = self._revalidate(uri)
        except FetchError as e:
            if e.retryable:
                stale = self._newest(uri)
                if stale is not None:
                    self.stats.stale_uses += 1
                    log.warning("artifact cache: %s; using the cached copy (etag %s)", e, stale.etag)
                    self._note(f"store unreachable, served {uri} from disk")
                    return stale
            raise
        key = _key(uri, obj.version_key)
        while True:
            with self._lock:
                e = self._entries.get(key)
                if e is not None:
                    e.users += 1
                    e.last_used = self.clock()
                    self.stats.hits += 1
                    self._touch(e)
                    return e
                fut = self._inflight.get(key)
                owner = fut is None
                if owner:
                    fut = self._inflight[key] = Future()
                    self.stats.misses += 1
            if not owner:
                fut.result()  # the owner's error is raised here too
                continue  # the entry is in place now (or was evicted already: loop)
            try:
                entry = self._download(obj, key)
            except BaseException as err:
                with self._lock:
                    self._inflight.pop(key, None)
                fut.set_exception(err)
                fut.exception()  # mark retrieved
                raise
            with self._lock:
                self._inflight.pop(key, None)
                entry.users += 1
            fut.set_result(None)
            return entry

    def _newest(self, uri: str) -> CacheEntry | None:
        with self._lock:
            cands = [e for e in self._entries.values() if e.uri == uri]
            if not cands:
                return None
            e = max(cands, key=lambda c: c.last_used)
            e.users += 1
            e.last_used = self.clock()
            return e

    def _touch(self, e: CacheEntry) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.root / e.key / META, (e.last_used, e.last_used))

    # -- download --------------------------------------------------------------------------------
    def _expected_sha256(self, uri: str) -> str | None:
        """The digest listed for the artifact in a ``SHA256SUMS`` file next to it, if there is one."""
        sums_uri = posixpath.join(posixpath.dirname(uri), CHECKSUMS_FILE)
        if sums_uri == uri:
            return None

        def read() -> str | None:
            try:
                with self.remote.open(sums_uri, 1 << 20) as f:
                    text = f.read().decode("utf-8", "replace")
            except FileNotFoundError:
                return None
            name = posixpath.basename(uri)
            for line in text.splitlines():
                parts = line.strip().split(None, 1)
                if len(parts) == 2 and parts[1].lstrip("*") == name:
                    return parts[0].lower()
            return None
        return self._retrying(read, sums_uri, "checksum read")

    def _download(self, obj: RemoteObject, key: str) -> CacheEntry:
        uri = obj.uri
        if obj.size > self.budget:
            raise FetchError(uri, "disk_budget",
                             f"the artifact is {obj.size} bytes, larger than the whole artifact cache budget "
                             f"({self.budget} bytes): raise --artifact-cache-budget")
        t0 = time.perf_counter()
        tmp = self.root / TMP / uuid.uuid4().hex
        self._make_room(obj.size, uri)
        try:
            expected = self._expected_sha256(uri)
            sha = self._retrying(lambda: self._stream(obj, tmp, expected), uri, "download")
        except BaseException as e:
            self.stats.download_errors += 1
            self._note(f"download of {uri} failed: {e}")
            raise
        finally:
            with self._lock:
                self._reserved -= obj.size
        verified_by = "sha256" if expected else ("etag-md5" if obj.etag and _MD5_RE.match(obj.etag) else "size")
        if verified_by == "size":
            log.warning("artifact cache: %s has no SHA256SUMS entry and a multipart ETag: only its size "
                        "was verified", uri)
        meta = {"uri": uri, "etag": obj.etag, "size": obj.size, "digest": sha, "verified_by": verified_by,
                "fetched_at": time.time()}
        (tmp / META).write_text(json.dumps(meta))
        dest = self.root / key
        try:
            os.rename(tmp, dest)  # atomic: the entry appears complete or not at all
        except OSError:  # another process sharing the folder put it there first
            shutil.rmtree(tmp, ignore_errors=True)
        dt = time.perf_counter() - t0
        entry = CacheEntry(key, uri, obj.etag, obj.size, sha, verified_by, self.clock())
        with self._lock:
            self._entries[key] = entry
            self.stats.downloads += 1
            self.stats.download_bytes += obj.size
            self.stats.download_seconds += dt
        log.info("artifact cache: downloaded %s (%d bytes, %s) in %.3fs", uri, obj.size, verified_by, dt)
        return entry

    def _stream(self, obj: RemoteObject, tmp: Path, expected_sha256: str | None) -> str:
        """One attempt: stream the object into ``tmp/data`` hashing as it goes, then verify. Returns the
        digest as ``algo:hex`` - one hash only, the one that verifies (sha256 when there is no MD5 ETag)."""
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        by_etag = not expected_sha256 and bool(obj.etag and _MD5_RE.match(obj.etag))
        algo = "md5" if by_etag else "sha256"
        h = hashlib.new(algo, usedforsecurity=False)
        done = 0
        try:
            with self.remote.open(obj.uri, self.chunk_bytes) as src, open(tmp / DATA, "wb") as dst:
                while True:
                    chunk = src.read(self.chunk_bytes)
                    if not chunk:
                        break
                    dst.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    if self.on_chunk is not None:
                        self.on_chunk(obj.uri, done, obj.size)
                dst.flush()
                os.fsync(dst.fileno())
            if done != obj.size:
                raise ChecksumMismatch(f"got {done} bytes, the store announced {obj.size}")
            digest = h.hexdigest()
            if expected_sha256 and digest != expected_sha256:
                raise ChecksumMismatch(f"sha256 {digest} differs from {expected_sha256} in {CHECKSUMS_FILE}")
            if by_etag and digest != obj.etag:
                raise ChecksumMismatch(f"md5 {digest} differs from the ETag {obj.etag}")
            return f"{algo}:{digest}"
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _make_room(self, nbytes: int, uri: str) -> None:
        """Evict least recently used entries not in use until ``nbytes`` more fit; reserve them."""
        with self._lock:
            victims = []
            for e in sorted(self._entries.values(), key=lambda e: e.last_used):
                if self.used_bytes + self._reserved + nbytes <= self.budget:
                    break
                if e.users == 0:
                    self._remove(e)
                    victims.append(e)
            if self.used_bytes + self._reserved + nbytes > self.budget:
                self.stats.download_errors += 1
                raise FetchError(uri, "disk_budget",
                                 f"cannot free {nbytes} bytes in the artifact cache (budget {self.budget} bytes, "
                                 f"{self.used_bytes} in use by loads, {self._reserved} reserved by downloads): "
                                 "retry shortly or raise --artifact-cache-budget")
            self._reserved += nbytes
        for e in victims:
            self.stats.evictions += 1
            log.info("artifact cache: evicted %s (etag %s, %d bytes, LRU)", e.uri, e.etag, e.disk_bytes)

    def _remove(self, e: CacheEntry) -> None:
        """Caller holds the lock."""
        self._entries.pop(e.key, None)
        shutil.rmtree(self.root / e.key, ignore_errors=True)


def _lower_priority() -> None:
    """Derivations are background work: lower this worker thread's CPU priority (Linux: per thread)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def _rm(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def artifact_cache_for(config, store) -> ArtifactCache | None:
    """The server's artifact cache: only when a store root is remote (s3://, http(s)://)."""
    if not store.remote_roots:
        return None
    from . import paths

    root = config.artifact_cache_dir or str(paths.cache_root() / "artifacts")
    try:
        remote = Remote(credentials_dir=config.s3_credentials_dir)
        if config.s3_credentials_dir:
            remote.settings  # read now: a missing folder is a start-up error, not a load error
        return ArtifactCache(root, budget_bytes=config.artifact_cache_budget, remote=remote,
                             retry=RetryPolicy(attempts=config.fetch_attempts))
    except (OSError, ValueError) as e:
        from .errors import ServingError

        raise ServingError(f"artifact cache {root}: {e}") from e
