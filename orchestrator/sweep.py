"""The sweep: one study per model, Optuna TPE + ASHA per study, resumable, then the table.

    SweepConfig (resolved: TPE start-up, ASHA schedule) -> prepared data (once, on the
    driver) -> one Tune experiment of all studies:
        Tuner(with_resources(with_parameters(run_trial, data)),
              StudySearch (an OptunaSearch(TPE) per study), StudyASHA (an ASHA per study))
    -> TrialRecords -> optional re-runs of the chosen configurations with more seeds
    -> finalize.py (choose on validation, test the chosen only, baselines) -> StudyResults
    -> results.py (a table per evaluation, with paired tests) -> export -> report

The run directory (`<storage>/<name>` when storage is a local path, else `runs/<name>`
beside the remote experiments) holds `sweep.yaml`, `data.json`, the Tune experiment
`search/` (the `--resume` target), `seeds/` (with `final_seeds`), `wandb/`,
`trials.parquet`, `checkpoints/`, and `results.*`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import pandas as pd
import ray
import yaml
from ray import tune

from data import describe, load_dataset
from data.files import write_text
from orchestrator import results
from orchestrator.callbacks import Progress, ReportKernels, wandb_callbacks
from orchestrator.cluster import connect, quiet_libraries, resources
from orchestrator.config import SweepConfig, parse_duration, to_dict
from orchestrator.evaluation import check_ks
from orchestrator.finalize import choose, finalize
from orchestrator.journal import write_journal
from orchestrator.plan import (
    SEARCH,
    check_config,
    experiment_root,
    load_run_config,
    resolved,
    run_directory,
    schedules,
)
from orchestrator.provenance import environment
from orchestrator.publish import export_results
from orchestrator.report import write_report
from orchestrator.search import (
    SearchSpace,
    StudyASHA,
    StudySearch,
    ctrl_c_stops_studies,
    epoch_history,
    experiment,
    fit_experiment,
    seed_runs,
    trial_records,
)
from orchestrator.tracking import summary_run
from orchestrator.trainable import run_trial


def run_sweep(cfg: SweepConfig, resume: str | Path | None = None) -> Path:
    """Run (or continue) a sweep; returns the run directory holding the results. After a
    Ctrl-C it writes the table, exports and report of what finished, then raises
    KeyboardInterrupt.

    resolve config -> connect -> prepare data -> search -> finalize (choose, test, seeds,
    baselines) -> tables -> export -> report.
    """
    if resume is not None:
        cfg = load_run_config(resume)
        if not tune.Tuner.can_restore(f"{experiment_root(cfg)}/{SEARCH}"):
            raise ValueError(f"--resume {resume}: no experiment to continue in "
                             f"{experiment_root(cfg)}/{SEARCH}; start a new sweep instead")
    elif not cfg.name:
        cfg = dataclasses.replace(cfg, name=time.strftime("sweep-%Y%m%d-%H%M%S"))
    elif (run_directory(cfg) / "sweep.yaml").exists() or \
            tune.Tuner.can_restore(f"{experiment_root(cfg)}/{SEARCH}"):
        raise ValueError(f"--name {cfg.name}: {run_directory(cfg)} already holds a sweep; "
                         f"continue it with --resume {run_directory(cfg)}, or choose another "
                         "--name")
    studies = check_config(cfg)
    cfg = resolved(cfg)
    plan = schedules(cfg, studies)
    if cfg.trials <= cfg.startup_trials:
        print(f"search: {cfg.trials} trials per study, within TPE's {cfg.startup_trials} "
              "random start-up trials: after the defaults trial this is a random search",
              flush=True)
    start = time.time()
    budget = parse_duration(cfg.time_budget)
    deadline = None if budget is None else start + budget

    quiet_libraries()
    connect(cfg)
    request, slots = resources(cfg)
    print(f"cluster: {ray.cluster_resources()}; per trial {request}; up to {slots} at once",
          flush=True)
    data = load_dataset(cfg.data)
    if any(s.task != "rating" for s in studies):
        check_ks(tuple(cfg.train.ks), data)
    print(f"data: {data.name} ({data.n_users} users, {data.n_items} items, "
          f"{len(data.train)}/{len(data.val)}/{len(data.test)} train/val/test, "
          f"split {data.split_name})", flush=True)
    run_dir = run_directory(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "sweep.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    write_text(run_dir / "data.json", json.dumps(
        {"fingerprint": data.fingerprint, **describe(data)}, indent=2, default=str))

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, data=data, train_cfg=cfg.train), request)

    with ctrl_c_stops_studies() as stop:
        path = f"{experiment_root(cfg)}/{SEARCH}"
        if tune.Tuner.can_restore(path):
            print(f"search: resuming from {path}", flush=True)
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
        else:
            callbacks = [Progress(studies, cfg.trials, start, deadline), ReportKernels(),
                         *wandb_callbacks(cfg, run_dir)]
            left = None if deadline is None else max(1.0, deadline - time.time())
            tuner = experiment(trainable, SEARCH, cfg, slots, StudySearch(studies, cfg, plan),
                               cfg.trials * len(studies), callbacks,
                               scheduler=StudyASHA(studies, cfg, plan), time_budget_s=left)
        grid = [] if stop.is_set() else fit_experiment(tuner, path, trainable, cfg, deadline, stop)
        out_of_time = deadline is not None and time.time() >= deadline
        trials = trial_records(grid, plan, stop.is_set() or out_of_time)
        histories = [epoch_history(res) for res in grid if res.metrics_dataframe is not None]
        chosen = {s.name: choose([t for t in trials if t.study == s.name], s) for s in studies}
        found = [t for t in chosen.values() if t is not None]
        seed_trials = seed_runs(found, studies, plan, cfg, slots, trainable) \
            if cfg.final_seeds > 1 and found and not stop.is_set() else []
        why_empty = "interrupted" if stop.is_set() else \
            "time budget spent" if out_of_time else "no trial ran"
        studied = finalize(studies, trials, seed_trials, cfg.baselines, data, cfg.train,
                           cfg.seed, run_dir, why_empty)
        by_name = {s.name: s for s in studies}
        trial_rows = [t.row(by_name[t.study]) for t in trials]
        results.write_trials(run_dir, trial_rows, histories)
        nodes = {(r.metrics.get("hostname"), r.metrics.get("node_ip"), r.metrics.get("device"))
                 for r in grid if r.metrics}
        write_text(run_dir / "env.json", json.dumps(environment(
            [{"host": h, "ip": ip, "device": d} for h, ip, d in sorted(nodes, key=str)]),
            indent=2))
        write_journal(run_dir, studies, trials,
                      pd.concat(histories, ignore_index=True) if histories else None,
                      lambda s: SearchSpace(s, cfg.search_space.get(s.model, {}),
                                            plan[s.name], cfg.seed))
        frame = results.table(studied)
        results.write(run_dir, frame)  # the night's numbers are on disk before the export
        results.write_units(run_dir, studied)
        outcome = export_results(run_dir, studied, frame, data)
        if outcome:
            failed = {k: v for k, v in outcome.items() if v != "ok"}
            if failed:
                print(f"ONNX export FAILED for {failed}", file=sys.stderr, flush=True)
            frame = results.table(studied)  # now with the export column
            results.write(run_dir, frame)
        print(results.markdown(frame), flush=True)
        if cfg.wandb != "disabled":
            error = summary_run(run_dir, cfg.wandb, cfg.wandb_project, cfg.name,
                                {"results": frame, "trials": pd.DataFrame(trial_rows)},
                                run_dir / "models" if (run_dir / "models").is_dir() else None)
            if error:
                print(error, file=sys.stderr, flush=True)
        chosen_models = {r.study.name: r.runs[0].model for r in studied
                         if r.runs and r.runs[0].model is not None}
        try:
            write_report(run_dir, data=data, models=chosen_models)
        except Exception as e:  # noqa: BLE001 - a plotting bug must not cost a night's table
            print(f"report: FAILED ({type(e).__name__}: {e}); the table and models are written; "
                  f"retry with: python -m orchestrator report {run_dir}", file=sys.stderr)
        print(f"run directory: {run_dir}", flush=True)
        if stop.is_set():
            print(f"interrupted: the table holds what finished; continue with: "
                  f"python -m orchestrator sweep --resume {run_dir}", flush=True)
            raise KeyboardInterrupt  # everything is written; the caller learns it was cut
    return run_dir

