"""After the search: choose each study's trial on validation, test it (and its re-runs with
more seeds and on the other folds), evaluate the baselines (on every fold), and say what
each table compares.

    TrialRecords of each study -> choose (best validation value, with a checkpoint)
      -> test the chosen state (or its refit), keeping the per-unit test values
      -> StudyResult per study; StudyResult per baseline, in the table of its task

Test metrics are computed here, for the chosen trials only: the search never sees them.
No Ray here: trial checkpoints are read through `as_directory()`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from orchestrator.config import SweepConfig, TrainConfig
from orchestrator.data.types import PreparedData
from orchestrator.engine.runtime import seed_everything
from orchestrator.engine.train import fit, load_state, val_and_test
from orchestrator.models.base import DataSpec
from orchestrator.models.registry import create_model, save_model
from orchestrator.plan import has_space
from orchestrator.records import ScoredRun, Searched, Study, StudyResult, TrialRecord, choose

TIE_WORDS = {
    "expected": "counted at their expected value (random tie-breaking)",
    "pessimistic": "counted ahead of the target (pessimistic)",
    "optimistic": "counted behind the target (optimistic)",
}


def main_metric(study: Study) -> str:
    """The test metric a table compares: the test side of the study's validation metric."""
    return "test/" + study.metric.split("/", 1)[1]


def evaluation_name(
    table: str, folds: list[PreparedData], cfg: TrainConfig, metric: str, seeds: int = 1
) -> str:
    """One line saying what every row of a table was scored on, and how its numbers were
    made: on one split, or as the mean ± std over folds (of each fold's seed mean)."""
    data = folds[0]
    if len(folds) == 1:
        where = f"{data.name}, split {data.split_name}"
    else:
        where = (
            f"{data.name}, {len(folds)} folds ({', '.join(d.split_name for d in folds)}; the "
            f"search on {data.split_name}): mean ± std over folds of each fold's "
            f"{'mean over ' + str(seeds) + ' seeds' if seeds > 1 else 'run'}; paired tests "
            "over the test units of all folds, pooled (each a user or rating of one fold)"
        )
    fitted = (
        "tested after a refit on train + val (the chosen epochs)"
        if cfg.refit
        else "tested as fitted on train (no refit)"
    )
    if table == "rating":
        n = sum(len(d.test) for d in folds)
        return (
            f"{where}; {n} test ratings; RMSE and MAE of predictions clipped "
            f"to {data.rating_range[0]:g}-{data.rating_range[1]:g}; {fitted}; main metric {metric}"
        )
    if cfg.protocol == "full":
        protocol = (
            f"full ranking of all {data.n_items} items, the user's train and val items masked"
        )
    else:
        n = 0 if data.test_negatives is None else int((data.test_negatives >= 0).sum(1).max())
        protocol = f"sampled: each test item among up to {n} fixed negatives"
    ks = ",".join(map(str, cfg.ks))
    ties = TIE_WORDS[cfg.ties]
    return f"{where}; {protocol}; K={ks}; ties {ties}; {fitted}; main metric {metric}"


def test_trial(
    record: TrialRecord,
    study: Study,
    data: PreparedData,
    cfg: TrainConfig,
    out: Path,
    keep_model: bool = False,
) -> ScoredRun:
    """Load a trial's best state, evaluate val and test (of a refit with `cfg.refit`), and
    save the model tested to `out` (a `.pt` checkpoint); `keep_model`: the run holds the
    model for the export."""
    with record.checkpoint.as_directory() as directory:
        state = load_state(directory)
    model = create_model(study.model, DataSpec.from_data(data), study.task, **record.hparams)
    model.load_state_dict(state["best_state"])
    tcfg = dataclasses.replace(cfg, seed=record.seed, metric=study.metric)
    scores, model, units = val_and_test(model, data, tcfg, state["best_epoch"])
    saved = {
        "data_fingerprint": data.fingerprint,
        "trial_path": record.path,
        "study": study.name,
        "metric": study.metric,
        "split": data.split_name,
    }
    save_model(model, out, **saved)
    return ScoredRun(
        record.seed,
        _metrics_only(scores),
        units[main_metric(study)],
        model.cpu().eval() if keep_model else None,  # export and report run on CPU
        {"checkpoint": str(out), **saved},
        record.fold,
    )


def study_result(
    study: Study,
    trials: list[TrialRecord],
    final_trials: list[TrialRecord],
    folds: list[PreparedData],
    cfg: TrainConfig,
    run_dir: Path,
    why_empty: str,
) -> StudyResult:
    """The study's chosen trial tested, with the re-runs of its configuration with more
    seeds and on the other folds (`final_trials`), each on its fold's test split;
    `why_empty` is the status when the study ran no trial."""
    result = StudyResult(
        study,
        main_metric=main_metric(study),
        trials_done=sum(t.finished for t in trials),
        trials_pruned=sum(t.end == "asha" for t in trials),
        trials_failed=sum(t.end in ("error", "diverged") for t in trials),
    )
    if not trials:
        result.status = why_empty
        return result
    result.chosen = choose(trials, study)
    if result.chosen is None:
        result.status = "no finished trial"
        return result
    if study.baseline:  # a closed-form fit: fitted again, on every fold
        result.runs = fitted_runs(study, result.chosen.hparams, folds, cfg, result.chosen.seed)
        return result
    folder = run_dir / "checkpoints"
    result.runs = [
        test_trial(
            result.chosen, study, folds[0], cfg, folder / f"{study.name}.pt", keep_model=True
        )
    ]
    result.runs += [
        test_trial(
            t,
            study,
            folds[t.fold],
            cfg,
            folder / f"{study.name}{f'-fold{t.fold + 1}' if t.fold else ''}-seed{t.seed}.pt",
        )
        for t in final_trials
        if t.checkpoint is not None
    ]
    return result


def fitted_runs(
    study: Study, hparams: dict, folds: list[PreparedData], cfg: TrainConfig, seed: int
) -> list[ScoredRun]:
    """A baseline's configuration fitted on train (or with `cfg.refit` train + val) and
    tested, on every fold, in the driver: a baseline learns nothing, so a fit costs a count,
    a solve or a few least-squares sweeps."""
    tcfg = dataclasses.replace(cfg, seed=seed, metric=study.metric)
    runs = []
    for fold, data in enumerate(folds):
        model = create_model(study.model, DataSpec.from_data(data), study.task, **hparams)
        seed_everything(seed)
        fit(model, data, tcfg)
        scores, model, units = val_and_test(model, data, tcfg)
        runs.append(ScoredRun(seed, _metrics_only(scores), units[main_metric(study)], fold=fold))
    return runs


def finalize(
    studies: list[Study],
    searched: Searched,
    folds: list[PreparedData],
    sweep_cfg: SweepConfig,
    run_dir: Path,
) -> list[StudyResult]:
    """Every study's result, each with its table's evaluation: a searched study's chosen
    trial (a baseline's too), or a baseline with nothing to search fitted at its defaults.
    `folds`: the data of each fold (the search's first), or the one split's."""
    cfg = sweep_cfg.train
    out = []
    for s in studies:
        if s.baseline and not has_space(s):  # nothing to search (`pop`): fitted once
            runs = fitted_runs(s, {}, folds, cfg, sweep_cfg.seed)
            out.append(StudyResult(s, main_metric=main_metric(s), trials_done=1, runs=runs))
            continue
        trials = [t for t in searched.trials if t.study == s.name]
        final = [t for t in searched.final_trials if t.study == s.name]
        out.append(study_result(s, trials, final, folds, cfg, run_dir, searched.why_empty))
    for result in out:
        result.evaluation = evaluation_name(
            result.study.table, folds, cfg, result.main_metric, max(1, sweep_cfg.final_seeds)
        )
    return out


def _metrics_only(m: dict[str, float]) -> dict[str, float]:
    return {
        k: v for k, v in m.items() if k.startswith(("val/", "test/")) and not k.endswith("_per_s")
    }
