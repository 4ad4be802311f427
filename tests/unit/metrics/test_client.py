"""PrometheusSource against a loopback HTTP server that answers what each test wants (incl. garbage)."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elastiserve.api import parse_spec
from elastiserve.metrics import AmbiguousSeries, MetricsError, NoData, PrometheusSource, QueryFailed


class Canned:
    def __init__(self):
        self.status = 200
        self.body = b"{}"
        self.delay = None
        self.seen: list[tuple[str, dict]] = []


@pytest.fixture(scope="module")
def server():
    canned = Canned()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            canned.seen.append((self.path, dict(self.headers)))
            if canned.delay:
                canned.delay.wait(5)
            try:
                self.send_response(canned.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(canned.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout test)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield canned, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def vector(*values, ts=1700000000.0):
    return json.dumps({"status": "success", "data": {"resultType": "vector",
                       "result": [{"metric": {"i": str(i)}, "value": [ts, v]} for i, v in enumerate(values)]}}).encode()


@pytest.mark.parametrize(
    "status,body,error",
    [
        (200, vector(), NoData),
        (200, vector("1", "2"), AmbiguousSeries),
        (200, vector("NaN"), NoData),
        (200, vector("+Inf"), NoData),
        (400, b'{"status":"error","errorType":"bad_data","error":"parse error at char 5"}', QueryFailed),
        (503, b"overloaded", QueryFailed),
        (200, b"not json", QueryFailed),
        (200, b'{"data": {"result": "nope"}}', QueryFailed),
        (200, b'{"data": {"result": [{"metric": {}}]}}', QueryFailed),
    ],
    ids=["empty", "two-series", "nan", "inf", "promql-error", "503", "not-json", "not-a-vector", "no-value"],
)
def test_instant_edge_cases_become_typed_errors(server, status, body, error):
    canned, url = server
    canned.status, canned.body = status, body
    with pytest.raises(error):
        PrometheusSource(url).instant("up")


def test_value_and_timestamp(server):
    canned, url = server
    canned.status, canned.body = 200, vector("12.5")
    value, ts = PrometheusSource(url).instant("up")
    assert value == 12.5 and ts == datetime.fromtimestamp(1700000000, tz=timezone.utc)


def test_bearer_token_is_sent_and_never_shown(server):
    canned, url = server
    canned.status, canned.body = 200, vector("1")
    src = PrometheusSource(url, token="s3cret")
    src.instant("up")
    assert canned.seen[-1][1].get("Authorization") == "Bearer s3cret"
    assert "s3cret" not in repr(src) and "s3cret" not in str(src)


def test_timeout_is_a_query_failure(server):
    canned, url = server
    canned.delay = threading.Event()
    try:
        with pytest.raises(QueryFailed, match="timed out"):
            PrometheusSource(url, timeout=0.3).instant("up")
    finally:
        canned.delay.set()
        canned.delay = None


def test_unreachable():
    with pytest.raises(QueryFailed, match="unreachable"):
        PrometheusSource("http://127.0.0.1:9", timeout=1).instant("up")


def test_snapshot_collects_errors_per_signal(server):
    canned, url = server
    canned.status, canned.body = 200, vector()
    snap = PrometheusSource(url).snapshot(parse_spec({"model": {"name": "m", "uri": "/m"}}), "ns", "md")
    assert snap.qps is None and snap.cpu is None and snap.observed_at is None
    assert set(snap.errors) == {"cpu", "qps", "latency"} and "NoData" in snap.errors["qps"]


def test_range_fills_short_gaps_and_drops_leading_ones(server):
    canned, url = server
    t0 = 1700000000
    values = [[t0 + 60 * i, str(v)] for i, v in [(2, 4), (3, 6), (5, 10), (6, "NaN"), (7, 14)]]
    canned.status = 200
    canned.body = json.dumps({"status": "success", "data": {"resultType": "matrix",
                              "result": [{"metric": {}, "values": values}]}}).encode()
    start = datetime.fromtimestamp(t0, tz=timezone.utc)
    w = PrometheusSource(url).range("q", start, start + timedelta(minutes=7), 60)
    assert w.start == start + timedelta(minutes=2)
    assert list(w.values) == [4, 6, 8, 10, 12, 14]


@settings(max_examples=150, deadline=None)
@given(status=st.sampled_from([200, 200, 200, 400, 422, 500, 503]), body=st.one_of(
    st.binary(max_size=300),
    st.recursive(st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=8)),
                 lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.sampled_from(
                     ["status", "data", "result", "value", "values", "metric", "resultType"]), c, max_size=4)),
                 max_leaves=12).map(lambda v: json.dumps(v).encode()),
))
def test_malformed_responses_only_raise_metrics_errors(server, status, body):
    canned, url = server
    canned.status, canned.body = status, body
    src = PrometheusSource(url, timeout=2)
    try:
        src.instant("up")
    except MetricsError:
        pass
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    try:
        src.range("up", start, start + timedelta(minutes=5), 60)
    except MetricsError:
        pass


def test_model_rates_one_value_per_model_skipping_garbage(server):
    canned, url = server
    series = [{"metric": {"model": "legal"}, "value": [1700000000.0, "2.5"]},
              {"metric": {"model": "tax"}, "value": [1700000000.0, "NaN"]},  # no rate: left out
              {"metric": {}, "value": [1700000000.0, "9"]},  # no model label: left out
              {"metric": {"model": "medical"}, "value": [1700000000.0, "0"]}]
    canned.status = 200
    canned.body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": series}}).encode()
    spec = parse_spec({"model": {"name": "m", "uri": "file:///m"}, "variants": [{"name": "fp32"}],
                       "metrics": {"windowSeconds": 30}})
    assert PrometheusSource(url).model_rates(spec, "ns", "emb") == {"legal": 2.5, "medical": 0.0}
    query = canned.seen[-1][0]
    assert "sum+by+%28model%29" in query or "sum%20by%20%28model%29" in query
    assert "%5B30s%5D" in query  # over the rate window
    canned.status, canned.body = 503, b"overloaded"
    with pytest.raises(QueryFailed):
        PrometheusSource(url).model_rates(spec, "ns", "emb")


def test_load_failures_by_model_and_cause_skipping_garbage(server):
    canned, url = server
    series = [{"metric": {"model": "legal", "cause": "no_such_key"}, "value": [1700000000.0, "2"]},
              {"metric": {"model": "tax"}, "value": [1700000000.0, "1"]},  # no cause label: other
              {"metric": {"cause": "no_such_key"}, "value": [1700000000.0, "5"]},  # no model: left out
              {"metric": {"model": "med", "cause": "access_denied"}, "value": [1700000000.0, "NaN"]}]
    canned.status = 200
    canned.body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": series}}).encode()
    assert PrometheusSource(url).load_failures("ns", "emb") == {("legal", "no_such_key"): 2, ("tax", "other"): 1}
    assert "elastiserve_model_load_failing" in canned.seen[-1][0]
    canned.body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}).encode()
    assert PrometheusSource(url).load_failures("ns", "emb") == {}
    canned.status, canned.body = 503, b"overloaded"
    with pytest.raises(QueryFailed):
        PrometheusSource(url).load_failures("ns", "emb")


SECRET_BODY = b'{"status":"error","error":"internal-admin-page: db_password=hunter2"}'


@pytest.mark.parametrize("status", [400, 401, 404, 500, 503])
def test_no_response_body_reaches_an_error_message(server, status):
    # Messages go to status and Events, which the tenant reads: only the status code may show.
    canned, url = server
    canned.status, canned.body = status, SECRET_BODY
    with pytest.raises(QueryFailed) as ei:
        PrometheusSource(url).instant("up")
    assert f"HTTP {status}" in str(ei.value)
    assert "hunter2" not in str(ei.value) and "internal-admin-page" not in str(ei.value)


def test_redirects_are_not_followed_and_the_token_stays_put():
    seen: list[dict] = []

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(dict(self.headers))
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/elsewhere")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(QueryFailed, match="redirect"):
            PrometheusSource(f"http://127.0.0.1:{httpd.server_address[1]}", token="t0ken").instant("up")
    finally:
        httpd.shutdown()
    assert len(seen) == 1  # the redirect target was never asked


def test_custom_queries_off_never_run_the_override(server):
    canned, url = server
    canned.status, canned.body = 200, vector("5")
    canned.seen.clear()
    spec = parse_spec({"model": {"name": "m", "uri": "/m"}, "metrics": {"rules": {
        "qps": {"scaleUpAbove": 10, "scaleDownBelow": 1, "query": "sum(rate(other_tenant_requests_total[1m]))"}}}})
    snap = PrometheusSource(url, custom_queries=False).snapshot(spec, "ns", "md")
    assert snap.qps is None and "NotAllowed" in snap.errors["qps"] and "rules.qps.query" in snap.errors["qps"]
    assert not any("other_tenant" in path for path, _ in canned.seen)
    assert PrometheusSource(url, custom_queries=True).snapshot(spec, "ns", "md").qps == 5.0
    assert any("other_tenant" in path for path, _ in canned.seen)
