"""Quality of a sweep on the real MovieLens 100K: is the search worth its budget?

Three sweeps, each printed as a table of every study next to `train`'s defaults for the
same model, data and loop (validation and test, and the paired t-test p-value between the
sweep's chosen model and the defaults on the table's main metric):

- rating: `mf` and `autorec` on the canonical u1 split with the refit protocol (validation
  is a seeded 10% of u1.base; the chosen configuration is retrained on all of it), against
  `bias`. Targets: test RMSE <= 0.910 (mf), <= 0.895 (autorec), mf below bias.
- ranking: `mf:ranking`, `neumf`, `caser` on leave-last-out with full ranking, against
  `pop` and `itemknn`.
- ncf: the NCF protocol built from ml-100k (each user's latest rating held out, 99 sampled
  negatives, written in the NCF authors' three-file format and read back through `ncf:`),
  `mf:ranking` optimising HR@10, next to a plain reference loop written here (dot product
  + item bias, pointwise BCE, 4 negatives, Adam 1e-3, dim 64, 20 epochs, the best epoch on
  validation). Target: the sweep's test HR@10 above the reference's (Rendle et al. 2020).

Every study's validation best is >= its defaults' by construction (its first trial is the
defaults); the table shows it.

Run: `python bench/quality_bench.py [--part rating|ranking|ncf|all] [--trials 32]
[--ranking-trials 16] [--time-budget 3h]` (the rating part with 32 trials takes about half an
hour on 2 CPU cores). The data comes from $RECSWEEP_SHARED_DATA or ../shared/data.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import models  # noqa: E402,F401  (registers every model)
from data import load_dataset  # noqa: E402
from data.types import PreparedData  # noqa: E402
from models.base import DataSpec  # noqa: E402
from models.registry import create_model  # noqa: E402
from orchestrator import results  # noqa: E402
from orchestrator.config import SweepConfig  # noqa: E402
from orchestrator.finalize import main_metric  # noqa: E402
from orchestrator.metrics import sampled_ranking_per_row  # noqa: E402
from orchestrator.plan import load_config, model_studies  # noqa: E402
from orchestrator.rundir import RunDir  # noqa: E402
from orchestrator.sweep import run_sweep  # noqa: E402
from orchestrator.train import fit, seed_everything, val_and_test  # noqa: E402

SHARED = Path(os.environ.get("RECSWEEP_SHARED_DATA", ROOT.parent / "shared" / "data"))
TARGETS = {("rating", "mf"): ("test/rmse", 0.910), ("rating", "autorec"): ("test/rmse", 0.895)}


def sweep(name: str, storage: Path, settings: dict) -> tuple[SweepConfig, Path]:
    cfg = load_config(None, {"name": name, "storage": str(storage), "wandb": "disabled",
                             **settings})
    start = time.time()
    run_dir = run_sweep(cfg)
    print(f"# {name}: sweep took {(time.time() - start) / 60:.1f} min", flush=True)
    return cfg, run_dir


def defaults_vs_sweep(cfg: SweepConfig, run_dir: Path, data: PreparedData) -> list[dict]:
    """Each study's defaults trained and tested as `train` does, next to the sweep's row."""
    table = RunDir(run_dir).table.set_index("study")
    units = RunDir(run_dir).units
    rows = []
    for study in model_studies(cfg):
        seed_everything(cfg.seed)
        model = create_model(study.model, DataSpec.from_data(data), study.task)
        tcfg = dataclasses.replace(cfg.train, seed=cfg.seed, metric=study.metric)
        result = fit(model, data, tcfg)
        scores, _, tested = val_and_test(model, data, tcfg, result.best_epoch)
        test = main_metric(study)
        row = table.loc[study.name]
        p, why = results.paired_test(units[study.name], tested[test]) \
            if study.name in units else (math.nan, "no sweep result")
        rows.append({"study": study.name, "metric": test,
                     "val defaults": scores[study.metric], "val sweep": row.get(study.metric),
                     "test defaults": scores[test], "test sweep": row.get(test),
                     "p sweep vs defaults": f"{p:.2g}" if why == "" else why})
    for name in cfg.baselines:
        if name in table.index and table.loc[name, "main_metric"] in table.columns:
            metric = table.loc[name, "main_metric"]
            rows.append({"study": name, "metric": metric,
                         "test sweep": table.loc[name, metric], "p sweep vs defaults": ""})
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    print(f"\n### {title}\n\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r.get(c, ""))
                 for c in cols]
        print("| " + " | ".join(cells) + " |")
    print(flush=True)


def write_ncf_files(prefix: Path, negatives: int = 99, seed: int = 0) -> None:
    """ml-100k in the NCF authors' format: 0-based ids, each user's latest rating (ties: the
    larger item id) held out, `negatives` items the user never rated per test row."""
    raw = np.loadtxt(SHARED / "ml-100k" / "u.data", dtype=np.int64)  # user item rating time
    raw[:, :2] -= 1
    order = np.lexsort((raw[:, 1], raw[:, 3], raw[:, 0]))  # by user, time, item
    raw = raw[order]
    last = np.r_[raw[1:, 0] != raw[:-1, 0], True]  # each user's latest row
    train, test = raw[~last], raw[last]
    n_items = int(raw[:, 1].max()) + 1
    rated = np.zeros((int(raw[:, 0].max()) + 1, n_items), bool)
    rated[raw[:, 0], raw[:, 1]] = True
    rng = np.random.default_rng(seed)
    lines = []
    for user, item, *_ in test:
        pool = np.flatnonzero(~rated[user])
        negs = rng.choice(pool, negatives, replace=False)
        lines.append(f"({user},{item})\t" + "\t".join(map(str, negs)))
    for suffix, rows in ((".train.rating", train), (".test.rating", test)):
        Path(str(prefix) + suffix).write_text("".join("\t".join(map(str, r)) + "\n"
                                                      for r in rows))
    Path(str(prefix) + ".test.negative").write_text("\n".join(lines) + "\n")


def reference_loop(data: PreparedData, seed: int = 0) -> tuple[float, np.ndarray, int]:
    """Dot product + item bias, pointwise BCE, 4 uniform negatives among the items a user
    has not rated in training, Adam 1e-3, dim 64, batch 256, 20 epochs; the epoch with the
    best validation HR@10 is tested. Returns (test HR@10, per-row HR@10, best epoch)."""
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
            return sampled_ranking_per_row(score, torch.as_tensor(rows.user),
                                           torch.as_tensor(rows.item),
                                           torch.as_tensor(getattr(data, f"{split}_negatives")),
                                           [10])["hr@10"]

    best, best_epoch, best_state = -1.0, 0, None
    for epoch in range(1, 21):
        perm = torch.randperm(len(users))
        for begin in range(0, len(users), 256):
            idx = perm[begin:begin + 256]
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
    ap.add_argument("--part", default="all", choices=("rating", "ranking", "ncf", "all"))
    ap.add_argument("--trials", type=int, default=32, help="trials per rating study")
    ap.add_argument("--ranking-trials", type=int, default=16,
                    help="trials per ranking and ncf study")
    ap.add_argument("--time-budget", default="3h", help="per sweep")
    ap.add_argument("--storage", default="", help="where the run directories go (default: "
                    "a temporary folder)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"# quality_bench: {platform.node()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}; {' '.join(sys.argv)}", flush=True)
    storage = Path(args.storage or tempfile.mkdtemp(prefix="quality-"))
    storage.mkdir(parents=True, exist_ok=True)
    data_dir = str(SHARED)
    parts = ("rating", "ranking", "ncf") if args.part == "all" else (args.part,)
    if "rating" in parts:
        cfg, run_dir = sweep("rating-u1", storage, {
            "models": ["mf", "autorec"], "baselines": ["bias"], "trials": args.trials,
            "time_budget": args.time_budget,
            "data": {"dataset": "ml-100k", "split": "u1", "data_dir": data_dir},
            "train": {"refit": True}})
        rows = defaults_vs_sweep(cfg, run_dir, load_dataset(cfg.data))
        for row in rows:
            target = TARGETS.get(("rating", row["study"]))
            if target:
                row["target"] = f"{target[0]} <= {target[1]}: " + \
                    ("met" if row["test sweep"] <= target[1] else "NOT met")
        print_table(f"rating, u1, refit, {args.trials} trials per study ({run_dir})", rows)
    if "ranking" in parts:
        cfg, run_dir = sweep("ranking-leave-last", storage, {
            "models": ["mf:ranking", "neumf", "caser"], "baselines": ["pop", "itemknn"],
            "trials": args.ranking_trials, "time_budget": args.time_budget,
            "data": {"dataset": "ml-100k", "split": "leave-last", "data_dir": data_dir}})
        print_table(f"ranking, leave-last, full ranking, {args.ranking_trials} trials per "
                    f"study ({run_dir})", defaults_vs_sweep(cfg, run_dir, load_dataset(cfg.data)))
    if "ncf" in parts:
        prefix = storage / "ml-100k-ncf"
        write_ncf_files(prefix)
        cfg, run_dir = sweep("ncf", storage, {
            "models": ["mf:ranking"], "baselines": ["pop", "itemknn"], "metric": "val/hr@10",
            "trials": args.ranking_trials, "time_budget": args.time_budget,
            "data": {"dataset": f"ncf:{prefix}", "split": "ncf", "eval_negatives": 99},
            "train": {"protocol": "sampled"}})
        data = load_dataset(cfg.data)
        rows = defaults_vs_sweep(cfg, run_dir, data)
        hr, per_row, epoch = reference_loop(data)
        sweep_units = RunDir(run_dir).units["mf-ranking"]
        p, why = results.paired_test(sweep_units, per_row)
        sweep_hr = float(RunDir(run_dir).table.set_index("study").loc["mf-ranking",
                                                                       "test/hr@10"])
        rows.append({"study": f"reference loop (best epoch {epoch}; in 'test defaults')",
                     "metric": "test/hr@10", "test defaults": hr,
                     "p sweep vs defaults": f"sweep - reference = {sweep_hr - hr:+.4f}, "
                                            f"p = {p:.2g}" if not why else why})
        print_table(f"ncf protocol on ml-100k (99 sampled negatives), {args.ranking_trials} "
                    f"trials ({run_dir})", rows)


if __name__ == "__main__":
    main()
