"""Sub-models from a real S3 server (SeaweedFS on loopback, ``tests/support/s3.py``): load through the disk
cache, reload from disk after a memory eviction, hot switch to a new version in the bucket, and the faults
(server stopped mid-download, wrong or no credentials, unreachable endpoint, object deleted, checksum
mismatch, corrupt object): a clear error naming the model, the URI and the cause, nothing corrupt cached,
the previous version keeps serving, and no request lost while a model downloads - including a download
that fails and is retried.

The loader-level tests drive the real cache, store and S3 client in this process (the fault is injected
at a deterministic point through the cache's ``on_chunk``/``on_retry`` seams, the server is really
killed); the HTTP tests run ``elastiserve serve`` as a process. Tiny random encoders, no model download.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from support import wait_until
from support.s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Server
from support.serving import ServerProcess

from elastiserve.serving.builder import build_tiny_model
from elastiserve.serving.diskcache import TMP, ArtifactCache
from elastiserve.serving.loader import ModelCache, ModelLoadError, ModelStore, SwitchFailed
from elastiserve.serving.remote import Remote, RetryPolicy, S3Settings
from elastiserve.serving.runtime import Embedder

pytestmark = pytest.mark.s3

HIDDEN = 32
PROBE = ["the quick brown fox", "hello world"]
BUCKET = "models"
CHUNK = 16 << 10


@pytest.fixture(scope="module")
def local_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("s3models")
    build_tiny_model(root / "enc" / "v1", hidden=HIDDEN, layers=2, heads=2, seed=11)
    build_tiny_model(root / "enc" / "v2", hidden=HIDDEN, layers=2, heads=2, seed=22)
    build_tiny_model(root / "other" / "v1", hidden=HIDDEN, layers=2, heads=2, seed=33)
    return root


@pytest.fixture(scope="module")
def reference(local_models) -> dict[str, np.ndarray]:
    out = {f"{m}/{v}": Embedder.from_dir(local_models / m / v).embed(PROBE)
           for m, v in (("enc", "v1"), ("enc", "v2"), ("other", "v1"))}
    assert np.abs(out["enc/v1"] - out["enc/v2"]).max() > 0.1
    return out


def publish(srv: S3Server, local_models: Path, *names: str) -> None:
    for n in names:
        srv.upload_dir(local_models / n, f"{BUCKET}/{n}")


def settings(srv: S3Server, *, key: str = ACCESS_KEY, secret: str = SECRET_KEY) -> S3Settings:
    return S3Settings(endpoint_url=srv.endpoint, region=REGION, access_key_id=key, secret_access_key=secret)


def make_stack(tmp_path: Path, s3: S3Settings, models: dict[str, str], *, attempts: int = 3, **disk_kw):
    disk = ArtifactCache(tmp_path / "artifacts", budget_bytes=1 << 30, remote=Remote(s3, connect_timeout=2),
                         retry=RetryPolicy(attempts=attempts, base_seconds=0.05, cap_seconds=0.2),
                         chunk_bytes=CHUNK, **disk_kw)
    store = ModelStore([f"s3://{BUCKET}/"], artifacts=disk)
    cache = ModelCache(store.resolve_all(models), budget_bytes=1 << 30, executor=ThreadPoolExecutor(2),
                       trim_after_unload=False)
    return disk, store, cache


def assert_nothing_partial(disk: ArtifactCache) -> None:
    tmp = disk.root / TMP
    assert not tmp.exists() or list(tmp.iterdir()) == [], list(tmp.iterdir())
    for e in disk.entries():  # every entry on disk is exactly what its metadata says
        data = disk.path_of(e.key).read_bytes()
        algo, digest = e.digest.split(":")
        assert len(data) == e.size and hashlib.new(algo, data).hexdigest() == digest


async def embed(cache: ModelCache, name: str) -> np.ndarray:
    async with cache.acquire(name) as (e, _):
        return e.model.embed(PROBE)


# --------------------------------------------------------------------------------------
# load, cache hit, eviction, versions
# --------------------------------------------------------------------------------------
async def test_load_then_memory_eviction_reloads_from_disk(s3_server, local_models, reference, tmp_path):
    publish(s3_server, local_models, "enc/v1", "other/v1")
    disk, _, cache = make_stack(tmp_path, settings(s3_server), {"enc": "enc/v1", "other": "other/v1"})
    assert np.allclose(await embed(cache, "enc"), reference["enc/v1"], atol=1e-5)
    assert disk.stats.downloads == 3  # model.onnx, tokenizer.json, elastiserve.json
    assert {e.verified_by for e in disk.entries()} == {"etag-md5"}
    assert disk.wait_derived(60) and disk.stats.derived == 1  # ORT's optimized graph, written in the background
    cache.unload("enc", "evicted")
    assert np.allclose(await embed(cache, "enc"), reference["enc/v1"], atol=1e-5)
    assert disk.stats.downloads == 3 and disk.stats.hits == 3  # back from disk, not from the bucket
    async with cache.acquire("enc") as (e, _):  # ... from the optimized graph, not optimized again
        assert e.model.session.get_session_options().graph_optimization_level.name == "ORT_DISABLE_ALL"
    assert np.allclose(await embed(cache, "other"), reference["other/v1"], atol=1e-5)
    assert disk.stats.downloads == 6
    # a second replica on the same node-local folder finds everything on disk
    disk2 = ArtifactCache(disk.root, budget_bytes=1 << 30, remote=Remote(settings(s3_server)))
    assert disk2.used_bytes == disk.used_bytes and disk2.fetch(f"s3://{BUCKET}/enc/v1/model.onnx").exists()
    assert disk2.stats.downloads == 0
    assert_nothing_partial(disk)
    cache.close()


async def test_hot_switch_to_a_new_version_in_the_bucket_and_a_missing_one(s3_server, local_models, reference,
                                                                          tmp_path):
    publish(s3_server, local_models, "enc/v1", "enc/v2")
    _, store, cache = make_stack(tmp_path, settings(s3_server), {"enc": "enc/v1"})
    await embed(cache, "enc")
    res = await cache.switch("enc", store.resolve("enc", "enc/v2"))
    assert res.switched and res.version == "v2" and res.previous_version == "v1"
    assert np.allclose(await embed(cache, "enc"), reference["enc/v2"], atol=1e-5)
    with pytest.raises(SwitchFailed) as ei:
        await cache.switch("enc", store.resolve("enc", "enc/v9"))
    msg = str(ei.value)
    assert "'enc'" in msg and "s3://models/enc/v9/model.onnx" in msg and "no such key" in msg
    assert "version 'v2' keeps serving" in msg
    assert cache.version_of("enc") == "v2"
    assert np.allclose(await embed(cache, "enc"), reference["enc/v2"], atol=1e-5)
    cache.close()


# --------------------------------------------------------------------------------------
# faults
# --------------------------------------------------------------------------------------
async def test_server_killed_mid_download_then_retried_loses_no_request(s3_server_factory, local_models, reference,
                                                                        tmp_path):
    """The S3 server is SIGKILLed after the first chunk of enc's model.onnx; the retry finds it back up. Twenty
    requests waiting for enc all get the right answer, and the loaded model keeps answering meanwhile."""
    srv = s3_server_factory()
    publish(srv, local_models, "enc/v1", "other/v1")
    assert (local_models / "enc/v1/model.onnx").stat().st_size > 3 * CHUNK  # several chunks to stop between
    fault = {"armed": False, "killed_at": None, "restarted": False}
    retries: list[str] = []

    def on_chunk(uri: str, done: int, total: int) -> None:
        if fault["armed"] and fault["killed_at"] is None and uri.endswith("enc/v1/model.onnx") and done < total:
            fault["killed_at"] = done
            srv.kill()

    def on_retry(attempt: int, err) -> None:
        retries.append(err.cause)
        if not fault["restarted"]:
            srv.start()  # the server comes back (same ports and data) before the next attempt
            fault["restarted"] = True

    disk, _, cache = make_stack(tmp_path, settings(srv), {"enc": "enc/v1", "other": "other/v1"}, attempts=4,
                                on_chunk=on_chunk, on_retry=on_retry)
    await embed(cache, "other")
    fault["armed"] = True
    infer_pool = ThreadPoolExecutor(2)
    loop = asyncio.get_running_loop()
    served_meanwhile = 0

    async def other_stream(until: asyncio.Future) -> None:
        nonlocal served_meanwhile
        while not until.done():
            async with cache.acquire("other") as (e, hit):
                assert hit
                out = await loop.run_in_executor(infer_pool, e.model.embed, PROBE)
            assert np.allclose(out, reference["other/v1"], atol=1e-5)
            served_meanwhile += 1

    enc_requests = asyncio.gather(*(embed(cache, "enc") for _ in range(20)))
    stream = asyncio.create_task(other_stream(enc_requests))
    results = await asyncio.wait_for(enc_requests, 120)
    await stream
    assert all(np.allclose(r, reference["enc/v1"], atol=1e-5) for r in results)  # 20 of 20 answered
    assert fault["killed_at"] is not None and fault["restarted"]
    assert retries and set(retries) <= {"transfer_failed", "endpoint_unreachable"}, retries
    assert served_meanwhile > 0  # inference on the loaded model went on during the download and the outage
    assert cache.stats.loads == 2 and cache.stats.load_errors == 0
    assert_nothing_partial(disk)
    cache.close()


async def test_server_down_for_good_keeps_the_previous_version(s3_server_factory, local_models, reference,
                                                               tmp_path):
    srv = s3_server_factory()
    publish(srv, local_models, "enc/v1", "enc/v2")
    disk, store, cache = make_stack(tmp_path, settings(srv), {"enc": "enc/v1"}, attempts=3)
    await embed(cache, "enc")
    srv.kill()
    t0 = time.monotonic()
    with pytest.raises(SwitchFailed) as ei:
        await cache.switch("enc", store.resolve("enc", "enc/v2"))
    took = time.monotonic() - t0
    msg = str(ei.value)
    assert "endpoint unreachable" in msg and srv.endpoint in msg and "gave up after 3 attempts" in msg, msg
    assert "s3://models/enc/v2/model.onnx" in msg and "version 'v1' keeps serving" in msg
    assert took < 30  # bounded: three attempts, short backoff
    assert np.allclose(await embed(cache, "enc"), reference["enc/v1"], atol=1e-5)
    assert not any("enc/v2" in e.uri for e in disk.entries())
    # an evicted model comes back from disk while the bucket is down (the cached copy is used)
    cache.unload("enc", "evicted")
    assert np.allclose(await embed(cache, "enc"), reference["enc/v1"], atol=1e-5)
    assert disk.stats.stale_uses >= 1
    assert_nothing_partial(disk)
    cache.close()


async def test_wrong_credentials_say_access_denied(s3_server, local_models, tmp_path):
    publish(s3_server, local_models, "enc/v1")
    _, _, cache = make_stack(tmp_path, settings(s3_server, secret="not-the-secret"), {"enc": "enc/v1"})
    with pytest.raises(ModelLoadError) as ei:
        await cache.get("enc")
    err = ei.value
    assert err.cause == "access_denied" and err.status == 500
    assert "'enc'" in str(err) and "s3://models/enc/v1/model.onnx" in str(err) and "access denied" in str(err)
    assert "not-the-secret" not in str(err)
    cache.close()


async def test_no_credentials_and_unreachable_endpoint(s3_server, local_models, tmp_path, monkeypatch):
    publish(s3_server, local_models, "enc/v1")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    _, _, cache = make_stack(tmp_path / "a", S3Settings(endpoint_url=s3_server.endpoint, region=REGION),
                             {"enc": "enc/v1"})
    with pytest.raises(ModelLoadError, match="no S3 credentials") as ei:
        await cache.get("enc")
    assert ei.value.cause == "no_credentials" and "s3-credentials-dir" in str(ei.value)
    cache.close()
    closed = f"http://127.0.0.1:{_closed_port()}"
    _, _, cache = make_stack(tmp_path / "b", S3Settings(endpoint_url=closed, region=REGION, access_key_id="k",
                                                        secret_access_key="s"), {"enc": "enc/v1"}, attempts=2)
    with pytest.raises(ModelLoadError) as ei:
        await cache.get("enc")
    assert ei.value.cause == "endpoint_unreachable" and ei.value.status == 503 and closed in str(ei.value)
    cache.close()


def _closed_port() -> int:
    from support.serving import free_port

    return free_port()  # nothing listens there once the probe socket is closed


async def test_deleted_object_is_reported_and_dropped_from_disk(s3_server, local_models, reference, tmp_path):
    s3_server.upload_dir(local_models / "enc" / "v1", f"{BUCKET}/gone/v1")
    disk, _, cache = make_stack(tmp_path, settings(s3_server), {"gone": "gone/v1"})
    await embed(cache, "gone")
    s3_server.fs().rm(f"{BUCKET}/gone/v1/model.onnx")
    cache.unload("gone", "evicted")
    with pytest.raises(ModelLoadError) as ei:
        await cache.get("gone")
    assert ei.value.cause == "no_such_key" and "s3://models/gone/v1/model.onnx" in str(ei.value)
    assert not any(e.uri.endswith("gone/v1/model.onnx") for e in disk.entries())
    cache.close()


async def test_checksum_mismatch_and_corrupt_object_cache_nothing(s3_server, local_models, reference, tmp_path):
    publish(s3_server, local_models, "enc/v1")
    fs = s3_server.fs()
    # v3: the bytes do not match the published SHA256SUMS (a corrupted upload)
    s3_server.upload_dir(local_models / "enc" / "v2", f"{BUCKET}/enc/v3")
    fs.pipe(f"{BUCKET}/enc/v3/SHA256SUMS", f"{'0' * 64}  model.onnx\n".encode())
    # v4: the object is no ONNX model at all (its ETag matches: the store holds garbage)
    s3_server.upload_dir(local_models / "enc" / "v2", f"{BUCKET}/enc/v4")
    fs.pipe(f"{BUCKET}/enc/v4/model.onnx", b"\x00not an onnx model" * 300)
    disk, store, cache = make_stack(tmp_path, settings(s3_server), {"enc": "enc/v1"}, attempts=2)
    await embed(cache, "enc")
    with pytest.raises(SwitchFailed) as ei:
        await cache.switch("enc", store.resolve("enc", "enc/v3"))
    assert "checksum mismatch" in str(ei.value) and "SHA256SUMS" in str(ei.value)
    with pytest.raises(SwitchFailed) as ei:
        await cache.switch("enc", store.resolve("enc", "enc/v4"))
    assert "'enc'" in str(ei.value) and "version 'v1' keeps serving" in str(ei.value)
    assert not any(x in e.uri for e in disk.entries() for x in ("enc/v3/model.onnx", "enc/v4/model.onnx"))
    assert np.allclose(await embed(cache, "enc"), reference["enc/v1"], atol=1e-5)
    assert_nothing_partial(disk)
    cache.close()


# --------------------------------------------------------------------------------------
# the server process
# --------------------------------------------------------------------------------------
def test_server_process_reads_credentials_from_a_secret_folder_and_hot_switches_from_s3(
        s3_server, local_models, reference, tmp_path, monkeypatch):
    """``elastiserve serve`` with ``--store s3://models/``, credentials only in a mounted-Secret-like folder;
    a memory budget of one model, so alternating models reload from the disk cache, not from the bucket;
    a models file switching to v2 (served) and then to a missing v9 (refused, v2 keeps serving)."""
    publish(s3_server, local_models, "enc/v1", "enc/v2", "other/v1")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "AWS_ACCESS_KEY_ID").write_text(ACCESS_KEY)
    (secret / "AWS_SECRET_ACCESS_KEY").write_text(SECRET_KEY)
    mf = tmp_path / "models"
    mf.write_text("enc=enc/v1\nother=other/v1\ngone=gone/v1\n")  # gone/v1 is not in the bucket
    one_model = (local_models / "enc/v1/model.onnx").stat().st_size * 3 // 2
    env = {k: v for k, v in s3_server.env().items() if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")}
    env.update(ELASTISERVE_MODELDEPLOYMENT="s3", ELASTISERVE_VARIANT="fp32")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k, raising=False)  # the child inherits os.environ: only the folder holds them
    srv = ServerProcess(["--store", f"s3://{BUCKET}/", "--models-file", str(mf), "--models-file-interval", "0.2",
                         "--memory-budget", str(one_model), "--idle-unload-seconds", "0",
                         "--artifact-cache-dir", str(tmp_path / "artifacts"), "--s3-credentials-dir", str(secret),
                         "--infer-workers", "1", "--intra-op-threads", "1"], tmp_path / "server.log", env)
    try:
        srv.wait_ready()

        def infer(name: str) -> tuple[int, dict]:
            body = {"inputs": [{"name": "text", "shape": [len(PROBE)], "datatype": "BYTES", "data": PROBE}]}
            r = srv.client.post(f"/v2/models/{name}/infer", json=body)
            return r.status_code, r.json()

        def emb(data: dict) -> np.ndarray:
            out = data["outputs"][0]
            return np.asarray(out["data"], np.float32).reshape(out["shape"])

        for _ in range(3):  # one resident model at a time: every call after the first two is a reload
            for name, ref in (("enc", "enc/v1"), ("other", "other/v1")):
                code, data = infer(name)
                assert code == 200, data
                assert np.allclose(emb(data), reference[ref], atol=1e-4)
        art = srv.client.get("/v2/models").json()["artifact_cache"]
        assert art["downloads"] == 6 and art["hits"] >= 4 * 3 and art["download_errors"] == 0, art
        # the same figures in /metrics, and a sub-model that cannot be loaded, with its cause
        code, data = infer("gone")
        assert code == 500 and data.get("cause") == "no_such_key", data
        metrics = srv.client.get("/metrics").text
        labels = 'modeldeployment="s3",variant="fp32"'
        assert f"elastiserve_artifact_cache_downloads_total{{{labels}}} 6.0" in metrics
        assert f'elastiserve_model_load_failing{{cause="no_such_key",model="gone",{labels}}} 1.0' in metrics
        assert sum(ln.startswith("elastiserve_model_load_failing{") for ln in metrics.splitlines()) == 1

        # enc is not resident now (other was used last): the switch re-points it, the next request loads v2
        def status(name: str) -> dict:
            return next(m for m in srv.client.get("/v2/models").json()["models"] if m["name"] == name)

        mf.write_text("enc=enc/v2\nother=other/v1\ngone=gone/v1\n")
        wait_until(lambda: status("enc")["version"] == "v2", timeout=60, interval=0.2, what="enc to point at v2")
        code, data = infer("enc")
        assert code == 200 and data["model_version"] == "v2"
        assert np.allclose(emb(data), reference["enc/v2"], atol=1e-4)

        mf.write_text("enc=enc/v9\nother=other/v1\ngone=gone/v1\n")

        err = wait_until(lambda: status("enc")["last_switch_error"], timeout=60, interval=0.2, what="the failed switch to v9 to be reported")
        assert "no such key" in err and "s3://models/enc/v9/model.onnx" in err and "'v2' keeps serving" in err
        code, data = infer("enc")
        assert code == 200 and data["model_version"] == "v2"
    finally:
        code = srv.stop()
    assert code == 0, srv.log.read_text()[-3000:]
    assert SECRET_KEY not in srv.log.read_text()

