"""Request-rate traces: the ``shared/traces`` CSV format, checks with line numbers, scaling and compression.

Format (see ``shared/traces/README.md``): a header, then one row per time bin::

    timestamp_s,requests[,tokens_in,tokens_out]

``timestamp_s`` is the start of the bin in integer seconds from the start of the trace; bins are evenly
spaced. The CPU trace has ``cpu_percent`` in place of ``requests``.

**CPU mapping.** A ``cpu_percent`` trace is read as load proportional to CPU: ``qps = cpu_percent ×
CPU_QPS_PER_PERCENT`` (1 request/s per percent unless the trace is then scaled to a target mean, which is
what backtests do). Samples at 100 % are censored demand (the fleet was saturated), so peaks are
underestimated.

**Bad input.** A missing column, a value that is not a number, a negative, NaN, infinite or absurdly
large value (``MAX_VALUE``), a duplicate, decreasing or absurd timestamp (``MAX_TIMESTAMP``), a timestamp
off the bin grid, a trace longer than ``MAX_BINS`` bins once gaps are filled, a file that is not UTF-8 or
larger than ``MAX_FILE_BYTES`` is an error that names the file and the line (a UTF-8 byte-order mark is
fine). A *gap* (a jump of a whole number of bins) is repaired by filling the missing bins with zero
requests, with a ``TraceWarning`` naming the line (``strict=True`` makes it an error).

Nothing here reads the traces' folder on import; ``traces_dir()`` resolves it at run time
(``$ELASTISERVE_TRACES``, else ``../shared/traces`` next to the repository).
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

CPU_QPS_PER_PERCENT = 1.0
"""Requests per second that one percent of CPU stands for in a ``cpu_percent`` trace (before scaling)."""

VALUE_COLUMNS = ("requests", "cpu_percent")

MAX_FILE_BYTES = 256 * 2**20
"""Largest trace file read (the shared traces are a few hundred KiB)."""
MAX_VALUE = 1e12
"""Largest value of one bin: a trillion requests per bin is no trace; near 1e308 sums overflow."""
MAX_TIMESTAMP = 10**10
"""Largest timestamp_s (about 317 years): larger ones cannot be a trace's offset in seconds."""
MAX_BINS = 10_000_000
"""Most bins once gaps are filled (80 MB of float64): a tiny file with a huge gap must not allocate GiBs."""


class TraceError(ValueError):
    """A trace file cannot be used; the message names the file and line."""


class TraceWarning(UserWarning):
    """A trace was repaired (gaps filled with zero); the message names the line."""


def traces_dir() -> Path:
    """Folder of the shared traces: ``$ELASTISERVE_TRACES`` or ``<repo>/../shared/traces``."""
    env = os.environ.get("ELASTISERVE_TRACES")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent
    return repo.parent / "shared" / "traces"


@dataclass(frozen=True)
class Trace:
    """Requests per bin on an even grid: ``requests[i]`` arrived in ``[i * step, (i + 1) * step)``."""

    name: str
    step_seconds: float
    requests: np.ndarray = field(repr=False)
    kind: str = "requests"
    """``requests`` or ``cpu_percent`` (already mapped to requests)."""
    source: str = ""
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        r = np.asarray(self.requests, dtype=float)
        if r.ndim != 1 or len(r) == 0:
            raise TraceError(f"{self.name}: a trace needs at least one bin")
        if not np.all(np.isfinite(r)) or (r < 0).any():
            raise TraceError(f"{self.name}: requests must be finite and non-negative")
        if not self.step_seconds > 0:
            raise TraceError(f"{self.name}: step must be positive (got {self.step_seconds})")
        object.__setattr__(self, "requests", r)

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def duration_seconds(self) -> float:
        return len(self.requests) * self.step_seconds

    @property
    def rate(self) -> np.ndarray:
        """Requests per second in each bin."""
        return self.requests / self.step_seconds

    @property
    def mean_qps(self) -> float:
        return float(self.requests.sum() / self.duration_seconds)

    def scaled_to_mean(self, qps: float) -> "Trace":
        """The same shape with a mean rate of ``qps`` requests per second."""
        if qps <= 0:
            raise ValueError(f"target mean rate must be positive (got {qps})")
        mean = self.mean_qps
        if mean <= 0:
            raise TraceError(f"{self.name}: cannot scale a trace with no requests")
        factor = qps / mean
        return replace(self, requests=self.requests * factor,
                       notes=self.notes + (f"scaled ×{factor:.4g} to a mean of {qps:g} qps",))

    def compressed(self, factor: float) -> "Trace":
        """Time runs ``factor`` times faster: bins shrink, counts stay, so rates grow by ``factor``.

        This changes the burst structure relative to pod start-up; scale to a mean rate afterwards.
        """
        if factor <= 0:
            raise ValueError(f"compression factor must be positive (got {factor})")
        if factor == 1:
            return self
        return replace(self, step_seconds=self.step_seconds / factor,
                       notes=self.notes + (f"time compressed ×{factor:g}",))

    def limited(self, seconds: float, start_seconds: float = 0.0) -> "Trace":
        """Bins within ``[start, start + seconds)``."""
        a = int(start_seconds // self.step_seconds)
        b = a + max(1, int(math.ceil(seconds / self.step_seconds - 1e-9)))
        if a >= len(self.requests):
            raise TraceError(f"{self.name}: start {start_seconds:g} s is past the end ({self.duration_seconds:g} s)")
        if a == 0 and b >= len(self.requests):
            return self
        return replace(self, requests=self.requests[a:b],
                       notes=self.notes + (f"limited to {seconds / 86400:.3g} d from {start_seconds / 86400:.3g} d",))

    def rate_at(self, t0: float, dt: float, n: int, interpolate: bool = False) -> np.ndarray:
        """Mean arrival rate in each tick ``[t0 + i dt, t0 + (i + 1) dt)``, for ``i < n``.

        Piecewise constant within bins (exact averages over ticks of any size), or, with
        ``interpolate``, linear between bin centres (smoother, for coarse bins; bin means are kept only
        approximately). Past the end the last bin repeats.
        """
        step = self.step_seconds
        rate = self.rate
        edges = t0 + dt * np.arange(n + 1)
        if interpolate and len(rate) > 1:
            centres = (np.arange(len(rate)) + 0.5) * step
            mid = (edges[:-1] + edges[1:]) / 2
            return np.interp(mid, centres, rate)
        cum = np.concatenate([[0.0], np.cumsum(self.requests)])

        def requests_until(t: np.ndarray) -> np.ndarray:
            k = np.clip(np.floor(t / step).astype(np.int64), 0, len(rate))
            inside = np.where(k < len(rate), rate[np.minimum(k, len(rate) - 1)], rate[-1])
            return cum[k] + (t - k * step) * inside

        r = requests_until(edges)
        return np.maximum(np.diff(r) / dt, 0.0)


def load_trace(path: str | Path, *, strict: bool = False) -> Trace:
    """Read and check a trace CSV. Errors name the line; gaps are filled with zero (warning) unless ``strict``."""
    path = Path(path)
    name = path.stem
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise TraceError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE_BYTES:
        raise TraceError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is not part of the first column's name
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TraceError(f"{path}: line {line}: not UTF-8 (byte 0x{data[exc.start]:02x})") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise TraceError(f"{path}: line 1: empty file (expected a header such as timestamp_s,requests)")
    header = [h.strip() for h in rows[0]]
    if "timestamp_s" not in header:
        raise TraceError(f"{path}: line 1: missing column 'timestamp_s' (header: {','.join(header)})")
    value_cols = [c for c in VALUE_COLUMNS if c in header]
    if not value_cols:
        raise TraceError(f"{path}: line 1: missing column 'requests' (or 'cpu_percent') (header: {','.join(header)})")
    kind = value_cols[0]
    ti, vi = header.index("timestamp_s"), header.index(kind)
    times: list[int] = []
    values: list[float] = []
    lines: list[int] = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < len(header):
            raise TraceError(f"{path}: line {lineno}: {len(row)} fields, the header has {len(header)}")
        raw_t, raw_v = row[ti].strip(), row[vi].strip()
        try:
            tf = float(raw_t)
        except ValueError:
            raise TraceError(f"{path}: line {lineno}: timestamp_s {raw_t!r} is not a number") from None
        if not math.isfinite(tf) or tf != int(tf):
            raise TraceError(f"{path}: line {lineno}: timestamp_s {raw_t[:40]!r} is not a whole number of seconds")
        if abs(tf) > MAX_TIMESTAMP:
            raise TraceError(f"{path}: line {lineno}: timestamp_s {raw_t[:40]} is beyond {MAX_TIMESTAMP:.0e} s "
                             "(seconds from the start of the trace)")
        try:
            v = float(raw_v)
        except ValueError:
            raise TraceError(f"{path}: line {lineno}: {kind} {raw_v!r} is not a number") from None
        if not math.isfinite(v):
            raise TraceError(f"{path}: line {lineno}: {kind} is {raw_v} (NaN and infinity are not allowed)")
        if v < 0:
            raise TraceError(f"{path}: line {lineno}: {kind} {raw_v[:40]} is negative")
        if v > MAX_VALUE:
            raise TraceError(f"{path}: line {lineno}: {kind} {raw_v[:40]} is larger than {MAX_VALUE:.0e} per bin")
        t = int(tf)
        if times:
            if t == times[-1]:
                raise TraceError(f"{path}: line {lineno}: duplicate timestamp_s {t} (also on line {lines[-1]})")
            if t < times[-1]:
                raise TraceError(
                    f"{path}: line {lineno}: timestamp_s {t} is before {times[-1]} on line {lines[-1]} "
                    "(timestamps must increase)"
                )
        times.append(t)
        values.append(v)
        lines.append(lineno)
    if not times:
        raise TraceError(f"{path}: line 2: no data rows after the header")
    if len(times) == 1:
        step = 60
    else:
        diffs = np.diff(times)
        step = int(Counter(diffs.tolist()).most_common(1)[0][0])
        if int(diffs.min()) < step:
            bad = int(np.argmax(diffs < step)) + 1
            raise TraceError(f"{path}: line {lines[bad]}: timestamp_s {times[bad]} is {diffs[bad - 1]} s after the "
                             f"previous row; the bins are {step} s")
    t = np.asarray(times, dtype=np.int64)
    off_grid = (t - t[0]) % step != 0
    if off_grid.any():
        bad = int(np.argmax(off_grid))
        raise TraceError(f"{path}: line {lines[bad]}: timestamp_s {times[bad]} is off the {step} s grid "
                         f"that starts at {times[0]}")
    idx = (t - t[0]) // step
    if int(idx[-1]) + 1 > MAX_BINS:
        big = int(np.argmax(idx + 1 > MAX_BINS))
        raise TraceError(f"{path}: line {lines[big]}: timestamp_s {times[big]} makes the trace "
                         f"{int(idx[-1]) + 1} bins of {step} s long (at most {MAX_BINS}): a gap that long is no trace")
    v = np.asarray(values, dtype=float)
    notes: list[str] = []
    if idx[-1] + 1 != len(idx):
        gaps = np.flatnonzero(np.diff(idx) > 1) + 1
        missing = int(idx[-1] + 1 - len(idx))
        where = ", ".join(f"line {lines[g]}" for g in gaps[:5]) + (" …" if len(gaps) > 5 else "")
        message = f"{path}: {missing} missing bins of {step} s before {where}"
        if strict:
            raise TraceError(f"{message} (gaps are not allowed with strict=True)")
        warnings.warn(f"{message}; filled with 0 requests", TraceWarning, stacklevel=2)
        notes.append(f"{missing} missing bins filled with 0")
        full = np.zeros(int(idx[-1]) + 1)
        full[idx] = v
        v = full
    if kind == "cpu_percent":
        notes.append(f"cpu_percent mapped to {CPU_QPS_PER_PERCENT:g} qps per percent (100 % = censored demand)")
        v = v * CPU_QPS_PER_PERCENT * step
    return Trace(name=name, step_seconds=step, requests=v, kind=kind, source=str(path), notes=tuple(notes))


def list_traces(folder: Path | None = None) -> list[Path]:
    """The CSV traces in ``folder`` (default ``traces_dir()``), sorted by name."""
    folder = folder or traces_dir()
    return sorted(folder.glob("*.csv")) if folder.is_dir() else []
