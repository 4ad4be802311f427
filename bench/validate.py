"""How long `elastiserve validate` takes for one small file, and how much memory (issue 18: < 0.5 s).

Runs the real command in fresh processes (imports included, as a user pays them), next to a bare
`python -c pass` in the same run so a busy machine shows as a ratio rather than a false figure.
Prints JSON: median wall seconds and peak RSS (MiB) of each, and the ratio.

    python bench/validate.py [--runs 7] [--file examples/minimal.yaml]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(argv: list[str], runs: int) -> dict[str, float]:
    walls, rss = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append(time.perf_counter() - t0)
        rss.append(max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024)
    return {"median_s": round(statistics.median(walls), 3), "min_s": round(min(walls), 3),
            "peak_rss_mib": round(max(rss), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--file", type=Path, default=ROOT / "examples" / "minimal.yaml")
    args = parser.parse_args()
    bare = measure([sys.executable, "-c", "pass"], args.runs)
    validate = measure([sys.executable, "-m", "elastiserve.cli", "validate", str(args.file)], args.runs)
    print(json.dumps({"file": str(args.file), "runs": args.runs, "python_bare": bare, "validate": validate,
                      "ratio_to_bare_python": round(validate["median_s"] / bare["median_s"], 1)}, indent=2))


if __name__ == "__main__":
    main()
