"""The sweep, as its plan: each stage a function, each taking the last one's records.

    plan_sweep (resolved config, studies, schedules; bad input fails before Ray)
    -> prepare_data (once, on the driver, before Ray) -> connect, resources (cluster.py)
    -> start_run_directory (sweep.yaml, data.json)
    -> search: one Tune experiment of all studies (search.py), then the re-runs of the
       chosen configurations with more seeds and on every fold
       -> Searched (TrialRecords, learning curves, nodes)
    -> finalize (finalize.py: choose on validation, test the chosen only, baselines)
       -> StudyResults, the chosen models held in memory
    -> write_search_records (trials.*, history.parquet, optuna.journal, env.json)
    -> write_tables (results.*; the export of the chosen models; results.* with its column)
    -> tracking.summary_run (W&B) -> report (report.html)

The run directory (`<storage>/<name>` when storage is a local path, else `runs/<name>`
beside the remote experiments) holds what each stage writes, and the Tune experiment
`search/` (the `--resume` target), `final/` (with `final_seeds` or `data.folds`), `wandb/`,
`checkpoints/`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import yaml
from ray import tune

from orchestrator import results
from orchestrator.callbacks import BudgetLeft, Progress, ReportKernels, TimeBudget, wandb_callbacks
from orchestrator.cluster import connect, quiet_libraries, resources
from orchestrator.config import SweepConfig, parse_duration, to_dict
from orchestrator.data import describe, load_datasets
from orchestrator.data.files import write_text
from orchestrator.data.splits import fold_splits
from orchestrator.data.types import PreparedData
from orchestrator.engine.evaluation import check_ks
from orchestrator.final import final_runs, final_runs_per_study
from orchestrator.finalize import finalize
from orchestrator.journal import write_journal
from orchestrator.models.base import DataSpec
from orchestrator.models.registry import get_model_class
from orchestrator.plan import (
    SEARCH,
    check_config,
    check_tune_state,
    experiment_root,
    load_run_config,
    resolved,
    run_directory,
    schedules,
    study_points,
    sweep_studies,
)
from orchestrator.provenance import environment
from orchestrator.publish import export_results
from orchestrator.records import Schedule, Searched, Study, StudyResult, choose
from orchestrator.report import write_report
from orchestrator.rundir import CLAIM, RunDir, check_run_name, claimed
from orchestrator.search import (
    SearchSpace,
    StudyASHA,
    StudySearch,
    experiment,
    fit_experiment,
    quiet_optuna,
)
from orchestrator.signals import Interrupted, signals_stop_studies
from orchestrator.tracking import summary_run
from orchestrator.trainable import run_trial
from orchestrator.trials import configured, epoch_history, trial_records


def run_sweep(cfg: SweepConfig | None, resume: str | Path | None = None) -> Path:
    """Run (or continue: `cfg` None, the run directory `resume`) a sweep; returns the run
    directory holding the results. After Ctrl-C, SIGTERM or SIGHUP it writes the table,
    exports and report of what finished, then raises `signals.Interrupted` (a
    KeyboardInterrupt naming the signal)."""
    cfg, studies, plan = plan_sweep(cfg, resume)
    with claimed(run_directory(cfg)):  # a second sweep on this run directory fails now
        return _run(cfg, studies, plan)


def _run(cfg: SweepConfig, studies: list[Study], plan: dict[str, Schedule]) -> Path:
    start = time.time()
    budget = parse_duration(cfg.time_budget)
    deadline = None if budget is None else start + budget
    quiet_libraries()
    quiet_optuna()
    fixed = sweep_studies(cfg)[1]  # the baselines fitted once (nothing to search)
    folds = prepare_data(cfg, [*studies, *fixed])  # bad data or sizes fail before Ray starts
    connect(cfg)
    request, slots = resources(cfg)
    print(
        f"cluster: {ray.cluster_resources()}; per trial {request}; up to {slots} at once",
        flush=True,
    )
    data = folds[0]  # the search's
    run_dir = start_run_directory(cfg, data)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, data=data, folds=tuple(folds[1:])), request
    )
    sweep = Sweep(cfg, studies, plan, run_dir, start, deadline)
    with signals_stop_studies() as stop:
        searched = search(sweep, trainable, slots, stop)
        studied = finalize([*studies, *fixed], searched, folds, cfg, run_dir)
        write_search_records(sweep, searched)
        frame = write_tables(run_dir, studied, data, fold_splits(cfg.data.folds), cfg.export)
        if cfg.wandb != "disabled":
            error = summary_run(
                run_dir,
                cfg.wandb,
                cfg.wandb_project,
                cfg.name,
                {"results": frame, "trials": searched.trials_frame},
                run_dir / "models" if (run_dir / "models").is_dir() else None,
            )
            if error:
                print(error, file=sys.stderr, flush=True)
        if cfg.report:
            report(run_dir, studied, data)
        print(f"run directory: {run_dir}", flush=True)
        if stop.is_set():
            print(
                f"interrupted: the table holds what finished; continue with: "
                f"python -m orchestrator sweep --resume {run_dir}",
                flush=True,
            )
            raise Interrupted(stop.signum)  # everything is written; the caller learns why
    return run_dir


def plan_sweep(
    cfg: SweepConfig | None, resume: str | Path | None
) -> tuple[SweepConfig, list[Study], dict[str, Schedule]]:
    """The resolved config (a new run's, or the one `--resume` continues), its studies and
    their schedules; everything that can fail before Ray starts fails here."""
    if resume is not None:
        cfg = load_run_config(resume)
        if not tune.Tuner.can_restore(f"{experiment_root(cfg)}/{SEARCH}"):
            raise ValueError(
                f"--resume {resume}: no experiment to continue in "
                f"{experiment_root(cfg)}/{SEARCH}; start a new sweep instead"
            )
        check_tune_state(f"{experiment_root(cfg)}/{SEARCH}")
    elif cfg is None:
        raise TypeError("plan_sweep: a config to run, or a run directory to resume")
    elif not cfg.name:
        cfg = dataclasses.replace(cfg, name=time.strftime("sweep-%Y%m%d-%H%M%S"))
    else:
        check_run_name(cfg.name)
        run_dir = run_directory(cfg)
        held = sorted(p.name for p in run_dir.glob("*") if not p.name.startswith(CLAIM))
        if held or tune.Tuner.can_restore(f"{experiment_root(cfg)}/{SEARCH}"):
            raise ValueError(
                f"--name {cfg.name}: {run_dir} already holds a run ({', '.join(held[:4])}"
                f"{', ...' if len(held) > 4 else ''}); continue it with --resume {run_dir}, "
                "or choose another --name"
            )
    studies = check_config(cfg)
    for line in sweep_studies(cfg)[2]:
        print(line, flush=True)
    cfg = resolved(cfg)
    for study in studies:  # an override that excludes a recipe says so (space.start_points)
        dropped = study_points(study, cfg.search_space.get(study.model, {}))[1]
        for line in dropped["outside"] + dropped["same"]:
            print(f"search: {study.name}: {line}", flush=True)
    if cfg.sampler["name"] == "tpe" and cfg.trials <= cfg.startup_trials:
        print(
            f"search: {cfg.trials} trials per study, within TPE's {cfg.startup_trials} "
            "random start-up trials: after the defaults trial this is a random search",
            flush=True,
        )
    return cfg, studies, schedules(cfg, studies)


def prepare_data(cfg: SweepConfig, studies: list[Study]) -> list[PreparedData]:
    """The sweep's dataset on its split, or on each fold of `data.folds` (the first is the
    search's), prepared once on the driver (trials read them from the object store)."""
    folds = load_datasets(cfg.data, fold_splits(cfg.data.folds) or (cfg.data.split,))
    search = ", the search's fold" if len(folds) > 1 else ""
    for data in folds:
        if any(s.task != "rating" for s in studies):
            check_ks(tuple(cfg.train.ks), data)
        for study in studies:  # a model too big for the data fails now
            get_model_class(study.model).check_data(DataSpec.from_data(data))
        print(
            f"data: {data.name} ({data.n_users} users, {data.n_items} items, "
            f"{len(data.train)}/{len(data.val)}/{len(data.test)} train/val/test, "
            f"split {data.split_name}{search if data is folds[0] else ''})",
            flush=True,
        )
    return folds


def start_run_directory(cfg: SweepConfig, data: PreparedData) -> Path:
    """The run directory with `sweep.yaml` (the resolved config) and `data.json`."""
    run_dir = run_directory(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "sweep.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    write_text(
        run_dir / "data.json",
        json.dumps({"fingerprint": data.fingerprint, **describe(data)}, indent=2, default=str),
    )
    return run_dir


@dataclasses.dataclass(frozen=True)
class Sweep:
    """What the stages of one sweep share: the resolved config, its studies and their
    schedules, the run directory, the start and the deadline (the time budget's end)."""

    cfg: SweepConfig
    studies: list[Study]
    plan: dict[str, Schedule]
    run_dir: Path
    start: float
    deadline: float | None


def search(sweep: Sweep, trainable: Any, slots: int, stop: threading.Event) -> Searched:
    """The Tune experiment of all studies (or its continuation), then the re-runs of the
    chosen configurations with more seeds and on the other folds."""
    cfg, studies, plan, deadline = sweep.cfg, sweep.studies, sweep.plan, sweep.deadline
    path = f"{experiment_root(cfg)}/{SEARCH}"
    if tune.Tuner.can_restore(path):
        print(f"search: resuming from {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        callbacks = [
            Progress(studies, cfg.trials, sweep.start),
            *([ReportKernels()] if cfg.report else []),
            *wandb_callbacks(cfg, sweep.run_dir),
        ]
        left = None if deadline is None else max(1.0, deadline - time.time())
        tuner = experiment(
            trainable,
            SEARCH,
            cfg,
            slots,
            StudySearch(studies, cfg, plan),
            cfg.trials * len(studies),
            callbacks,
            stopper=None if left is None else TimeBudget(left),
            scheduler=StudyASHA(studies, cfg, plan),
        )
    BudgetLeft.seconds = None  # a restored experiment's budget sets it at its first step
    grid = [] if stop.is_set() else fit_experiment(tuner, path, trainable, cfg, deadline, stop)
    grid = configured(grid)
    out_of_time = BudgetLeft.spent()
    trials = trial_records(grid, stop.is_set() or out_of_time)
    curves = [c for res in grid if (c := epoch_history(res)) is not None]
    # the chosen configurations again with more seeds and on every fold; a baseline's is
    # fitted on each fold when it is tested (finalize), as its fit is all it does
    chosen = [
        t
        for s in studies
        if not s.baseline and (t := choose([t for t in trials if t.study == s.name], s))
    ]
    by_name = {s.name: s for s in studies}
    final_trials = []
    if final_runs_per_study(cfg) and chosen and not stop.is_set():
        BudgetLeft.seconds = None  # the budget is the search's
        progress = Progress(
            [by_name[t.study] for t in chosen], final_runs_per_study(cfg), sweep.start
        )
        final_trials = final_runs(chosen, studies, plan, cfg, slots, trainable, [progress])
    nodes = {
        (r.metrics.get("hostname"), r.metrics.get("node_ip"), r.metrics.get("device"))
        for r in grid
        if r.metrics
    }
    return Searched(
        trials,
        pd.DataFrame([t.row(by_name[t.study]) for t in trials]),
        pd.concat(curves, ignore_index=True) if curves else None,
        final_trials,
        "interrupted" if stop.is_set() else "time budget spent" if out_of_time else "no trial ran",
        [{"host": h, "ip": ip, "device": d} for h, ip, d in sorted(nodes, key=str)],
    )


def write_search_records(sweep: Sweep, searched: Searched) -> None:
    """`trials.*` and `history.parquet`, `optuna.journal` and `env.json`."""
    run_dir = sweep.run_dir
    results.write_trials(run_dir, searched.trials_frame, searched.curves)
    write_journal(
        run_dir,
        sweep.studies,
        searched.trials,
        searched.curves,
        lambda s: SearchSpace.of(s, sweep.cfg, sweep.plan),
    )
    write_text(run_dir / "env.json", json.dumps(environment(searched.nodes), indent=2))


def write_tables(
    run_dir: Path,
    studied: list[StudyResult],
    data: PreparedData,
    folds: tuple[str, ...] = (),
    export: bool = True,
) -> pd.DataFrame:
    """Exports each study's chosen model (unless not `export`), then writes the results
    tables once, with the export's outcome (a failed export is a cell, never a lost table),
    and with `folds` (the splits of `data.folds`) the rows per fold; prints them. Returns
    the table."""
    results.write_units(run_dir, studied)
    frame = results.build(studied)
    outcome = export_results(run_dir, studied, frame, data) if export else {}
    if outcome:
        failed = {k: v for k, v in outcome.items() if v != "ok"}
        if failed:
            print(f"ONNX export FAILED for {failed}", file=sys.stderr, flush=True)
        frame = results.with_column(frame, "export", outcome)
    results.write(run_dir, frame, results.by_fold(studied, folds) if folds else None)
    print(results.markdown(frame), flush=True)
    return frame


def report(run_dir: Path, studied: list[StudyResult], data: PreparedData) -> None:
    """`report.html` from the data and chosen models in memory; a failure is one line."""
    models = {
        r.study.name: r.runs[0].model for r in studied if r.runs and r.runs[0].model is not None
    }
    try:
        write_report(RunDir(run_dir, data=data, models=models))
    except Exception as e:  # noqa: BLE001 - a plotting bug must not cost a night's table
        print(
            f"report: FAILED ({type(e).__name__}: {e}); the table and models are written; "
            f"retry with: python -m orchestrator report {run_dir}",
            file=sys.stderr,
        )
