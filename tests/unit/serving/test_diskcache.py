"""The artifact disk cache (keyed, verified, never partial, single download, LRU under a budget) and the
remote-store rules (settings, error classification, bounded retry), against a fake remote backed by a
local folder. The same behaviours against a real S3 server: tests/integration/test_serving_s3.py."""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from elastiserve.serving.diskcache import TMP, ArtifactCache
from elastiserve.serving.remote import FetchError, RetryPolicy, S3Settings, classify, with_retry


class FolderRemote:
    """A fake object store: ``s3://b/<path>`` is ``root/<path>``; the ETag is the MD5 of the bytes.
    ``fail_reads`` makes the next N opens break after the first chunk; ``down`` makes every call fail
    to connect; ``gate`` (a threading.Event) holds every download until set."""

    def __init__(self, root: Path):
        self.root = root
        self.opens: list[str] = []
        self.fail_reads = 0
        self.down = False
        self.gate: threading.Event | None = None

    def _path(self, uri: str) -> Path:
        return self.root / uri.removeprefix("s3://b/")

    def put(self, key: str, data: bytes) -> str:
        p = self.root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return f"s3://b/{key}"

    def endpoint(self, uri: str) -> str:
        return "http://fake"

    def info(self, uri: str) -> dict:
        if self.down:
            raise EndpointConnectionError(endpoint_url="http://fake")
        p = self._path(uri)
        if not p.is_file():
            raise FileNotFoundError(uri)
        return {"size": p.stat().st_size, "ETag": f'"{hashlib.md5(p.read_bytes()).hexdigest()}"'}

    def open(self, uri: str, block_size: int):
        if self.down:
            raise EndpointConnectionError(endpoint_url="http://fake")
        p = self._path(uri)
        if not p.is_file():
            raise FileNotFoundError(uri)
        self.opens.append(uri)
        if self.gate is not None:
            self.gate.wait(10)
        data = p.read_bytes()
        if self.fail_reads > 0:
            self.fail_reads -= 1
            return _Torn(data)
        return io.BytesIO(data)


class _Torn(io.BytesIO):
    def read(self, n=-1):
        if self.tell() > 0:
            raise ConnectionResetError("connection reset by peer")
        return super().read(n)


def make(tmp_path, remote, budget=10_000, **kw) -> ArtifactCache:
    return ArtifactCache(tmp_path / "cache", budget_bytes=budget, remote=remote, chunk_bytes=64,
                         retry=RetryPolicy(attempts=3, base_seconds=0.0), sleep=lambda s: None, **kw)


@pytest.fixture
def remote(tmp_path) -> FolderRemote:
    return FolderRemote(tmp_path / "bucket")


def test_first_fetch_downloads_then_hits(tmp_path, remote):
    uri = remote.put("m/v1/model.onnx", b"x" * 500)
    cache = make(tmp_path, remote)
    p = cache.fetch(uri)
    assert p.read_bytes() == b"x" * 500 and remote.opens == [uri]
    assert cache.fetch(uri) == p and remote.opens == [uri]  # hit: no second download
    st = cache.status()
    assert (st["downloads"], st["hits"], st["misses"], st["used_bytes"]) == (1, 1, 1, 500)
    assert cache.entries()[0].verified_by == "etag-md5"


def test_new_object_behind_the_same_uri_is_a_new_entry(tmp_path, remote):
    uri = remote.put("m/model.onnx", b"a" * 100)
    cache = make(tmp_path, remote)
    first = cache.fetch(uri)
    remote.put("m/model.onnx", b"b" * 120)
    second = cache.fetch(uri)
    assert second != first and second.read_bytes() == b"b" * 120 and len(remote.opens) == 2


def test_concurrent_fetches_download_once(tmp_path, remote):
    uri = remote.put("m/model.onnx", b"z" * 2000)
    cache = make(tmp_path, remote)
    remote.gate = threading.Event()
    out: list[Path] = []
    threads = [threading.Thread(target=lambda: out.append(cache.fetch(uri))) for _ in range(8)]
    for t in threads:
        t.start()
    remote.gate.set()
    for t in threads:
        t.join(10)
    assert len(out) == 8 and len(set(out)) == 1 and remote.opens == [uri]


def test_lru_eviction_under_the_disk_budget_spares_entries_in_use(tmp_path, remote):
    a, b, c = (remote.put(f"{n}/model.onnx", n.encode() * 400) for n in "abc")
    clock = iter(range(100, 200)).__next__
    cache = make(tmp_path, remote, budget=1000, clock=clock)
    cache.fetch(a)
    with cache.local(b):  # b is in use while c needs room
        cache.fetch(a)  # a becomes the most recently used ...
        cache.fetch(c)  # ... but b is busy, so a goes anyway
        assert {e.uri for e in cache.entries()} == {b, c}
    assert cache.status()["evictions"] == 1 and cache.used_bytes <= 1000


def test_derived_files_count_in_the_budget_and_leave_with_their_entry(tmp_path, remote):
    a, b = (remote.put(f"{n}/model.onnx", n.encode() * 400) for n in "ab")
    clock = iter(range(100, 200)).__next__
    cache = make(tmp_path, remote, budget=1000, clock=clock)
    pa = cache.fetch(a)
    with pytest.raises(ValueError, match="derived file name"):
        cache.derived_path(pa, "../escape")
    with pytest.raises(ValueError, match="not an artifact"):
        cache.derived_path(tmp_path / "elsewhere" / "data", "x.onnx")
    da = cache.derived_path(pa, "opt.onnx")
    da.write_bytes(b"o" * 300)
    cache.note_derived(da)
    assert cache.used_bytes == 700
    with cache.local(b) as pb:  # 400 more: a (700 with its derived file) is evicted whole
        assert cache.used_bytes == 400 and not da.exists() and not pa.exists()
        db = cache.derived_path(pb, "opt.onnx")
        db.write_bytes(b"o" * 700)  # would exceed the budget with nothing left to evict: not kept
        cache.note_derived(db)
        assert not db.exists() and cache.used_bytes == 400
        db.write_bytes(b"o" * 100)
        cache.note_derived(db)
    (db.parent / ".half-written.part").mkdir()
    (db.parent / ".half-written.part" / "model.onnx").write_bytes(b"?")
    (db.parent / "folder").mkdir()
    (db.parent / "folder" / "weights.bin").write_bytes(b"w" * 50)
    again = make(tmp_path, remote, budget=1000)  # a restart counts derived files, drops unfinished ones
    assert again.used_bytes == 550 and not (db.parent / ".half-written.part").exists()


def test_artifact_larger_than_the_budget_is_refused(tmp_path, remote):
    uri = remote.put("big/model.onnx", b"x" * 2000)
    with pytest.raises(FetchError, match="artifact-cache-budget") as ei:
        make(tmp_path, remote, budget=1000).fetch(uri)
    assert ei.value.cause == "disk_budget" and not ei.value.retryable


def test_sha256_manifest_mismatch_caches_nothing(tmp_path, remote):
    uri = remote.put("m/v1/model.onnx", b"weights" * 50)
    remote.put("m/v1/SHA256SUMS", f"{'0' * 64}  model.onnx\n".encode())
    cache = make(tmp_path, remote)
    with pytest.raises(FetchError, match="sha256") as ei:
        cache.fetch(uri)
    assert ei.value.cause == "checksum_mismatch" and "3 attempts" in str(ei.value)
    assert cache.entries() == [] and list((cache.root / TMP).iterdir()) == []
    good = hashlib.sha256(b"weights" * 50).hexdigest()
    remote.put("m/v1/SHA256SUMS", f"{good}  model.onnx\n".encode())
    assert cache.fetch(uri).read_bytes() == b"weights" * 50
    assert cache.entries()[0].verified_by == "sha256"


def test_torn_download_is_retried_and_never_visible(tmp_path, remote):
    uri = remote.put("m/model.onnx", b"q" * 1000)
    retries = []
    cache = make(tmp_path, remote, on_retry=lambda n, e: retries.append(e.cause))
    remote.fail_reads = 2
    assert cache.fetch(uri).read_bytes() == b"q" * 1000
    assert retries == ["transfer_failed", "transfer_failed"] and len(remote.opens) == 3
    remote.fail_reads = 5  # more than the 3 attempts
    remote.put("m/model.onnx", b"r" * 1000)
    with pytest.raises(FetchError, match="gave up after 3 attempts") as ei:
        cache.fetch(uri)
    assert ei.value.cause == "transfer_failed"
    assert [e.etag for e in cache.entries()] == [hashlib.md5(b"q" * 1000).hexdigest()]  # only the complete one
    assert list((cache.root / TMP).iterdir()) == []


def test_deleted_object_drops_its_entries(tmp_path, remote):
    uri = remote.put("m/model.onnx", b"d" * 100)
    cache = make(tmp_path, remote)
    cache.fetch(uri)
    (remote.root / "m/model.onnx").unlink()
    with pytest.raises(FetchError, match="no such key") as ei:
        cache.fetch(uri)
    assert ei.value.cause == "no_such_key" and cache.entries() == []


def test_unreachable_store_serves_the_cached_copy(tmp_path, remote):
    uri = remote.put("m/model.onnx", b"s" * 100)
    other = remote.put("n/model.onnx", b"t" * 100)
    cache = make(tmp_path, remote)
    p = cache.fetch(uri)
    remote.down = True
    assert cache.size(uri) == 100 and cache.fetch(uri) == p and cache.status()["stale_uses"] == 1
    with pytest.raises(FetchError, match="endpoint unreachable") as ei:
        cache.fetch(other)
    assert ei.value.cause == "endpoint_unreachable"


def test_restart_keeps_complete_entries_and_removes_partial_ones(tmp_path, remote):
    uri = remote.put("m/model.onnx", b"k" * 300)
    make(tmp_path, remote).fetch(uri)
    partial = tmp_path / "cache" / TMP / "abc"
    partial.mkdir(parents=True)
    (partial / "data").write_bytes(b"half")
    cache = make(tmp_path, remote)
    assert not partial.exists() and cache.used_bytes == 300
    cache.fetch(uri)
    assert remote.opens == [uri]  # the second process found it on disk


def test_settings_from_env_and_secret_files_never_show_the_secret(tmp_path):
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "envkey",
           "AWS_SECRET_ACCESS_KEY": "envsecret", "AWS_DEFAULT_REGION": "eu-west-1", "HOME": "/x"}
    st = S3Settings.load(env)
    assert (st.endpoint_url, st.region, st.access_key_id, st.source) == ("http://127.0.0.1:9", "eu-west-1", "envkey",
                                                                         "environment")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "AWS_ACCESS_KEY_ID").write_text("filekey\n")
    (secret / "AWS_SECRET_ACCESS_KEY").write_text("filesecret")
    st = S3Settings.load(env, credentials_dir=secret)
    assert (st.access_key_id, st.secret_access_key) == ("filekey", "filesecret")
    assert "filesecret" not in repr(st) and "filesecret" not in st.describe() and str(secret) in st.describe()
    with pytest.raises(ValueError, match="s3-credentials-dir"):
        S3Settings.load(env, credentials_dir=tmp_path / "missing")


@pytest.mark.parametrize("exc,cause", [
    (NoCredentialsError(), "no_credentials"),
    (ClientError({"Error": {"Code": "InvalidAccessKeyId", "Message": "x"}}, "GetObject"), "access_denied"),
    (ClientError({"Error": {"Code": "NoSuchKey", "Message": "x"}}, "GetObject"), "no_such_key"),
    (ClientError({"Error": {}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "HeadObject"), "access_denied"),
    (ClientError({"Error": {"Code": "ServiceUnavailable"}}, "GetObject"), "server_error"),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), "endpoint_unreachable"),
    (PermissionError("denied"), "access_denied"),
    (FileNotFoundError("gone"), "no_such_key"),
    (ValueError("odd"), "error"),
])
def test_classify(exc, cause):
    err = classify(exc, "s3://b/k", "http://127.0.0.1:9")
    assert err.cause == cause and "s3://b/k" in str(err)


def test_classify_looks_through_the_cause_chain():
    try:
        try:
            raise ClientError({"Error": {"Code": "AccessDenied"}}, "GetObject")
        except ClientError as inner:
            raise PermissionError("Forbidden") from inner
    except PermissionError as outer:
        assert classify(outer, "s3://b/k").detail.startswith("access denied (AccessDenied)")


def test_with_retry_is_bounded_with_backoff():
    sleeps: list[float] = []
    calls = []

    def op():
        calls.append(1)
        raise EndpointConnectionError(endpoint_url="http://x")

    with pytest.raises(FetchError, match="gave up after 4 attempts"):
        with_retry(op, "s3://b/k", RetryPolicy(attempts=4, base_seconds=0.5, cap_seconds=1.5), sleep=sleeps.append)
    assert len(calls) == 4 and sleeps == [0.5, 1.0, 1.5]
    calls.clear()
    with pytest.raises(FetchError):  # permanent errors are not retried
        with_retry(lambda: calls.append(1) or (_ for _ in ()).throw(PermissionError("no")), "s3://b/k",
                   RetryPolicy(), sleep=sleeps.append)
    assert len(calls) == 1


async def test_remote_models_load_through_the_cache_and_bad_ones_are_not_kept(tmp_path, store, clock):
    """ModelStore + ModelCache over the fake bucket: load, evict from memory, reload from disk (no new
    download); a corrupt artifact fails with the model's name and is dropped from the disk cache; a
    missing one names the URI and the cause."""
    from elastiserve.serving.loader import ModelCache, ModelLoadError, ModelStore

    remote = FolderRemote(store)
    disk = make(tmp_path, remote, budget=1 << 30)
    s = ModelStore(["s3://b/"], artifacts=disk)
    cache = ModelCache(s.resolve_all({"alpha": None, "corrupt": None, "empty": None}), budget_bytes=1 << 30,
                       clock=clock, trim_after_unload=False)
    e, _ = await cache.get("alpha")
    assert e.model.embed(["cat"]).shape == (1, 8)
    downloads = disk.stats.downloads
    cache.unload("alpha", "evicted")
    await cache.get("alpha")
    assert disk.stats.downloads == downloads and disk.stats.hits >= 3  # model, tokenizer, manifest from disk
    with pytest.raises(ModelLoadError, match="'corrupt'"):
        await cache.get("corrupt")
    assert not any("corrupt/model.onnx" in x.uri for x in disk.entries())
    with pytest.raises(ModelLoadError, match="no such key") as ei:
        await cache.get("empty")
    assert ei.value.cause == "no_such_key" and ei.value.payload()["uri"].endswith("empty/model.onnx")
    cache.close()


async def test_reload_from_the_disk_cache_opens_the_optimized_graph_with_identical_outputs(tmp_path, store, clock):
    """After a first load, ONNX Runtime's optimized graph is written in the background next to the artifact
    (counted in the disk budget); a reload after eviction opens it with graph optimizations off and embeds
    exactly as before; a damaged optimized graph is removed, the load falls back to the artifact and the
    graph is written again."""
    import numpy as np
    import onnxruntime as ort

    from elastiserve.serving.loader import ModelCache, ModelStore
    from elastiserve.serving.runtime import OPTIMIZED_GRAPH, OPTIMIZED_WEIGHTS, optimized_graph_name

    disk = make(tmp_path, FolderRemote(store), budget=1 << 30)
    cache = ModelCache(ModelStore(["s3://b/"], artifacts=disk).resolve_all({"alpha": None}), budget_bytes=1 << 30,
                       clock=clock, trim_after_unload=False)
    texts = ["the quick brown fox", "a cat", "models load fast from the disk cache"]
    online, optimized_off = ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL

    def level(e):
        return e.model.session.get_session_options().graph_optimization_level

    e, _ = await cache.get("alpha")
    first = e.model.embed(texts)
    assert level(e) == online
    assert disk.wait_derived(30) and disk.stats.derived == 1
    [entry] = [x for x in disk.entries() if x.uri.endswith("alpha/model.onnx")]
    optimized = disk.path_of(entry.key).parent / optimized_graph_name()
    files = {p.name: p.stat().st_size for p in optimized.iterdir()}
    assert set(files) == {OPTIMIZED_GRAPH, OPTIMIZED_WEIGHTS} and entry.extra == sum(files.values())
    assert files[OPTIMIZED_WEIGHTS] > 0  # initializers of 1 KiB and more are outside the protobuf
    assert disk.used_bytes == sum(x.size for x in disk.entries()) + entry.extra
    cache.unload("alpha", "evicted")
    e, _ = await cache.get("alpha")
    assert level(e) == optimized_off and np.array_equal(e.model.embed(texts), first)

    (optimized / OPTIMIZED_GRAPH).write_bytes(b"not a graph")
    cache.unload("alpha", "evicted")
    e, _ = await cache.get("alpha")
    assert level(e) == online and np.array_equal(e.model.embed(texts), first)  # fell back to the artifact
    assert disk.wait_derived(30) and disk.stats.derived == 2
    cache.unload("alpha", "evicted")
    e, _ = await cache.get("alpha")
    assert level(e) == optimized_off and np.array_equal(e.model.embed(texts), first)  # written again
    cache.close()


def test_model_source_identity_ignores_the_cache():
    from elastiserve.serving.loader import ModelSource

    assert ModelSource("a", "s3://b/a", remote=True) == ModelSource("a", "s3://b/a", remote=True, artifacts=object())


def test_server_with_an_s3_store_gets_a_disk_cache_and_a_bad_secret_folder_is_a_start_error(tmp_path):
    from elastiserve.serving.loader import ServingError
    from elastiserve.serving.server import Server, ServerConfig

    cfg = dict(stores=["s3://bucket/models"], models={"a": None}, artifact_cache_dir=str(tmp_path / "art"),
               artifact_cache_budget="1Gi")
    srv = Server(ServerConfig(**cfg))
    assert srv.artifacts is not None and srv.artifacts.budget == 1 << 30
    assert srv.cache.sources["a"].artifacts is srv.artifacts and (tmp_path / "art").is_dir()
    with pytest.raises(ServingError, match="s3-credentials-dir"):
        Server(ServerConfig(**cfg, s3_credentials_dir=str(tmp_path / "no-such-secret")))
    assert Server(ServerConfig(stores=[str(tmp_path)], models={"a": None})).artifacts is None


def test_http_store_without_range_support_is_streamed_into_the_cache(tmp_path):
    """A plain file server (no Range, no ETag) is a valid http(s) store: the download streams."""
    import functools
    import http.server

    from elastiserve.serving.remote import Remote

    (tmp_path / "www" / "m").mkdir(parents=True)
    payload = bytes(range(256)) * 4096  # 1 MiB, several read chunks
    (tmp_path / "www" / "m" / "model.onnx").write_bytes(payload)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cache = ArtifactCache(tmp_path / "cache", budget_bytes=4 << 20, remote=Remote(), chunk_bytes=64 << 10,
                              retry=RetryPolicy(attempts=1, base_seconds=0.0), sleep=lambda s: None)
        path = cache.fetch(f"http://127.0.0.1:{server.server_address[1]}/m/model.onnx")
        assert path.read_bytes() == payload
    finally:
        server.shutdown()
        server.server_close()


def test_disk_cache_figures_are_exported_as_prometheus_metrics(tmp_path, remote):
    from elastiserve.serving.metrics import ARTIFACT_CACHE_METRICS, ServingMetrics

    a, b = (remote.put(f"{n}/model.onnx", n.encode() * 400) for n in "ab")
    cache = make(tmp_path, remote, budget=600)
    m = ServingMetrics("md", "int8")
    m.watch_artifact_cache(cache.status)
    cache.fetch(a)
    cache.fetch(a)
    cache.fetch(b)  # evicts a
    text = m.render()[0].decode()
    lines = {ln.split("{")[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
             if ln.startswith("elastiserve_artifact_cache_")}
    assert set(lines) == set(ARTIFACT_CACHE_METRICS)
    assert 'elastiserve_artifact_cache_hits_total{modeldeployment="md",variant="int8"} 1.0' in text
    assert (lines["elastiserve_artifact_cache_misses_total"], lines["elastiserve_artifact_cache_downloads_total"],
            lines["elastiserve_artifact_cache_evictions_total"]) == (2, 2, 1)
    assert (lines["elastiserve_artifact_cache_used_bytes"], lines["elastiserve_artifact_cache_budget_bytes"],
            lines["elastiserve_artifact_cache_download_bytes_total"]) == (400, 600, 800)
    assert lines["elastiserve_artifact_cache_download_seconds_total"] > 0
    assert "# TYPE elastiserve_artifact_cache_hits_total counter" in text
    assert "# TYPE elastiserve_artifact_cache_used_bytes gauge" in text
