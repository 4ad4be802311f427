"""Trace loading: the shared CSV format, errors that name the line, the documented gap repair, transforms."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from elastiserve.simulation import Trace, TraceError, TraceWarning, load_trace, synthetic_trace
from elastiserve.simulation.traces import CPU_QPS_PER_PERCENT
from support import missing_input


def write(tmp_path, text: str, name: str = "t.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text,where,what",
    [
        ("", "line 1", "empty file"),
        ("time,requests\n0,1\n", "line 1", "missing column 'timestamp_s'"),
        ("timestamp_s,tokens_in\n0,1\n", "line 1", "missing column 'requests'"),
        ("timestamp_s,requests\n", "line 2", "no data rows"),
        ("timestamp_s,requests\n0,1\n60,abc\n", "line 3", "'abc' is not a number"),
        ("timestamp_s,requests\n0,1\n60,nan\n", "line 3", "NaN and infinity"),
        ("timestamp_s,requests\n0,1\n60,-5\n", "line 3", "negative"),
        ("timestamp_s,requests\n0,1\n60,2\n60,3\n", "line 4", "duplicate timestamp_s 60 (also on line 3)"),
        ("timestamp_s,requests\n0,1\n120,2\n60,3\n", "line 4", "is before 120 on line 3"),
        ("timestamp_s,requests\n0,1\n60,2\n90,3\n150,1\n210,1\n", "line 4", "is 30 s after the previous row"),
        ("timestamp_s,requests\n0,1\n60.5,2\n", "line 3", "not a whole number"),
        ("timestamp_s,requests,tokens_in\n0,1,5\n60,2\n", "line 3", "2 fields, the header has 3"),
        ("timestamp_s,requests\n0,1e308\n60,1e308\n", "line 2", "larger than 1e+12 per bin"),
        ("timestamp_s,requests\n0,1\n1e300,2\n", "line 3", "beyond 1e+10 s"),
        ("timestamp_s,requests\n0,1\n60000000000,1\n", "line 3", "beyond 1e+10 s"),
        ("timestamp_s,requests\n0,1\n60,1\n6000000000,1\n", "line 4", "at most 10000000"),
    ],
    ids=["empty", "no-timestamp", "no-requests", "header-only", "not-a-number", "nan", "negative", "duplicate",
         "decreasing", "off-grid", "fractional-time", "short-row", "near-max-float", "huge-timestamp",
         "timestamp-past-bound", "giant-gap"],
)
def test_bad_input_names_the_line(tmp_path, text, where, what):
    with pytest.raises(TraceError) as err:
        load_trace(write(tmp_path, text))
    msg = str(err.value)
    assert where in msg and what in msg and "t.csv" in msg


def test_byte_order_mark_and_encoding(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes("\ufefftimestamp_s,requests\n0,1\n60,2\n".encode())
    assert load_trace(p).requests.tolist() == [1, 2]
    p.write_bytes(b"timestamp_s,requests\n0,1\n60,\xff\n")
    with pytest.raises(TraceError, match=r"bom.csv: line 3: not UTF-8"):
        load_trace(p)


def test_gaps_are_filled_with_zero_and_warned(tmp_path):
    p = write(tmp_path, "timestamp_s,requests\n0,6\n60,6\n240,12\n300,6\n")
    with pytest.warns(TraceWarning, match=r"2 missing bins of 60 s before line 4; filled with 0"):
        tr = load_trace(p)
    assert tr.requests.tolist() == [6, 6, 0, 0, 12, 6]
    assert any("filled with 0" in n for n in tr.notes)


def test_gaps_are_an_error_when_strict(tmp_path):
    p = write(tmp_path, "timestamp_s,requests\n0,6\n60,6\n240,12\n300,6\n")
    with pytest.raises(TraceError, match="line 4"):
        load_trace(p, strict=True)


def test_cpu_percent_is_mapped_to_a_rate(tmp_path):
    p = write(tmp_path, "timestamp_s,cpu_percent\n0,30\n300,60\n")
    tr = load_trace(p)
    assert tr.kind == "cpu_percent" and tr.step_seconds == 300
    np.testing.assert_allclose(tr.rate, [30 * CPU_QPS_PER_PERCENT, 60 * CPU_QPS_PER_PERCENT])


def test_llm_trace_with_token_columns(tmp_path):
    tr = load_trace(write(tmp_path, "timestamp_s,requests,tokens_in,tokens_out\n0,60,1000,50\n60,120,900,40\n"))
    assert tr.rate.tolist() == [1.0, 2.0]


def test_scale_compress_limit():
    tr = Trace("x", 60, np.array([60.0, 120.0, 180.0, 240.0]))
    assert tr.scaled_to_mean(10).mean_qps == pytest.approx(10)
    c = tr.compressed(2)
    assert c.step_seconds == 30 and c.rate.tolist() == [2, 4, 6, 8]
    assert tr.limited(120, start_seconds=60).requests.tolist() == [120, 180]


@pytest.mark.parametrize("dt", [1.0, 8.0, 60.0, 80.0], ids=["fine", "odd", "equal", "coarse"])
def test_rate_at_keeps_the_requests(dt):
    tr = Trace("x", 60, np.array([60.0, 0.0, 600.0, 120.0]))
    lam = tr.rate_at(0.0, dt, int(240 // dt))
    assert lam.sum() * dt == pytest.approx(780.0)


def test_rate_at_averages_ticks_across_bins():
    tr = Trace("x", 60, np.array([60.0, 0.0, 600.0, 120.0]))
    np.testing.assert_allclose(tr.rate_at(0.0, 90.0, 2), [60 / 90, 600 / 90])


def test_synthetic_is_seeded_and_scaled():
    a = synthetic_trace(days=1, seed=3, mean_qps=100)
    b = synthetic_trace(days=1, seed=3, mean_qps=100)
    c = synthetic_trace(days=1, seed=4, mean_qps=100)
    assert np.array_equal(a.requests, b.requests) and not np.array_equal(a.requests, c.requests)
    assert a.mean_qps == pytest.approx(100, rel=0.02)
    day = a.rate.reshape(24, -1).mean(axis=1)
    assert day[1:6].mean() < 0.6 * day[12:18].mean()  # night trough, afternoon peak


def test_shared_traces_load_without_error():
    from elastiserve.simulation import traces_dir

    paths = sorted(traces_dir().glob("*.csv"))
    if not paths:  # CI has shared/ beside the clone: missing traces are a failure there
        missing_input(f"no shared traces in {traces_dir()} (set ELASTISERVE_TRACES)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TraceWarning)  # the shared traces have no gaps
        for p in paths:
            tr = load_trace(p)
            assert len(tr) > 10 and tr.mean_qps > 0
