"""A small end-to-end backtest: every policy simulated, a complete report, sane numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from elastiserve.simulation import COLUMNS, POLICIES, SimConfig, run_backtest, synthetic_trace
from elastiserve.simulation.cli import backtest
from elastiserve.simulation.report import write_report


@pytest.fixture(scope="module")
def result():
    trace = synthetic_trace(days=0.25, seed=1, mean_qps=200)
    return run_backtest(trace, cfg=SimConfig(forecast="online"))


def test_all_policies_scored(result):
    rows = {r["policy"]: r for r in result.table()}
    assert list(rows) == list(POLICIES)
    for name, row in rows.items():
        for key, _ in COLUMNS:
            assert key in row, (name, key)
        assert row["replica_hours"] > 0 and row["cost"] > 0
        assert row["p95_latency_ms"] is not None and row["p95_latency_ms"] > 0
        assert 0 <= row["slo_violation_minutes"] <= row["minutes"]


def test_numbers_are_sane(result):
    rows = {r["policy"]: r for r in result.table()}
    oracle = rows["oracle"]
    assert oracle["slo_violation_minutes"] == 0 and oracle["cost_vs_oracle"] == 1.0
    for name in ("ours", "hpa", "kpa"):
        assert rows[name]["cost_vs_oracle"] >= 0.95, name  # nobody is much cheaper than foresight
    # the HPA at 70 % of capacity runs about 1/0.7 of what the load needs
    assert 1.2 < rows["hpa"]["cost_vs_oracle"] < 1.8
    # ours ran decide() with forecasts once the forecaster had 30 steps of history
    assert rows["ours"]["forecast_ready_share"] > 0.5
    assert rows["ours"]["forecast_smape"] is not None and rows["ours"]["forecast_smape"] < 0.3
    assert rows["ours"]["syncs"] == pytest.approx((result.scenario.n - result.scenario.i0) * result.scenario.dt / 15, abs=1)


def test_replica_time_and_latency_follow_the_load(result):
    sc = result.scenario
    lam = sc.lam[sc.i0 :]
    for name, r in result.results.items():
        capacity = (r.record.ready * sc.capacity[None, :]).sum(axis=1)
        # most of the time every policy has capacity for the load
        assert np.mean(capacity >= lam) > 0.9, name


def test_report_files(result, tmp_path):
    paths = write_report(result, tmp_path)
    for name in ("report.md", "report.json", "traffic.png", "replicas.png", "latency.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    data = json.loads((tmp_path / "report.json").read_text())
    assert set(data["policies"]) == set(POLICIES)
    assert data["slo_ms"] == 200
    md = (tmp_path / "report.md").read_text()
    for _, title in COLUMNS:
        assert title in md
    for name in POLICIES:
        assert f"| {name} |" in md
    assert set(paths) >= {"report.md", "report.json"}


def test_cli_backtest(tmp_path):
    app = typer.Typer()
    app.command()(backtest)
    out = tmp_path / "bt"
    res = CliRunner().invoke(app, ["--days", "0.2", "--out", str(out), "--no-plots", "-q", "-p", "hpa", "-p", "oracle"])
    assert res.exit_code == 0, res.output
    assert "| hpa |" in res.output and "| oracle |" in res.output
    assert (out / "report.json").exists() and not (out / "traffic.png").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--policy", "magic"], "unknown policy magic"),
        (["--trace", "/nonexistent.csv"], "no such file"),
        (["--forecast", "psychic"], "--forecast must be"),
    ],
    ids=["unknown-policy", "missing-trace", "bad-forecast-mode"],
)
def test_cli_errors(tmp_path, args, message):
    app = typer.Typer()
    app.command()(backtest)
    res = CliRunner().invoke(app, args + ["--out", str(tmp_path)])
    assert res.exit_code == 1 and message in res.output


def test_cli_bad_trace_names_the_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp_s,requests\n0,1\n60,-1\n")
    app = typer.Typer()
    app.command()(backtest)
    res = CliRunner().invoke(app, ["--trace", str(bad), "--out", str(tmp_path)])
    assert res.exit_code == 1 and "line 3" in res.output


@pytest.mark.parametrize(
    "text,message",
    [
        ("spec:\n  replicas: {min: 1}\n  replicas: {min: 2}\n", "duplicate"),
        ("a: " + "[" * 400 + "]" * 400 + "\n", "deep"),
        ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
            f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
            for i in range(8)), "alias"),
    ],
    ids=["duplicate-keys", "deep-nesting", "billion-laughs"],
)
def test_cli_spec_is_read_with_the_bounded_loader(tmp_path, text, message):
    """`backtest --spec` reads YAML as `validate` does: a clear one-line error, no traceback, no hang."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    app = typer.Typer()
    app.command()(backtest)
    res = CliRunner().invoke(app, ["--spec", str(spec), "--out", str(tmp_path)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert str(spec) in res.output and message in res.output.lower(), res.output
