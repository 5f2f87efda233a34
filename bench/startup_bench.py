"""How soon a sweep's first trials train (issue 4), the sweep run as a user runs it.

The default sweep's setting (all four studies, W&B offline, MovieLens 100K), shortened to
`--trials 2 --epochs 2`, run `--runs` times as a fresh `python -m orchestrator sweep`
process each. For the first wave (the trials that start at once, one per slot) it prints
when each reached its first optimizer step (`first_batch_at` in its first result),
counted from the command and from the sweep's `data:` line (printed as the data has
loaded, just before the search is built), and when the process ended. The `gap` column is
how much later the last first-wave trial started than the first. (The first-wave start-up
goal is retired, issue 18: start-up counts from a ready worker; this bench stays to watch it.)

Run: `python bench/startup_bench.py [--runs 10]` (about 40 s a run on 2 cores). The data
comes from $RECSWEEP_SHARED_DATA or ../shared/data (never copied into the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RECSWEEP_SHARED_DATA", ROOT.parent / "shared" / "data"))
COMMAND = ["-m", "orchestrator", "sweep", "--trials", "2", "--epochs", "2"]


def one_run(storage: Path, slots: int) -> dict[str, float]:
    start = time.time()
    proc = subprocess.Popen(
        [sys.executable, *COMMAND, "--storage", str(storage), "--name", "r"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "RECSWEEP_DATA": str(SHARED)},
    )
    loaded = None
    lines = []
    for line in proc.stdout:  # the sweep flushes each line
        lines.append(line)
        if loaded is None and line.startswith("data: "):
            loaded = time.time()
    if proc.wait() != 0 or loaded is None:
        raise SystemExit("the sweep failed:\n" + "".join(lines[-30:]))
    ended = time.time()
    first = sorted(
        json.loads(path.read_text().splitlines()[0])["first_batch_at"]
        for path in storage.glob("r/search/*/result.json")
    )[:slots]
    return {
        "first": first[0] - start,
        "last": first[-1] - start,
        "from_data": first[-1] - loaded,
        "gap": first[-1] - first[0],
        "end": ended - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    slots = os.cpu_count() or 1
    print(
        f"# first-wave start-up ({platform.processor() or platform.machine()}, {slots} CPUs); "
        f"command: python bench/startup_bench.py --runs {args.runs}"
    )
    print(f"# each run: python {' '.join(COMMAND)} (MovieLens 100K, W&B offline)")
    print(
        "| run | 1st trial's first batch | last first-wave trial's | after the data loaded "
        "| gap | process ended |\n|---|---|---|---|---|---|"
    )
    rows = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            r = one_run(Path(tmp), slots)
        rows.append(r)
        print(
            f"| {i + 1} | {r['first']:.2f} s | {r['last']:.2f} s | {r['from_data']:.2f} s "
            f"| {r['gap']:.2f} s | {r['end']:.1f} s |",
            flush=True,
        )
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(
        f"| median | {med['first']:.2f} s | {med['last']:.2f} s | {med['from_data']:.2f} s "
        f"| {med['gap']:.2f} s | {med['end']:.1f} s |"
    )
    print(
        f"# late first-wave trials (gap > 3 s): {sum(r['gap'] > 3 for r in rows)} of "
        f"{len(rows)} runs"
    )


if __name__ == "__main__":
    main()
