"""The search of a sweep on Ray Tune: all studies in one Tune experiment.

`StudySearch` runs a seeded Optuna sampler per study (TPE, or random search; its first
trials are the model's defaults, then its recipes) and tells Optuna the truth about each
trial's end; `StudyASHA` runs an ASHA per study that never stops those first trials;
`experiment` builds a Tune experiment (the search's, and `final`'s re-runs) and
`fit_experiment` runs it, resuming trials lost with their node. Tune's results become
`TrialRecord`s in `trials`; the signals that stop a sweep are `signals`'.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import pickle
import threading
import time
from typing import Any

import optuna
import ray
from optuna.samplers import RandomSampler, TPESampler
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from orchestrator.config import SweepConfig, TrainConfig
from orchestrator.models.registry import get_model_class
from orchestrator.plan import experiment_root, sampler_settings, study_points
from orchestrator.records import Schedule, Study, TrialSpec
from orchestrator.signals import InterruptOnStop
from orchestrator.space import sample_params

# Checkpoints kept per trial. Tune deletes the oldest as it registers a new one, before its
# next snapshot of the experiment state: with one kept, a driver killed in between leaves a
# snapshot whose checkpoint is gone, which --resume cannot restore; with two, it takes two
# checkpoints with no snapshot between them.
KEEP_CHECKPOINTS = 2


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A study's define-by-run space; a picklable object, since Tune saves the searcher."""

    study: Study
    overrides: dict[str, Any]
    schedule: Schedule
    seed: int
    train: TrainConfig

    @classmethod
    def of(cls, study: Study, cfg: SweepConfig, plan: dict[str, Schedule]) -> SearchSpace:
        return cls(
            study, cfg.search_space.get(study.model, {}), plan[study.name], cfg.seed, cfg.train
        )

    def __call__(self, trial: Any) -> dict[str, Any]:
        space = get_model_class(self.study.model).search_space
        params = sample_params(
            trial, functools.partial(space, task=self.study.task), self.overrides
        )
        params.setdefault("epochs", self.schedule.max_epochs)  # ASHA's max_t
        origin = self.points[trial.number][0] if trial.number < len(self.points) else "search"
        # constants returned by a define-by-run space become part of the trial's config
        return TrialSpec.of(
            self.study, self.schedule, self.train, self.seed, trial.number, origin
        ).config(params)

    @functools.cached_property
    def points(self) -> list[tuple[str, dict[str, Any]]]:
        """The study's first trials with their origins: the model's defaults for its task (so
        that its best is never below `train` with defaults), then its recipes
        (`plan.study_points`)."""
        return study_points(self.study, self.overrides)[0]


def quiet_optuna() -> None:
    """Optuna logs a line per trial; the sweep's progress lines say what matters."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def sampler(settings: dict[str, Any]) -> TPESampler | RandomSampler:
    """A study's sampler from the resolved config's `sampler` (`plan.sampler_settings`)."""
    kwargs = {k: v for k, v in settings.items() if k != "name"}
    return RandomSampler(**kwargs) if settings["name"] == "random" else TPESampler(**kwargs)


class SavedSearcher(Searcher):
    """A searcher whose whole state Tune saves with the experiment (for `--resume`)."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class StudySearch(SavedSearcher):
    """All studies in one Tune experiment: a seeded Optuna TPE search per study, each with its
    own metric and direction, taking turns to suggest until each has `trials`.

    One experiment, not one Tuner per study, so that workers are reused across studies and
    the studies share the cluster and the time budget as they run (Ray runs one Tuner at a
    time in a driver). Tune saves this object with the experiment, so `--resume` continues
    every study's search.

    What Optuna is told: each study's first trials are the model's defaults, then its
    recipes (enqueued, `SearchSpace.points`); TPE's
    random start-up follows the budget (`startup_trials`); a trial's intermediate values are
    reported at its epochs; a trial that ended on its own is complete with its best
    validation value (the state the sweep would choose), one that diverged or raised has
    failed, and one stopped from outside (ASHA, Ctrl-C, the time budget) is pruned, so TPE
    does not take a truncated score for a final one.
    """

    def __init__(
        self, studies: list[Study], cfg: SweepConfig, plan: dict[str, Schedule], storage: Any = None
    ) -> None:
        super().__init__()
        self.trials = cfg.trials
        self.searches = {}
        for s in studies:
            space = SearchSpace.of(s, cfg, plan)
            self.searches[s.name] = OptunaSearch(
                space=space,
                metric=s.metric,
                mode=s.mode,
                points_to_evaluate=[point for _, point in space.points],
                sampler=sampler(sampler_settings(cfg)),
                storage=storage,
                study_name=s.name,
            )
        self.owner: dict[str, str] = {}  # trial id -> study name

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        counts = collections.Counter(self.owner.values())
        open_ = [name for name in self.searches if counts[name] < self.trials]
        if not open_:
            return Searcher.FINISHED  # type: ignore[return-value]  # Ray's own sentinel, a str
        done = vars(self).setdefault("done", set())  # an experiment saved before has none
        running = collections.Counter(n for t, n in self.owner.items() if t not in done)
        # the study with the fewest trials running, then the fewest started, in order: a
        # study of long trials holds one slot while studies of short ones (a baseline's fit)
        # take turns in the others, rather than waiting for its trials at every turn
        name = min(open_, key=lambda n: (running[n], counts[n]))
        self.owner[trial_id] = name
        return self.searches[name].suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Optuna's step is the epoch (Tune's training_iteration counts reports, not epochs).
        # A trial restarted from its checkpoint (a lost node) reports again the epochs after
        # it; Optuna keeps one value per step and warns at a second, so those are not sent.
        reported = vars(self).setdefault("reported", {})  # an experiment saved before has none
        if result["epoch"] <= reported.get(trial_id, 0):
            return
        reported[trial_id] = result["epoch"]
        self.searches[self.owner[trial_id]].on_trial_result(
            trial_id, {**result, "training_iteration": result["epoch"]}
        )

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        vars(self).setdefault("done", set()).add(trial_id)
        search = self.searches[self.owner[trial_id]]
        status = (result or {}).get("status")
        if result is not None and status in ("epochs", "early_stopped"):
            result = {**result, search.metric: result["best_value"]}
        elif status == "diverged":  # failed (Optuna refuses a NaN value and keeps it RUNNING)
            result, error = None, True
        else:
            result = None  # stopped from outside: pruned, with its intermediate values
        search.on_trial_complete(trial_id, result, error)


class StudyASHA(FIFOScheduler):
    """An ASHA scheduler per study (its metric, direction, max epochs and grace period),
    routed by the trial's study: trials are compared with the trials of their own study
    only. A study's defaults and recipe trials are recorded at the rungs like any other but
    never stopped: they are what the search must beat, and a recipe trains as published."""

    def __init__(self, studies: list[Study], cfg: SweepConfig, plan: dict[str, Schedule]) -> None:
        super().__init__()
        self.ashas = {
            s.name: ASHAScheduler(
                metric=s.metric,
                mode=s.mode,
                time_attr="epoch",
                max_t=plan[s.name].max_epochs,
                grace_period=plan[s.name].grace_period,
                reduction_factor=cfg.reduction_factor,
            )
            for s in studies
        }

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # each study's ASHA has its own metric and mode

    def _asha(self, trial: Any) -> ASHAScheduler:
        return self.ashas[TrialSpec.split(trial.config)[0].study]

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = self._asha(trial).on_trial_result(tune_controller, trial, result)
        return decision if TrialSpec.split(trial.config)[0].origin == "search" else self.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._asha(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._asha(trial).on_trial_remove(tune_controller, trial)


class FixedConfigs(SavedSearcher):
    """The given trial configs, in order (the studies' configs differ in their keys, which
    Tune's `points_to_evaluate` does not allow)."""

    def __init__(self, configs: list[dict[str, Any]]) -> None:
        super().__init__()
        self.configs = list(configs)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if not self.configs:
            return Searcher.FINISHED  # type: ignore[return-value]  # Ray's own sentinel, a str
        return self.configs.pop(0)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        pass


def experiment(
    trainable: Any,
    name: str,
    cfg: SweepConfig,
    slots: int,
    search_alg: Any,
    trials: int,
    callbacks: list[Any] | None = None,
    stopper: tune.Stopper | None = None,
    **tune_config: Any,
) -> tune.Tuner:
    """A Tune experiment `name` of `trials` trials in the run directory, at most `slots` at
    once. Actors are reused (a new worker costs seconds of imports per trial; run_trial frees
    what a stopped predecessor left on the device); a trial that fails restarts from its last
    checkpoint, up to `max_failures` times."""
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            num_samples=trials,
            max_concurrent_trials=min(slots, trials),
            reuse_actors=True,
            **tune_config,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=experiment_root(cfg),
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            stop=stopper,
            callbacks=[*(callbacks or []), InterruptOnStop()],
            verbose=0,
        ),
    )


def fit_experiment(
    tuner: tune.Tuner,
    path: str,
    trainable: Any,
    cfg: SweepConfig,
    deadline: float | None,
    stop: threading.Event,
) -> Any:
    """`tuner.fit()`, then resume the trials that died with their node before Tune could
    restart them. (Tune 2.60 recovers a RUNNING trial on a lost node, but a trial whose reused
    actor dies while it is being reset, still PENDING, ends as ERROR: a race seen when a node
    goes away as one trial ends and the next takes over its actor.)"""
    grid = tuner.fit()
    for _ in range(cfg.max_failures):
        lost = [
            r
            for r in grid  # type: ignore[attr-defined]  # iterates by __getitem__
            if isinstance(r.error, ray.exceptions.RayActorError)
        ]
        if not lost or stop.is_set() or (deadline is not None and time.time() >= deadline):
            break
        print(f"search: {len(lost)} trial(s) lost with their node; resuming them", flush=True)
        grid = tune.Tuner.restore(path, trainable=trainable, resume_errored=True).fit()
    return grid
