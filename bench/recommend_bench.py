"""Serving latency of exported models: one-user `recommend` with onnxruntime (issue 5).

For each registered model (each of its tasks), trains briefly on the real MovieLens 100K
(leave-last split), exports it with `orchestrator.export.export_model`, loads it with
`orchestrator.serve.load` (the `recommend` command's path, CPU, one thread) and times
`Served.recommend(user, k=10)` for known users (model top-K with the user's items excluded)
and for an unknown user (the popularity fallback). Session loading is not timed; the goal
is p95 < 5 ms per known-user call. Weights do not change the latency, so one epoch of
training is enough.

Run: `python bench/recommend_bench.py [--calls 200] [--epochs 1] [--models mf,caser]`
(about a minute on 2 CPU threads). The data comes from $RECSWEEP_SHARED_DATA or
../shared/data; `--data synthetic` uses a generated dataset of the same size instead.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orchestrator.models  # noqa: E402,F401  (registers every model)
from orchestrator import serve  # noqa: E402
from orchestrator.config import DataConfig, TrainConfig  # noqa: E402
from orchestrator.data import load_dataset  # noqa: E402
from orchestrator.data.types import PreparedData  # noqa: E402
from orchestrator.engine.runtime import seed_everything  # noqa: E402
from orchestrator.engine.train import fit  # noqa: E402
from orchestrator.export import export_model  # noqa: E402
from orchestrator.models.base import DataSpec  # noqa: E402
from orchestrator.models.registry import create_model, get_model_class, list_models  # noqa: E402

SHARED = Path(os.environ.get("RECSWEEP_SHARED_DATA", ROOT.parent / "shared" / "data"))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} CPUs, onnxruntime {serve.ort.__version__}"


def timed(fn, calls: int) -> tuple[float, float]:
    """p50 and p95 of `calls` calls of `fn(i)`, in milliseconds, after 20 warm-up calls."""
    for i in range(20):
        fn(i)
    times = []
    for i in range(calls):
        start = time.perf_counter_ns()
        fn(i)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def bench(
    name: str, task: str, data: PreparedData, folder: Path, calls: int, epochs: int
) -> list[str]:
    seed_everything(0)
    model = create_model(name, DataSpec.from_data(data), task, epochs=epochs)
    fit(model, data, TrainConfig(device="cpu", amp=False, patience=1, ks=(10,)))
    start = time.perf_counter()
    path = folder / f"{name}-{task}.onnx"
    export_model(model, data, path)
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    served = serve.load(path)
    load_ms = (time.perf_counter() - start) * 1e3
    rng = np.random.default_rng(0)
    users = [str(u) for u in rng.choice(data.user_ids, size=calls + 20)]
    p50, p95 = timed(lambda i: served.recommend(users[i], 10), calls)
    c50, c95 = timed(lambda i: served.recommend("999999999", 10), calls)
    return [
        name,
        task,
        f"{p50:.3f}",
        f"{p95:.3f}",
        f"{c50:.3f}",
        f"{c95:.3f}",
        f"{load_ms:.0f}",
        f"{export_s:.1f}",
        "yes" if p95 < 5 else "NO",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="timed calls per model")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs per model")
    parser.add_argument("--models", default="", help="comma-separated (default: all)")
    parser.add_argument("--data", default="ml-100k", choices=("ml-100k", "synthetic"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.data == "ml-100k":
        cfg = DataConfig(dataset="ml-100k", data_dir=str(SHARED), eval_negatives=0)
    else:
        cfg = DataConfig(dataset="synthetic", eval_negatives=0)  # ml-100k's size
    data = load_dataset(cfg)
    names = [m for m in args.models.split(",") if m] or list_models()
    head = [
        "model",
        "task",
        "p50 ms",
        "p95 ms",
        "cold p50 ms",
        "cold p95 ms",
        "load ms",
        "export s",
        "p95 < 5 ms",
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for task in get_model_class(name).tasks:
                rows.append(bench(name, task, data, Path(tmp), args.calls, args.epochs))
    print(
        f"\nrecommend latency, one user, k=10, {args.calls} calls per model, "
        f"{data.name} ({data.n_users} users, {data.n_items} items)"
    )
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nmachine: {machine()}")
    print(f"command: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
