"""ml-100k's 5-fold cross-validation (u1..u5): a sweep's `mf` and `autorec` and the `bias`
baseline, test RMSE mean ± std over the folds, beside Surprise's published 5-fold numbers.

The sweep searches on u1's validation (a seeded 10% of u1.base) with the refit protocol
(the chosen epochs retrained on all of the base file, as Surprise trains), then trains and
tests each study's chosen configuration and the baseline on u1..u5 (`data.folds`). Surprise's
numbers are means over a random 5-fold split of ml-100k (its README's benchmark table):
SVD 0.934, SVD++ 0.919, BaselineOnly 0.944. Targets: mf <= 0.905, autorec <= 0.890.

Run: `python bench/folds_bench.py [--trials 16] [--time-budget 20m] [--storage DIR]`; the
time budget is the search's (the folds run after it). The data comes from
$RECSWEEP_SHARED_DATA or ../shared/data.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.plan import load_config  # noqa: E402
from orchestrator.rundir import BY_FOLD, RunDir  # noqa: E402
from orchestrator.sweep import run_sweep  # noqa: E402

SHARED = Path(os.environ.get("RECSWEEP_SHARED_DATA", ROOT.parent / "shared" / "data"))
FOLDS = ["u1", "u2", "u3", "u4", "u5"]
SURPRISE = {"mf": "SVD 0.934, SVD++ 0.919", "autorec": "", "bias": "BaselineOnly 0.944"}
TARGETS = {"mf": 0.905, "autorec": 0.890}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--time-budget", default="20m")
    parser.add_argument("--storage", default=None)
    args = parser.parse_args()
    storage = Path(args.storage or tempfile.mkdtemp(prefix="folds-bench-"))
    cfg = load_config(
        None,
        {
            "name": f"folds-{time.strftime('%Y%m%d-%H%M%S')}",
            "storage": str(storage),
            "models": ["mf", "autorec"],
            "baselines": ["bias"],
            "trials": args.trials,
            "time_budget": args.time_budget,
            "wandb": "disabled",
            "data": {"dataset": "ml-100k", "data_dir": str(SHARED), "folds": FOLDS},
            "train": {"refit": True},
        },
    )
    start = time.time()
    run_dir = run_sweep(cfg)
    minutes = (time.time() - start) / 60
    table = RunDir(run_dir).results.set_index("study")
    by_fold = pd.read_parquet(run_dir / BY_FOLD).pivot(
        index="study", columns="fold", values="test/rmse"
    )
    lines = [
        "| study | chosen | " + " | ".join(FOLDS) + " | mean ± std | Surprise (5-fold) | target |",
        "|---" * (len(FOLDS) + 5) + "|",
    ]
    for study in table.index:
        row = table.loc[study]
        target = TARGETS.get(study)
        met = (
            ""
            if target is None
            else f"<= {target}: {'met' if row['test/rmse'] <= target else 'NOT met'}"
        )
        lines.append(
            f"| {study} | {row['origin'] if isinstance(row['origin'], str) else 'baseline'} | "
            + " | ".join(f"{by_fold.loc[study, f]:.4f}" for f in FOLDS)
            + f" | {row['test/rmse']:.4f} ± {row['test/rmse_std']:.4f} | {SURPRISE[study]} | "
            f"{met} |"
        )
    print(
        f"\nml-100k u1..u5, test RMSE (refit on each base file); search on u1, "
        f"{args.trials} trials per study, budget {args.time_budget}; {minutes:.1f} min in "
        f"all on {platform.node()} ({os.cpu_count()} CPUs); run {run_dir}\n"
    )
    print("\n".join(lines))
    trials = RunDir(run_dir).trials
    done = trials.groupby("study")["end"].value_counts().unstack(fill_value=0)
    print(f"\ntrials per study and how they ended:\n{done.to_string()}")


if __name__ == "__main__":
    main()
