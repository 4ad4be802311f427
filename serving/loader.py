"""Lazy loading of sub-models: a model store, and an in-memory LRU cache under a byte budget.

* :class:`ModelStore` turns ``name=uri`` pairs into :class:`ModelSource` objects and refuses
  anything outside the configured store roots (path traversal, foreign schemes or hosts).
  Local paths and ``file://`` are read directly; ``s3://`` and ``http(s)://`` go through fsspec.
* :class:`ModelCache` loads a sub-model on first use (one load per model even when a burst of
  requests arrives together: single flight on asyncio), keeps resident models under a byte
  budget with LRU eviction, unloads models idle for longer than ``idle_seconds`` (time comes
  from an injected ``clock``), and refuses a model larger than the whole budget up front.
* :meth:`ModelCache.switch` hot-switches one sub-model to a new URI/version: the new version is
  loaded next to the old one (both accounted), then the registry entry is swapped in one step;
  requests holding a lease on the old session finish on it, and it is released with the last lease.
* :class:`ModelsFileWatcher` polls a ``name=uri`` file (a mounted ConfigMap) and switches the
  models whose URI changed.

Memory accounting is the artifact's file size times ``bytes_factor`` (ORT's in-memory size
tracks the initializer bytes closely; the factor lets an operator account for overhead).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import logging
import os
import posixpath
import re
import time
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import unquote, urlsplit

from . import paths

log = logging.getLogger("elastiserve.serving.loader")

REMOTE_SCHEMES = ("s3", "http", "https")


# --------------------------------------------------------------------------------------
# errors (each maps to one HTTP status in the server)
# --------------------------------------------------------------------------------------
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
    status = 500
    code = "model_load_failed"

    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason
        super().__init__(f"model {name!r} failed to load: {reason}")

    def payload(self) -> dict:
        return {**super().payload(), "model": self.name}


# --------------------------------------------------------------------------------------
# sizes
# --------------------------------------------------------------------------------------
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30, "ti": 2**40, "tib": 2**40}


def parse_bytes(value: str | int | float) -> int:
    """'512Mi' -> 536870912, '1G' -> 10**9, '2048' -> 2048 (Kubernetes quantity style)."""
    if isinstance(value, (int, float)):
        return int(value)
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", value)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot parse byte size {value!r} (examples: 536870912, 512Mi, 1Gi, 500M)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


# --------------------------------------------------------------------------------------
# model store
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSource:
    """Where one sub-model's files live. ``location`` is a local directory/file or a remote URL."""

    name: str
    location: str
    remote: bool = False

    def _is_file(self) -> bool:
        return self.location.endswith(".onnx")

    def artifact(self, variant: str) -> str:
        if self._is_file():
            return self.location
        fname = paths.VARIANT_FILES[variant]
        return posixpath.join(self.location, fname) if self.remote else str(Path(self.location) / fname)

    def sibling(self, fname: str) -> str:
        base = posixpath.dirname(self.location) if self._is_file() else self.location
        return posixpath.join(base, fname) if self.remote else str(Path(base) / fname)

    # -- blocking I/O (call from an executor) -------------------------------------------
    def _fs(self):
        import fsspec

        scheme = urlsplit(self.location).scheme
        try:
            return fsspec.filesystem(scheme)
        except ImportError as e:  # e.g. s3fs not installed
            raise ModelLoadError(self.name, f"{scheme}:// needs an fsspec backend that is not installed ({e})") from e

    def size(self, variant: str) -> int:
        art = self.artifact(variant)
        try:
            if not self.remote:
                return os.stat(art).st_size
            info = self._fs().info(art)
            size = info.get("size")
            if size is None:
                raise ModelLoadError(self.name, f"cannot determine the size of {art}")
            return int(size)
        except FileNotFoundError:
            raise ModelLoadError(self.name, f"model file not found: {art}") from None
        except ServingError:
            raise
        except Exception as e:  # network errors and the like
            raise ModelLoadError(self.name, f"cannot stat {art}: {e}") from e

    def read(self, fname_or_uri: str) -> bytes:
        if not self.remote:
            return Path(fname_or_uri).read_bytes()
        with self._fs().open(fname_or_uri, "rb") as f:
            return f.read()

    def load(self, variant: str, intra_op_threads: int | None = None):
        """Load the ONNX session + tokenizer; returns a :class:`runtime.Embedder`."""
        from .runtime import Embedder, make_session
        from .textproc import load_tokenizer

        art = self.artifact(variant)
        try:
            manifest: dict = {}
            try:
                manifest = json.loads(self.read(self.sibling(paths.CONFIG_FILE)))
            except (FileNotFoundError, ValueError):
                manifest = {}
            max_length = int(manifest.get("max_length", 256))
            try:
                tok_json = self.read(self.sibling(paths.TOKENIZER_FILE)).decode("utf-8")
            except FileNotFoundError:
                raise ModelLoadError(self.name, f"{paths.TOKENIZER_FILE} not found next to {art}") from None
            tok = load_tokenizer(tok_json, max_length, from_string=True)
            model_src = art if not self.remote else self.read(art)
            if not self.remote and not os.path.exists(art):
                raise ModelLoadError(self.name, f"model file not found: {art}")
            session = make_session(model_src, intra_op_threads)
            emb = Embedder(session, tok, name=self.name, variant=variant, manifest=manifest)
            if emb._output is None or not ({"input_ids", "attention_mask"} <= emb._inputs):
                raise ModelLoadError(self.name, f"{art} is not a sentence encoder (inputs {sorted(emb._inputs)})")
            return emb
        except ServingError:
            raise
        except FileNotFoundError as e:
            raise ModelLoadError(self.name, f"file not found: {e.filename or e}") from e
        except Exception as e:  # corrupt protobuf, bad tokenizer json, ORT errors...
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelLoadError(self.name, f"{type(e).__name__}: {msg[:300]}") from e


class ModelStore:
    """The configured store roots; resolves ``name=uri`` pairs and rejects anything outside them."""

    def __init__(self, roots: Iterable[str | Path] | None = None):
        roots = [str(r) for r in (roots or [paths.models_root()])]
        if not roots:
            raise ValueError("at least one model store root is required")
        self.local_roots: list[Path] = []
        self.remote_roots: list[str] = []
        for r in roots:
            scheme = urlsplit(r).scheme
            if scheme in REMOTE_SCHEMES:
                self.remote_roots.append(r.rstrip("/") + "/")
            elif scheme == "file":
                self.local_roots.append(Path(unquote(urlsplit(r).path)).expanduser().resolve())
            elif scheme == "" or len(scheme) == 1:  # "C:" style drive letters count as local
                self.local_roots.append(Path(r).expanduser().resolve())
            else:
                raise ValueError(f"unsupported model store scheme {scheme!r} in {r!r} (local path, file://, s3://, http(s)://)")
        self.roots = roots

    @property
    def default_root(self) -> str:
        return self.roots[0]

    def resolve(self, name: str, uri: str | None = None) -> ModelSource:
        if not paths.valid_model_name(name):
            raise InvalidModelName(f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' "
                                   "(one path segment, not starting with '.' and without '..')")
        uri = uri or name
        parts = urlsplit(uri)
        scheme = parts.scheme
        if scheme in REMOTE_SCHEMES:
            return self._remote(name, uri)
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise UnsafeModelURI(f"file:// URI with a host is not allowed: {uri!r}")
            return self._local(name, Path(unquote(parts.path)))
        if scheme and len(scheme) > 1:
            raise UnsafeModelURI(f"unsupported URI scheme {scheme!r} for model {name!r}")
        p = Path(uri).expanduser()
        if not p.is_absolute():
            if self.local_roots and urlsplit(self.default_root).scheme not in REMOTE_SCHEMES:
                p = self.local_roots[0] / p
            elif self.remote_roots:
                return self._remote(name, self.remote_roots[0] + uri)
        return self._local(name, p)

    def _local(self, name: str, p: Path) -> ModelSource:
        real = p.resolve()  # follows symlinks and '..'
        for root in self.local_roots:
            if real == root or root in real.parents:
                return ModelSource(name, str(real), remote=False)
        raise UnsafeModelURI(f"model {name!r}: {str(p)!r} is outside the model store "
                             f"({', '.join(str(r) for r in self.local_roots) or 'no local roots'})")

    def _remote(self, name: str, uri: str) -> ModelSource:
        parts = urlsplit(uri)
        segments = unquote(parts.path).split("/")
        if any(s in ("..", ".") for s in segments) or "\\" in unquote(parts.path) or parts.query or parts.fragment:
            raise UnsafeModelURI(f"model {name!r}: URI {uri!r} contains '..', '.', a query or a fragment")
        norm = f"{parts.scheme}://{parts.netloc}{parts.path}"
        for root in self.remote_roots:
            if norm.startswith(root) or norm.rstrip("/") + "/" == root:
                return ModelSource(name, norm.rstrip("/"), remote=True)
        raise UnsafeModelURI(f"model {name!r}: {uri!r} is outside the model store "
                             f"({', '.join(self.remote_roots) or 'no remote roots'})")

    def resolve_all(self, pairs: Mapping[str, str | None]) -> dict[str, ModelSource]:
        return {name: self.resolve(name, uri) for name, uri in pairs.items()}

    def discover(self) -> dict[str, ModelSource]:
        """Every directory directly under a local root holding a model artifact."""
        found: dict[str, ModelSource] = {}
        for root in self.local_roots:
            if not root.is_dir():
                continue
            for d in sorted(root.iterdir()):
                if d.is_dir() and paths.valid_model_name(d.name) and d.name not in found and any(
                        (d / f).exists() for f in paths.VARIANT_FILES.values()):
                    found[d.name] = ModelSource(d.name, str(d.resolve()))
        return found


def parse_model_pairs(items: Iterable[str]) -> dict[str, str | None]:
    """['a=/x/a', 'b'] -> {'a': '/x/a', 'b': None}; also accepts comma-separated items."""
    out: dict[str, str | None] = {}
    for item in items:
        for part in (p.strip() for p in item.split(",")):
            if not part:
                continue
            name, sep, uri = part.partition("=")
            name = name.strip()
            if name in out:
                raise ValueError(f"model {name!r} listed twice")
            out[name] = uri.strip() if sep else None
    return out


def parse_models_text(text: str) -> dict[str, str | None]:
    """The content of a ``--models-file``: ``name=uri`` lines (same syntax as ``--model``; comma lists
    allowed), blank lines and ``#`` comments ignored."""
    lines = [ln.strip() for ln in text.splitlines()]
    return parse_model_pairs([ln for ln in lines if ln and not ln.startswith("#")])


def read_models_file(path: str | Path) -> dict[str, str | None] | None:
    """Parse a ``--models-file``; None when it does not exist (yet). Unparsable content raises
    :class:`ServingError` (the server refuses to start with it)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    try:
        return parse_models_text(text)
    except ValueError as e:
        raise ServingError(f"models file {path}: {e}") from None


# --------------------------------------------------------------------------------------
# versions
# --------------------------------------------------------------------------------------
DEFAULT_VERSION = "1"
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,62}$")
# a URI segment that names a version: "v2", "2", "v1.3.0", "2024-05-01"
_VERSION_SEGMENT_RE = re.compile(r"^v?[0-9][A-Za-z0-9._+-]{0,62}$")


def valid_version(version: str) -> bool:
    return isinstance(version, str) and bool(_VERSION_RE.match(version))


def version_from_location(location: str) -> str | None:
    """The version named by the last directory of a model URI (``.../enc/v2`` or ``.../enc/v2/model.onnx``
    -> ``v2``; ``.../enc/3`` -> ``3``), or None when that segment does not look like a version."""
    path = urlsplit(location).path if "://" in location else location
    segs = [seg for seg in path.replace("\\", "/").split("/") if seg]
    if segs and segs[-1].endswith(".onnx"):
        segs = segs[:-1]
    if segs and _VERSION_SEGMENT_RE.match(segs[-1]):
        return segs[-1]
    return None


def _manifest_version(model: Any) -> str | None:
    man = getattr(model, "manifest", None)
    v = man.get("version") if isinstance(man, dict) else None
    return str(v) if v is not None and valid_version(str(v)) else None


class InvalidVersion(ServingError):
    status = 400
    code = "invalid_version"


@dataclass
class SwitchResult:
    """Outcome of :meth:`ModelCache.switch`."""

    name: str
    version: str
    previous_version: str
    location: str
    loaded: bool  # the active version is resident now
    switched: bool  # a different session (or URI) is active now
    seconds: float = 0.0
    bytes: int | None = None
    old_leases: int = 0  # requests still running on the previous session when it was swapped out

    def as_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "previous_version": self.previous_version,
                "location": self.location, "loaded": self.loaded, "switched": self.switched,
                "seconds": round(self.seconds, 6), "bytes": self.bytes, "old_leases": self.old_leases}


# --------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------
def _reclaim() -> None:
    """After an unload: collect cycles, then give freed heap pages back to the OS (glibc only;
    best effort). Run in the load executor so a miss does not wait for it (~10-30 ms)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:
        pass


@dataclass
class Entry:
    name: str
    model: Any
    nbytes: int
    loaded_at: float
    last_used: float
    pinned: bool = False
    in_use: int = 0
    source: ModelSource | None = None
    load_seconds: float = 0.0
    version: str = "1"
    retiring: bool = False  # replaced by a hot switch; released when its last lease ends
    batcher: Any = None  # the server's micro-batcher bound to this entry's model


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    loads: int = 0
    load_errors: int = 0
    evictions: int = 0
    idle_unloads: int = 0
    replaced: int = 0
    switches: int = 0
    switch_errors: int = 0
    load_seconds: list[float] = field(default_factory=list)


class ModelCache:
    """LRU cache of loaded sub-models under a byte budget; asyncio single-flight loading.

    ``loader(source, variant) -> model`` and ``sizer(source, variant) -> bytes`` are blocking
    callables run in ``executor``; ``clock`` returns seconds (monotonic) for LRU/idle bookkeeping.
    """

    def __init__(self, sources: Mapping[str, ModelSource], *, budget_bytes: int, idle_seconds: float = 0.0,
                 variant: str = "fp32", clock: Callable[[], float] = time.monotonic, metrics=None,
                 executor: Executor | None = None, loader: Callable[[ModelSource, str], Any] | None = None,
                 sizer: Callable[[ModelSource, str], int] | None = None, bytes_factor: float = 1.0,
                 intra_op_threads: int | None = None, trim_after_unload: bool = True):
        if budget_bytes <= 0:
            raise ValueError("budget_bytes must be positive")
        self.sources: dict[str, ModelSource] = dict(sources)
        self.budget = int(budget_bytes)
        self.idle_seconds = float(idle_seconds)
        self.variant = variant
        self.clock = clock
        self.metrics = metrics
        self.executor = executor
        self.bytes_factor = bytes_factor
        self._loader = loader or (lambda src, variant: src.load(variant, intra_op_threads))
        self._sizer = sizer or (lambda src, variant: src.size(variant))
        self._resident: OrderedDict[str, Entry] = OrderedDict()  # LRU order: first = least recently used
        self._loading: dict[str, asyncio.Task] = {}
        self._reserved = 0
        self.last_error: dict[str, str] = {}
        self.stats = CacheStats()
        self._trim = trim_after_unload
        self.versions: dict[str, str] = {}  # explicit version labels given to switch()
        self._seen_versions: dict[str, tuple[ModelSource, str]] = {}  # version found at the last load
        self._retiring: list[Entry] = []  # swapped-out sessions still serving leased requests
        self._switch_locks: dict[str, asyncio.Lock] = {}
        self._published: dict[str, str] = {}
        self.last_switch_error: dict[str, str] = {}
        if metrics is not None:
            for name in self.sources:
                metrics.declare_model(name)
                self._publish_version(name)

    # -- introspection ----------------------------------------------------------------------
    def known(self) -> list[str]:
        return sorted(self.sources)

    def resident(self) -> list[str]:
        return list(self._resident)

    @property
    def resident_bytes(self) -> int:
        """Accounted bytes of the resident models, plus swapped-out versions still serving a request."""
        return sum(e.nbytes for e in self._resident.values()) + sum(e.nbytes for e in self._retiring)

    @property
    def retiring_bytes(self) -> int:
        return sum(e.nbytes for e in self._retiring)

    def version_of(self, name: str) -> str:
        """The active version: the resident entry's, else the explicit label, else the one named by the
        URI, else the one the manifest gave at the last load of this URI, else ``1``."""
        self._check_known(name)
        e = self._resident.get(name)
        if e is not None:
            return e.version
        src = self.sources[name]
        seen = self._seen_versions.get(name)
        return (self.versions.get(name) or version_from_location(src.location)
                or (seen[1] if seen and seen[0] == src else None) or DEFAULT_VERSION)

    def _derive_version(self, name: str, src: ModelSource, model: Any) -> str:
        v = self.versions.get(name) or version_from_location(src.location) or _manifest_version(model)
        if v:
            self._seen_versions[name] = (src, v)
        return v or DEFAULT_VERSION

    def _publish_version(self, name: str) -> None:
        if self.metrics is None or not hasattr(self.metrics, "set_version"):
            return
        v = self.version_of(name)
        old = self._published.get(name)
        if v != old:
            self.metrics.set_version(name, v, old)
            self._published[name] = v

    def _publish_bytes(self, name: str) -> None:
        if self.metrics is None or not hasattr(self.metrics, "set_model_bytes"):
            return
        e = self._resident.get(name)
        retiring = sum(r.nbytes for r in self._retiring if r.name == name)
        self.metrics.set_model_bytes(name, (e.nbytes if e else 0) + retiring)

    def is_loaded(self, name: str) -> bool:
        return name in self._resident

    def status(self, name: str) -> dict:
        self._check_known(name)
        e = self._resident.get(name)
        return {"name": name, "loaded": e is not None, "loading": name in self._loading,
                "bytes": e.nbytes if e else None, "pinned": bool(e and e.pinned),
                "last_error": self.last_error.get(name), "location": self.sources[name].location,
                "version": self.version_of(name), "switching": self._switching(name),
                "retiring_sessions": sum(1 for r in self._retiring if r.name == name),
                "last_switch_error": self.last_switch_error.get(name)}

    def _switching(self, name: str) -> bool:
        lock = self._switch_locks.get(name)
        return bool(lock and lock.locked())

    def _check_known(self, name: str) -> None:
        if name not in self.sources:
            if not paths.valid_model_name(name):
                raise InvalidModelName(f"invalid model name {name!r}")
            raise UnknownModel(name, self.sources)

    # -- the main entry point -----------------------------------------------------------------
    async def get(self, name: str, *, count: bool = True) -> tuple[Entry, bool]:
        """Return (entry, hit). Loads on a miss; concurrent misses share one load.
        ``count=False`` (preload, admin) leaves the hit/miss statistics alone."""
        self._check_known(name)
        e = self._resident.get(name)
        if e is not None:
            self._touch(e)
            if count:
                self.stats.hits += 1
                if self.metrics:
                    self.metrics.on_hit(name)
            return e, True
        if count:
            self.stats.misses += 1
            if self.metrics:
                self.metrics.on_miss(name)
        task = self._loading.get(name)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(name))
            # retrieve the outcome even if every waiter went away (no "exception never retrieved")
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._loading[name] = task
        # shield: a cancelled waiter (client went away) must not cancel the shared load
        e = await asyncio.shield(task)
        if e.model is None or e.retiring:  # swapped out or evicted before this waiter resumed
            e = self._resident.get(name, e)
        self._touch(e)
        return e, False

    def acquire(self, name: str) -> "_Lease":
        """``async with cache.acquire(name) as (entry, hit):`` marks the model in use meanwhile."""
        return _Lease(self, name)

    async def preload(self, names: Iterable[str], *, pin: bool = True) -> dict[str, str | None]:
        """Load ``names`` (in order); returns name -> error message or None. Never raises."""
        out: dict[str, str | None] = {}
        for name in names:
            try:
                e, _ = await self.get(name, count=False)
                e.pinned = pin
                out[name] = None
            except ServingError as err:
                out[name] = str(err)
                log.error("preload of %s failed: %s", name, err)
        return out

    # -- eviction / idle ----------------------------------------------------------------------
    def sweep_idle(self, now: float | None = None) -> list[str]:
        """Unload every unpinned, unused model idle for at least ``idle_seconds``."""
        if self.idle_seconds <= 0:
            return []
        now = self.clock() if now is None else now
        victims = [n for n, e in self._resident.items()
                   if not e.pinned and e.in_use == 0 and now - e.last_used >= self.idle_seconds]
        for n in victims:
            self.unload(n, "idle")
        return victims

    async def run_janitor(self, interval: float | None = None) -> None:
        """Periodically call :meth:`sweep_idle` (cancel the task to stop it)."""
        if self.idle_seconds <= 0:
            return
        interval = interval or max(0.5, min(30.0, self.idle_seconds / 4))
        while True:
            await asyncio.sleep(interval)
            self.sweep_idle()

    def unload(self, name: str, reason: str) -> bool:
        e = self._resident.pop(name, None)
        if e is None:
            return False
        e.model = None
        if reason == "evicted":
            self.stats.evictions += 1
        elif reason == "idle":
            self.stats.idle_unloads += 1
        elif reason == "replaced":
            self.stats.replaced += 1
        if self.metrics:
            self.metrics.on_unload(name, reason)
            self.metrics.set_resident(len(self._resident))
        log.info("unloaded %s (%s, %d bytes)", name, reason, e.nbytes)
        del e
        if self._trim:  # give the memory back now rather than at the next GC / heap growth
            try:
                asyncio.get_running_loop().run_in_executor(self.executor, _reclaim)
            except RuntimeError:  # no running loop: do it inline
                _reclaim()
        return True

    def update_sources(self, sources: Mapping[str, ModelSource]) -> list[str]:
        """Swap the configured models; resident ones whose location changed (or vanished) are
        unloaded with reason ``replaced``. Returns their names."""
        replaced = []
        for name, e in list(self._resident.items()):
            new = sources.get(name)
            if new is None or new != self.sources.get(name):
                self.unload(name, "replaced")
                replaced.append(name)
        for name in list(self.versions):
            if sources.get(name) != self.sources.get(name):
                del self.versions[name]
        self.sources = dict(sources)
        if self.metrics:
            for name in self.sources:
                if name not in self._resident:
                    self.metrics.declare_model(name)
                self._publish_version(name)
        return replaced

    async def reload(self, name: str) -> Entry:
        """Unload (reason ``replaced``) and load again, e.g. after the files changed."""
        self._check_known(name)
        pinned = bool(self._resident.get(name) and self._resident[name].pinned)
        self.unload(name, "replaced")
        e, _ = await self.get(name, count=False)
        e.pinned = pinned
        return e

    # -- hot switch ---------------------------------------------------------------------------
    async def switch(self, name: str, source: ModelSource | None = None, version: str | None = None) -> SwitchResult:
        """Make ``source`` (default: the current URI, i.e. reload it) the active version of ``name``.

        * resident: the new version is loaded *next to* the old one (both accounted against the budget;
          idle other models are evicted as usual), then the registry entry is swapped without an await
          in between, so every request sees either the old or the new session. Requests holding a lease
          on the old session finish on it; it is released when its last lease ends.
        * not resident: only the URI (and label) change after a cheap existence check (stat); the next
          load uses it. With ``source=None`` the current version is loaded now.
        * any failure raises :class:`SwitchFailed`; the old version stays active and keeps serving.

        ``version`` labels the new version (default: from the URI, else the manifest, else ``1``).
        Switches of one model are serialised; different models switch independently.
        """
        self._check_known(name)
        if version is not None and not valid_version(version):
            raise InvalidVersion(f"invalid version {version!r}: 1-63 letters, digits, '.', '_', '+' or '-', "
                                 "starting with a letter or digit")
        if source is not None and source.name != name:
            source = ModelSource(name, source.location, source.remote)
        lock = self._switch_locks.setdefault(name, asyncio.Lock())
        async with lock:
            return await self._switch(name, source, version)

    async def _switch(self, name: str, source: ModelSource | None, version: str | None) -> SwitchResult:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        while True:
            pending = self._loading.get(name)
            if pending is not None:  # a lazy load in progress finishes first (its waiters get that version)
                await asyncio.gather(asyncio.shield(pending), return_exceptions=True)
            old_src = self.sources[name]
            new_src = source or old_src
            label = version or (self.versions.get(name) if source is None else None)
            requested = label or version_from_location(new_src.location)
            previous = self.version_of(name)
            old = self._resident.get(name)
            if old is not None:
                return await self._switch_resident(name, old, old_src, new_src, label, requested, previous, t0)
            if source is None:  # nothing resident: "load the current version now"
                before = self.versions.get(name)
                if version is not None:
                    self.versions[name] = version
                try:
                    e, _ = await self.get(name, count=False)
                except ServingError as err:
                    if before is None:
                        self.versions.pop(name, None)
                    else:
                        self.versions[name] = before
                    raise self._switch_error(name, str(err), None, requested, err) from err
                self._publish_version(name)
                return SwitchResult(name, e.version, previous, old_src.location, loaded=True, switched=True,
                                    seconds=time.perf_counter() - t0, bytes=e.nbytes)
            # not resident: re-point only (after checking that the artifact is there)
            try:
                await loop.run_in_executor(self.executor, self._sizer, new_src, self.variant)
            except ServingError as err:
                raise self._switch_error(name, str(err), None, requested, err) from err
            except Exception as err:
                raise self._switch_error(name, f"{type(err).__name__}: {err}", None, requested) from err
            if name in self._loading or name in self._resident:
                continue  # a request started loading the old version meanwhile: switch beside it
            self._set_source(name, new_src, label)
            log.info("model %s now points at %s (version %s; not resident, loads on first use)",
                     name, new_src.location, self.version_of(name))
            return SwitchResult(name, self.version_of(name), previous, new_src.location, loaded=False,
                                switched=new_src != old_src or self.version_of(name) != previous,
                                seconds=time.perf_counter() - t0)

    async def _switch_resident(self, name: str, old: Entry, old_src: ModelSource, new_src: ModelSource,
                               label: str | None, requested: str | None, previous: str, t0: float) -> SwitchResult:
        loop = asyncio.get_running_loop()
        reserved = 0
        try:
            raw = await loop.run_in_executor(self.executor, self._sizer, new_src, self.variant)
            nbytes = int(raw * self.bytes_factor)
            if nbytes > self.budget:
                if self.metrics:
                    self.metrics.on_load(name, "refused")
                raise ModelTooLarge(name, nbytes, self.budget)
            if nbytes + old.nbytes > self.budget:
                raise self._switch_error(
                    name, f"the new version needs {nbytes} bytes next to the old version's {old.nbytes} bytes "
                          f"({nbytes + old.nbytes} together) but the memory budget is {self.budget} bytes; "
                          f"raise --memory-budget to at least {nbytes + old.nbytes} for a hot switch",
                    previous, requested)
            self._make_room(name, nbytes, exclude=(name,))
            self._reserved += nbytes
            reserved = nbytes
            model = await loop.run_in_executor(self.executor, self._loader, new_src, self.variant)
            self._reserved -= reserved
            reserved = 0
            if self.sources.get(name) != old_src:
                raise ModelLoadError(name, "model was reconfigured during the switch")
            self._make_room(name, nbytes, exclude=(name,))
            # ---- the swap: no await from here to the return --------------------------------------
            dt = time.perf_counter() - t0
            now = self.clock()
            prev = self._resident.get(name)  # normally `old`; None if it was evicted meanwhile
            self._set_source(name, new_src, label)
            e = Entry(name, model, nbytes, now, now, pinned=old.pinned, source=new_src, load_seconds=dt,
                      version=self._derive_version(name, new_src, model))
            self._resident[name] = e
            self._resident.move_to_end(name)
            leases = 0
            if prev is not None:
                leases = prev.in_use
                self._retire(prev)
            self.stats.loads += 1
            self.stats.switches += 1
            self.stats.load_seconds.append(dt)
            self.last_error.pop(name, None)
            self.last_switch_error.pop(name, None)
            if self.metrics:
                self.metrics.on_load(name, "success", dt, nbytes)
                self.metrics.set_resident(len(self._resident))
                if hasattr(self.metrics, "on_switch"):
                    self.metrics.on_switch(name, "success")
                self._publish_bytes(name)
                self._publish_version(name)
            log.info("model %s switched %s -> %s in %.3fs (%d bytes; %d request(s) finishing on the old version)",
                     name, previous, e.version, dt, nbytes, leases)
            return SwitchResult(name, e.version, previous, new_src.location, loaded=True, switched=True,
                                seconds=dt, bytes=nbytes, old_leases=leases)
        except SwitchFailed:
            raise
        except ServingError as err:
            if self.metrics and not isinstance(err, (ModelTooLarge, BudgetExhausted)):
                self.metrics.on_load(name, "error", time.perf_counter() - t0)
            raise self._switch_error(name, str(err), previous, requested, err) from err
        except Exception as err:  # a loader that raised something unexpected
            if self.metrics:
                self.metrics.on_load(name, "error", time.perf_counter() - t0)
            raise self._switch_error(name, f"{type(err).__name__}: {err}", previous, requested) from err
        finally:
            self._reserved -= reserved

    def _switch_error(self, name: str, reason: str, active: str | None, requested: str | None,
                      cause: ServingError | None = None) -> SwitchFailed:
        err = SwitchFailed(name, reason, active_version=active, requested_version=requested, cause=cause)
        self.stats.switch_errors += 1
        self.last_switch_error[name] = str(err)
        if self.metrics and hasattr(self.metrics, "on_switch"):
            self.metrics.on_switch(name, "error")
        log.error("%s", err)
        return err

    def _set_source(self, name: str, src: ModelSource, label: str | None) -> None:
        self.sources[name] = src
        if label:
            self.versions[name] = label
        else:
            self.versions.pop(name, None)
        self._publish_version(name)

    def _retire(self, e: Entry) -> None:
        e.retiring = True
        if e.in_use == 0:
            self._release_retired(e)
        else:
            self._retiring.append(e)

    def _release_retired(self, e: Entry) -> None:
        """The last request on a swapped-out session finished: free it."""
        if e in self._retiring:
            self._retiring.remove(e)
        e.model = None
        e.batcher = None
        self.stats.replaced += 1
        if self.metrics:
            if hasattr(self.metrics, "on_version_released"):
                self.metrics.on_version_released(e.name)
            self._publish_bytes(e.name)
        log.info("released the previous version %s of %s (%d bytes)", e.version, e.name, e.nbytes)
        if self._trim:
            try:
                asyncio.get_running_loop().run_in_executor(self.executor, _reclaim)
            except RuntimeError:
                _reclaim()

    def _touch(self, e: Entry) -> None:
        e.last_used = self.clock()
        if e.name in self._resident:
            self._resident.move_to_end(e.name)

    def _make_room(self, name: str, nbytes: int, exclude: Iterable[str] = ()) -> None:
        """Evict least recently used models (never those in ``exclude``) until ``nbytes`` fits. Called
        without awaiting in between reservation and check, so concurrent loads cannot both take the
        last bytes."""
        exclude = set(exclude)

        def over() -> int:
            return self.resident_bytes + self._reserved + nbytes - self.budget

        if over() <= 0:
            return
        # idle models first (LRU order), then ones serving a request right now: those stay alive
        # until their request finishes, so the overshoot is bounded by the in-flight requests.
        for allow_in_use in (False, True):
            for victim, e in list(self._resident.items()):
                if over() <= 0:
                    return
                if (e.in_use and not allow_in_use) or victim in exclude or self._switching(victim):
                    continue  # a model being hot-switched keeps its old version until the swap
                self.unload(victim, "evicted")
        if over() > 0:
            raise BudgetExhausted(
                f"cannot fit model {name!r} ({nbytes} bytes): {self._reserved} bytes are reserved by loads in "
                f"progress, budget {self.budget} bytes; retry shortly")

    async def _load(self, name: str) -> Entry:
        loop = asyncio.get_running_loop()
        src = self.sources[name]
        t0 = time.perf_counter()
        reserved = 0
        try:
            raw = await loop.run_in_executor(self.executor, self._sizer, src, self.variant)
            nbytes = int(raw * self.bytes_factor)
            if nbytes > self.budget:
                if self.metrics:
                    self.metrics.on_load(name, "refused")
                raise ModelTooLarge(name, nbytes, self.budget)
            self._make_room(name, nbytes)
            self._reserved += nbytes
            reserved = nbytes
            model = await loop.run_in_executor(self.executor, self._loader, src, self.variant)
            dt = time.perf_counter() - t0
            now = self.clock()
            e = Entry(name, model, nbytes, now, now, source=src, load_seconds=dt,
                      version=self._derive_version(name, src, model))
            self._reserved -= reserved
            reserved = 0
            if self.sources.get(name) != src:  # reconfigured while loading: do not keep a stale model
                current = self._resident.get(name)
                if current is not None and current.source == self.sources.get(name):
                    return current  # a hot switch installed the new version meanwhile: serve that one
                raise ModelLoadError(name, "model was reconfigured while loading")
            self._make_room(name, nbytes)
            self._resident[name] = e
            self.stats.loads += 1
            self.stats.load_seconds.append(dt)
            self.last_error.pop(name, None)
            if self.metrics:
                self.metrics.on_load(name, "success", dt, nbytes)
                self.metrics.set_resident(len(self._resident))
                self._publish_bytes(name)
                self._publish_version(name)
            log.info("loaded %s version %s in %.3fs (%d bytes)", name, e.version, dt, nbytes)
            return e
        except ServingError as err:
            self._fail(name, err, t0)
            raise
        except Exception as err:  # a loader that raised something unexpected
            wrapped = ModelLoadError(name, f"{type(err).__name__}: {err}")
            self._fail(name, wrapped, t0)
            raise wrapped from err
        finally:
            self._reserved -= reserved
            self._loading.pop(name, None)

    def _fail(self, name: str, err: ServingError, t0: float) -> None:
        self.last_error[name] = str(err)
        if isinstance(err, ModelTooLarge):
            return  # counted as "refused"
        self.stats.load_errors += 1
        if self.metrics:
            self.metrics.on_load(name, "error", time.perf_counter() - t0)
        log.error("%s", err)

    def close(self) -> None:
        for name in list(self._resident):
            e = self._resident.pop(name)
            e.model = None
        for e in self._retiring:
            e.model = None
        self._retiring.clear()
        for t in self._loading.values():
            t.cancel()


class _Lease:
    def __init__(self, cache: ModelCache, name: str):
        self.cache, self.name, self.entry = cache, name, None

    async def __aenter__(self) -> tuple[Entry, bool]:
        e, hit = await self.cache.get(self.name)
        e.in_use += 1
        self.entry = e
        return e, hit

    async def __aexit__(self, *exc) -> None:
        if self.entry is not None:
            self.entry.in_use -= 1
            self.entry.last_used = self.cache.clock()
            if self.entry.retiring and self.entry.in_use == 0:
                self.cache._release_retired(self.entry)


# --------------------------------------------------------------------------------------
# file trigger: a mounted ConfigMap of name=uri lines
# --------------------------------------------------------------------------------------
class ModelsFileWatcher:
    """Polls a ``name=uri`` file (e.g. a ConfigMap mounted as a file) and hot-switches every model
    whose line changed.

    The file is read every ``interval`` seconds of ``clock`` (the content is compared, so a ConfigMap
    update - an atomic symlink swap - and an in-place edit are both seen). Only lines that changed since
    the last read trigger a switch, so a switch done through the HTTP API is not undone by an unrelated
    edit. A failed switch is logged, kept in :attr:`errors` and retried only when the file changes
    again. Unknown names, unparsable content and a missing file are reported and ignored: the server
    keeps serving what it has.
    """

    def __init__(self, path: str | Path, store: ModelStore, cache: ModelCache, *, interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        if interval <= 0:
            raise ValueError("the models file poll interval must be positive")
        self.path = Path(path)
        self.store, self.cache = store, cache
        self.interval = float(interval)
        self.clock = clock
        self._last_check: float | None = None
        self._content: str | None = None
        self._pairs: dict[str, str | None] = {}
        self.errors: dict[str, str] = {}
        self.results: list[SwitchResult] = []

    def prime(self) -> dict[str, str | None] | None:
        """Take the current content as the baseline (the server started with it)."""
        try:
            self._content = self.path.read_text()
        except FileNotFoundError:
            self._content = None
            return None
        self._pairs = parse_models_text(self._content)
        return dict(self._pairs)

    async def poll(self, *, force: bool = False) -> list[SwitchResult]:
        """Check the file if ``interval`` has passed on the clock (or ``force``); switch changed models."""
        now = self.clock()
        if not force and self._last_check is not None and now - self._last_check < self.interval:
            return []
        self._last_check = now
        try:
            text = await asyncio.get_running_loop().run_in_executor(self.cache.executor, self.path.read_text)
        except FileNotFoundError:
            return []  # not mounted (yet): keep serving
        except OSError as e:
            self.errors["_file"] = f"cannot read {self.path}: {e}"
            log.error("%s", self.errors["_file"])
            return []
        if text == self._content:
            return []
        self._content = text
        try:
            pairs = parse_models_text(text)
        except ValueError as e:
            self.errors["_file"] = f"{self.path}: {e}"
            log.error("models file ignored: %s", self.errors["_file"])
            return []
        self.errors.pop("_file", None)
        previous, self._pairs = self._pairs, pairs
        out: list[SwitchResult] = []
        for name, uri in pairs.items():
            if name in previous and previous[name] == uri:
                continue  # this line did not change
            if name not in self.cache.sources:
                self.errors[name] = f"model {name!r} is not served by this replica (adding models needs a restart)"
                log.warning("models file: %s", self.errors[name])
                continue
            try:
                src = self.store.resolve(name, uri)
                if src == self.cache.sources[name]:
                    self.errors.pop(name, None)
                    continue  # already active
                res = await self.cache.switch(name, src)
            except ServingError as e:
                self.errors[name] = str(e)
                log.error("models file: switch of %s to %s failed: %s", name, uri, e)
                continue
            self.errors.pop(name, None)
            self.results.append(res)
            out.append(res)
            log.info("models file: %s switched to %s (version %s)", name, res.location, res.version)
        return out

    async def run(self, tick: float | None = None) -> None:
        """Poll forever (cancel the task to stop)."""
        tick = tick or min(self.interval, 1.0)
        while True:
            await asyncio.sleep(tick)
            try:
                await self.poll()
            except Exception:  # never let the watcher die
                log.exception("models file watcher")
