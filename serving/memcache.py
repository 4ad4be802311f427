"""The in-memory LRU cache of loaded sub-models under a byte budget, and the hot switch.

* :class:`ModelCache` loads a sub-model on first use (one load per model even when a burst of
  requests arrives together: single flight on asyncio), keeps resident models under a byte
  budget with LRU eviction, unloads models idle for longer than ``idle_seconds`` (time comes
  from an injected ``clock``), and refuses a model larger than the whole budget up front.
* :meth:`ModelCache.switch` hot-switches one sub-model to a new URI/version: the new version is
  loaded next to the old one (both accounted), then the registry entry is swapped in one step;
  requests holding a lease on the old session finish on it, and it is released with the last lease.

Memory accounting is the artifact's file size times ``bytes_factor`` (ORT's in-memory size
tracks the initializer bytes closely; the factor lets an operator account for overhead).
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import gc
import logging
import time
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from . import paths
from .errors import (BudgetExhausted, InvalidModelName, InvalidVersion, ModelLoadError, ModelTooLarge, ServingError,
                     SwitchFailed, UnknownModel)
from .store import DEFAULT_VERSION, ModelSource, valid_version, version_from_location

log = logging.getLogger("elastiserve.serving.loader")


def _manifest_version(model: Any) -> str | None:
    man = getattr(model, "manifest", None)
    v = man.get("version") if isinstance(man, dict) else None
    return str(v) if v is not None and valid_version(str(v)) else None


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
        if self.metrics:  # a failure was about the old location: the next load says what the new one does
            for name in self.sources:
                if sources.get(name) != self.sources[name]:
                    self.metrics.set_load_failure(name, None)
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
            source = dataclasses.replace(source, name=name)
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
                self.metrics.set_load_failure(name, None)
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
                raise ModelLoadError(name, "model was reconfigured while loading", cause="reconfigured")
            self._make_room(name, nbytes)
            self._resident[name] = e
            self.stats.loads += 1
            self.stats.load_seconds.append(dt)
            self.last_error.pop(name, None)
            if self.metrics:
                self.metrics.on_load(name, "success", dt, nbytes)
                self.metrics.set_load_failure(name, None)
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
        cause = _failure_cause(err)
        if self.metrics and name in self.sources and cause is not None:
            self.metrics.set_load_failure(name, cause)
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


def _failure_cause(err: ServingError) -> str | None:
    """The bounded ``cause`` label of a failed load (see ``metrics.LOAD_FAILURE_CAUSES``); None when the
    model itself is not the problem (memory briefly reserved by other loads: the request is retried)."""
    from .metrics import load_failure_cause

    if isinstance(err, ModelTooLarge):
        return "too_large"
    if isinstance(err, BudgetExhausted) or getattr(err, "cause", None) == "reconfigured":
        return None
    return load_failure_cause(getattr(err, "cause", None))


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
