"""aiohttp model server: KServe v2 / Open Inference Protocol plus a small embedding API.

    GET  /v2/health/live                 200 while the process runs
    GET  /v2/health/ready                200 once the preload list has been attempted
    GET  /v2                             server metadata
    GET  /v2/models                      configured models and their state (convenience)
    GET  /v2/models/{name}               model metadata (inputs/outputs)
    GET  /v2/models/{name}/ready         200 if resident or loadable, 503 after a failed load
    POST /v2/models/{name}/infer         {"inputs":[{"name":"text","shape":[n],"datatype":"BYTES","data":[...]}]}
                                         -> {"outputs":[{"name":"embeddings","datatype":"FP32","shape":[n,d],...}]}
    POST /v1/models/{name}:embed         {"texts":[...]} -> {"embeddings":[[...]], "dim": d}
    POST /v2/repository/models/{name}/load  {"parameters":{"uri":..., "version":...}}: hot switch of a
                                         sub-model version (no body: load/reload the current one). Off
                                         unless started with --load-token-file; then it needs
                                         ``Authorization: Bearer <token>`` (the operator uses the
                                         models file, not this endpoint)
    POST /v2/repository/index            every model with its active version and state
    GET  /metrics                        Prometheus text format (private registry)

Errors are JSON ``{"error": ..., "code": ...}``: 400 bad request / invalid name, 404 unknown model
(with ``known_models``), 413 request too large, 500 model failed to load, 503 not ready /
budget momentarily exhausted, 507 model larger than the whole memory budget; the load endpoint
answers 409 ``switch_failed`` (503 when the budget is only momentarily taken) and the old version
keeps serving.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from aiohttp import web

from .. import tracing
from . import paths
from .diskcache import artifact_cache_for
from .listener import close_when_draining, draining, read_body, run_bounded
from .loader import (ModelCache, ModelsFileWatcher, ModelStore, ServingError, parse_bytes, parse_model_pairs,
                     read_models_file, valid_version)
from .metrics import UNKNOWN_MODEL, ServingMetrics

log = logging.getLogger("elastiserve.serving.server")

SERVER_NAME = "elastiserve"
INPUT_NAME = "text"
OUTPUT_NAME = "embeddings"
CACHE_HEADER = "X-Elastiserve-Cache"
TRACER = tracing.tracer("elastiserve.serving.server")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    stores: list[str] = field(default_factory=lambda: [str(paths.models_root())])
    models: dict[str, str | None] = field(default_factory=lambda: {paths.DEFAULT_MODEL_NAME: None})
    discover: bool = False
    variant: str = "fp32"
    memory_budget: int = 1 << 30
    idle_unload_seconds: float = 300.0
    preload: list[str] = field(default_factory=list)
    hot: list[str] = field(default_factory=list)  # the operator's hot set: loaded at start, evictable
    max_request_bytes: int = 1 << 20
    max_batch: int = 256
    intra_op_threads: int | None = None
    infer_workers: int = 2
    bytes_factor: float = 1.0
    batch_window_ms: float = 0.0  # > 0: merge concurrent requests for one model within this window
    modeldeployment: str | None = None  # metrics labels; None = from env
    variant_label: str | None = None
    models_file: str | None = None  # name=uri lines, polled; changed URIs are hot-switched
    models_file_interval: float = 5.0
    # remote stores (s3://, http(s)://): the disk cache of artifacts and the S3 credentials
    artifact_cache_dir: str | None = None  # None = $ELASTISERVE_CACHE/artifacts
    artifact_cache_budget: int = 4 << 30
    s3_credentials_dir: str | None = None  # a mounted Secret's folder (files named AWS_ACCESS_KEY_ID, ...)
    fetch_attempts: int = 4
    load_token_file: str | None = None  # enables the load endpoint; its requests need this bearer token
    read_timeout: float = 30.0  # seconds a client may take to send its request (headers and body)
    keepalive_timeout: float = 15.0  # idle keep-alive connections are closed after this
    drain_seconds: float = 5.0  # after SIGTERM: serve on (Connection: close, not ready) this long, then exit
    max_connections: int = 512  # open connections; past it new ones wait in the kernel's backlog

    def __post_init__(self) -> None:
        if self.variant not in paths.VARIANT_FILES:
            raise ValueError(f"variant must be one of {sorted(paths.VARIANT_FILES)}, not {self.variant!r}")
        self.memory_budget = parse_bytes(self.memory_budget)
        self.max_request_bytes = parse_bytes(self.max_request_bytes)
        self.artifact_cache_budget = parse_bytes(self.artifact_cache_budget)
        if self.models_file_interval <= 0:
            raise ValueError(f"the models file poll interval must be positive, not {self.models_file_interval}")
        if self.read_timeout <= 0 or self.keepalive_timeout <= 0 or self.max_connections < 1:
            raise ValueError("--read-timeout and --keepalive-timeout must be positive, --max-connections at least 1")
        if not 0 <= self.drain_seconds <= 25:
            raise ValueError(f"--drain-seconds must be within 0..25 (the pod's termination grace period is 30 s), "
                             f"not {self.drain_seconds:g}")
        if self.load_token_file is not None:
            read_token(self.load_token_file)  # fail at start, not at the first load request


def read_token(path: str) -> str:
    """The load endpoint's bearer token (a mounted Secret's file; read per request, so rotation works)."""
    try:
        token = open(path, encoding="utf-8").read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--load-token-file {path}: cannot read it ({type(e).__name__})") from None
    if len(token) < 16:
        raise ValueError(f"--load-token-file {path}: the token must be at least 16 characters")
    return token


class Server:
    """Holds the cache, metrics and executors of one server instance."""

    def __init__(self, config: ServerConfig, *, clock: Callable[[], float] = time.monotonic,
                 loader=None, sizer=None):
        self.config = config
        self.metrics = ServingMetrics(config.modeldeployment, config.variant_label)
        self.store = ModelStore(config.stores)
        self.artifacts = artifact_cache_for(config, self.store)
        self.store.artifacts = self.artifacts
        if self.artifacts is not None:
            self.metrics.watch_artifact_cache(self.artifacts.status)
        sources = self.store.discover() if config.discover else {}
        models = dict(config.models)
        self.models_file_pairs: dict[str, str | None] | None = None
        if config.models_file:
            # the file's lines win over --model for the same name (the pod restarts with the latest content)
            self.models_file_pairs = read_models_file(config.models_file)
            models.update(self.models_file_pairs or {})
        sources.update(self.store.resolve_all(models))
        workers = max(1, config.infer_workers)
        self.infer_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="infer")
        # concurrent inferences x ORT threads should not oversubscribe the cores
        threads = config.intra_op_threads if config.intra_op_threads is not None else \
            max(1, (os.cpu_count() or 1) // workers)
        self.load_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="load")
        self.cache = ModelCache(
            sources, budget_bytes=config.memory_budget, idle_seconds=config.idle_unload_seconds,
            variant=config.variant, clock=clock, metrics=self.metrics, executor=self.load_pool,
            loader=loader, sizer=sizer, bytes_factor=config.bytes_factor, intra_op_threads=threads,
        )
        preload = list(config.preload)
        if any(p in ("*", "all") for p in preload):
            preload = self.cache.known()
        for p in preload:
            self.cache._check_known(p)
        self.preload_names = preload
        # The hot set is advisory (the operator's ranking of busy models): a name this server does not
        # serve (e.g. a sub-model just removed) is skipped, not fatal.
        known = set(self.cache.known())
        unknown = [h for h in config.hot if h not in known]
        if unknown:
            log.warning("hot set: skipping unknown model(s) %s", ", ".join(unknown))
        self.hot_names = [h for h in dict.fromkeys(config.hot) if h in known and h not in preload]
        self.watcher: ModelsFileWatcher | None = None
        if config.models_file:
            self.watcher = ModelsFileWatcher(config.models_file, self.store, self.cache,
                                             interval=config.models_file_interval, clock=clock)
            self.watcher.prime()
        self.ready = False
        self.preload_errors: dict[str, str | None] = {}
        self._tasks: list[asyncio.Task] = []
        self._batchers: dict[str, MicroBatcher] = {}

    # -- lifecycle --------------------------------------------------------------------------
    async def on_startup(self, app: web.Application) -> None:
        self._tasks.append(asyncio.create_task(self._preload()))
        if self.cache.idle_seconds > 0:
            self._tasks.append(asyncio.create_task(self.cache.run_janitor()))
        if self.watcher is not None:
            self._tasks.append(asyncio.create_task(self.watcher.run()))

    async def _preload(self) -> None:
        try:
            self.preload_errors = await self.cache.preload(self.preload_names)
            # Then the hot set, unpinned: within the budget it may be evicted like any cached model.
            hot_errors = await self.cache.preload(self.hot_names, pin=False)
            self.preload_errors.update({k: v for k, v in hot_errors.items() if k not in self.preload_errors})
        finally:
            self.ready = True
            log.info("ready (preloaded %s)", ", ".join(self.preload_names + self.hot_names) or "nothing")

    async def on_cleanup(self, app: web.Application) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.cache.close()
        self.infer_pool.shutdown(wait=False, cancel_futures=True)
        self.load_pool.shutdown(wait=False, cancel_futures=True)

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def error(status: int, message: str, code: str, **extra) -> web.Response:
        headers = {"Retry-After": "1"} if status == 503 else None
        return web.json_response({"error": message, "code": code, **extra}, status=status, headers=headers)

    async def _read_json(self, request: web.Request, *, empty_ok: bool = False) -> dict | None:
        """The body as a JSON object (413 over the size limit, 400 otherwise); None for an empty body
        when ``empty_ok``."""
        limit = self.config.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        # aiohttp enforces client_max_size for chunked bodies too; a body that trickles in is cut off
        body = await read_body(request, self.config.read_timeout)
        if empty_ok and not body.strip():
            return None
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"request body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise BadRequest("request body must be a JSON object")
        return data

    def _check_batch(self, texts: list) -> list[str]:
        if not all(isinstance(t, str) for t in texts):
            raise BadRequest("every input element must be a string")
        if len(texts) > self.config.max_batch:
            raise TooManyInputs(f"{len(texts)} inputs in one request; the limit is {self.config.max_batch}")
        return texts

    async def _embed(self, name: str, texts: list[str]):
        asked = time.time_ns()
        async with self.cache.acquire(name) as (entry, hit):
            if not hit and tracing.enabled():
                # The load happened inside acquire(): a span over that stretch, after the fact.
                load = TRACER.start_span("model.load", start_time=asked, attributes={
                    "elastiserve.model": name, "elastiserve.model.version": entry.version or "",
                    "elastiserve.model.bytes": entry.nbytes, "elastiserve.variant": self.config.variant})
                load.end()
            with TRACER.start_as_current_span("inference", attributes={
                    "elastiserve.model": name, "elastiserve.model.version": entry.version or "",
                    "elastiserve.variant": self.config.variant, "elastiserve.batch_size": len(texts),
                    "elastiserve.cache": "hit" if hit else "miss"}):
                emb = await self._run_model(name, entry, texts)
            return emb, hit, entry

    async def _run_model(self, name: str, entry, texts: list[str]):
        if self.config.batch_window_ms > 0 and texts:
            b = entry.batcher  # one per loaded session: after a hot switch, old and new never mix
            if b is None or b.model is not entry.model:
                b = entry.batcher = MicroBatcher(entry.model, self.infer_pool,
                                                 self.config.batch_window_ms / 1e3, self.config.max_batch)
                if not entry.retiring:
                    self._batchers[name] = b  # the active version's batcher (introspection)
            return await b.submit(texts)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.infer_pool, entry.model.embed, texts)

    # -- handlers ---------------------------------------------------------------------------
    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready_h(self, request: web.Request) -> web.Response:
        ready = self.ready and not draining(request.app)
        body = {"ready": ready, "resident": self.cache.resident(), "draining": draining(request.app),
                "preload_errors": {k: v for k, v in self.preload_errors.items() if v}}
        return web.json_response(body, status=200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        from .. import __version__

        return web.json_response({"name": SERVER_NAME, "version": __version__, "extensions": ["model_repository"]})

    async def list_models(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [self.cache.status(n) for n in self.cache.known()],
                                  "variant": self.config.variant, "budget_bytes": self.cache.budget,
                                  "resident_bytes": self.cache.resident_bytes,
                                  "artifact_cache": self.artifacts.status() if self.artifacts else None})

    async def model_metadata(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        st = self.cache.status(name)
        dim = -1
        e = self.cache._resident.get(name)
        if e is not None and e.model is not None:
            dim = e.model.dim
        elif not self.cache.sources[name].remote:
            dim = await asyncio.get_running_loop().run_in_executor(self.load_pool, _manifest_dim, self.cache.sources[name])
        return web.json_response({
            "name": name, "versions": [st["version"]], "platform": "onnxruntime_onnx",
            "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, dim]}],
            "parameters": {"variant": self.config.variant, "loaded": st["loaded"], "version": st["version"],
                           "location": st["location"]},
        })

    async def model_ready(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        st = self.cache.status(name)
        ok = st["loaded"] or st["last_error"] is None
        body = {"name": name, "ready": ok, "loaded": st["loaded"]}
        if st["last_error"]:
            body["error"] = st["last_error"]
        return web.json_response(body, status=200 if ok else 503)

    @tracing.server_span(TRACER)
    async def infer(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.cache._check_known(name)
        data = await self._read_json(request)
        texts = self._v2_texts(data)
        requested = data.get("outputs")
        if requested is not None:
            if not isinstance(requested, list) or any(not isinstance(o, dict) or o.get("name") != OUTPUT_NAME for o in requested):
                raise BadRequest(f"this model has one output, {OUTPUT_NAME!r}")
        emb, hit, entry = await self._embed(name, texts)
        body = {"model_name": name, "model_version": entry.version,
                "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": list(emb.shape),
                             "data": emb.ravel().tolist()}]}
        if "id" in data:
            body["id"] = data["id"]
        return web.json_response(body, headers={CACHE_HEADER: "hit" if hit else "miss"})

    def _v2_texts(self, data: dict) -> list[str]:
        inputs = data.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise BadRequest('"inputs" must be a non-empty list')
        chosen = [i for i in inputs if isinstance(i, dict) and i.get("name") == INPUT_NAME]
        if not chosen and len(inputs) == 1 and isinstance(inputs[0], dict):
            chosen = inputs
        if len(chosen) != 1:
            raise BadRequest(f'expected exactly one input named "{INPUT_NAME}"')
        inp = chosen[0]
        if str(inp.get("datatype", "BYTES")).upper() != "BYTES":
            raise BadRequest(f'input "{INPUT_NAME}" must have datatype BYTES')
        raw = inp.get("data")
        if not isinstance(raw, list):
            raise BadRequest('input "data" must be a list of strings')
        texts = _flatten(raw)
        shape = inp.get("shape")
        if shape is not None:
            if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
                raise BadRequest('"shape" must be a list of non-negative integers')
            n = 1
            for s in shape:
                n *= s
            if n != len(texts):
                raise BadRequest(f"shape {shape} does not match {len(texts)} data elements")
        return self._check_batch(texts)

    @tracing.server_span(TRACER)
    async def embed_v1(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.cache._check_known(name)
        data = await self._read_json(request)
        texts = data.get("texts")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list):
            raise BadRequest('"texts" must be a list of strings')
        emb, hit, entry = await self._embed(name, self._check_batch(texts))
        return web.json_response({"model": name, "model_version": entry.version,
                                  "dim": int(emb.shape[1]) if emb.ndim == 2 else 0, "embeddings": emb.tolist()},
                                 headers={CACHE_HEADER: "hit" if hit else "miss"})

    # -- model repository extension: hot switch -----------------------------------------------
    async def repository_load(self, request: web.Request) -> web.Response:
        """``POST /v2/repository/models/{name}/load`` ``{"parameters": {"uri": ..., "version": ...}}``.

        Loads the given URI next to the active version and swaps atomically; without a body (or without
        ``uri``) the current URI is loaded now (reloaded beside the old session if resident)."""
        self._authorize_load(request)
        name = request.match_info["name"]
        self.cache._check_known(name)
        uri, version = self._load_params(await self._read_json(request, empty_ok=True))
        try:
            source = self.store.resolve(name, uri) if uri is not None else None
        except ServingError as e:
            if e.status != 400:
                raise
            bad = BadRequest(f'"parameters.uri": {e}')
            bad.code = e.code
            raise bad from None
        # shielded: a client that hangs up must not abort a switch half-way (it completes or fails whole)
        task = asyncio.ensure_future(self.cache.switch(name, source, version))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # outcome logged by the cache
        res = await asyncio.shield(task)
        body = {"name": name, "version": res.version, "active_version": res.version, **res.as_dict()}
        return web.json_response(body)

    def _authorize_load(self, request: web.Request) -> None:
        """Off by default (403); enabled with --load-token-file, every call needs its bearer token (401)."""
        if self.config.load_token_file is None:
            raise Forbidden("the load endpoint is off: start the server with --load-token-file to enable it "
                            "(the operator switches versions through the models file)")
        try:
            token = read_token(self.config.load_token_file)
        except ValueError:
            log.error("load endpoint: the token file %s cannot be read", self.config.load_token_file)
            raise Unauthorized("the load endpoint's token is not available") from None
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise Unauthorized("the load endpoint needs Authorization: Bearer <token>")

    @staticmethod
    def _load_params(data: dict | None) -> tuple[str | None, str | None]:
        if data is None:
            return None, None
        unknown = sorted(set(data) - {"parameters"})
        if unknown:
            raise BadRequest(f"unknown field(s) {', '.join(map(repr, unknown))}; expected {{\"parameters\": "
                             "{\"uri\": ..., \"version\": ...}}")
        params = data.get("parameters", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise BadRequest('"parameters" must be a JSON object')
        unknown = sorted(set(params) - {"uri", "version"})
        if unknown:
            raise BadRequest(f"unknown parameter(s) {', '.join(map(repr, unknown))}; supported: 'uri', 'version'")
        uri = params.get("uri")
        if uri is not None and (not isinstance(uri, str) or not uri.strip()):
            raise BadRequest('"parameters.uri" must be a non-empty string')
        version = params.get("version")
        if isinstance(version, int) and not isinstance(version, bool):
            version = str(version)
        if version is not None and (not isinstance(version, str) or not valid_version(version)):
            raise BadRequest('"parameters.version" must be a string of 1-63 letters, digits, ".", "_", "+" or "-" '
                             "starting with a letter or digit")
        return (uri.strip() if uri is not None else None), version

    async def repository_index(self, request: web.Request) -> web.Response:
        out = []
        for n in self.cache.known():
            st = self.cache.status(n)
            state = "LOADING" if st["loading"] or st["switching"] else ("READY" if st["loaded"] else "UNAVAILABLE")
            entry = {"name": n, "version": st["version"], "state": state}
            reason = st["last_switch_error"] or st["last_error"]
            if reason:
                entry["reason"] = reason
            out.append(entry)
        return web.json_response(out)

    async def metrics_h(self, request: web.Request) -> web.Response:
        body, ctype = self.metrics.render()
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = ctype
        return resp

    # -- middleware: errors as JSON, request metrics ------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler):
        counted = request.match_info.route.name in ("infer", "embed")
        model = request.match_info.get("name", "")
        if counted:
            model = model if model in self.cache.sources else UNKNOWN_MODEL
            self.metrics.inflight.labels(**self.metrics.c()).inc()
        t0 = time.perf_counter()
        status = 500
        try:
            try:
                resp = await handler(request)
            except ServingError as e:
                resp = web.json_response(e.payload(), status=e.status,
                                         headers={"Retry-After": "1"} if e.status == 503 else None)
            except BadRequest as e:
                resp = self.error(e.status, str(e), e.code)
                if e.status == 401:
                    resp.headers["WWW-Authenticate"] = 'Bearer realm="elastiserve-load"'

            except web.HTTPRequestEntityTooLarge:
                resp = self.error(413, f"request body too large (limit {self.config.max_request_bytes} bytes)",
                                  "request_too_large", limit_bytes=self.config.max_request_bytes)
            except web.HTTPException as e:
                if e.status < 400:
                    raise
                resp = self.error(e.status, e.reason, "http_error")
            except asyncio.CancelledError:
                status = 499  # client closed the connection
                raise
            except Exception as e:
                log.exception("unhandled error on %s", request.path)
                resp = self.error(500, f"internal error: {type(e).__name__}: {e}", "internal")
            status = resp.status
            return resp
        finally:
            if counted:
                self.metrics.inflight.labels(**self.metrics.c()).dec()
                self.metrics.observe_request(model, status, time.perf_counter() - t0)


class MicroBatcher:
    """Cheap request batching for one loaded model: requests arriving within ``window`` seconds
    (or until ``max_texts`` texts are queued) run as one ORT call; each gets its own rows back."""

    def __init__(self, model, executor, window: float, max_texts: int):
        self.model, self.executor, self.window, self.max_texts = model, executor, window, max_texts
        self._queue: list[tuple[list[str], asyncio.Future]] = []
        self._pending = 0
        self._timer: asyncio.TimerHandle | None = None
        self.batches = 0  # ORT calls made (for tests/introspection)

    async def submit(self, texts: list[str]):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if self._pending + len(texts) > self.max_texts:
            self._flush()
        self._queue.append((texts, fut))
        self._pending += len(texts)
        if self._pending >= self.max_texts:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window, self._flush)
        return await fut

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._queue, self._pending = self._queue, [], 0
        if batch:
            asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch) -> None:
        texts = [t for ts, _ in batch for t in ts]
        self.batches += 1
        try:
            emb = await asyncio.get_running_loop().run_in_executor(self.executor, self.model.embed, texts)
        except Exception as e:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        i = 0
        for ts, fut in batch:
            if not fut.done():
                fut.set_result(emb[i:i + len(ts)])
            i += len(ts)


class BadRequest(Exception):
    status = 400
    code = "bad_request"


class TooManyInputs(BadRequest):
    status = 413
    code = "too_many_inputs"


class Unauthorized(BadRequest):
    status = 401
    code = "unauthorized"


class Forbidden(BadRequest):
    status = 403
    code = "load_disabled"


def _flatten(x) -> list:
    out = []
    for v in x:
        if isinstance(v, list):
            out.extend(_flatten(v))
        else:
            out.append(v)
    return out


def _manifest_dim(src) -> int:
    try:
        return int(json.loads(src.read(src.sibling(paths.CONFIG_FILE))).get("hidden_size", -1))
    except Exception:
        return -1


SERVER_KEY = web.AppKey("elastiserve_server", Server)


def build_app(config: ServerConfig, **kw) -> web.Application:
    server = Server(config, **kw)
    # slack over max_request_bytes is not needed: aiohttp counts the body only
    app = web.Application(client_max_size=config.max_request_bytes, middlewares=[close_when_draining, server.middleware])
    app[SERVER_KEY] = server
    r = app.router
    r.add_get("/v2/health/live", server.live, name="live")
    r.add_get("/v2/health/ready", server.ready_h, name="ready")
    r.add_get("/v2", server.server_metadata, name="server_metadata")
    r.add_get("/v2/models", server.list_models, name="list_models")
    r.add_get("/v2/models/{name}", server.model_metadata, name="model_metadata")
    r.add_get("/v2/models/{name}/ready", server.model_ready, name="model_ready")
    r.add_post("/v2/models/{name}/infer", server.infer, name="infer")
    r.add_post("/v1/models/{name:[^/:]+}:embed", server.embed_v1, name="embed")
    r.add_post("/v2/repository/models/{name}/load", server.repository_load, name="repository_load")
    r.add_post("/v2/repository/index", server.repository_index, name="repository_index")
    r.add_get("/metrics", server.metrics_h, name="metrics")
    app.on_startup.append(server.on_startup)
    app.on_cleanup.append(server.on_cleanup)
    return app


def run(config: ServerConfig) -> None:
    logging.basicConfig(level=os.environ.get("ELASTISERVE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if tracing.configure("elastiserve-server"):
        log.info("tracing: spans go to the OTLP endpoint in OTEL_EXPORTER_OTLP_*ENDPOINT")
    app = build_app(config)
    log.info("serving %s (variant %s, budget %d bytes, idle unload %ss) on %s:%d",
             ", ".join(app[SERVER_KEY].cache.known()), config.variant, config.memory_budget,
             config.idle_unload_seconds, config.host, config.port)
    run_bounded(app, config.host, config.port, keepalive_timeout=config.keepalive_timeout,
                max_connections=config.max_connections, drain_seconds=config.drain_seconds)


def config_from_values(*, host: str, port: int, store: list[str] | None, model: list[str] | None, discover: bool,
                       variant: str | None, memory_budget: str, idle_unload_seconds: float, preload: list[str] | None,
                       hot: list[str] | None = None,
                       max_request_bytes: str, max_batch: int, intra_op_threads: int | None, infer_workers: int,
                       bytes_factor: float = 1.0, batch_window_ms: float = 0.0, models_file: str | None = None,
                       models_file_interval: float = 5.0, artifact_cache_dir: str | None = None,
                       artifact_cache_budget: str = "4Gi", s3_credentials_dir: str | None = None,
                       fetch_attempts: int = 4, load_token_file: str | None = None,
                       read_timeout: float = 30.0, keepalive_timeout: float = 15.0,
                       max_connections: int = 512, drain_seconds: float = 5.0) -> ServerConfig:
    """Shared by the CLI: flags (with env fallbacks already applied by typer) -> ServerConfig."""
    stores = [s for item in (store or []) for s in item.split(",") if s.strip()] or [str(paths.models_root())]
    models = parse_model_pairs(model or [])
    if not models and not discover:
        models = {paths.DEFAULT_MODEL_NAME: None}
    if variant is None:
        label = os.environ.get("ELASTISERVE_VARIANT", "")
        variant = label if label in paths.VARIANT_FILES else "fp32"
    pre = [p.strip() for item in (preload or []) for p in item.split(",") if p.strip()]
    hot_names = [h.strip() for item in (hot or []) for h in item.split(",") if h.strip()]
    return ServerConfig(host=host, port=port, stores=stores, models=models, discover=discover, variant=variant,
                        memory_budget=parse_bytes(memory_budget), idle_unload_seconds=idle_unload_seconds,
                        preload=pre, hot=hot_names, max_request_bytes=parse_bytes(max_request_bytes), max_batch=max_batch,
                        intra_op_threads=intra_op_threads, infer_workers=infer_workers, bytes_factor=bytes_factor,
                        batch_window_ms=batch_window_ms, models_file=models_file or None,
                        models_file_interval=models_file_interval, artifact_cache_dir=artifact_cache_dir or None,
                        artifact_cache_budget=parse_bytes(artifact_cache_budget),
                        s3_credentials_dir=s3_credentials_dir or None, fetch_attempts=fetch_attempts,
                        load_token_file=load_token_file or None,
                        read_timeout=read_timeout, keepalive_timeout=keepalive_timeout,
                        max_connections=max_connections, drain_seconds=drain_seconds)
