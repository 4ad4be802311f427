"""Lazy loading of sub-models: a model store, and an in-memory LRU cache under a byte budget.

* :class:`ModelStore` turns ``name=uri`` pairs into :class:`ModelSource` objects and refuses
  anything outside the configured store roots (path traversal, foreign schemes or hosts).
  Local paths and ``file://`` are read directly; ``s3://`` and ``http(s)://`` go through fsspec.
* :class:`ModelCache` loads a sub-model on first use (one load per model even when a burst of
  requests arrives together: single flight on asyncio), keeps resident models under a byte
  budget with LRU eviction, unloads models idle for longer than ``idle_seconds`` (time comes
  from an injected ``clock``), and refuses a model larger than the whole budget up front.

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


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    loads: int = 0
    load_errors: int = 0
    evictions: int = 0
    idle_unloads: int = 0
    replaced: int = 0
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
        if metrics is not None:
            for name in self.sources:
                metrics.declare_model(name)

    # -- introspection ----------------------------------------------------------------------
    def known(self) -> list[str]:
        return sorted(self.sources)

    def resident(self) -> list[str]:
        return list(self._resident)

    @property
    def resident_bytes(self) -> int:
        return sum(e.nbytes for e in self._resident.values())

    def is_loaded(self, name: str) -> bool:
        return name in self._resident

    def status(self, name: str) -> dict:
        self._check_known(name)
        e = self._resident.get(name)
        return {"name": name, "loaded": e is not None, "loading": name in self._loading,
                "bytes": e.nbytes if e else None, "pinned": bool(e and e.pinned),
                "last_error": self.last_error.get(name), "location": self.sources[name].location}

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
        self.sources = dict(sources)
        if self.metrics:
            for name in self.sources:
                if name not in self._resident:
                    self.metrics.declare_model(name)
        return replaced

    async def reload(self, name: str) -> Entry:
        """Unload (reason ``replaced``) and load again, e.g. after the files changed."""
        self._check_known(name)
        pinned = bool(self._resident.get(name) and self._resident[name].pinned)
        self.unload(name, "replaced")
        e, _ = await self.get(name, count=False)
        e.pinned = pinned
        return e

    def _touch(self, e: Entry) -> None:
        e.last_used = self.clock()
        if e.name in self._resident:
            self._resident.move_to_end(e.name)

    def _make_room(self, name: str, nbytes: int) -> None:
        """Evict least recently used models until ``nbytes`` fits. Called without awaiting in
        between reservation and check, so concurrent loads cannot both take the last bytes."""
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
                if e.in_use and not allow_in_use:
                    continue
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
            e = Entry(name, model, nbytes, now, now, source=src, load_seconds=dt)
            self._reserved -= reserved
            reserved = 0
            if self.sources.get(name) != src:  # reconfigured while loading: do not keep a stale model
                raise ModelLoadError(name, "model was reconfigured while loading")
            self._make_room(name, nbytes)
            self._resident[name] = e
            self.stats.loads += 1
            self.stats.load_seconds.append(dt)
            self.last_error.pop(name, None)
            if self.metrics:
                self.metrics.on_load(name, "success", dt, nbytes)
                self.metrics.set_resident(len(self._resident))
            log.info("loaded %s in %.3fs (%d bytes)", name, dt, nbytes)
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
