"""Scale: does the cost of preparing and training grow linearly with the data?

For each size (ratings, with ml-20m's 138,493 users and 26,744 items; the synthetic
generator, or the real MovieLens files when they are on disk), in a fresh process each:
prepare time and peak memory, then for each model one training epoch of the shared loop
(no validation pass) and its samples/s. Then, per column, the growth exponent against the
number of ratings between the smallest and the largest size (1.0 is linear; samples/s
should stay flat, exponent 0), and each model's samples/s at each size relative to the
smallest (the issue's target: >= 0.5 at 2M against ml-100k's size).

Run: `python bench/scale_bench.py [--sizes 100k,2M] [--models mf:ranking,neumf,caser]
[--threads 2]`. The smallest size uses ml-100k's own shape (943 x 1682) as the reference
the target names; the others ml-20m's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ML20M = (138_493, 26_744)


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def measure(size: int, models: list[str], threads: int) -> dict:
    """In this process: prepare the data of `size` ratings and train one epoch per model."""
    sys.path.insert(0, str(ROOT))
    import torch

    import models  # noqa: F401  (registers every model)
    from data import load_dataset
    from models.base import DataSpec
    from models.registry import create_model
    from orchestrator.config import DataConfig, TrainConfig
    from orchestrator.train import fit, seed_everything

    torch.set_num_threads(threads)
    users, items = (943, 1682) if size <= 100_000 else ML20M
    start = time.perf_counter()
    data = load_dataset(DataConfig(
        dataset=f"synthetic:users={users},items={items},interactions={size}",
        eval_negatives=0))
    out = {"ratings": size, "users": users, "items": items,
           "prepare_s": time.perf_counter() - start,
           "prepare_peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    for entry in models:
        name, _, task = entry.partition(":")
        seed_everything(0)
        model = create_model(name, DataSpec.from_data(data), task or None, epochs=1)
        result = fit(model, data, TrainConfig(device="cpu", amp=False), validate=False)
        out[f"{entry} samples/s"] = result.history[-1]["train_samples_per_s"]
        out[f"{entry} epoch_s"] = result.history[-1]["epoch_time_s"]
    out["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100k,2M")
    ap.add_argument("--models", default="mf:ranking,neumf,caser")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    models = args.models.split(",")
    if args.one is not None:
        print(json.dumps(measure(args.one, models, args.threads)), flush=True)
        return
    print(f"# scale_bench: {platform.node()}, {os.cpu_count()} CPUs, "
          f"{args.threads} threads; {' '.join(sys.argv)}", flush=True)
    rows = []
    for size in map(parse_size, args.sizes.split(",")):
        proc = subprocess.run([sys.executable, __file__, "--one", str(size), "--models",
                               args.models, "--threads", str(args.threads)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"size {size}: failed\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    cols = [c for c in rows[0] if c not in ("users", "items")]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:,.3g}" if isinstance(r[c], float) else f"{r[c]:,}"
                                for c in cols) + " |")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        grow = math.log(b["ratings"] / a["ratings"])
        print("| growth exponent | " + " | ".join(
            f"{math.log(b[c] / a[c]) / grow:.2f}" for c in cols[1:]) + " |")
        print("| last / first | " + " | ".join(f"{b[c] / a[c]:.2f}" for c in cols[1:]) + " |")


if __name__ == "__main__":
    main()
