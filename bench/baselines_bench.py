"""The item baselines a reviewer expects (issue 34, in progress): test quality at their
default settings, fit and test time, and the fitting process's peak memory.

Each row is one `python -m orchestrator train` run (the command a user runs, `--refit
true`: validation picks nothing for a baseline, the refit on train + val is what is
tested), in a process of its own so that its peak resident memory is its own:

- ml-100k, leave-last, full ranking of all items (HR@10 / NDCG@10);
- the NCF authors' ml-1m files (`ncf-ml-1m-a`: users 0..1499 of their release), their 99
  test negatives (the sampled protocol).

Run: `python bench/baselines_bench.py [--models ease,rp3beta,puresvd,itemknn,pop]` (about a
minute on 2 CPU cores). The data comes from $RECSWEEP_SHARED_DATA or ../shared/data (never
copied into the repository). Not yet measured here: ml-20m's shape (EASE^R's dense inverse
at 26,744 items needs about 14 GB; the limit refuses 30,000 and more).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RECSWEEP_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATASETS = {
    "ml-100k leave-last, full": [
        "--dataset", "ml-100k", "--data-dir", str(SHARED), "--split", "leave-last",
    ],
    "ncf-ml-1m-a, sampled (99)": [
        "--dataset", f"ncf:{SHARED / 'ncf-ml-1m-a' / 'ml-1m-a'}", "--split", "ncf",
        "--protocol", "sampled",
    ],
}  # fmt: skip
# a child's peak resident memory, in its own process (ru_maxrss of the one child it waits)
MEASURE = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def run(model: str, flags: list[str], out: Path) -> dict:
    command = [sys.executable, "-m", "orchestrator", "train", "--model", model, *flags]
    command += ["--refit", "true", "--json", "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{model}: {proc.stderr[-2000:]}")
    *lines, peak_kb = proc.stdout.strip().splitlines()
    metrics = json.loads(lines[-1])
    return {**metrics, "seconds": seconds, "peak_mb": int(peak_kb) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="ease,rp3beta,puresvd,itemknn,pop")
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, no GPU used")
    print(f"command: python bench/baselines_bench.py --models {args.models}\n")
    print("| data | model | test/hr@10 | test/ndcg@10 | seconds (whole command) | peak MB |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for data, flags in DATASETS.items():
            for model in args.models.split(","):
                r = run(model, flags, Path(tmp) / f"{model}-{len(flags)}")
                print(
                    f"| {data} | {model} | {r['test/hr@10']:.4f} | {r['test/ndcg@10']:.4f} "
                    f"| {r['seconds']:.1f} | {r['peak_mb']:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
