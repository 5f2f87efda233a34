"""GPU paths of the shared loop, for a machine with a CUDA device (no Ray needed).

Checks and prints a table for each:

- placement: every model trains and evaluates on the GPU (parameters, data and scores there);
- bf16 autocast: each model trained with `amp` on and off from the same seed, both finite,
  validation metric side by side;
- sharing: K trial processes training `mf` on one GPU at once (as fractional-GPU trials
  do), their summed throughput against one process alone, and the peak memory of each.

Run: `python bench/gpu_check.py [--device cuda] [--share 4]`, then
`python bench/train_bench.py --part speed --device cuda --data SPEC` for throughput. With
`--device cpu` it runs the same code without autocast (to check the script itself). Data:
synthetic at MovieLens 100K size (the shared data does not travel to a lent machine).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orchestrator.models  # noqa: E402,F401  (registers every model)
from orchestrator.config import DataConfig, TrainConfig  # noqa: E402
from orchestrator.data import load_dataset  # noqa: E402
from orchestrator.engine.evaluation import monitored_metric  # noqa: E402
from orchestrator.engine.runtime import pick_device, seed_everything  # noqa: E402
from orchestrator.engine.train import fit  # noqa: E402
from orchestrator.models.base import DataSpec  # noqa: E402
from orchestrator.models.registry import create_model, get_model_class, list_models  # noqa: E402

DATA = "synthetic:users=943,items=1682,interactions=100000,seed=0"
EPOCHS = {"autorec": 20}  # epochs per model in the checks (default 3)


def train(name: str, task: str, data, device: str, amp: bool, epochs: int) -> tuple:
    seed_everything(0)
    hp = {"epochs": epochs} if get_model_class(name).learned else {}
    model = create_model(name, DataSpec.from_data(data), task, **hp)
    cfg = TrainConfig(device=device, amp=amp, patience=0)
    start = time.perf_counter()
    result = fit(model, data, cfg)
    metric, _ = monitored_metric(model.task, cfg.metric)
    speeds = [h["train_samples_per_s"] for h in result.history if "train_samples_per_s" in h]
    return (
        model,
        result.best.get(metric, float("nan")),
        metric,
        max(speeds, default=float("nan")),
        time.perf_counter() - start,
    )


def placement_and_autocast(device: str) -> None:
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else "no GPU"
    print(f"\nplacement and bf16 autocast on {device} ({gpu})")
    print("| model | task | params on | amp off: metric | amp on: metric | amp on: samples/s |")
    print("|---|---|---|---|---|---|")
    data = load_dataset(DataConfig(dataset=DATA, split="leave-last"))
    for name in list_models():
        task = get_model_class(name).tasks[0]
        epochs = EPOCHS.get(name, 3)
        off = train(name, task, data, device, False, epochs)
        on = train(name, task, data, device, device.startswith("cuda"), epochs)
        where = {p.device.type for p in on[0].parameters()} | {
            b.device.type for b in on[0].buffers()
        }
        ok = where <= {torch.device(device).type} and all(
            x == x and abs(x) != float("inf") for x in (off[1], on[1])
        )
        print(
            f"| {name} | {task} | {','.join(sorted(where)) or '-'} | {off[2]} {off[1]:.4f} | "
            f"{on[1]:.4f} | {on[3]:,.0f} |{'' if ok else ' FAIL'}",
            flush=True,
        )


def _share_worker(device: str, epochs: int, queue: mp.Queue) -> None:
    data = load_dataset(DataConfig(dataset=DATA, split="leave-last"))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    _, _, _, speed, seconds = train("mf", "ranking", data, device, True, epochs)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else 0.0
    queue.put((speed, seconds, peak))


def sharing(device: str, k: int, epochs: int = 20) -> None:
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    print(f"\n{k} trial processes sharing one device ({device}), mf ranking, {epochs} epochs")
    print("| processes | summed samples/s | per process | wall s | peak MiB per process |")
    print("|---|---|---|---|---|")
    for n in (1, k):
        queue = ctx.Queue()
        procs = [ctx.Process(target=_share_worker, args=(device, epochs, queue)) for _ in range(n)]
        start = time.perf_counter()
        for p in procs:
            p.start()
        out = [queue.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        wall = time.perf_counter() - start
        total = sum(o[0] for o in out)
        print(
            f"| {n} | {total:,.0f} | {total / n:,.0f} | {wall:.1f} | "
            f"{max(o[2] for o in out):.0f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--share", type=int, default=4, help="processes sharing the device")
    args = parser.parse_args()
    pick_device(args.device)  # a clear error when the device is missing
    print(
        f"torch {torch.__version__}; command: python bench/gpu_check.py --device "
        f"{args.device} --share {args.share}"
    )
    placement_and_autocast(args.device)
    sharing(args.device, args.share)


if __name__ == "__main__":
    main()
