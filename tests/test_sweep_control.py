"""Stopping a sweep early and re-running its winners, on a real local Ray:

- the time budget ends a sweep whose trials would run far longer, with a table;
- Ctrl-C (SIGINT to the process group, as a terminal sends it) stops it with the table and
  models of what finished; after SIGTERM, `--resume` finishes it;
- `final_seeds` retrains the chosen configuration with more seeds (mean +- std), and
  `refit` tests each seed's retrain on train + val;
- `data.folds` tests the chosen configurations and the baselines on every fold;
- exit codes: 130 after Ctrl-C, 143 after SIGTERM, 1 when a study ends with no finished
  trial;
- two sweeps on one name: one runs, the other fails at once.

The signal, budget and claim logic is unit-tested in test_control.py and test_search.py.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from orchestrator.cli import main
from orchestrator.data import load_dataset, load_datasets
from orchestrator.engine.evaluation import evaluate
from orchestrator.engine.train import fold_val
from orchestrator.journal import storage
from orchestrator.models.base import DataSpec
from orchestrator.models.registry import load_model
from orchestrator.plan import load_config
from orchestrator.rundir import RunDir
from orchestrator.sweep import run_sweep

pytestmark = pytest.mark.sweep  # whole sweeps, in-process (on the shared local Ray) or not

REPO = Path(__file__).resolve().parents[1]
DATASET = "synthetic:users=200,items=300,interactions=8000,seed=2"
# trials that would take minutes each if nothing stopped them
LONG = {
    "trials": 40,
    "epochs": 100000,
    "grace_period": 100000,
    "wandb": "disabled",
    "baselines": [],
    "data": {"dataset": DATASET},
}
# what a test of the search, the signals or the budget does not pay for (the smoke run and
# the Ctrl-C test below export and report)
NO_TAIL = {"export": False, "report": False}
NO_TAIL_FLAGS = ["--export", "false", "--report", "false"]


def test_a_time_budget_ends_the_sweep_keeps_its_results_and_ashas_stops(
    tmp_path: Path, local_ray: None
) -> None:
    # trials that would never end: the budget does. ASHA compares at epochs 1, 2, 4, ...;
    # the studies' first trials (never stopped) and the trials running when the budget ends
    # are the only ones the budget stops. 8 trials at once, so ASHA has rivals to compare.
    cfg = load_config(
        None,
        {
            **LONG,
            **NO_TAIL,
            "name": "budget",
            "storage": str(tmp_path),
            "models": ["mf", "neumf"],
            "grace_period": 1,
            "cpus_per_trial": 0.25,
            "time_budget": "40s",
            "search_space": {"mf": {"optimizer": {"value": "adam"}}},
        },
    )
    run_dir = run_sweep(cfg)
    table = RunDir(run_dir).results
    assert list(table["study"]) == ["mf", "neumf"]
    # both studies got their share of the budget and kept their best trial (not exported:
    # `export: false`, and no report either)
    assert (table["status"] == "ok").all(), table[["study", "status"]]
    assert "export" not in table.columns and not (run_dir / "models").exists()
    assert not (run_dir / "report.html").exists()
    assert table["test/rmse"].notna().iloc[0] and table["test/ndcg@10"].notna().iloc[1]
    trials = RunDir(run_dir).trials.sort_values("number")
    assert len(trials) < 2 * LONG["trials"]  # the budget, not the trial count, ended it
    assert (trials["epochs"] < LONG["epochs"]).all()
    ends = trials["end"].value_counts()
    assert ends.get("asha", 0) >= 1, ends  # they all read "interrupted" before
    assert ends.get("interrupted", 0) <= 8, ends  # at most the 8 running at the end
    mf = trials[trials["study"] == "mf"]
    assert list(mf["origin"]) == ["defaults"] + ["search"] * (len(mf) - 1)
    assert mf["end"].iloc[0] == "interrupted"
    for study, group in trials.groupby("study"):
        asha = (group["end"] == "asha").sum()
        assert table.set_index("study").loc[study, "trials_pruned"] == asha, study
        pruned = optuna.load_study(study_name=str(study), storage=storage(run_dir)).trials
        cut = ((group["end"] == "interrupted") & group["best"].notna()).sum()
        assert sum(t.state == TrialState.PRUNED for t in pruned) == asha + cut, study


def test_ctrl_c_stops_the_sweep_and_writes_the_table(tmp_path: Path) -> None:
    args = [
        sys.executable,
        "-m",
        "orchestrator",
        "sweep",
        "--name",
        "stopped",
        "--storage",
        str(tmp_path),
        "--models",
        "mf,neumf",
        "--baselines",
        "bias,pop",
        "--trials",
        "40",
        "--epochs",
        "100000",
        "--wandb",
        "disabled",
        "--dataset",
        DATASET,
        "--time-budget",
        "none",
        # one trial at a time: the studies take turns, mf's first trial runs first
        "--cpus-per-trial",
        "2",
        "--report",
        "false",  # the export of what finished is checked below, not the report
    ]
    driver = subprocess.Popen(
        args,
        cwd=REPO,
        start_new_session=True,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    run_dir = tmp_path / "stopped"
    try:
        end = time.time() + 120
        while not list(run_dir.rglob("result.json")) and time.time() < end:
            time.sleep(0.2)
        time.sleep(2)  # a few epochs in
        os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, _ = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, out[-4000:]  # interrupted, its table written
    assert "interrupted (SIGINT)" in out and "Token authentication" not in out
    assert not (run_dir / ".claim").exists()  # the run directory is free again
    table = pd.read_csv(run_dir / "results.csv")
    assert list(table["study"]) == ["mf", "bias", "neumf", "pop"]
    # the study Ctrl-C hit keeps its best trial so far; the other ones (bias's search among
    # them) had not started; pop, with nothing to search, is fitted to compare with
    status = table.set_index("study")["status"]
    assert status["mf"] == "ok" and table.loc[0, "export"] == "ok"
    assert (status[["neumf", "bias"]] == "interrupted").all() and status["pop"] == "ok"
    trials = RunDir(run_dir).trials
    assert list(trials["end"]) == ["interrupted"]  # stopped by Ctrl-C, not by ASHA
    assert "--resume" in out


def test_final_seeds_retrain_the_best_configuration_and_test_its_refits(
    tmp_path: Path, local_ray: None
) -> None:
    cfg = load_config(
        None,
        {
            **NO_TAIL,
            "name": "seeds",
            "storage": str(tmp_path),
            "models": ["mf", "neumf"],
            "baselines": [],
            "trials": 2,
            "epochs": 3,
            "final_seeds": 3,
            "wandb": "disabled",
            "data": {"dataset": DATASET},
            "train": {"refit": True},
        },
    )
    run_dir = run_sweep(cfg)
    table = RunDir(run_dir).results
    assert (table["status"] == "ok").all() and (table["seeds"] == 3).all()
    assert table.loc[1, "test/ndcg@10_std"] >= 0  # neumf's seeds were re-run as well
    # the 2 more seeds of both studies ran as one experiment
    assert len(list((run_dir / "final").glob("run_trial_*"))) == 4
    row = table.iloc[0]
    assert row["test/rmse_std"] > 0  # three different seeds, three different models
    # each seed's test is of its refit on train + val, the model its checkpoint holds
    full = fold_val(load_dataset(cfg.data))
    rmse = []
    for name in ("mf", "mf-seed1", "mf-seed2"):
        model, _ = load_model(run_dir / "checkpoints" / f"{name}.pt")
        assert model.spec == DataSpec.from_data(full)  # its global mean counts val
        rmse.append(evaluate(model, full, "test", cfg.train)["test/rmse"])
    assert row["test/rmse"] == pytest.approx(sum(rmse) / 3, abs=1e-9)


@pytest.mark.parametrize(
    ("data", "splits", "seeds"),
    [
        ({"dataset": "ml-100k", "folds": ["u1", "u2"]}, ["u1", "u2"], 1),
        ({"dataset": DATASET, "folds": 3}, ["kfold:1/3", "kfold:2/3", "kfold:3/3"], 2),
    ],
    ids=["ml-100k-u1-u2", "synthetic-k3"],
)
def test_folds_test_the_chosen_configurations_and_the_baselines_on_every_fold(
    tmp_path: Path, ml100k_dir: Path, data: dict, splits: list[str], seeds: int, local_ray: None
) -> None:
    cfg = load_config(
        None,
        {
            "export": False,  # the report is read below
            "name": "folds",
            "storage": str(tmp_path),
            "models": ["mf", "mf:ranking"],
            "baselines": ["bias", "pop"],
            "final_seeds": seeds,
            "wandb": "disabled",
            "data": {**data, "data_dir": str(ml100k_dir.parent)},
        },
        smoke=True,
    )
    run_dir = run_sweep(cfg)
    run = RunDir(run_dir)
    assert run.config.data.split == splits[0] and list(run.config.data.folds) == splits
    table = run.results.set_index("study")
    assert list(table.index) == ["mf", "bias", "mf-ranking", "pop"]
    assert (table["status"] == "ok").all() and (table["folds"] == len(splits)).all()
    assert list(table["seeds"]) == [seeds, 1, seeds, 1]
    for evaluation in table["evaluation"]:  # the header line says how the numbers were made
        assert f"{len(splits)} folds ({', '.join(splits)}; the search on {splits[0]})" in (
            evaluation
        )
    # one row per study and fold, each fold's own data; the table is their mean +- std
    by_fold = pd.read_parquet(run_dir / "results_by_fold.parquet")
    assert len(by_fold) == 4 * len(splits)
    for study, rows in by_fold.groupby("study", sort=False):
        assert list(rows["fold"]) == splits
        assert list(rows["seeds"]) == [table.loc[study, "seeds"]] * len(splits)
        metric = table.loc[study, "main_metric"]
        assert table.loc[study, metric] == pytest.approx(rows[metric].mean(), abs=1e-12)
        assert table.loc[study, f"{metric}_std"] == pytest.approx(rows[metric].std(), abs=1e-12)
        assert rows[metric].nunique() == len(splits)  # another fold, another test set
    # the paired tests pool every fold's test units: each rating of one fold only
    folds = load_datasets(cfg.data, splits)
    units = run.units
    assert len(units["mf"]) == len(units["bias"]) == sum(len(d.test) for d in folds)
    assert len(units["mf-ranking"]) == len(units["pop"])
    assert not math.isnan(table.loc["mf", "p_vs_baseline"])
    # the chosen configuration ran on the other folds, with every seed, as Tune trials
    finals = pd.read_parquet(run_dir / "trials.parquet")
    assert set(finals["fold"]) == {0}  # the search ran on the first fold only
    assert len(list((run_dir / "final").glob("run_trial_*"))) == 2 * (len(splits) * seeds - 1)
    for fold in range(2, len(splits) + 1):
        for seed in range(seeds):
            model, saved = load_model(run_dir / "checkpoints" / f"mf-fold{fold}-seed{seed}.pt")
            assert saved["split"] == splits[fold - 1]
            assert saved["data_fingerprint"] == folds[fold - 1].fingerprint
    assert set(run.checkpoints) == {"mf", "mf-ranking"}  # the re-runs are no studies
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    # the report shows each table's main metric on each fold
    assert page.count("on each fold:") == 2 and f"<th>{splits[-1]}</th>" in page


def test_trials_report_every_best_epoch_and_skip_the_rest(tmp_path: Path, local_ray: None) -> None:
    cfg = load_config(
        None,
        {
            **NO_TAIL,
            "name": "sparse",
            "storage": str(tmp_path),
            "models": ["mf"],
            "baselines": [],
            "trials": 1,
            "epochs": 30,
            "wandb": "disabled",
            "data": {"dataset": DATASET},
            "train": {"report_every_s": 1000, "patience": 0},
            # fast and barely regularised: it overfits after a few epochs
            "search_space": {"mf": {"lr": {"values": [0.03]}, "reg": {"values": [0.0001]}}},
        },
    )
    run_dir = run_sweep(cfg)
    history = pd.read_parquet(run_dir / "history.parquet").sort_values("epoch")
    epochs, rmse = history["epoch"].tolist(), history["val/rmse"].tolist()
    rungs = yaml.safe_load((run_dir / "sweep.yaml").read_text())["schedule"]["mf"]["rungs"]
    assert rungs == [7, 14, 28]  # a quarter of 30 epochs, then doubling
    # the first and the last epoch report, and every ASHA rung; in between, only new bests
    assert epochs[0] == 1 and epochs[-1] == 30 and len(epochs) < 30
    assert set(rungs) <= set(epochs)
    best = math.inf
    for epoch, value in zip(epochs[:-1], rmse[:-1], strict=True):
        assert value < best or epoch in rungs, (epoch, history)
        best = min(best, value)
    row = RunDir(run_dir).results.iloc[0]
    assert row["epochs"] == 30 and row["val/rmse"] == pytest.approx(min(rmse), abs=1e-6)


def test_a_sweep_whose_study_has_no_finished_trial_exits_1(
    tmp_path: Path, local_ray: None, capsys: pytest.CaptureFixture
) -> None:
    # every mf trial diverges in its first epoch (a learning rate of 1e30): the sweep ends,
    # writes its table (the bias baseline is tested), and its exit code says a study has no
    # model
    config = tmp_path / "sweep.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": ["mf"],
                "baselines": ["bias"],
                "trials": 2,
                "epochs": 3,
                "wandb": "disabled",
                "data": {"dataset": DATASET},
                "search_space": {"mf": {"lr": {"value": 1.0e30}}},
                **NO_TAIL,
            }
        )
    )
    args = ["sweep", "--config", str(config), "--name", "failed", "--storage", str(tmp_path)]
    assert main(args) == 1  # the command line's exit code, in-process on the shared Ray
    err = capsys.readouterr().err
    assert "error: no tested model for mf" in err
    status = pd.read_csv(tmp_path / "failed" / "results.csv").set_index("study")["status"]
    assert status["mf"] == "no finished trial" and status["bias"] == "ok"


def test_sigterm_stops_the_sweep_and_resume_finishes_it(tmp_path: Path) -> None:
    # Ctrl-C: test_ctrl_c_stops_the_sweep_and_writes_the_table; SIGHUP, and a second signal:
    # test_control.py
    signum = signal.SIGTERM
    # two trials of a few seconds each (no early stopping), one at a time: the signal comes
    # during the first
    args = [
        sys.executable, "-m", "orchestrator", "sweep", "--name", "stopped", "--storage",
        str(tmp_path), "--models", "mf", "--baselines", "", "--trials", "2", "--epochs",
        "600", "--set", "train.patience=0", "--wandb", "disabled", "--dataset", DATASET,
        "--time-budget", "none", "--cpus-per-trial", "2", *NO_TAIL_FLAGS,
    ]  # fmt: skip
    driver = subprocess.Popen(args, cwd=REPO, start_new_session=True, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    run_dir = tmp_path / "stopped"
    try:
        # the trial's first checkpoint (its first epoch, written by the trial itself; Tune's
        # result.json is written seconds later, in bursts): the first trial is running
        end = time.time() + 120
        while not list(run_dir.rglob("checkpoint_0*")) and time.time() < end:
            time.sleep(0.1)
        os.kill(driver.pid, signum)  # `kill`, systemd or a scheduler: the driver
        out, _ = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 128 + signum, out[-4000:]  # 143
    assert f"interrupted ({signal.Signals(signum).name})" in out
    assert "Token authentication" not in out and "Started a local Ray" not in out
    first = RunDir(run_dir).trials
    assert RunDir(run_dir).results.set_index("study")["status"]["mf"] == "ok"
    assert not (run_dir / ".claim").exists()  # the run directory is free again
    stopped = first[first["end"] == "interrupted"]
    assert len(first) == 1 and len(stopped) == 1, first[["trial_id", "end", "epochs"]]
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "sweep", "--resume", str(run_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the stopped trial went on from its checkpoint, and the search started the second
    trials = RunDir(run_dir).trials.set_index("trial_id")
    assert len(trials) == 2 and stopped["trial_id"].iloc[0] in trials.index, trials
    went_on = trials.loc[stopped["trial_id"].iloc[0]]
    assert went_on["end"] in ("epochs", "early_stopped"), trials
    assert went_on["epochs"] > stopped["epochs"].iloc[0]
    assert set(trials["end"]) <= {"epochs", "early_stopped", "asha"}, trials
    assert RunDir(run_dir).results.set_index("study")["trials_done"]["mf"] >= 1
    assert not (run_dir / ".claim").exists()


def test_two_sweeps_on_one_name_one_runs_the_other_fails_at_once(tmp_path: Path) -> None:
    args = [
        sys.executable, "-m", "orchestrator", "sweep", "--name", "twin", "--storage",
        str(tmp_path), "--models", "mf", "--baselines", "", "--trials", "1", "--epochs", "2",
        "--wandb", "disabled", "--dataset", DATASET, *NO_TAIL_FLAGS,
    ]  # fmt: skip
    twins = [subprocess.Popen(args, cwd=REPO, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(2)]  # fmt: skip
    outs = [t.communicate(timeout=240) for t in twins]
    codes = sorted(t.returncode for t in twins)
    assert codes == [0, 2], outs
    err = next(e for t, (_, e) in zip(twins, outs, strict=True) if t.returncode == 2)
    assert re.search(r"error: .*twin.*(a sweep is running in it|already holds a run)", err), err
    assert len(err.strip().splitlines()) == 1, err  # one line, before Ray started
    assert len(RunDir(tmp_path / "twin").trials) == 1  # the one that ran, whole
