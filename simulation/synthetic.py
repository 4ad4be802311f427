"""A seeded synthetic workload: diurnal and weekly cycles, bursts and noise, for demos and tests.

rate(t) = mean · diurnal(t) · weekly(t) · exp(AR(1) noise) + bursts(t), normalised to ``mean_qps``;
counts per bin are Poisson draws around it. The same seed gives the same trace.

* diurnal: a smooth daily curve, trough near 04:00 and peak near 15:00 (two harmonics, amplitude
  ``daily_amplitude``);
* weekly: Saturday and Sunday at ``1 - weekend_dip`` of a weekday (smoothed edges);
* bursts: a Poisson number per day (``bursts_per_day``), each a quick rise (1-3 min) and an
  exponential decay (5-20 min), adding 40-150 % of the current level: short peaks a forecast cannot see;
* noise: a slow multiplicative AR(1) wander (``noise`` standard deviation, ~30 min memory).
"""

from __future__ import annotations

import numpy as np

from .traces import Trace

DAY = 86400


def synthetic_trace(
    days: float = 4.0,
    step_seconds: int = 60,
    mean_qps: float = 250.0,
    seed: int = 0,
    daily_amplitude: float = 0.6,
    weekend_dip: float = 0.25,
    bursts_per_day: float = 3.0,
    noise: float = 0.08,
) -> Trace:
    """A synthetic request trace (see module docstring); starts on a Monday at 00:00."""
    if days <= 0 or step_seconds <= 0 or mean_qps <= 0:
        raise ValueError("days, step_seconds and mean_qps must be positive")
    rng = np.random.default_rng(seed)
    n = int(round(days * DAY / step_seconds))
    t = (np.arange(n) + 0.5) * step_seconds
    phase = 2 * np.pi * (t % DAY) / DAY
    # Trough about 04:00, peak about 15:00, flatter afternoon than morning.
    diurnal = 1 + daily_amplitude * (0.85 * np.sin(phase - 2 * np.pi * 9.5 / 24) + 0.15 * np.sin(2 * phase - 0.5))
    diurnal = np.clip(diurnal, 0.05, None)
    dow = (t // DAY) % 7  # 0 = Monday
    weekend = ((dow >= 5).astype(float))
    kernel = np.ones(max(1, int(3 * 3600 / step_seconds)))
    weekend = np.convolve(weekend, kernel / kernel.sum(), mode="same") if len(weekend) > len(kernel) else weekend
    weekly = 1 - weekend_dip * weekend
    phi = float(np.exp(-step_seconds / 1800.0))
    shocks = rng.normal(0, noise * np.sqrt(1 - phi**2), n)
    wander = np.empty(n)
    acc = rng.normal(0, noise)
    for i in range(n):
        acc = phi * acc + shocks[i]
        wander[i] = acc
    base = diurnal * weekly * np.exp(wander)
    bursts = np.zeros(n)
    count = rng.poisson(bursts_per_day * days)
    for start in rng.uniform(0, n * step_seconds, count):
        rise = rng.uniform(60, 180)
        decay = rng.uniform(300, 1200)
        height = rng.uniform(0.4, 1.5)
        dt = t - start
        shape = np.where(dt < 0, 0.0, np.where(dt < rise, dt / rise, np.exp(-np.maximum(dt - rise, 0.0) / decay)))
        bursts += height * shape * base
    rate = base + bursts
    rate *= mean_qps / rate.mean()
    counts = rng.poisson(rate * step_seconds).astype(float)
    note = (f"synthetic: {days:g} d, mean {mean_qps:g} qps, daily ±{daily_amplitude:.0%}, weekend -{weekend_dip:.0%}, "
            f"{count} bursts, noise {noise:g}, seed {seed}")
    return Trace(name=f"synthetic-{days:g}d-seed{seed}", step_seconds=step_seconds, requests=counts, kind="requests",
                 source="synthetic", notes=(note,))


GENERATED = ("spiky", "flash", "growth", "social")
"""Kinds of :func:`generated_trace`: shapes the policy is checked on besides the shared traces."""


def generated_trace(kind: str, days: float = 10.0, mean_qps: float = 250.0, seed: int = 1) -> Trace:
    """Seeded traces of shapes the shared ones lack, to check that the policy generalises:

    * ``spiky``: 5-min bins, weak daily pattern (±15 %), log-normal noise with lag-1 autocorrelation
      about 0.2, about 6 spikes a day of 3-10× the mean lasting 2-10 min (a web load balancer);
    * ``flash``: 1-min bins, diurnal ±60 %, a 6× flash crowd of 20 min (2 min rise) every ~3 days;
    * ``growth``: 5-min bins, daily and weekly pattern, 3 %/day growth;
    * ``social``: 5-min bins, heavy-tailed bursts (Pareto heights) on a slowly wandering level,
      peak/mean about 20 (a social-media message volume).
    """
    if kind not in GENERATED:
        raise ValueError(f"unknown generated trace {kind!r} (known: {', '.join(GENERATED)})")
    rng = np.random.default_rng(seed)
    step = 60 if kind == "flash" else 300
    n = int(round(days * DAY / step))
    t = (np.arange(n) + 0.5) * step
    phase = 2 * np.pi * (t % DAY) / DAY
    if kind == "spiky":
        x = np.empty(n)
        acc = 0.0
        for i in range(n):
            acc = 0.2 * acc + rng.normal(0, 0.35)
            x[i] = acc
        rate = (1 + 0.15 * np.sin(phase - 2.5)) * np.exp(x)
        for start in rng.uniform(0, n * step, rng.poisson(6 * days)):
            dur = rng.uniform(120, 600)
            rate += np.where((t >= start) & (t < start + dur), rng.uniform(3, 10), 0.0)
    elif kind == "flash":
        rate = 1 + 0.6 * np.sin(phase - 2 * np.pi * 9.5 / 24)
        rate *= np.exp(rng.normal(0, 0.05, n))
        for start in rng.uniform(0, n * step, max(1, rng.poisson(days / 3))):
            dt = t - start
            shape = np.where(dt < 0, 0.0, np.where(dt < 120, dt / 120, np.where(dt < 1200, 1.0, 0.0)))
            rate = rate * (1 + 5 * shape)
    elif kind == "growth":
        dow = (t // DAY) % 7
        rate = (1 + 0.5 * np.sin(phase - 2 * np.pi * 9.5 / 24)) * np.where(dow >= 5, 0.7, 1.0)
        rate *= 1.03 ** (t / DAY) * np.exp(rng.normal(0, 0.05, n))
    else:  # social
        level = np.exp(np.cumsum(rng.normal(0, 0.02, n)))
        rate = level * (1 + 0.3 * np.sin(phase)) * np.exp(rng.normal(0, 0.25, n))
        for start in rng.uniform(0, n * step, rng.poisson(3 * days)):
            decay = rng.uniform(600, 3600)
            dt = t - start
            rate += np.where(dt < 0, 0.0, (rng.pareto(1.5) + 1) * 2 * np.exp(-np.maximum(dt, 0) / decay))
    rate = np.clip(rate, 0, None)
    rate *= mean_qps / rate.mean()
    counts = rng.poisson(rate * step).astype(float)
    note = f"generated {kind}: {days:g} d, mean {mean_qps:g} qps, seed {seed}, peak/mean {rate.max() / rate.mean():.1f}"
    return Trace(name=f"gen-{kind}-seed{seed}", step_seconds=step, requests=counts, kind="requests",
                 source="generated", notes=(note,))
