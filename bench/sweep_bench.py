"""Orchestration overhead of the sweep on this machine (issue 4).

Sixteen short `mf` trials (rating, MovieLens 100K u1, about 10 s of training each) run
twice: one after another in this process with the shared loop, and as a Ray Tune
experiment through the sweep's own trainable (`run_trial`, data passed once through the
object store), one CPU per trial. Prints:

- overhead = (sweep wall-clock x concurrent slots) / (sum of in-process trial times) - 1,
  goal <= 15%, against the mean of the in-process times measured before and after the
  sweeps (in brackets: against each); and the same against the trials run in one process
  per slot at once, with no Ray: what running trials side by side costs on this machine
  (shared caches, memory bandwidth) is not orchestration;
- trial start-up: from a slot freeing up (the search's start, or an earlier trial completing)
  to the next trial's first batch (worker up, data fetched from the object store, model and
  optimizer built, one forward and backward pass). The < 2 s goal for the first wave is
  retired (issue 18): a fresh worker's imports are paid once per worker.

Run: `python bench/sweep_bench.py [--trials 16] [--seconds 10] [--reuse both|true|false]`
(on 2 cores about 10 minutes with `--reuse true`, 12 with both).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.config import DataConfig, TrainConfig  # noqa: E402
from orchestrator.data import load_dataset  # noqa: E402
from orchestrator.engine.runtime import seed_everything  # noqa: E402
from orchestrator.engine.train import fit  # noqa: E402
from orchestrator.models.base import DataSpec  # noqa: E402
from orchestrator.models.registry import create_model  # noqa: E402

SHARED = Path(os.environ.get("RECSWEEP_SHARED_DATA", ROOT.parent / "shared" / "data"))


def configs(n: int, epochs: int) -> list[dict]:
    """n distinct, deterministic mf configurations of equal cost."""
    return [{"lr": 0.002 + 0.0005 * i, "epochs": epochs} for i in range(n)]


def in_process(data, cfg: TrainConfig, hps: list[dict]) -> list[float]:
    times = []
    for hp in hps:
        start = time.perf_counter()
        seed_everything(cfg.seed)
        model = create_model("mf", DataSpec.from_data(data), "rating", **hp)
        fit(model, data, cfg)
        times.append(time.perf_counter() - start)
    return times


def side_by_side(data, cfg: TrainConfig, hps: list[dict], slots: int) -> list[float]:
    """The trials in `slots` processes at once (one thread each), as Ray runs them. Spawned:
    after a sweep this process has Ray's threads, and forking a threaded process can hang."""
    with multiprocessing.get_context("spawn").Pool(
        slots, initializer=torch.set_num_threads, initargs=(1,)
    ) as pool:
        chunks = pool.starmap(in_process, [(data, cfg, hps[i::slots]) for i in range(slots)])
    return [t for chunk in chunks for t in chunk]


def with_tune(
    data_cfg: DataConfig, cfg: TrainConfig, hps: list[dict], storage: Path, reuse: bool
) -> tuple[float, list]:
    import ray
    from ray import tune

    from orchestrator.cluster import connect
    from orchestrator.config import SweepConfig
    from orchestrator.records import Schedule, Study, TrialSpec
    from orchestrator.search import KEEP_CHECKPOINTS
    from orchestrator.trainable import run_trial

    completed: list[float] = []

    class Clock(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            completed.append(time.time())

    connect(SweepConfig())
    data = load_dataset(data_cfg)
    trainable = tune.with_resources(tune.with_parameters(run_trial, data=data), {"cpu": 1})
    spec = TrialSpec.of(
        Study("mf", "mf", "rating", "val/rmse", "min"),
        Schedule(hps[0]["epochs"], 1, ()),
        cfg,
        cfg.seed,
        0,
        "search",
    )
    space = spec.config(
        {"epochs": hps[0]["epochs"], "lr": tune.grid_search([h["lr"] for h in hps])}
    )
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(reuse_actors=reuse),
        run_config=tune.RunConfig(
            name="bench",
            storage_path=str(storage),
            callbacks=[Clock()],
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
        ),
    )
    t0, start = time.time(), time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - start
    # A trial is scheduled when a slot frees: at the start for the first wave, else when
    # the k-th trial before it completes. Start-up runs from then to its first batch.
    slots = os.cpu_count() or 1
    began = sorted(r.metrics["first_batch_at"] for r in grid)
    free = [t0] * slots + sorted(completed)
    starts = [b - f for b, f in zip(began, free, strict=False)]
    ray.shutdown()
    return wall, starts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0, help="training per trial")
    parser.add_argument(
        "--reuse",
        choices=("both", "true", "false"),
        default="both",
        help="actor reuse settings to measure",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # what each 1-CPU trial gets from Ray (OMP_NUM_THREADS=1)
    data_cfg = DataConfig(dataset="ml-100k", split="u1", data_dir=str(SHARED))
    data = load_dataset(data_cfg)
    cfg = TrainConfig(patience=0)  # no early stopping: every trial costs the same
    in_process(data, cfg, configs(1, 1))  # warm-up: first-call costs are not epochs
    one = in_process(data, cfg, configs(1, 4))[0] / 4
    epochs = max(1, math.ceil(args.seconds / one))
    hps = configs(args.trials, epochs)
    slots = os.cpu_count() or 1

    def baselines() -> tuple[float, float]:
        return sum(in_process(data, cfg, hps)), sum(side_by_side(data, cfg, hps, slots))

    # This machine's speed drifts by 5-10% within minutes: the baselines run before and
    # after the sweeps, and the overhead is taken against their mean.
    before = baselines()
    walls = {}
    for reuse in {"both": (False, True), "true": (True,), "false": (False,)}[args.reuse]:
        with tempfile.TemporaryDirectory() as tmp:
            walls[reuse] = with_tune(data_cfg, cfg, hps, Path(tmp), reuse)
    after = baselines()
    serial, parallel = (statistics.mean(pair) for pair in zip(before, after, strict=True))
    print(
        f"# sweep orchestration overhead ({platform.processor() or platform.machine()}, "
        f"{slots} CPUs, torch {torch.__version__}); command: python "
        f"bench/sweep_bench.py --trials {args.trials} --seconds {args.seconds} "
        f"--reuse {args.reuse}"
    )
    print(
        f"# {args.trials} trials x {epochs} epochs; in-process training, sum: "
        f"{before[0]:.1f} s before the sweeps and {after[0]:.1f} s after, one after another; "
        f"{before[1]:.1f} s and {after[1]:.1f} s in {slots} processes at once"
    )
    print(
        f"| actor reuse | sweep wall x slots | overhead (goal <= 15%) | vs {slots} processes "
        "| trial start-up median | max (goal < 2 s) |\n|---|---|---|---|---|---|"
    )
    for reuse, (wall, starts) in walls.items():
        print("# start-ups (s): " + " ".join(f"{s:.2f}" for s in starts))
        spread = " to ".join(
            f"{o:+.1%}" for o in sorted(wall * slots / b - 1 for b in (before[0], after[0]))
        )
        print(
            f"| {reuse} | {wall * slots:.1f} s | {wall * slots / serial - 1:+.1%} "
            f"({spread}) | {wall * slots / parallel - 1:+.1%} | "
            f"{statistics.median(starts):.2f} s | {max(starts):.2f} s |",
            flush=True,
        )


if __name__ == "__main__":
    main()
