"""The sweep across nodes and across driver deaths, on real Ray processes.

- several nodes: `ray.cluster_utils.Cluster` with a head and two workers declaring GPUs (so
  GPU-fraction scheduling is exercised on CPU); one worker is removed mid-sweep;
- driver loss: a sweep process is killed with SIGKILL mid-way and continued with --resume;
- warm start: on a local Ray the first trials run in the workers Ray started with it, which
  imported the trials' modules as they started (orchestrator.warm), even once the search has
  reserved every CPU; and none of that Ray's processes outlives the driver.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
from wandb_log import wandb_run

from orchestrator import results
from orchestrator.plan import load_config
from orchestrator.sweep import run_sweep

REPO = Path(__file__).resolve().parents[1]
DATA = {"dataset": "synthetic:users=300,items=400,interactions=12000,seed=1"}


def first_result(root: Path, timeout: float = 120, finished: bool = False) -> bool:
    """Wait until some trial under `root` has reported an epoch (or, with `finished`, has
    finished: Tune marks its last result `"done": true`)."""
    end = time.time() + timeout
    while time.time() < end:
        for path in root.rglob("result.json"):
            text = path.read_text()
            if text and (not finished or '"done": true' in text):
                return True
        time.sleep(0.1)
    return False


def test_sweep_survives_the_loss_of_a_node(tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 1})
    try:
        workers = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        cfg = load_config(None, {
            "name": "multi", "storage": str(tmp_path), "models": ["mf", "neumf"],
            "baselines": [], "trials": 3, "epochs": 4, "grace_period": 4, "gpus_per_trial": 0.5,
            "cpus_per_trial": 0.5, "wandb": "offline", "data": DATA})

        removed: list[float] = []

        def kill_a_worker() -> None:
            if first_result(tmp_path / "multi"):
                cluster.remove_node(workers[1])
                removed.append(time.time())
        killer = threading.Thread(target=kill_a_worker, daemon=True)
        killer.start()
        run_dir = run_sweep(cfg)
        assert removed, "the worker was not removed while the sweep ran"
        alive = [n for n in ray.nodes() if n["Alive"]]
        assert len(alive) == 2  # the head and the surviving worker
    finally:
        ray.shutdown()
        cluster.shutdown()
    trials = results.load_trials(run_dir)
    assert len(trials) == 6 and trials["trial_id"].is_unique
    assert trials["end"].isin(["epochs", "early_stopped", "asha"]).all(), \
        trials[["trial_id", "end", "message"]]
    assert (trials["epochs"] == 4).all()  # grace_period == epochs: ASHA stops nobody
    table = results.load(run_dir)
    assert list(table["study"]) == ["mf", "neumf"] and (table["trials_done"] == 3).all()
    assert (trials.groupby("study").size() == 3).all()
    # W&B's actor lives on the driver's node: a trial restarted elsewhere goes on in its run.
    # One that Tune gave up on and `fit_experiment` resumed has a second folder with the same run id
    # (`wandb sync` makes them one run); its last one ends the trial.
    last = {}
    for folder in sorted((run_dir / "wandb").glob("offline-run-*")):  # named by start time
        run = wandb_run(folder)
        last[run["run"].run_id] = run
    assert sorted(last) == sorted(trials["trial_id"])
    assert all(r["exit_code"] == 0 and r["history"][-1]["epoch"] == 4 for r in last.values())
    assert "W&B:" not in capsys.readouterr().err  # no W&B error reported


def test_trials_lost_with_their_worker_are_resumed(tmp_path: Path) -> None:
    from ray import tune

    from orchestrator.search import fit_experiment

    def _dies_once(config: dict) -> None:  # nested: pickled by value for the workers
        """A trial whose worker process dies the first time it runs (as on a lost node)."""
        marker = Path(config["marker"])
        if not marker.exists():
            marker.touch()
            os._exit(1)
        tune.report({"val/rmse": 1.0})

    ray.init(num_cpus=1, include_dashboard=False)
    cfg = load_config(None, {"name": "lost", "storage": str(tmp_path), "max_failures": 1})
    tuner = tune.Tuner(_dies_once, param_space={"marker": str(tmp_path / "died")},
                       run_config=tune.RunConfig(
                           name="lost", storage_path=str(tmp_path), verbose=0,
                           failure_config=tune.FailureConfig(max_failures=0)))
    grid = fit_experiment(tuner, str(tmp_path / "lost"), _dies_once, cfg, deadline=None,
                stop=threading.Event())
    assert (tmp_path / "died").exists()  # the first attempt really died
    assert len(grid) == 1 and grid[0].error is None
    assert grid[0].metrics["val/rmse"] == 1.0


def test_resume_after_the_driver_is_killed(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "orchestrator", "sweep", "--name", "resumed", "--storage",
            str(tmp_path), "--models", "mf,neumf", "--trials", "4", "--epochs", "3",
            "--wandb", "disabled", "--dataset", DATA["dataset"]]
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0"}  # save the experiment state often
    driver = subprocess.Popen(args, cwd=REPO, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_dir = tmp_path / "resumed"
        assert first_result(run_dir, finished=True), "no trial of the sweep ever finished"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()
        # as after a reboot: no Ray process of the dead driver lingers for the next to join
        subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"],
                       capture_output=True, timeout=60)
    assert not (run_dir / "results.csv").exists()  # it really died mid-way
    log = tmp_path / "resume.log"
    with log.open("w") as out:
        try:
            proc = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", "--resume",
                                   str(run_dir)], cwd=REPO, stdout=out,
                                  stderr=subprocess.STDOUT, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail("--resume hung:\n" + log.read_text()[-4000:])
    assert proc.returncode == 0, log.read_text()[-4000:]
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 8, trials[["trial_id", "end"]]
    assert trials["trial_id"].is_unique
    assert (trials.groupby("study").size() == 4).all()  # each study's 4, none run twice
    assert trials["end"].isin(["epochs", "early_stopped", "asha"]).all(), \
        trials[["trial_id", "end", "message"]]


@pytest.fixture
def sweep_ray() -> int:
    """A local Ray started as the sweep starts it (warm workers); returns its CPU count."""
    from orchestrator.cluster import connect
    from orchestrator.config import SweepConfig

    connect(SweepConfig())
    return int(ray.cluster_resources()["CPU"])


def test_first_trials_start_in_workers_that_imported_their_modules(tmp_path: Path,
                                                                   sweep_ray: int) -> None:
    from ray import tune

    def probe(config: dict) -> None:  # nested: pickled by value for the workers
        from orchestrator.trainable import use_trial_cpus

        warm = sys.modules.get("orchestrator.warm")
        tune.report({"claimed": bool(warm and warm.CLAIMED), "threads": use_trial_cpus(),
                     "pid": os.getpid()})

    cpus = sweep_ray
    grid = tune.Tuner(tune.with_resources(probe, {"cpu": 1}),
                      param_space={"i": tune.grid_search(list(range(cpus)))},
                      run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    # one trial per CPU at once, each in a worker that took a token and imported torch...
    assert [r.metrics["claimed"] for r in grid] == [True] * cpus
    assert len({r.metrics["pid"] for r in grid}) == cpus
    # ...with its thread pool sized to the trial's CPU, not to the machine
    assert [r.metrics["threads"] for r in grid] == [1] * cpus

    @ray.remote(num_cpus=0)
    def later() -> tuple[bool, bool]:  # a process started later, as W&B's actors are
        warm = sys.modules.get("orchestrator.warm")
        return bool(warm and warm.CLAIMED), "torch" in sys.modules

    assert ray.get(later.remote()) == (False, False)  # no token left: it stays light


def test_warm_workers_outlive_a_search_that_reserves_every_cpu(sweep_ray: int) -> None:
    """Tune reserves a trial's CPUs (a placement group) before it asks for its actor; Ray's
    idle-worker killer, which runs every 200 ms, must not take the warm workers meanwhile."""
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    @ray.remote(num_cpus=1)
    class Probe:
        def claimed(self) -> tuple[bool, int]:
            warm = sys.modules.get("orchestrator.warm")
            return bool(warm and warm.CLAIMED), os.getpid()

    cpus = sweep_ray
    group = placement_group([{"CPU": 1}] * cpus)
    ray.get(group.ready())
    time.sleep(2)  # the workers idle for over a second (Ray's threshold) with no CPU free
    probes = [Probe.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        group, placement_group_bundle_index=i)).remote() for i in range(cpus)]
    found = ray.get([p.claimed.remote() for p in probes])
    assert [claimed for claimed, _ in found] == [True] * cpus
    assert len({pid for _, pid in found}) == cpus


def test_nothing_of_the_local_ray_outlives_the_driver() -> None:
    """A Ray worker can hang in its own exit for good (`orchestrator.warm.stop`). Its stand-in
    here: a process a task leaves behind in a session of its own, out of reach of Ray's
    process-group kill. The driver's exit kills it."""
    script = """
import subprocess, ray
from orchestrator.config import SweepConfig
from orchestrator.cluster import connect
connect(SweepConfig())

@ray.remote(num_cpus=0)
def leave_behind() -> str:
    return subprocess.run(["sh", "-c", "setsid sleep 600 >/dev/null 2>&1 & echo $!"],
                          capture_output=True, text=True).stdout

print(ray.get(leave_behind.remote()), flush=True)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    pid = int(done.stdout.split()[-1])
    stat = Path(f"/proc/{pid}/stat")
    try:
        # gone, or a zombie that init has yet to collect
        assert not stat.exists() or stat.read_text().split(") ")[1].startswith("Z")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(autouse=True)
def _no_leftover_ray() -> None:
    yield
    if ray.is_initialized():
        ray.shutdown()
