"""The final re-runs: each study's chosen configuration retrained, with no search, with more
seeds and on every fold of `data.folds`, as Tune trials of one experiment (`final/`)."""

from __future__ import annotations

from typing import Any

from ray import tune

from orchestrator.config import SweepConfig
from orchestrator.data.splits import fold_splits
from orchestrator.plan import FINAL, experiment_root
from orchestrator.records import Schedule, Study, TrialRecord, TrialSpec
from orchestrator.search import FixedConfigs, experiment
from orchestrator.signals import STOP
from orchestrator.trials import configured, trial_records


def final_grid(cfg: SweepConfig) -> tuple[int, int]:
    """The folds and the seeds per fold on which `final_runs` trains each chosen
    configuration (the chosen trial itself is fold 0's first seed)."""
    return max(1, len(fold_splits(cfg.data.folds))), max(1, cfg.final_seeds)


def final_runs_per_study(cfg: SweepConfig) -> int:
    """The re-runs `final_runs` trains of each chosen configuration."""
    folds, seeds = final_grid(cfg)
    return folds * seeds - 1


def final_runs(
    chosen: list[TrialRecord],
    studies: list[Study],
    plan: dict[str, Schedule],
    cfg: SweepConfig,
    slots: int,
    trainable: Any,
    callbacks: list[Any] | None = None,
) -> list[TrialRecord]:
    """Retrain each study's chosen configuration (no search), all studies in one
    experiment: with `final_seeds - 1` more seeds on the search's fold, and with all
    `final_seeds` seeds (at least one) on each other fold of `data.folds`; returns the
    finished runs. `callbacks`: Tune callbacks of the experiment (progress lines)."""
    path = f"{experiment_root(cfg)}/{FINAL}"
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        by_name = {s.name: s for s in studies}
        folds, seeds = final_grid(cfg)
        points = [
            TrialSpec.of(
                by_name[t.study], plan[t.study], cfg.train, cfg.seed + i, t.number, t.origin, fold
            ).config(t.hparams)
            for t in chosen
            for fold in range(folds)
            for i in range(seeds)
            if (fold, i) != (0, 0)  # the chosen trial itself
        ]
        print(
            f"final: {len(points)} re-runs of the chosen configurations ({folds} fold(s) x "
            f"{seeds} seed(s), less the chosen trials themselves)",
            flush=True,
        )
        tuner = experiment(
            trainable, FINAL, cfg, slots, FixedConfigs(points), len(points), callbacks
        )
    return [
        t
        for t in trial_records(configured(tuner.fit()), STOP.is_set())
        if t.end in ("epochs", "early_stopped") and t.checkpoint is not None
    ]
