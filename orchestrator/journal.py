"""A sweep's trials in Optuna's own storage: one Optuna study per study of the sweep, in
`optuna.journal` of the run directory (a `JournalStorage` file).

`optuna-dashboard runs/<name>/optuna.journal` opens the sweep, and a notebook reads it with
`optuna.load_study(study_name="mf", storage=journal.storage(run_dir))`. Each trial holds
its hyperparameters with their distributions, its validation value per reported epoch, its
final value (the best epoch's, what the sweep chooses by) and its state: complete, pruned
(stopped by ASHA, Ctrl-C or the time budget) or failed (diverged, raised, never ran), as
the search told Optuna (`search.StudySearch`); its Tune id, origin (defaults, a recipe or
the search), end and message are user attributes.

The file is written whole after the search, from the `TrialRecord`s and learning curves,
into a temporary file renamed into place, so `--resume` rewrites it with every trial once.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from orchestrator.records import Study, TrialRecord

JOURNAL = "optuna.journal"


def storage(run_dir: str | Path) -> JournalStorage:
    """The run's Optuna storage (`optuna.load_study(..., storage=storage(run_dir))`)."""
    path = Path(run_dir) / JOURNAL
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (a sweep writes it after its search)")
    return JournalStorage(JournalFileBackend(str(path)))


def write_journal(
    run_dir: Path,
    studies: list[Study],
    trials: list[TrialRecord],
    curves: pd.DataFrame | None,
    space: Callable[[Study], Callable[[optuna.trial.Trial], object]],
) -> Path:
    """Write `optuna.journal` from the search's trials; returns its path.

    Args:
        run_dir: the run directory.
        studies: the sweep's studies.
        trials: every trial of the search.
        curves: the learning curves (`trial_id`, `epoch`, metric columns), or None.
        space: study -> its define-by-run space; replayed on each trial with the trial's
            hyperparameters enqueued, so Optuna records the same distributions the search
            drew from.
    """
    fd, temp = tempfile.mkstemp(dir=run_dir, prefix=f".{JOURNAL}.")
    os.close(fd)
    try:
        target = JournalStorage(JournalFileBackend(temp))
        for study in studies:
            _write_study(
                target, study, [t for t in trials if t.study == study.name], curves, space(study)
            )
        os.replace(temp, run_dir / JOURNAL)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return run_dir / JOURNAL


def _write_study(
    target: JournalStorage,
    study: Study,
    trials: list[TrialRecord],
    curves: pd.DataFrame | None,
    space: Callable[[optuna.trial.Trial], object],
) -> None:
    record = optuna.create_study(
        storage=target,
        study_name=study.name,
        sampler=optuna.samplers.RandomSampler(seed=0),
        direction="minimize" if study.mode == "min" else "maximize",
    )
    record.set_user_attr("metric", study.metric)
    record.set_user_attr("model", study.model)
    record.set_user_attr("task", study.task)
    for t in sorted(trials, key=lambda t: t.number):
        with warnings.catch_warnings():  # constants (epochs) are enqueued but not suggested
            warnings.simplefilter("ignore")
            record.enqueue_trial(t.hparams)
            trial = record.ask()
            space(trial)
        if curves is not None and study.metric in curves:
            rows = curves[(curves["trial_id"] == t.trial_id) & curves[study.metric].notna()]
            # a trial restarted from its checkpoint reports its epochs since then again
            rows = rows.drop_duplicates("epoch", keep="last")
            for epoch, value in zip(rows["epoch"], rows[study.metric], strict=True):
                trial.report(float(value), int(epoch))
        for key in ("trial_id", "origin", "end", "message", "epochs", "seed"):
            trial.set_user_attr(key, getattr(t, key))
        if t.finished and t.best is not None:
            record.tell(trial, t.best)
        elif t.end in ("asha", "interrupted") and t.best is not None:
            record.tell(trial, state=TrialState.PRUNED)
        else:  # diverged, raised, or never reported a value
            record.tell(trial, state=TrialState.FAIL)
