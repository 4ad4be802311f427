"""bench/live_reach.py: the simulator over the segments ``bench/live.py`` could replay, against the live target."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from support import missing_input

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def reach():
    sys.path.insert(0, str(ROOT / "bench"))  # live_reach imports its sibling live.py as bench/ does
    spec = importlib.util.spec_from_file_location("live_reach", ROOT / "bench" / "live_reach.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _trace(name: str) -> str:
    from elastiserve.simulation import traces_dir

    if not (traces_dir() / name).exists():  # CI has shared/ beside the clone: missing traces are a failure there
        missing_input(f"no {name} in {traces_dir()} (set ELASTISERVE_TRACES)")
    return name


def test_the_target_is_no_more_pod_seconds_and_at_most_half_the_violated_minutes(reach):
    row = {"ours": {"pod_seconds": 900, "violated": 2}, "hpa": {"pod_seconds": 900, "violated": 4},
           "keda": {"pod_seconds": 899, "violated": 10}}
    assert reach.met(row, "hpa")  # equal cost, half the minutes
    assert not reach.met(row, "keda")  # one pod-second dearer
    row["hpa"]["violated"] = 3
    assert not reach.met(row, "hpa")  # 2 > 1.5


def test_every_segment_is_simulated_with_the_oracle_and_summarized(reach, tmp_path, capsys):
    trace = _trace("azure_llm_conv_2023_60s.csv")
    out = tmp_path / "reach.json"
    assert reach.main(["--traces", trace, "--stride-bins", "9", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    # 58 bins: segments of 40 from bins 0, 9 and 18
    assert [r["start_bin"] for r in rows] == [0, 9, 18]
    for r in rows:
        assert r["compress"] == 8 and r["peak_to_mean"] >= 1
        for name in ("ours", "hpa", "keda", "oracle"):
            # scored over the segment's 300 s of replay, between one pod and the 4 allowed all along
            assert 300 - 1 <= r[name]["pod_seconds"] <= 4 * 300 + 1, (name, r)
            assert 0 <= r[name]["violated"] <= 40
    s = doc["summary"]["all smooth"]
    assert s["segments"] == 3
    assert s["met_vs_both"] <= min(s["met_vs_hpa"], s["met_vs_keda"])
    assert s["violated_trace_minutes"]["ours"] == sum(r["ours"]["violated"] for r in rows)
    # the rows and the summary are on stdout too, one JSON line per segment
    printed = capsys.readouterr().out.splitlines()
    assert json.loads(printed[0]) == rows[0]


def test_history_bins_are_run_but_not_scored(reach, tmp_path):
    trace = _trace("azure_llm_conv_2023_60s.csv")
    out = tmp_path / "reach.json"
    assert reach.main(["--traces", trace, "--stride-bins", "100", "--history-bins", "10", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["start_bin"] == 10
    # the policies ran 75 s before the scored 300 s; only the 300 s are billed
    for name in ("ours", "hpa", "keda", "oracle"):
        assert 300 - 1 <= row[name]["pod_seconds"] <= 4 * 300 + 1, name


def test_a_trace_finer_than_a_replay_bin_is_refused_with_the_reason(reach, capsys):
    trace = _trace("azure_llm_code_2023_1s.csv")
    with pytest.raises(SystemExit) as exc:
        reach.main(["--traces", trace])
    assert exc.value.code == 2
    assert "1 s bins, under --bin-seconds 7.5" in capsys.readouterr().err
