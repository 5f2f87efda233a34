"""Is a sweep worth its budget? Per study, at the same trial budget: the model's defaults,
each of its published recipes, the TPE sweep and a random-search sweep (the same seeds, the
same first trials), with validation and test metrics and the paired p-value of each against
the defaults (two-sided t-test on the table's main metric per test unit).

The defaults and the recipes are the TPE sweep's own first trials, tested from their
checkpoints exactly as the sweep tests its chosen trial (with the refit, where the sweep
refits); the sweeps' rows are their results tables.

- ncf: the NCF authors' MovieLens-1M files for users 0..1499 (`ncf-ml-1m-a`, 99 published
  test negatives), `mf:ranking` and `neumf` optimising HR@10 with the refit protocol (the
  authors train on the whole training file), against `pop` and `itemknn`, and next to a
  plain reference loop (dot product + item bias, BCE, 4 negatives, Adam 1e-3, dim 64,
  batch 256, the best of 30 epochs on validation). Targets: test HR@10 mf >= 0.710,
  neumf >= 0.690.
- u1: `mf` and `autorec` on ml-100k's u1 with the refit protocol, against `bias`. Targets:
  test RMSE mf <= 0.915, autorec <= 0.895.
- leave-last: `mf:ranking` and `neumf` on ml-100k, leave-last-out, full ranking, against
  `pop` and `itemknn`.
- TPE >= random search on validation in at least two of the three.

Run: `python bench/search_bench.py [--datasets ncf,u1,leave-last] [--trials 16]
[--time-budget 2h] [--storage DIR]` (the time budget is per sweep, two sweeps per dataset).
The data comes from $RECSWEEP_SHARED_DATA or ../shared/data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from ray import tune

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orchestrator.models  # noqa: E402,F401  (registers every model)
from orchestrator import stats  # noqa: E402
from orchestrator.data.types import PreparedData  # noqa: E402
from orchestrator.engine.sampled import sampled_ranking_per_row  # noqa: E402
from orchestrator.finalize import main_metric, test_trial  # noqa: E402
from orchestrator.plan import load_config, model_studies  # noqa: E402
from orchestrator.records import TrialRecord  # noqa: E402
from orchestrator.rundir import RunDir  # noqa: E402
from orchestrator.sweep import run_sweep  # noqa: E402

SHARED = Path(os.environ.get("RECSWEEP_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATASETS = {
    "ncf": {
        "models": ["mf:ranking", "neumf"],
        "baselines": ["pop", "itemknn"],
        "metric": "val/hr@10",
        "data": {"dataset": f"ncf:{SHARED}/ncf-ml-1m-a/ml-1m-a", "split": "ncf"},
        "train": {"protocol": "sampled", "refit": True},
    },
    "u1": {
        "models": ["mf", "autorec"],
        "baselines": ["bias"],
        "data": {"dataset": "ml-100k", "split": "u1", "data_dir": str(SHARED)},
        "train": {"refit": True},
    },
    "leave-last": {
        "models": ["mf:ranking", "neumf"],
        "baselines": ["pop", "itemknn"],
        "data": {"dataset": "ml-100k", "split": "leave-last", "data_dir": str(SHARED)},
    },
}
TARGETS = {
    ("ncf", "mf-ranking"): 0.710,
    ("ncf", "neumf"): 0.690,
    ("u1", "mf"): 0.915,
    ("u1", "autorec"): 0.895,
}


def sweep(name: str, storage: Path, settings: dict) -> RunDir:
    cfg = load_config(
        None, {"name": name, "storage": str(storage), "wandb": "disabled", **settings}
    )
    start = time.time()
    run_dir = run_sweep(cfg)
    print(f"# {name}: sweep took {(time.time() - start) / 60:.1f} min", flush=True)
    return RunDir(run_dir)


def record(row: pd.Series) -> TrialRecord:
    """A trial of the trials table, with its last checkpoint (which holds its best state)."""
    saved = sorted(Path(row["path"]).glob("checkpoint_*"))
    fields = {f.name for f in dataclasses.fields(TrialRecord)} - {"checkpoint", "hparams"}
    return TrialRecord(
        **{k: row[k] for k in fields},
        hparams=json.loads(row["hparams"]),
        checkpoint=tune.Checkpoint.from_directory(str(saved[-1])) if saved else None,
    )


def compare(name: str, tpe: RunDir, rand: RunDir) -> list[dict]:
    """Per study: its first trials (defaults, recipes) tested, then the two sweeps' rows."""
    cfg, data = tpe.config, tpe.data
    rows = []
    for study in model_studies(cfg):
        test = main_metric(study)
        firsts = tpe.trials[
            (tpe.trials["study"] == study.name) & (tpe.trials["origin"] != "search")
        ].sort_values("number")
        defaults = None
        with tempfile.TemporaryDirectory() as folder:
            for _, row in firsts.iterrows():
                trial = record(row)
                if trial.checkpoint is None:
                    rows.append(
                        {
                            "study": study.name,
                            "run": row["origin"],
                            "note": f"no checkpoint ({row['end']})",
                        }
                    )
                    continue
                run = test_trial(trial, study, data, cfg.train, Path(folder) / "m.pt")
                defaults = run.units if row["origin"] == "defaults" else defaults
                rows.append(
                    line(
                        name,
                        study.name,
                        row["origin"],
                        run.metrics[study.metric],
                        run.metrics[test],
                        run.units,
                        defaults,
                        row["epochs"],
                        row["end"],
                    )
                )
        for label, rd in (("TPE", tpe), ("random", rand)):
            table = rd.results.set_index("study")
            if study.name not in table.index or study.name not in rd.units:
                rows.append({"study": study.name, "run": label, "note": "no tested model"})
                continue
            got = table.loc[study.name]
            rows.append(
                line(
                    name,
                    study.name,
                    f"{label} (chose {got['origin']})",
                    got[study.metric],
                    got[test],
                    rd.units[study.name],
                    defaults,
                    got["epochs"],
                    f"{got['trials_done']} done, {got['trials_pruned']} asha",
                )
            )
    table = tpe.results.set_index("study")
    for base in cfg.baselines:
        if base in table.index and table.loc[base, "main_metric"] in table.columns:
            rows.append(
                {
                    "study": base,
                    "run": "baseline",
                    "test": table.loc[base, table.loc[base, "main_metric"]],
                }
            )
    return rows


def line(
    dataset: str,
    study: str,
    run: str,
    val: float,
    test: float,
    units: np.ndarray,
    defaults: np.ndarray | None,
    epochs: int,
    note: str,
) -> dict:
    p, why = (math.nan, "no defaults") if defaults is None else stats.paired_test(units, defaults)
    out = {
        "study": study,
        "run": run,
        "val": float(val),
        "test": float(test),
        "p vs defaults": f"{p:.2g}" if not why else why,
        "epochs": int(epochs),
        "note": note,
    }
    target = TARGETS.get((dataset, study))
    if target is not None and not run.startswith("recipe") and run != "defaults":
        better = test <= target if dataset == "u1" else test >= target
        out["target"] = f"{'<=' if dataset == 'u1' else '>='} {target}: " + (
            "met" if better else "NOT met"
        )
    return out


def print_table(title: str, rows: list[dict]) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    print(f"\n### {title}\n\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
        print("| " + " | ".join(cells) + " |")
    print(flush=True)


def reference_loop(
    data: PreparedData, seed: int = 0, epochs: int = 30
) -> tuple[float, np.ndarray, int]:
    """Dot product + item bias, pointwise BCE, 4 uniform negatives among the items a user
    has not rated in training, Adam 1e-3, dim 64, batch 256; the epoch with the best
    validation HR@10 is tested (on the training split, without the refit). Returns (test
    HR@10, per-row HR@10, best epoch)."""
    torch.manual_seed(seed)
    n_users, n_items, dim = data.n_users, data.n_items, 64
    user_emb, item_emb = torch.nn.Embedding(n_users, dim), torch.nn.Embedding(n_items, dim)
    item_bias = torch.nn.Embedding(n_items, 1)
    for table in (user_emb, item_emb):
        torch.nn.init.normal_(table.weight, std=0.01)
    torch.nn.init.zeros_(item_bias.weight)
    params = [*user_emb.parameters(), *item_emb.parameters(), *item_bias.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    users, items = torch.as_tensor(data.train.user), torch.as_tensor(data.train.item)
    rated = torch.zeros(n_users, n_items, dtype=torch.bool)
    rated[users, items] = True

    def score(u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # [b], [b, C] -> [b, C]
        return (user_emb(u)[:, None] * item_emb(c)).sum(-1) + item_bias(c).squeeze(-1)

    def hr10(split: str) -> torch.Tensor:
        rows = getattr(data, split)
        with torch.no_grad():
            return sampled_ranking_per_row(
                score,
                torch.as_tensor(rows.user),
                torch.as_tensor(rows.item),
                torch.as_tensor(getattr(data, f"{split}_negatives")),
                [10],
            )["hr@10"]

    best, best_epoch, best_state = -1.0, 0, None
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(users))
        for begin in range(0, len(users), 256):
            idx = perm[begin : begin + 256]
            u, pos = users[idx], items[idx]
            neg = torch.randint(0, n_items, (len(idx), 4))
            again = rated[u[:, None], neg]  # [b, 4] drawn a rated item: draw again
            while bool(again.any()):
                neg[again] = torch.randint(0, n_items, (int(again.sum()),))
                again = rated[u[:, None], neg]
            logits = score(u, torch.cat([pos[:, None], neg], 1))  # [b, 5]
            labels = torch.zeros_like(logits)
            labels[:, 0] = 1.0
            loss = F.binary_cross_entropy_with_logits(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        value = float(hr10("val").mean())
        if value > best:
            best, best_epoch = value, epoch
            best_state = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, saved in zip(params, best_state, strict=True):
            p.copy_(saved)
    per_row = hr10("test").numpy()
    return float(per_row.mean()), per_row, best_epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--datasets", default="ncf,u1,leave-last", help=f"comma-separated, of {', '.join(DATASETS)}"
    )
    ap.add_argument("--trials", type=int, default=16, help="trials per study")
    ap.add_argument("--models", default="", help="only these studies' models (e.g. mf:ranking)")
    ap.add_argument("--time-budget", default="2h", help="per sweep")
    ap.add_argument(
        "--storage", default="", help="where the run directories go (default: a temporary folder)"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(
        f"# search_bench: {platform.node()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}; {' '.join(sys.argv)}",
        flush=True,
    )
    storage = Path(args.storage or tempfile.mkdtemp(prefix="search-"))
    storage.mkdir(parents=True, exist_ok=True)
    best_val = {}
    for name in args.datasets.split(","):
        settings = {**DATASETS[name], "trials": args.trials, "time_budget": args.time_budget}
        if args.models:
            settings["models"] = args.models.split(",")
        tpe = sweep(f"{name}-tpe", storage, settings)
        rand = sweep(f"{name}-random", storage, {**settings, "sampler": {"name": "random"}})
        rows = compare(name, tpe, rand)
        if name == "ncf":
            hr, per_row, epoch = reference_loop(tpe.data)
            rows.append(
                {"study": "reference loop", "run": f"best epoch {epoch} on val", "test": hr}
            )
        print_table(
            f"{name}: {args.trials} trials per study, time budget {args.time_budget} "
            f"per sweep ({storage})",
            rows,
        )
        for study in model_studies(tpe.config):
            vals = {
                r["run"].split(" ")[0]: r["val"]
                for r in rows
                if r["study"] == study.name and "val" in r
            }
            if "TPE" in vals and "random" in vals:
                lower = study.mode == "min"
                best_val[(name, study.name)] = (
                    vals["TPE"] <= vals["random"] if lower else vals["TPE"] >= vals["random"]
                )
    print(
        "TPE >= random search on validation: "
        + ", ".join(f"{d}/{s}: {'yes' if ok else 'no'}" for (d, s), ok in best_val.items()),
        flush=True,
    )


if __name__ == "__main__":
    main()
