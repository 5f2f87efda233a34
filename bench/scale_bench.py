"""Scale: does the cost of preparing, training, evaluating and exporting grow linearly?

For each size (ratings, with ml-20m's 138,493 users and 26,744 items; the smallest uses
ml-100k's own 943 x 1682 as the reference the training target names), in fresh processes:
the synthetic generator writes a CSV of that size (`generate_s`); then a second process
parses and prepares it through `csv:` (`prepare_s`, `prepare_peak_gb`: no sampled-protocol
negatives), and for each model trains one epoch of the shared loop (no validation pass;
`samples/s`; with `--epochs N`, the median of N epochs' samples/s, against this machine's
noise), ranks every item for up to 2,000 validation users (the full protocol;
`users/s`, a second pass, once the evaluation lookups are built as training keeps them),
measures what the test pass's beyond-accuracy metrics add to such a pass (`beyond_%`),
and exports it to ONNX with its parity checks (`export_s`, `onnx_mb`: all its
files). Then, per column, the growth exponent against the number of ratings between the
smallest and the largest size of ml-20m's shape (1.0 is linear; a rate should stay flat,
exponent 0; a ranking pass costs a user the catalogue, so users/s falls from ml-100k's 1,682
items to ml-20m's), and the last size over the first (the training target: samples/s at
2M of ml-20m's shape >= 0.5 x ml-100k's). `--ml25m` adds one row: parse and prepare a CSV
of ml-25m's shape (162,541 users, 59,047 items, 25,000,095 ratings; targets: <= 60 s and
<= 6 GB).

Run: `python bench/scale_bench.py [--sizes 100k,1M,5M,20M] [--models mf:ranking,neumf,caser]
[--epochs 1] [--threads 2] [--ml25m] [--work DIR]` (CSV files go to DIR, default a temporary
folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ML20M = (138_493, 26_744)
ML25M = (162_541, 59_047, 25_000_095)
EVAL_USERS = 2_000


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def make_csv(users: int, items: int, size: int, path: Path) -> dict:
    """In this process: generate `size` synthetic ratings and write them as a CSV."""
    sys.path.insert(0, str(ROOT))
    import pyarrow as pa
    import pyarrow.csv as pv

    from orchestrator.data.synthetic import generate, parse_spec

    start = time.perf_counter()
    raw = generate(parse_spec(f"synthetic:users={users},items={items},interactions={size}")).raw
    out = {"generate_s": time.perf_counter() - start, "generate_peak_gb": peak_gb()}
    i = raw.interactions
    pv.write_csv(
        pa.table(
            {"userId": i.user, "movieId": i.item, "rating": i.rating, "timestamp": i.timestamp}
        ),
        path,
    )
    return out


def measure(path: Path, entries: list[str], threads: int, epochs: int = 1) -> dict:
    """In this process: prepare the CSV, then per model one epoch, one ranking pass, export."""
    sys.path.insert(0, str(ROOT))
    import torch

    import orchestrator.models  # noqa: F401  (registers every model)
    from orchestrator.config import DataConfig, TrainConfig
    from orchestrator.data import load_dataset
    from orchestrator.engine.evaluation import evaluate, to_device
    from orchestrator.engine.runtime import seed_everything
    from orchestrator.engine.train import fit
    from orchestrator.export import export_model
    from orchestrator.models.base import DataSpec
    from orchestrator.models.registry import create_model

    torch.set_num_threads(threads)
    start = time.perf_counter()
    data = load_dataset(
        DataConfig(dataset=f"csv:{path}?user=userId&item=movieId", eval_negatives=0)
    )
    out = {
        "ratings": len(data.train) + len(data.val) + len(data.test),
        "users": data.n_users,
        "items": data.n_items,
        "prepare_s": time.perf_counter() - start,
        "prepare_peak_gb": peak_gb(),
    }
    val = data.val  # ranking speed on the first EVAL_USERS users' validation rows
    few = dataclasses.replace(
        data,
        val=type(val)(
            *(a[val.user < EVAL_USERS] for a in (val.user, val.item, val.rating, val.timestamp))
        ),
    )
    cfg = TrainConfig(device="cpu", amp=False, protocol="full")
    for entry in entries:
        name, _, task = entry.partition(":")
        seed_everything(0)
        model = create_model(name, DataSpec.from_data(data), task or None, epochs=epochs)
        result = fit(model, data, cfg, validate=False)
        out[f"{entry} samples/s"] = statistics.median(
            h["train_samples_per_s"] for h in result.history
        )
        tensors = to_device(few, "cpu")  # as in training: the evaluation lookups are built
        evaluate(model, few, "val", cfg, tensors)  # once (O(ratings)), then kept
        out[f"{entry} users/s"] = evaluate(model, few, "val", cfg, tensors)["val/eval_users_per_s"]
        out[f"{entry} beyond_%"] = beyond_overhead(model, few, tensors, cfg)
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            export_model(model, data, Path(folder, f"{name}.onnx"))
            out[f"{entry} export_s"] = time.perf_counter() - start
            out[f"{entry} onnx_mb"] = sum(p.stat().st_size for p in Path(folder).iterdir()) / 1e6
    out["peak_gb"] = peak_gb()
    return out


def beyond_overhead(model, data, tensors, cfg) -> float:
    """What keeping the top-K lists and computing coverage, Gini, ARP and novelty from them
    adds to a full-ranking pass (the test pass does both), in % of the pass without them:
    the median of 3 passes each, on the same users."""
    import torch

    from orchestrator.engine.evaluation import EVAL_CELLS
    from orchestrator.engine.metrics import beyond_accuracy, full_ranking_per_user

    seqs = tensors.last_items("val", model.seq_len) if model.seq_len > 0 else None
    batch = min(cfg.eval_batch_users, model.eval_batch_users or cfg.eval_batch_users,
                max(1, EVAL_CELLS // data.n_items))  # fmt: skip

    def ranked(with_lists: bool) -> float:
        start = time.perf_counter()
        tops = [] if with_lists else None
        with torch.no_grad():
            full_ranking_per_user(
                lambda u: model.score_all(u, None if seqs is None else seqs[u]).float(),
                torch.arange(data.n_users), tensors.targets("val"), tensors.known("val"),
                cfg.ks, batch, tops,
            )  # fmt: skip
            if with_lists:
                beyond_accuracy(torch.cat(tops), tensors.popularity(), data.n_users, cfg.ks)
        return time.perf_counter() - start

    plain = statistics.median(ranked(False) for _ in range(3))
    lists = statistics.median(ranked(True) for _ in range(3))
    return 100 * (lists / plain - 1)


def child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: failed\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100k,1M,5M,20M")
    ap.add_argument("--models", default="mf:ranking,neumf,caser")
    ap.add_argument(
        "--epochs", type=int, default=1, help="epochs per model; samples/s is their median"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ml25m", action="store_true", help="also parse + prepare ml-25m's shape")
    ap.add_argument("--work", type=Path, help="folder for the CSV files (default: temporary)")
    ap.add_argument("--make", nargs=4, help=argparse.SUPPRESS)  # child: users items size path
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # child: measure this CSV
    args = ap.parse_args()
    if args.make:
        users, items, size, path = args.make
        print(json.dumps(make_csv(int(users), int(items), int(size), Path(path))), flush=True)
        return
    if args.one:
        print(
            json.dumps(
                measure(
                    args.one, [m for m in args.models.split(",") if m], args.threads, args.epochs
                )
            ),
            flush=True,
        )
        return
    print(
        f"# scale_bench: {platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.threads} threads; command: python bench/scale_bench.py "
        f"{' '.join(sys.argv[1:])}",
        flush=True,
    )
    work = args.work or Path(tempfile.mkdtemp(prefix="scale_bench."))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in map(parse_size, args.sizes.split(",")):
        users, items = (943, 1682) if size <= 100_000 else ML20M
        path = work / f"ratings-{size}.csv"
        row = child("--make", str(users), str(items), str(size), str(path))
        row.update(
            child(
                "--one",
                str(path),
                "--models",
                args.models,
                "--threads",
                str(args.threads),
                "--epochs",
                str(args.epochs),
            )
        )
        path.unlink()
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    cols = [c for c in rows[0] if c not in ("users", "items")]
    cols.insert(0, cols.pop(cols.index("ratings")))
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print(
            "| "
            + " | ".join(f"{r[c]:,.3g}" if isinstance(r[c], float) else f"{r[c]:,}" for c in cols)
            + " |"
        )
    same = [r for r in rows if (r["users"], r["items"]) == (rows[-1]["users"], rows[-1]["items"])]
    if len(same) > 1:  # growth between sizes of one shape: a ranking pass costs n_items
        a, b = same[0], same[-1]
        grow = math.log(b["ratings"] / a["ratings"])
        print(
            f"| growth exponent, {a['ratings']:,} to {b['ratings']:,} | "
            + " | ".join(  # a share (`_%`) has no growth exponent
                "" if c.endswith("_%") else f"{math.log(b[c] / a[c]) / grow:.2f}" for c in cols[1:]
            )
            + " |"
        )
    if len(rows) > 1:
        print(
            "| last / first | "
            + " | ".join(
                "" if c.endswith("_%") else f"{rows[-1][c] / rows[0][c]:.2f}" for c in cols[1:]
            )
            + " |"
        )
    if args.ml25m:
        users, items, size = ML25M
        path = work / "ratings-ml25m.csv"
        made = child("--make", str(users), str(items), str(size), str(path))
        row = child("--one", str(path), "--models", "", "--threads", str(args.threads))
        path.unlink()
        print(
            f"\nml-25m shape ({row['users']:,} users, {row['items']:,} items, "
            f"{row['ratings']:,} ratings): generate {made['generate_s']:.1f} s; parse + "
            f"prepare {row['prepare_s']:.1f} s (target <= 60), peak "
            f"{row['prepare_peak_gb']:.2f} GB (target <= 6)"
        )


if __name__ == "__main__":
    main()
