"""The sweep across nodes and across driver deaths, on real Ray processes.

- several nodes: `ray.cluster_utils.Cluster` with a head and two workers declaring GPUs (so
  GPU-fraction scheduling is exercised on CPU); one worker is removed mid-sweep;
- driver loss: a sweep process is killed with SIGKILL mid-way and continued with --resume;
- trial threads: each trial sizes torch's thread pool to its CPUs, not to the machine.
"""

from __future__ import annotations

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

from orchestrator.plan import load_config
from orchestrator.rundir import RunDir
from orchestrator.sweep import run_sweep

pytestmark = pytest.mark.cluster  # a simulated cluster, or a Ray of the test's own

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


def test_sweep_survives_the_loss_of_a_node(
    tmp_path: Path, capsys: pytest.CaptureFixture, no_shared_ray: None
) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 1})
    try:
        workers = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        cfg = load_config(
            None,
            {
                "name": "multi",
                "storage": str(tmp_path),
                "models": ["mf", "neumf"],
                "baselines": [],
                "trials": 3,
                "epochs": 4,
                "grace_period": 4,
                "gpus_per_trial": 0.5,
                "cpus_per_trial": 0.5,
                "wandb": "offline",
                "data": DATA,
                "export": False,  # the search across nodes is tested, not its tail
                "report": False,
            },
        )

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
    trials = RunDir(run_dir).trials
    assert len(trials) == 6 and trials["trial_id"].is_unique
    assert trials["end"].isin(["epochs", "early_stopped", "asha"]).all(), trials[
        ["trial_id", "end", "message"]
    ]
    # a trial restored from an earlier checkpoint keeps no epoch of its lost run
    assert (trials["best_epoch"] <= trials["epochs"]).all(), trials[
        ["trial_id", "best_epoch", "epochs"]
    ]
    assert (trials["epochs"] == 4).all()  # grace_period == epochs: ASHA stops nobody
    table = RunDir(run_dir).results
    assert list(table["study"]) == ["mf", "neumf"] and (table["trials_done"] == 3).all()
    assert (trials.groupby("study").size() == 3).all()
    # W&B's actor lives on the driver's node: a trial restarted elsewhere goes on in its run.
    # One that Tune gave up on and `fit_experiment` resumed has a second folder with the same run id
    # (`wandb sync` makes them one run); its last one ends the trial.
    last = {}
    for folder in sorted((run_dir / "wandb").glob("offline-run-*")):  # named by start time
        run = wandb_run(folder)
        if run["run"].job_type != "summary":  # the sweep's own run: tables and models
            last[run["run"].run_id] = run
    assert sorted(last) == sorted(trials["trial_id"])
    assert all(r["exit_code"] == 0 and r["history"][-1]["epoch"] == 4 for r in last.values())
    assert "W&B:" not in capsys.readouterr().err  # no W&B error reported


def test_trials_lost_with_their_worker_are_resumed(tmp_path: Path, no_shared_ray: None) -> None:
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
    tuner = tune.Tuner(
        _dies_once,
        param_space={"marker": str(tmp_path / "died")},
        run_config=tune.RunConfig(
            name="lost",
            storage_path=str(tmp_path),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    grid = fit_experiment(
        tuner, str(tmp_path / "lost"), _dies_once, cfg, deadline=None, stop=threading.Event()
    )
    assert (tmp_path / "died").exists()  # the first attempt really died
    assert len(grid) == 1 and grid[0].error is None
    assert grid[0].metrics["val/rmse"] == 1.0


def test_resume_after_the_driver_is_killed(tmp_path: Path, no_shared_ray: None) -> None:
    args = [
        sys.executable,
        "-m",
        "orchestrator",
        "sweep",
        "--name",
        "resumed",
        "--storage",
        str(tmp_path),
        "--models",
        "mf,neumf",
        "--baselines",
        "pop",  # fitted once: the trials are the models'
        "--trials",
        "4",
        "--epochs",
        "3",
        "--wandb",
        "disabled",
        "--dataset",
        DATA["dataset"],
        *("--export", "false", "--report", "false"),  # the search and its resume are tested
    ]
    # save the experiment state often, but not at every step: Tune writes it in place, and
    # a kill landing mid-write leaves a state Tune cannot read (it then restarts the
    # experiment), which at every step it did once in CI
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "2"}
    driver = subprocess.Popen(
        args,
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        run_dir = tmp_path / "resumed"
        assert first_result(run_dir, finished=True), "no trial of the sweep ever finished"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()
        # as after a reboot: no Ray process of the dead driver lingers for the next to join
        subprocess.run(
            [str(Path(sys.executable).with_name("ray")), "stop", "--force"],
            capture_output=True,
            timeout=60,
        )
    assert not (run_dir / "results.csv").exists()  # it really died mid-way
    log = tmp_path / "resume.log"
    with log.open("w") as out:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "orchestrator", "sweep", "--resume", str(run_dir)],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=300,
            )
        except subprocess.TimeoutExpired:
            pytest.fail("--resume hung:\n" + log.read_text()[-4000:])
    assert proc.returncode == 0, log.read_text()[-4000:]
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 8, trials[["trial_id", "end"]]
    assert trials["trial_id"].is_unique
    assert (trials.groupby("study").size() == 4).all()  # each study's 4, none run twice
    assert trials["end"].isin(["epochs", "early_stopped", "asha"]).all(), trials[
        ["trial_id", "end", "message"]
    ]
    # a trial restored from an earlier checkpoint keeps no epoch of its lost run
    assert (trials["best_epoch"] <= trials["epochs"]).all(), trials[
        ["trial_id", "best_epoch", "epochs"]
    ]
    # Optuna's storage agrees: every trial once, pruned exactly where ASHA stopped it
    import optuna

    from orchestrator.journal import storage

    for name, group in trials.groupby("study"):
        study = optuna.load_study(study_name=str(name), storage=storage(run_dir))
        assert sorted(t.user_attrs["trial_id"] for t in study.trials) == sorted(group["trial_id"])
        assert (
            sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
            == (group["end"] == "asha").sum()
        )


def test_each_trial_sizes_its_thread_pool_to_its_cpus(tmp_path: Path, local_ray: None) -> None:
    from ray import tune

    def probe(config: dict) -> None:  # nested: pickled by value for the workers
        import torch

        from orchestrator.trainable import use_trial_cpus

        torch.set_num_threads(2)  # as a worker that imported torch before the trial
        tune.report({"threads": use_trial_cpus()})

    cpus = int(ray.cluster_resources()["CPU"])
    grid = tune.Tuner(
        tune.with_resources(probe, {"cpu": 1}),
        param_space={"i": tune.grid_search(list(range(cpus)))},
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    ).fit()
    assert [r.metrics["threads"] for r in grid] == [1] * cpus
