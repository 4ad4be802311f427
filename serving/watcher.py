"""The models-file trigger: a mounted ConfigMap of ``name=uri`` lines, polled; changed lines are hot-switched."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Callable

from .errors import ServingError
from .memcache import ModelCache, SwitchResult
from .store import ModelStore, parse_models_text

log = logging.getLogger("elastiserve.serving.loader")


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
