"""Speed of the data layer on the real MovieLens 100K (issue 2), printed as a table.

Rows: parse ml-100k; prepare it (index + leave-last split + the sampled-protocol
negatives); both together (goal < 1 s); 4 exact negatives for each of the 100,000
positives, uniform (goal < 50 ms) and popularity-weighted; Caser's sequence windows;
generating the ml-100k-sized synthetic dataset (goal ~1 s).

Run from the repository root: `python bench/data_bench.py [--repeat 5] [--threads N]
[--device cpu|cuda]`. The data comes from $RECSWEEP_SHARED_DATA or ../shared/data.
Torch CPU ops are sensitive to other processes on a small machine (OpenMP threads
spinning against each other): the table prints the load average so numbers can be judged.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.data import load_source, prepare  # noqa: E402
from orchestrator.data.sampling import NegativeSampler, sequence_windows  # noqa: E402
from orchestrator.data.synthetic import load_synthetic  # noqa: E402
from orchestrator.data.types import Split  # noqa: E402

SHARED = Path(os.environ.get("RECSWEEP_SHARED_DATA", ROOT.parent / "shared" / "data"))


def timed(fn: Callable[[], object], repeat: int, sync: bool) -> list[float]:
    """Wall seconds of `repeat` calls after one warm-up call."""
    fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--device", default="cpu", help="device of the sampling rows")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = args.device.startswith("cuda")
    r = args.repeat

    raw = load_source("ml-100k", SHARED)
    data = prepare(raw, "leave-last")
    every = Split(
        *(
            torch.cat(
                [torch.as_tensor(getattr(s, f)) for s in (data.train, data.val, data.test)]
            ).to(args.device)
            for f in ("user", "item", "rating", "timestamp")
        )
    )  # all 100k positives
    gen = torch.Generator(device=args.device).manual_seed(0)
    uniform = NegativeSampler(every, data.n_items, "uniform", gen)
    popular = NegativeSampler(every, data.n_items, "popularity", gen)
    train = data.train.to(args.device)

    rows = [  # (what, seconds, goal in seconds or None)
        (
            "parse ml-100k (u.data, u.item)",
            timed(lambda: load_source("ml-100k", SHARED), r, False),
            None,
        ),
        (
            "prepare: index + leave-last + 100 eval negatives",
            timed(lambda: prepare(raw, "leave-last"), r, False),
            None,
        ),
        (
            "load + prepare ml-100k (leave-last)",
            timed(lambda: prepare(load_source("ml-100k", SHARED), "leave-last"), r, False),
            1.0,
        ),
        (
            f"4 negatives x 100k positives, uniform ({args.device})",
            timed(lambda: uniform.sample(every.user, 4), r, sync),
            0.05,
        ),
        (
            f"4 negatives x 100k positives, popularity ({args.device})",
            timed(lambda: popular.sample(every.user, 4), r, sync),
            None,
        ),
        (
            f"sequence windows L=5 T=3 of the train split ({args.device})",
            timed(lambda: sequence_windows(train, 5, 3, data.n_items), r, sync),
            None,
        ),
        (
            "synthetic, ml-100k size (943 x 1682, 100k)",
            timed(lambda: load_synthetic("synthetic"), r, False),
            1.0,
        ),
    ]

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} "
        f"threads, load average {load:.1f}"
    )
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print()
    print(f"| {'step':<58} | {'median ms':>9} | {'best ms':>8} | {'goal ms':>7} | ok  |")
    print(f"|{'-' * 60}|{'-' * 11}|{'-' * 10}|{'-' * 9}|-----|")
    for what, secs, goal in rows:
        med, best = statistics.median(secs) * 1e3, min(secs) * 1e3
        ok = "" if goal is None else ("yes" if med <= goal * 1e3 else "NO")
        goal_s = "" if goal is None else f"{goal * 1e3:.0f}"
        print(f"| {what:<58} | {med:9.1f} | {best:8.1f} | {goal_s:>7} | {ok:<3} |")


if __name__ == "__main__":
    main()
