"""The typed records a sweep's stages hand each other: studies, trials, tested models.

    Study (from the config) -> TrialSpec (who a Tune trial is, in its config) ->
    TrialRecord (one per Tune trial, built once from Tune's results), gathered in Searched
    (what the search left) -> StudyResult (the chosen trial of a study, or a baseline,
    tested)

No Ray and no torch here: a notebook can build and read these without a cluster.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.config import TrainConfig, from_dict, to_dict

if TYPE_CHECKING:
    import pandas as pd

# How a trial ended (the trials table's `end` column):
#   epochs        ran all its epochs
#   early_stopped stopped by the loop's patience (no validation improvement)
#   asha          stopped by ASHA at one of its rungs
#   interrupted   stopped with the whole sweep (Ctrl-C, the time budget)
#   diverged      non-finite loss or validation metric
#   error         raised
#   pending       never reported
ENDS = ("epochs", "early_stopped", "asha", "interrupted", "diverged", "error", "pending")
FINISHED = ("epochs", "early_stopped")


@dataclass(frozen=True)
class Study:
    """One search: a model on one task, optimising one validation metric.

    Args:
        name: the study's name (`mf`, `mf-ranking`).
        model: the registered model.
        task: rating, ranking or sequential.
        metric: the validation metric it optimises (`val/rmse`).
        mode: "min" or "max".
        baseline: a baseline's study (`baselines:`): its trials are closed-form fits (no
            epochs, no checkpoints), and its chosen configuration is fitted again to be
            tested; it optimises its table's validation metric.
    """

    name: str
    model: str
    task: str
    metric: str
    mode: str
    baseline: bool = False

    @property
    def table(self) -> str:
        """The results table it belongs to: ranking and sequential models rank the same
        held-out items, so they share one."""
        return "rating" if self.task == "rating" else "ranking"


@dataclass(frozen=True)
class Schedule:
    """A study's epoch budget and ASHA's rungs (the epochs at which ASHA compares trials,
    every one of which a trial reports).

    Example:
        >>> Schedule.auto(20, 0, 2)
        Schedule(max_epochs=20, grace_period=5, rungs=(5, 10, 20))
    """

    max_epochs: int
    grace_period: int
    rungs: tuple[int, ...]

    @classmethod
    def auto(cls, max_epochs: int, grace_period: int, reduction_factor: int) -> Schedule:
        """`grace_period` 0 is a quarter of `max_epochs` (at least 1); the rungs are
        `grace * rf**k` up to `max_epochs`, as ASHA places its milestones."""
        grace = min(grace_period or max(1, max_epochs // 4), max_epochs)
        rungs, rung = [], grace
        while rung <= max_epochs:
            rungs.append(rung)
            rung *= reduction_factor
        return cls(max_epochs, grace, tuple(rungs))


# The key of a trial's spec in its Tune config, beside the hyperparameters (no
# hyperparameter can be called so: they are Python identifiers)
TRIAL = "@trial"


@dataclass(frozen=True)
class TrialSpec:
    """Who a trial is: its study (model, task), its place in the study (`number`, 0: the
    model's defaults), where its hyperparameters come from (`origin`: defaults,
    recipe:<name> or search), the epochs it must report (ASHA's `rungs`), its training
    settings (the sweep's, with the trial's seed and its study's validation metric) and
    the fold it trains on (`fold`: an index into the sweep's `data.folds`; 0, the search's
    split, without folds).

    Tune's config holds it as a plain dict under `TRIAL` (Tune's files and trial names
    show it): `config` writes it beside the hyperparameters, `split` reads both back.
    """

    study: str
    model: str
    task: str
    number: int
    origin: str
    rungs: tuple[int, ...]
    train: TrainConfig
    fold: int = 0

    @classmethod
    def of(
        cls,
        study: Study,
        schedule: Schedule,
        train: TrainConfig,
        seed: int,
        number: int,
        origin: str,
        fold: int = 0,
    ) -> TrialSpec:
        return cls(
            study.name,
            study.model,
            study.task,
            number,
            origin,
            schedule.rungs,
            dataclasses.replace(train, seed=seed, metric=study.metric),
            fold,
        )

    def config(self, hparams: dict[str, Any]) -> dict[str, Any]:
        """A Tune config: the hyperparameters and this spec."""
        return {**hparams, TRIAL: {**to_dict(self), "rungs": list(self.rungs)}}

    @classmethod
    def split(cls, config: dict[str, Any]) -> tuple[TrialSpec, dict[str, Any]]:
        """(spec, hyperparameters) of a trial's Tune config."""
        raw = dict(config[TRIAL])
        train = from_dict(TrainConfig, raw.pop("train"), f"{TRIAL}.train.")
        spec = cls(**{**raw, "rungs": tuple(raw["rungs"]), "train": train})
        return spec, {k: v for k, v in config.items() if k != TRIAL}


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a study, as the search left it.

    Args:
        study: its study's name.
        trial_id: Tune's trial id (also its W&B run id).
        number: its place in the study's order of suggestion (0: the defaults trial).
        end: how it ended, one of `ENDS`.
        message: why (one line), when there is something to say.
        best: its best validation value of the study's metric (None: never reported one).
        best_epoch: the epoch of that value.
        epochs: epochs it trained.
        time_s: its wall-clock training time.
        hparams: the hyperparameters the searcher chose (no metadata mixed in).
        seed: its training seed.
        checkpoint: where its last checkpoint is (anything with `as_directory()`, e.g. a
            `ray.tune.Checkpoint`), or None.
        path: its Tune trial folder.
        node: the Ray node id it last reported from (a trial restarted after a lost node
            reports the new one).
        origin: where its configuration came from: `defaults`, `recipe:<name>` (a
            published recipe of the model) or `search` (the sampler).
        fold: the fold it trained on (an index into `data.folds`; 0 in the search).
    """

    study: str
    trial_id: str
    number: int
    end: str
    message: str
    best: float | None
    best_epoch: int
    epochs: int
    time_s: float
    hparams: dict[str, Any]
    seed: int
    checkpoint: Any = None
    path: str = ""
    node: str = ""
    origin: str = ""
    fold: int = 0

    @property
    def finished(self) -> bool:
        """It trained to its own end (all epochs or patience): its value is final."""
        return self.end in FINISHED

    def row(self, study: Study) -> dict[str, Any]:
        """Its line of the trials table (hyperparameters as JSON)."""
        import json

        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("checkpoint", "hparams")
        }
        return {
            **out,
            "model": study.model,
            "task": study.task,
            "metric": study.metric,
            "hparams": json.dumps(self.hparams, sort_keys=True),
        }


@dataclass
class ScoredRun:
    """One tested model (a chosen trial, one of its re-runs with another seed or on another
    fold, or a baseline).

    Args:
        seed: its training seed.
        metrics: `val/...` and `test/...` metrics.
        units: the table's main test metric per evaluation unit (per user for rankings,
            per rating for ratings: the squared or absolute error), in the data's order, so
            that runs on the same evaluation pair up.
        model: the model tested, kept in memory for the export (the chosen run of a study
            only; None for seed re-runs, baselines, and results read back from disk).
        saved: what its checkpoint holds beside the weights, with the checkpoint's path
            (`checkpoint`): the export copies it into the sidecar.
        fold: the fold it was trained and tested on (an index into `data.folds`).
    """

    seed: int
    metrics: dict[str, float]
    units: np.ndarray
    model: Any = None
    saved: dict[str, Any] = field(default_factory=dict)
    fold: int = 0


@dataclass
class StudyResult:
    """A study's line of the results: its chosen trial tested (with its seed re-runs), or a
    baseline evaluated.

    Args:
        study: the study (a baseline is a study of its own: `pop`, `bias`; `baseline` says
            which).
        status: "ok", or why there is nothing to test (no finished trial, interrupted, ...).
        evaluation: one line saying what was evaluated (split, protocol, candidates, K).
        main_metric: the table's test metric the significance tests compare (`test/rmse`).
        trials_done, trials_pruned, trials_failed: the study's trials that finished, that
            ASHA stopped, and that raised or diverged.
        chosen: the chosen trial, or None.
        runs: the tested runs (the chosen trial first, then its re-runs with more seeds
            and on the other folds).
    """

    study: Study
    status: str = "ok"
    evaluation: str = ""
    main_metric: str = ""
    trials_done: int = 0
    trials_pruned: int = 0
    trials_failed: int = 0
    chosen: TrialRecord | None = None
    runs: list[ScoredRun] = field(default_factory=list)

    def by_fold(self) -> dict[int, list[ScoredRun]]:
        """The runs of each fold, in fold order (one fold, 0, without folds)."""
        out: dict[int, list[ScoredRun]] = {}
        for run in sorted(self.runs, key=lambda r: r.fold):
            out.setdefault(run.fold, []).append(run)
        return out

    @property
    def baseline(self) -> bool:
        """Whether the row is a baseline's (its study's)."""
        return self.study.baseline

    def fold_units(self) -> dict[int, np.ndarray]:
        """Each fold's main metric per unit, averaged over the fold's seeds (fold -> `[n]`):
        what a paired test matches fold by fold."""
        return {
            fold: np.mean([r.units for r in runs], axis=0) for fold, runs in self.by_fold().items()
        }

    @property
    def units(self) -> np.ndarray | None:
        """The main metric per unit, averaged over the seeds of each fold, the folds' units
        one after the other (each fold's test units in its data's order; a unit of one fold
        is another unit than the same user in another fold). None: nothing tested."""
        if not self.runs:
            return None
        return np.concatenate(list(self.fold_units().values()))


@dataclass
class Searched:
    """What the search left: every trial, the learning curves, the re-runs of the chosen
    configurations (with more seeds, on the other folds), the status of a study that ran no
    trial, and the nodes that ran trials."""

    trials: list[TrialRecord]
    trials_frame: pd.DataFrame  # the trials table: one row per trial
    curves: pd.DataFrame | None
    final_trials: list[TrialRecord]
    why_empty: str
    nodes: list[dict[str, str]]


def choose(trials: list[TrialRecord], study: Study) -> TrialRecord | None:
    """The trial with the best validation value of any epoch that has a checkpoint (a
    baseline's trial needs none: its fit is repeated): any trial, also one ASHA stopped (its
    best epoch is a real model, judged on validation)."""
    chosen = [
        (t.best, t)
        for t in trials
        if t.best is not None
        and math.isfinite(t.best)
        and (t.checkpoint is not None or study.baseline)
    ]
    if not chosen:
        return None
    pick = min if study.mode == "min" else max
    return pick(chosen, key=lambda best_trial: best_trial[0])[1]
