"""Hot switch of a sub-model version inside a running replica (loader level, plus the HTTP endpoint
in-process): atomic swap, leases finishing on the old session, failures keeping the old version,
budget accounting with both versions resident, and the models-file trigger on an injected clock."""

from __future__ import annotations

import asyncio
import shutil
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from elastiserve.serving.builder import build_tiny_model
from elastiserve.serving.loader import (
    BudgetExhausted, InvalidVersion, ModelCache, ModelLoadError, ModelSource, ModelStore, ModelsFileWatcher,
    ModelTooLarge, SwitchFailed, UnknownModel, parse_models_text, version_from_location,
)
from elastiserve.serving.metrics import ServingMetrics
from elastiserve.serving.server import SERVER_KEY, ServerConfig, build_app


class VersionLoader:
    """Fake loader: returns a distinct object per load, tagged with its location. Loads of locations in
    ``gates`` block until the gate (a threading.Event) is set; ``fail`` locations raise."""

    def __init__(self, fail: set[str] = frozenset()):
        self.calls: list[str] = []
        self.gates: dict[str, threading.Event] = {}
        self.started: dict[str, threading.Event] = {}
        self.fail = set(fail)

    def gate(self, location: str) -> threading.Event:
        self.started[location] = threading.Event()
        ev = self.gates[location] = threading.Event()
        return ev

    def __call__(self, src: ModelSource, variant: str):
        self.calls.append(src.location)
        if src.location in self.started:
            self.started[src.location].set()
        if src.location in self.gates:
            assert self.gates[src.location].wait(10), "gate never opened"
        if src.location in self.fail:
            raise ModelLoadError(src.name, f"corrupt protobuf in {src.location}")
        return SimpleNamespace(location=src.location, manifest={})


def make_cache(clock, sizes: dict[str, int], *, budget: int, loader=None, metrics=None, models=None):
    """Models 'a' (at /m/a/v1) and 'b' (at /m/b/v1) unless ``models`` says otherwise; sizes by location."""
    models = models or {"a": "/m/a/v1", "b": "/m/b/v1"}
    sources = {n: ModelSource(n, loc) for n, loc in models.items()}
    return ModelCache(sources, budget_bytes=budget, clock=clock, metrics=metrics, loader=loader or VersionLoader(),
                      sizer=lambda src, v: sizes[src.location], trim_after_unload=False)


async def wait_for(pred, timeout: float = 5.0) -> None:
    """Poll ``pred`` (a cheap, non-blocking predicate) until true, with a deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.005)


def metric(m: ServingMetrics, gauge, **labels) -> float:
    return gauge.labels(**m.c(**labels))._value.get()


def version_series(m: ServingMetrics, model: str) -> dict[str, float]:
    out = {}
    for fam in m.registry.collect():
        if fam.name == "elastiserve_model_version_info":
            for s in fam.samples:
                if s.labels["model"] == model:
                    out[s.labels["version"]] = s.value
    return out


# --------------------------------------------------------------------------------------
# versions
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("loc,version", [("/m/enc/v2", "v2"), ("/m/enc/v2/model.onnx", "v2"), ("/m/enc/3", "3"),
                                         ("s3://bkt/enc/v1.3.0", "v1.3.0"), ("/m/enc", None),
                                         ("/m/enc/model.onnx", None), ("/m/venc", None)])
def test_version_from_location(loc, version):
    assert version_from_location(loc) == version


def test_parse_models_text():
    text = "# the models of this deployment\n\na=enc/v2\n  b = other/v1 \nc\n"
    assert parse_models_text(text) == {"a": "enc/v2", "b": "other/v1", "c": None}
    with pytest.raises(ValueError, match="twice"):
        parse_models_text("a=x\na=y\n")


# --------------------------------------------------------------------------------------
# the switch itself
# --------------------------------------------------------------------------------------
async def test_switch_is_atomic_and_old_serves_while_new_loads(clock):
    loader = VersionLoader()
    m = ServingMetrics("md", "fp32")
    cache = make_cache(clock, {"/m/a/v1": 100, "/m/a/v2": 120, "/m/b/v1": 10}, budget=1000, loader=loader, metrics=m)
    old, _ = await cache.get("a")
    assert old.version == "v1" and version_series(m, "a") == {"v1": 1.0}
    gate = loader.gate("/m/a/v2")
    switch = asyncio.create_task(cache.switch("a", ModelSource("a", "/m/a/v2")))
    await wait_for(loader.started["/m/a/v2"].is_set)
    # the new version is loading: the old one serves, both are accounted (resident + reserved)
    for _ in range(20):
        e, hit = await cache.get("a")
        assert hit and e is old and e.model.location == "/m/a/v1"
    assert cache.status("a")["switching"] and cache.version_of("a") == "v1"
    assert cache.resident_bytes + cache._reserved == 220
    # a burst of requests racing with the swap: each sees exactly one complete version
    seen: list[str] = []

    async def request():
        async with cache.acquire("a") as (e, _):
            seen.append(e.model.location)
            await asyncio.sleep(0)

    burst = [asyncio.create_task(request()) for _ in range(50)]
    gate.set()
    res = await switch
    await asyncio.gather(*burst)
    assert set(seen) <= {"/m/a/v1", "/m/a/v2"} and len(seen) == 50
    assert (res.version, res.previous_version, res.loaded, res.switched) == ("v2", "v1", True, True)
    e, hit = await cache.get("a")
    assert hit and e.model.location == "/m/a/v2" and e.version == "v2" and cache.version_of("a") == "v2"
    assert old.model is None  # no lease left: released at once
    assert cache.resident_bytes == 120 + 0  # b never loaded
    assert cache.sources["a"].location == "/m/a/v2"
    assert version_series(m, "a") == {"v2": 1.0}  # exactly one info series per model
    assert m.switches.labels(**m.c(model="a", result="success"))._value.get() == 1
    assert m.unloads.labels(**m.c(model="a", reason="replaced"))._value.get() == 1
    assert metric(m, m.model_loaded, model="a") == 1 and metric(m, m.model_loaded_bytes, model="a") == 120
    assert cache.stats.switches == 1 and loader.calls == ["/m/a/v1", "/m/a/v2"]


async def test_in_flight_lease_finishes_on_the_old_session(clock):
    m = ServingMetrics("", "")
    cache = make_cache(clock, {"/m/a/v1": 100, "/m/a/v2": 100, "/m/b/v1": 10}, budget=1000, metrics=m)
    await cache.preload(["a"])
    async with cache.acquire("a") as (old, _):
        res = await cache.switch("a", ModelSource("a", "/m/a/v2"), version="2.0")
        assert res.old_leases == 1 and res.version == "2.0"
        # the request holding the lease still has its (live) session, and both versions are accounted
        assert old.model is not None and old.model.location == "/m/a/v1" and old.retiring
        assert cache.resident_bytes == 200 and cache.retiring_bytes == 100
        assert metric(m, m.model_loaded_bytes, model="a") == 200
        new, hit = await cache.get("a")
        assert hit and new.model.location == "/m/a/v2" and new.pinned  # pinning carries over
        assert cache.status("a")["retiring_sessions"] == 1
        assert m.unloads.labels(**m.c(model="a", reason="replaced"))._value.get() == 0
    # last lease ended: the old session is freed, only the new one is accounted
    assert old.model is None and cache.retiring_bytes == 0 and cache.resident_bytes == 100
    assert metric(m, m.model_loaded_bytes, model="a") == 100
    assert m.unloads.labels(**m.c(model="a", reason="replaced"))._value.get() == 1
    assert cache.stats.replaced == 1 and cache.resident() == ["a"]


async def test_failed_load_keeps_the_old_version(clock):
    loader = VersionLoader(fail={"/m/a/broken"})
    m = ServingMetrics("", "")
    cache = make_cache(clock, {"/m/a/v1": 100, "/m/a/broken": 100, "/m/b/v1": 10}, budget=1000, loader=loader,
                       metrics=m)
    old, _ = await cache.get("a")
    with pytest.raises(SwitchFailed) as ei:
        await cache.switch("a", ModelSource("a", "/m/a/broken"), version="v9")
    err = ei.value
    assert err.status == 409 and err.active_version == "v1" and err.requested_version == "v9"
    assert "corrupt protobuf" in str(err) and "'v1' keeps serving" in str(err)
    assert err.payload()["cause"] == "model_load_failed" and err.payload()["active_version"] == "v1"
    e, hit = await cache.get("a")
    assert hit and e is old and e.model.location == "/m/a/v1"  # never half-switched
    assert cache.sources["a"].location == "/m/a/v1" and cache.version_of("a") == "v1"
    assert cache.resident_bytes == 100 and cache._reserved == 0  # the reservation is given back
    assert "corrupt" in cache.status("a")["last_switch_error"] and cache.status("a")["last_error"] is None
    assert version_series(m, "a") == {"v1": 1.0}
    assert m.switches.labels(**m.c(model="a", result="error"))._value.get() == 1
    assert m.loads.labels(**m.c(model="a", result="error"))._value.get() == 1
    # a later good switch works and clears the error
    loader.fail.clear()
    res = await cache.switch("a", ModelSource("a", "/m/a/broken"), version="v9")
    assert res.version == "v9" and cache.status("a")["last_switch_error"] is None


async def test_real_onnx_switch_changes_embeddings_and_bad_versions_keep_old(store, clock, tmp_path):
    """Real ONNX files: v2 has other weights; a corrupt and a missing version are refused, v1 keeps serving."""
    build_tiny_model(store / "enc" / "v1", hidden=8, layers=1, heads=2, seed=1)
    build_tiny_model(store / "enc" / "v2", hidden=8, layers=1, heads=2, seed=2)
    st = ModelStore([store])
    cache = ModelCache(st.resolve_all({"enc": "enc/v1"}), budget_bytes=1 << 30, clock=clock)
    texts = ["hello world", "the cat sat"]
    e1, _ = await cache.get("enc")
    v1 = e1.model.embed(texts)
    for bad, match in (("corrupt", "corrupt|protobuf|Invalid|INVALID"), ("empty", "not found")):
        with pytest.raises(SwitchFailed, match=match):
            await cache.switch("enc", st.resolve("enc", bad))
        e, _ = await cache.get("enc")
        np.testing.assert_allclose(e.model.embed(texts), v1, atol=1e-6)
        assert cache.version_of("enc") == "v1"
    res = await cache.switch("enc", st.resolve("enc", "enc/v2"))
    assert res.version == "v2" and res.previous_version == "v1"
    e2, _ = await cache.get("enc")
    v2 = e2.model.embed(texts)
    assert np.abs(v2 - v1).max() > 0.05  # other weights, measurably other embeddings
    assert e1.model is None  # released (no lease)
    cache.close()


async def test_switch_of_a_model_that_is_not_resident_only_repoints(clock):
    loader = VersionLoader()
    cache = make_cache(clock, {"/m/a/v1": 10, "/m/a/v2": 10, "/m/b/v1": 10}, budget=100, loader=loader)
    res = await cache.switch("a", ModelSource("a", "/m/a/v2"))
    assert (res.loaded, res.switched, res.version, res.previous_version) == (False, True, "v2", "v1")
    assert loader.calls == [] and not cache.is_loaded("a") and cache.version_of("a") == "v2"
    e, hit = await cache.get("a")  # the next load uses the new URI
    assert not hit and e.model.location == "/m/a/v2" and loader.calls == ["/m/a/v2"]
    # a missing artifact is refused up front (stat), the URI stays
    with pytest.raises(SwitchFailed) as ei:
        await cache.switch("b", ModelSource("b", "/m/b/missing"))
    assert ei.value.active_version is None and cache.sources["b"].location == "/m/b/v1"


async def test_load_without_new_uri_loads_or_reloads_beside(clock):
    loader = VersionLoader()
    cache = make_cache(clock, {"/m/a/v1": 10, "/m/b/v1": 10}, budget=100, loader=loader)
    res = await cache.switch("a")  # not resident: loaded now
    assert res.loaded and cache.is_loaded("a") and loader.calls == ["/m/a/v1"]
    first, _ = await cache.get("a")
    res = await cache.switch("a", version="v1-fix")  # resident: a fresh session of the same URI, swapped in
    second, _ = await cache.get("a")
    assert second is not first and first.model is None and second.version == "v1-fix"
    assert loader.calls == ["/m/a/v1", "/m/a/v1"] and res.previous_version == "v1"
    # a later reload without a label keeps the label given for this URI
    await cache.switch("a")
    assert cache.version_of("a") == "v1-fix"


async def test_budget_counts_both_versions_and_evicts_idle_others(clock):
    loader = VersionLoader()
    sizes = {"/m/a/v1": 100, "/m/a/v2": 150, "/m/b/v1": 100, "/m/c/v1": 60}
    cache = make_cache(clock, sizes, budget=300, loader=loader,
                       models={"a": "/m/a/v1", "b": "/m/b/v1", "c": "/m/c/v1"})
    await cache.get("b")
    clock.advance(1)
    await cache.get("a")
    assert cache.resident() == ["b", "a"] and cache.resident_bytes == 200
    gate = loader.gate("/m/a/v2")
    switch = asyncio.create_task(cache.switch("a", ModelSource("a", "/m/a/v2")))
    await wait_for(loader.started["/m/a/v2"].is_set)
    # 100 (old a) + 150 (new a) + 100 (b) > 300: b, idle, was evicted; the old a never is
    assert cache.resident() == ["a"] and cache.stats.evictions == 1
    assert cache.resident_bytes + cache._reserved == 250
    # while both versions are held, another model cannot take the bytes of either
    with pytest.raises(BudgetExhausted):
        await cache.get("c")
    assert cache.resident() == ["a"]
    gate.set()
    await switch
    assert cache.resident_bytes == 150
    await cache.get("c")  # now fits next to the new a
    assert cache.resident() == ["a", "c"] and cache.resident_bytes == 210


async def test_budget_too_small_for_both_versions_fails_clearly(clock):
    loader = VersionLoader()
    sizes = {"/m/a/v1": 100, "/m/a/v2": 250, "/m/a/huge": 5000, "/m/b/v1": 10}
    cache = make_cache(clock, sizes, budget=300, loader=loader)
    await cache.get("b")
    old, _ = await cache.get("a")
    with pytest.raises(SwitchFailed) as ei:
        await cache.switch("a", ModelSource("a", "/m/a/v2"))
    msg = str(ei.value)
    assert "250" in msg and "100" in msg and "350" in msg and "300" in msg and "keeps serving" in msg
    assert cache.resident() == ["b", "a"] and loader.calls == ["/m/b/v1", "/m/a/v1"]  # nothing evicted or loaded
    with pytest.raises(SwitchFailed) as ei:
        await cache.switch("a", ModelSource("a", "/m/a/huge"))
    assert isinstance(ei.value.cause, ModelTooLarge)
    e, hit = await cache.get("a")
    assert hit and e is old and cache.version_of("a") == "v1"


async def test_budget_taken_by_a_load_in_progress_is_a_503(clock):
    loader = VersionLoader()
    sizes = {"/m/a/v1": 100, "/m/a/v2": 100, "/m/b/v1": 150}
    cache = make_cache(clock, sizes, budget=300, loader=loader)
    await cache.get("a")
    gate = loader.gate("/m/b/v1")
    load_b = asyncio.create_task(cache.get("b"))
    await wait_for(loader.started["/m/b/v1"].is_set)
    with pytest.raises(SwitchFailed) as ei:  # 100 + 150 reserved + 100 > 300, nothing idle to evict
        await cache.switch("a", ModelSource("a", "/m/a/v2"))
    assert ei.value.status == 503 and isinstance(ei.value.cause, BudgetExhausted)
    gate.set()
    await load_b
    assert cache.version_of("a") == "v1"


async def test_unknown_model_and_invalid_version(clock):
    cache = make_cache(clock, {"/m/a/v1": 1, "/m/b/v1": 1}, budget=10)
    with pytest.raises(UnknownModel) as ei:
        await cache.switch("zzz", ModelSource("zzz", "/m/zzz"))
    assert ei.value.status == 404 and ei.value.known == ["a", "b"]
    for bad in ("", "-x", "a b", "v" * 64, "x/y"):
        with pytest.raises(InvalidVersion):
            await cache.switch("a", version=bad)


async def test_concurrent_switches_of_one_model_are_serialised(clock):
    loader = VersionLoader()
    sizes = {"/m/a/v1": 10, "/m/a/v2": 10, "/m/a/v3": 10, "/m/b/v1": 10}
    cache = make_cache(clock, sizes, budget=100, loader=loader)
    await cache.get("a")
    r2, r3 = await asyncio.gather(cache.switch("a", ModelSource("a", "/m/a/v2")),
                                  cache.switch("a", ModelSource("a", "/m/a/v3")))
    assert (r2.previous_version, r2.version, r3.previous_version, r3.version) == ("v1", "v2", "v2", "v3")
    assert cache.version_of("a") == "v3" and cache.resident_bytes == 10


async def test_waiters_of_a_lazy_load_get_a_live_session_across_a_switch(clock):
    """A switch called while a lazy load is in flight lets that load finish first; no waiter gets a
    released session."""
    loader = VersionLoader()
    cache = make_cache(clock, {"/m/a/v1": 10, "/m/a/v2": 10, "/m/b/v1": 10}, budget=100, loader=loader)
    gate = loader.gate("/m/a/v1")
    seen: list[str] = []

    async def request():
        async with cache.acquire("a") as (e, _):
            seen.append(e.model.location)  # AttributeError if handed a released session

    waiters = [asyncio.create_task(request()) for _ in range(5)]
    await wait_for(loader.started["/m/a/v1"].is_set)
    switch = asyncio.create_task(cache.switch("a", ModelSource("a", "/m/a/v2")))
    await asyncio.sleep(0)
    assert not switch.done()  # waiting for the lazy load
    gate.set()
    await asyncio.gather(*waiters)
    res = await switch
    assert seen == ["/m/a/v1"] * 5 and loader.calls == ["/m/a/v1", "/m/a/v2"]
    assert res.previous_version == "v1" and res.loaded
    e, _ = await cache.get("a")
    assert e.model.location == "/m/a/v2"


# --------------------------------------------------------------------------------------
# the models file (a mounted ConfigMap), polled on an injected clock
# --------------------------------------------------------------------------------------
async def test_models_file_change_detection_with_injected_clock(tmp_path, clock):
    root = tmp_path / "store"
    for d in ("enc/v1", "enc/v2", "enc/v3", "other/v1"):
        (root / d).mkdir(parents=True)
    st = ModelStore([root])
    sizes = {str(root / d): 10 for d in ("enc/v1", "enc/v2", "other/v1")}
    loader = VersionLoader(fail={str(root / "enc/v3")})
    sizes[str(root / "enc/v3")] = 10
    mf = tmp_path / "models.conf"
    mf.write_text("enc=enc/v1\nother=other/v1\n")
    cache = ModelCache(st.resolve_all({"enc": "enc/v1", "other": "other/v1"}), budget_bytes=1000, clock=clock,
                       loader=loader, sizer=lambda src, v: sizes[src.location], trim_after_unload=False)
    await cache.get("enc")
    w = ModelsFileWatcher(mf, st, cache, interval=5.0, clock=clock)
    assert w.prime() == {"enc": "enc/v1", "other": "other/v1"}
    assert await w.poll() == []  # first check: unchanged
    mf.write_text("enc=enc/v2\nother=other/v1\n")
    clock.advance(4.9)
    assert await w.poll() == [] and cache.version_of("enc") == "v1"  # not time yet
    clock.advance(0.1)
    [res] = await w.poll()
    assert (res.name, res.previous_version, res.version, res.loaded) == ("enc", "v1", "v2", True)
    e, _ = await cache.get("enc")
    assert e.model.location == str(root / "enc/v2")
    # unchanged content: no work, even when the interval has passed
    clock.advance(5)
    assert await w.poll() == [] and loader.calls.count(str(root / "enc/v2")) == 1
    # a broken version: reported, the old one keeps serving, not retried until the file changes
    mf.write_text("enc=enc/v3\nother=other/v1\nghost=enc/v1\n")
    clock.advance(5)
    assert await w.poll() == []
    assert "corrupt protobuf" in w.errors["enc"] and "not served" in w.errors["ghost"]
    assert cache.version_of("enc") == "v2"
    clock.advance(5)
    await w.poll()
    assert loader.calls.count(str(root / "enc/v3")) == 1
    # unparsable content is ignored; the non-resident model is re-pointed only
    mf.write_text("enc=enc/v3\nenc=enc/v1\n")
    clock.advance(5)
    assert await w.poll() == [] and "twice" in w.errors["_file"] and cache.version_of("enc") == "v2"
    mf.write_text("enc=enc/v2\nother=enc/v1\n")
    clock.advance(5)
    [res] = await w.poll()
    assert res.name == "other" and not res.loaded and cache.sources["other"].location == str(root / "enc/v1")
    assert "_file" not in w.errors
    # a missing file (ConfigMap not mounted any more) changes nothing
    mf.unlink()
    clock.advance(5)
    assert await w.poll() == [] and cache.version_of("enc") == "v2"


# --------------------------------------------------------------------------------------
# the HTTP endpoint, in-process
# --------------------------------------------------------------------------------------
LOAD_TOKEN = "load-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {LOAD_TOKEN}"}


@pytest.fixture
async def hs_client(store):
    build_tiny_model(store / "enc" / "v1", hidden=8, layers=1, heads=2, seed=1)
    build_tiny_model(store / "enc" / "v2", hidden=8, layers=1, heads=2, seed=2)
    shutil.copytree(store / "corrupt", store / "enc" / "v3")
    token_file = store / "load-token"
    token_file.write_text(LOAD_TOKEN + "\n")
    cfg = ServerConfig(stores=[str(store)], models={"enc": "enc/v1", "alpha": None}, preload=["enc"],
                       modeldeployment="md1", variant_label="fp32", idle_unload_seconds=0,
                       load_token_file=str(token_file))
    client = TestClient(TestServer(build_app(cfg)))
    await client.start_server()
    loop = asyncio.get_running_loop()
    end = loop.time() + 10
    while (await client.get("/v2/health/ready")).status != 200:
        assert loop.time() < end, "never ready"
        await asyncio.sleep(0.01)
    yield client
    await client.close()


def _v2(texts):
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}


async def test_load_endpoint_switches_and_reports_the_version(hs_client):
    c = hs_client
    r = await c.post("/v2/models/enc/infer", json=_v2(["hi"]))
    before = (await r.json())
    assert before["model_version"] == "v1"
    assert (await (await c.get("/v2/models/enc")).json())["versions"] == ["v1"]
    r = await c.post("/v2/repository/models/enc/load", headers=AUTH, json={"parameters": {"uri": "enc/v2"}})
    body = await r.json()
    assert r.status == 200, body
    assert body["version"] == "v2" and body["previous_version"] == "v1" and body["loaded"]
    r = await c.post("/v2/models/enc/infer", json=_v2(["hi"]))
    after = await r.json()
    assert after["model_version"] == "v2"
    assert not np.allclose(before["outputs"][0]["data"], after["outputs"][0]["data"], atol=1e-3)
    assert (await (await c.get("/v2/models/enc")).json())["versions"] == ["v2"]
    text = await (await c.get("/metrics")).text()
    assert 'elastiserve_model_version_info{model="enc",modeldeployment="md1",variant="fp32",version="v2"} 1.0' in text
    assert 'version="v1"' not in text.split("elastiserve_model_version_info")[-1].split("# HELP")[0]
    index = await (await c.post("/v2/repository/index")).json()
    assert {"name": "enc", "version": "v2", "state": "READY"} in index
    # an explicit version label, and a load without a body (reload the current version)
    r = await c.post("/v2/repository/models/enc/load", headers=AUTH, json={"parameters": {"uri": "enc/v1", "version": "2024.1"}})
    assert r.status == 200 and (await r.json())["version"] == "2024.1"
    r = await c.post("/v2/repository/models/alpha/load", headers=AUTH)
    assert r.status == 200 and (await r.json())["loaded"]
    assert c.server.app[SERVER_KEY].cache.is_loaded("alpha")


async def test_load_endpoint_errors(hs_client):
    c = hs_client
    r = await c.post("/v2/repository/models/nope/load", headers=AUTH, json={"parameters": {"uri": "enc/v2"}})
    assert r.status == 404 and (await r.json())["code"] == "unknown_model"
    for body, field in (({"parameters": {"uri": 3}}, "parameters.uri"), ({"parameters": {"url": "x"}}, "url"),
                        ({"parameters": {"uri": "enc/v2", "version": "bad version"}}, "parameters.version"),
                        ({"parameters": "enc/v2"}, "parameters"), ({"uri": "enc/v2"}, "uri"),
                        ({"parameters": {"uri": "../../etc"}}, "parameters.uri")):
        r = await c.post("/v2/repository/models/enc/load", headers=AUTH, json=body)
        j = await r.json()
        assert r.status == 400 and field in j["error"], (body, j)
    r = await c.post("/v2/repository/models/enc/load", headers=AUTH, data=b"{not json")
    assert r.status == 400
    r = await c.post("/v2/repository/models/enc/load", headers=AUTH, json={"parameters": {"uri": "enc/v3", "version": "v3"}})
    j = await r.json()
    assert r.status == 409 and j["code"] == "switch_failed" and j["active_version"] == "v1"
    assert j["requested_version"] == "v3" and j["cause"] == "model_load_failed"
    r = await c.post("/v2/models/enc/infer", json=_v2(["still serving"]))
    assert r.status == 200 and (await r.json())["model_version"] == "v1"
    text = await (await c.get("/metrics")).text()
    labels = 'model="enc",modeldeployment="md1",result="error",variant="fp32"'
    assert f"elastiserve_model_switches_total{{{labels}}} 1.0" in text


@pytest.mark.parametrize("headers,status", [
    ({}, 401), ({"Authorization": "Bearer wrong-token-0123456789"}, 401),
    ({"Authorization": f"Basic {LOAD_TOKEN}"}, 401), ({"Authorization": LOAD_TOKEN}, 401),
], ids=["none", "wrong", "basic", "no-scheme"])
async def test_load_endpoint_needs_the_token(hs_client, headers, status):
    c = hs_client
    r = await c.post("/v2/repository/models/enc/load", json={"parameters": {"uri": "enc/v2"}}, headers=headers)
    assert r.status == status and (await r.json())["code"] == "unauthorized"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = await c.post("/v2/models/enc/infer", json=_v2(["hi"]))
    assert (await r.json())["model_version"] == "v1"  # nothing switched


async def test_load_endpoint_is_off_by_default(store):
    build_tiny_model(store / "enc" / "v1", hidden=8, layers=1, heads=2, seed=1)
    build_tiny_model(store / "enc" / "v2", hidden=8, layers=1, heads=2, seed=2)
    cfg = ServerConfig(stores=[str(store)], models={"enc": "enc/v1"}, idle_unload_seconds=0)
    client = TestClient(TestServer(build_app(cfg)))
    await client.start_server()
    try:
        r = await client.post("/v2/repository/models/enc/load", json={"parameters": {"uri": "enc/v2"}}, headers=AUTH)
        body = await r.json()
        assert r.status == 403 and body["code"] == "load_disabled" and "--load-token-file" in body["error"]
        assert client.server.app[SERVER_KEY].cache.version_of("enc") == "v1"
    finally:
        await client.close()


@pytest.mark.parametrize("content", ["", "short"], ids=["empty", "short"])
def test_a_weak_or_missing_token_file_fails_at_start(tmp_path, content):
    path = tmp_path / "t"
    path.write_text(content)
    with pytest.raises(ValueError, match="--load-token-file"):
        ServerConfig(load_token_file=str(path))
    with pytest.raises(ValueError, match="cannot read"):
        ServerConfig(load_token_file=str(tmp_path / "missing"))
