"""Model store resolution (no escapes) and the lazy LRU cache (budget, idle unload, single flight)."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from elastiserve.serving.loader import (
    BudgetExhausted, InvalidModelName, ModelCache, ModelLoadError, ModelSource, ModelStore, ModelTooLarge,
    ServingError, UnknownModel, UnsafeModelURI, parse_bytes, parse_model_pairs,
)
from elastiserve.serving.metrics import ServingMetrics


# --------------------------------------------------------------------------------------
# sizes and pairs
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,value", [("512Mi", 512 * 2**20), ("1Gi", 2**30), ("2048", 2048), ("1.5G", 1_500_000_000),
                                        ("100k", 100_000), (" 64 MiB ", 64 * 2**20), (4096, 4096)])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("bad", ["", "12 parsecs", "-1", "Mi"])
def test_parse_bytes_rejects(bad):
    with pytest.raises(ValueError):
        parse_bytes(bad)


def test_parse_model_pairs():
    assert parse_model_pairs(["a=/x/a,b", "c=s3://bkt/c"]) == {"a": "/x/a", "b": None, "c": "s3://bkt/c"}
    with pytest.raises(ValueError, match="twice"):
        parse_model_pairs(["a", "a=/y"])


# --------------------------------------------------------------------------------------
# the store refuses anything outside its roots
# --------------------------------------------------------------------------------------
def test_resolve_relative_and_file_uris(store):
    s = ModelStore([store])
    assert s.resolve("alpha").location == str(store / "alpha")
    assert s.resolve("a2", "beta").location == str(store / "beta")
    assert s.resolve("b", f"file://{store}/beta").location == str(store / "beta")
    assert s.resolve("m", str(store / "gamma" / "model.onnx")).artifact("int8").endswith("gamma/model.onnx")


@pytest.mark.parametrize("name", ["..", ".", "../etc", "a/b", "a\\b", "", ".hidden", "x" * 64, "a..b", "with space"])
def test_invalid_model_names(store, name):
    with pytest.raises(InvalidModelName):
        ModelStore([store]).resolve(name, "alpha")


@pytest.mark.parametrize("uri", ["../outside", "alpha/../../outside", "/etc", "file:///etc/passwd",
                                 "file://evil.example/x", "ftp://host/x", "s3://bucket/x", "http://host/x"])
def test_uris_outside_the_store_are_rejected(store, uri):
    with pytest.raises(UnsafeModelURI):
        ModelStore([store]).resolve("m", uri)


def test_symlink_escaping_the_store_is_rejected(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, store / "sneaky")
    with pytest.raises(UnsafeModelURI):
        ModelStore([store]).resolve("sneaky")


def test_remote_roots():
    s = ModelStore(["s3://bucket/models", "https://models.example.com/repo/"])
    assert s.resolve("a", "s3://bucket/models/a") == ModelSource("a", "s3://bucket/models/a", remote=True)
    assert s.resolve("b", "https://models.example.com/repo/b/").location == "https://models.example.com/repo/b"
    assert s.resolve("c").location == "s3://bucket/models/c"  # relative to the first root
    for bad in ["s3://bucket/other/a", "s3://bucket/models/../secret", "s3://bucket/models/%2e%2e/secret",
                "https://models.example.com.evil.net/repo/a", "https://models.example.com/repo/a?x=1",
                "http://models.example.com/repo/a"]:
        with pytest.raises(UnsafeModelURI):
            s.resolve("x", bad)


def test_unsupported_store_root():
    with pytest.raises(ValueError):
        ModelStore(["gopher://x"])


def test_discover(store):
    found = ModelStore([store]).discover()
    assert set(found) == {"alpha", "beta", "gamma", "delta", "corrupt"}  # "empty" has no artifact


# --------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------
class FakeLoader:
    """Counts loads; optionally slow (blocks in the executor thread) or failing per model."""

    def __init__(self, delay: float = 0.0, fail: set[str] | None = None):
        self.calls: list[str] = []
        self.delay = delay
        self.fail = fail or set()
        self.lock = threading.Lock()

    def __call__(self, src: ModelSource, variant: str):
        with self.lock:
            self.calls.append(src.name)
        if self.delay:
            time.sleep(self.delay)
        if src.name in self.fail:
            raise ModelLoadError(src.name, "boom")
        return object()


def make_cache(names, sizes, *, budget, clock, loader=None, idle=0.0, metrics=None):
    sources = {n: ModelSource(n, f"/models/{n}") for n in names}
    return ModelCache(sources, budget_bytes=budget, idle_seconds=idle, clock=clock, metrics=metrics,
                      loader=loader or FakeLoader(), sizer=lambda src, v: sizes[src.name], trim_after_unload=False)


async def test_lru_eviction_under_budget(clock):
    sizes = {n: 100 for n in "abcde"}
    m = ServingMetrics("md", "fp32")
    cache = make_cache("abcde", sizes, budget=300, clock=clock, metrics=m)
    for n in "abc":
        clock.advance(1)
        await cache.get(n)
    assert cache.resident() == ["a", "b", "c"] and cache.resident_bytes == 300
    clock.advance(1)
    await cache.get("a")  # a becomes most recently used
    await cache.get("d")  # evicts b, the least recently used
    assert cache.resident() == ["c", "a", "d"]
    assert cache.stats.evictions == 1 and cache.resident_bytes <= 300
    e, hit = await cache.get("c")
    assert hit
    assert m.unloads.labels(**m.c(model="b", reason="evicted"))._value.get() == 1
    assert m.models_loaded.labels(**m.c())._value.get() == 3


async def test_bigger_model_evicts_several(clock):
    cache = make_cache("abcd", {"a": 100, "b": 100, "c": 100, "d": 250}, budget=300, clock=clock)
    for n in "abc":
        await cache.get(n)
    await cache.get("d")
    assert cache.resident() == ["d"] and cache.stats.evictions == 3


async def test_model_larger_than_budget_is_refused_with_numbers(clock):
    m = ServingMetrics("", "")
    cache = make_cache("ab", {"a": 100, "b": 5000}, budget=1000, clock=clock, metrics=m)
    await cache.get("a")
    with pytest.raises(ModelTooLarge) as ei:
        await cache.get("b")
    err = ei.value
    assert err.nbytes == 5000 and err.budget == 1000 and err.status == 507
    assert "5000" in str(err) and "1000" in str(err)
    assert err.payload()["model_bytes"] == 5000 and err.payload()["budget_bytes"] == 1000
    assert cache.resident() == ["a"]  # nothing evicted for a model that can never fit
    assert m.loads.labels(**m.c(model="b", result="refused"))._value.get() == 1


async def test_idle_unload_with_injected_clock(clock):
    m = ServingMetrics("", "")
    cache = make_cache("abc", {n: 10 for n in "abc"}, budget=100, clock=clock, idle=60, metrics=m)
    await cache.get("a")
    clock.advance(30)
    await cache.get("b")
    assert cache.sweep_idle() == []
    clock.advance(31)  # a idle 61 s, b idle 31 s
    assert cache.sweep_idle() == ["a"]
    assert cache.resident() == ["b"]
    clock.advance(30)
    assert cache.sweep_idle() == ["b"]
    assert m.unloads.labels(**m.c(model="a", reason="idle"))._value.get() == 1
    assert m.model_loaded.labels(**m.c(model="a"))._value.get() == 0


async def test_idle_unload_spares_pinned_and_in_use(clock):
    cache = make_cache("abc", {n: 10 for n in "abc"}, budget=100, clock=clock, idle=10)
    await cache.preload(["a"])
    async with cache.acquire("b"):
        clock.advance(100)
        await cache.get("c")
        clock.advance(100)
        assert cache.sweep_idle() == ["c"]  # a pinned, b in use
    clock.advance(100)
    assert cache.sweep_idle() == ["b"]
    assert cache.resident() == ["a"]


async def test_idle_disabled(clock):
    cache = make_cache("a", {"a": 10}, budget=100, clock=clock, idle=0)
    await cache.get("a")
    clock.advance(1e9)
    assert cache.sweep_idle() == []


async def test_single_flight_under_concurrency(clock):
    loader = FakeLoader(delay=0.2)
    m = ServingMetrics("", "")
    cache = make_cache("ab", {"a": 10, "b": 10}, budget=100, clock=clock, loader=loader, metrics=m)
    results = await asyncio.gather(*(cache.get("a") for _ in range(50)), *(cache.get("b") for _ in range(20)))
    assert sorted(loader.calls) == ["a", "b"]  # one load per model for the whole burst
    entries_a = {id(e) for e, _ in results[:50]}
    assert len(entries_a) == 1
    assert cache.stats.misses == 70 and cache.stats.loads == 2
    assert m.cache_misses.labels(**m.c(model="a"))._value.get() == 50
    await cache.get("a")
    assert m.cache_hits.labels(**m.c(model="a"))._value.get() == 1


async def test_cancelled_waiter_does_not_cancel_the_shared_load(clock):
    loader = FakeLoader(delay=0.2)
    cache = make_cache("a", {"a": 10}, budget=100, clock=clock, loader=loader)
    first = asyncio.create_task(cache.get("a"))
    second = asyncio.create_task(cache.get("a"))
    await asyncio.sleep(0.05)
    first.cancel()
    e, hit = await second
    assert not hit and cache.is_loaded("a") and loader.calls == ["a"]


async def test_failed_load_reports_and_others_keep_working(clock):
    loader = FakeLoader(fail={"bad"})
    m = ServingMetrics("", "")
    cache = make_cache(["good", "bad"], {"good": 10, "bad": 10}, budget=100, clock=clock, loader=loader, metrics=m)
    results = await asyncio.gather(*(cache.get("bad") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, ModelLoadError) for r in results) and loader.calls == ["bad"]
    assert "boom" in cache.status("bad")["last_error"]
    e, _ = await cache.get("good")
    assert cache.resident() == ["good"]
    assert m.loads.labels(**m.c(model="bad", result="error"))._value.get() == 1
    await asyncio.gather(cache.get("bad"), return_exceptions=True)  # retried on the next request
    assert loader.calls.count("bad") == 2 and cache.resident_bytes == 10


async def test_unknown_and_invalid_names(clock):
    cache = make_cache("ab", {"a": 1, "b": 1}, budget=10, clock=clock)
    with pytest.raises(UnknownModel) as ei:
        await cache.get("zzz")
    assert ei.value.known == ["a", "b"] and ei.value.status == 404
    with pytest.raises(InvalidModelName):
        await cache.get("../a")


async def test_concurrent_loads_share_the_budget(clock):
    """Two different models loading at once cannot both take the last free bytes."""
    loader = FakeLoader(delay=0.2)
    cache = make_cache("abc", {"a": 60, "b": 60, "c": 10}, budget=100, clock=clock, loader=loader)
    r = await asyncio.gather(cache.get("a"), cache.get("b"), return_exceptions=True)
    assert isinstance(r[1], BudgetExhausted) and r[1].status == 503
    assert cache.resident() == ["a"]
    await cache.get("b")  # once a's load finished, b evicts it
    assert cache.resident() == ["b"] and cache.resident_bytes <= 100


async def test_update_sources_unloads_replaced(clock):
    m = ServingMetrics("", "")
    cache = make_cache("ab", {"a": 1, "b": 1}, budget=10, clock=clock, metrics=m)
    await cache.get("a")
    await cache.get("b")
    replaced = cache.update_sources({"a": ModelSource("a", "/models/a"), "b": ModelSource("b", "/models/b-v2")})
    assert replaced == ["b"] and cache.resident() == ["a"]
    assert m.unloads.labels(**m.c(model="b", reason="replaced"))._value.get() == 1
    await cache.reload("a")
    assert m.unloads.labels(**m.c(model="a", reason="replaced"))._value.get() == 1 and cache.is_loaded("a")


async def test_real_loader_on_tiny_models(store, clock):
    """End to end with real ONNX files: good, corrupt and missing models, byte accounting."""
    src = ModelStore([store]).resolve_all({"alpha": None, "corrupt": None, "empty": None})
    size = (store / "alpha" / "model.onnx").stat().st_size
    cache = ModelCache(src, budget_bytes=10 * size, clock=clock)
    e, hit = await cache.get("alpha")
    assert e.nbytes == size and e.model.embed(["hello world"]).shape == (1, 8)
    with pytest.raises(ModelLoadError, match="corrupt"):
        await cache.get("corrupt")
    with pytest.raises(ModelLoadError, match="not found"):
        await cache.get("empty")
    assert cache.resident() == ["alpha"]
    cache.close()


async def test_int8_variant_missing_file_is_clear(store, clock):
    cache = ModelCache(ModelStore([store]).resolve_all({"alpha": None}), budget_bytes=1 << 30, clock=clock,
                       variant="int8")
    with pytest.raises(ModelLoadError, match="model.int8.onnx"):
        await cache.get("alpha")


async def test_http_store_through_fsspec(store, clock):
    """http(s):// stores are read with fsspec (here: a local static file server)."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    app = web.Application()
    app.router.add_static("/models/", store)
    srv = TestServer(app)
    await srv.start_server()
    try:
        root = str(srv.make_url("/models")).rstrip("/")
        s = ModelStore([root])
        cache = ModelCache(s.resolve_all({"alpha": None, "ghost": None}), budget_bytes=1 << 30, clock=clock)
        e, _ = await cache.get("alpha")
        local = (store / "alpha" / "model.onnx").stat().st_size
        assert e.nbytes == local and e.model.embed(["remote cat"]).shape == (1, 8)
        with pytest.raises(ModelLoadError, match="ghost"):
            await cache.get("ghost")
        with pytest.raises(UnsafeModelURI):
            s.resolve("x", root.replace("/models", "/other/x"))
        cache.close()
    finally:
        await srv.close()


def test_tokenizers_are_parsed_once_per_content_and_length(tiny_template):
    from elastiserve.serving import textproc

    text = (tiny_template / "tokenizer.json").read_text()
    a = textproc.shared_tokenizer(text, 32)
    assert textproc.shared_tokenizer(text, 32) is a  # a reload (or a sibling sub-model) reuses it
    b = textproc.shared_tokenizer(text, 8)  # another max_length is another tokenizer
    assert b is not a and len(b.encode("the quick brown fox jumps over the lazy dog " * 4).ids) == 8
    assert textproc.encode(a, ["a cat"])["input_ids"].tolist() == \
        textproc.encode(textproc.load_tokenizer(text, 32, from_string=True), ["a cat"])["input_ids"].tolist()
    for i in range(textproc.PARSED_TOKENIZERS):  # bounded: the oldest goes
        textproc.shared_tokenizer(text, 100 + i)
    assert textproc.shared_tokenizer(text, 32) is not a


async def test_load_failures_are_exported_with_a_bounded_cause_and_cleared_by_a_success(clock):
    m = ServingMetrics("md", "fp32")
    loader = FakeLoader(fail={"bad"})
    cache = make_cache(["big", "bad"], {"big": 10_000, "bad": 10}, budget=1000, clock=clock, metrics=m, loader=loader)

    def failing() -> dict[str, str]:
        text = m.render()[0].decode()
        return {ln.split('model="')[1].split('"')[0]: ln.split('cause="')[1].split('"')[0]
                for ln in text.splitlines() if ln.startswith("elastiserve_model_load_failing{")}

    for name in ("big", "bad"):
        with pytest.raises(ServingError):
            await cache.get(name)
    assert failing() == {"big": "too_large", "bad": "invalid_model"}  # no cause known: the files are no model
    loader.fail.clear()
    await cache.get("bad")
    assert failing() == {"big": "too_large"}
    cache.close()
