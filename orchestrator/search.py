"""The search of a sweep on Ray Tune: all studies in one Tune experiment.

`StudySearch` runs a seeded Optuna sampler per study (TPE, or random search; its first
trials are the model's defaults, then its recipes) and tells Optuna the truth about each
trial's end; `StudyASHA` runs an ASHA per study that never stops those first trials;
`trial_records` turns Tune's results into `TrialRecord`s once; `final_runs`
re-runs the chosen configurations with more seeds and on the other folds; `signals_stop_studies` and
`fit_experiment` are the experiment's control (Ctrl-C, time budget, trials lost with their
node).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import optuna
import pandas as pd
import ray
from optuna.samplers import RandomSampler, TPESampler
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from orchestrator.config import SweepConfig, TrainConfig
from orchestrator.data.splits import fold_splits
from orchestrator.engine.metrics import lower_is_better
from orchestrator.models.registry import get_model_class
from orchestrator.plan import FINAL, experiment_root, sampler_settings, study_points
from orchestrator.records import TRIAL, Schedule, Study, TrialRecord, TrialSpec
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
        name = min(open_, key=lambda n: counts[n])  # the study with fewest trials, in order
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


def configured(grid: Any) -> list[Any]:
    """The results of the trials Tune gave a config. One it created but never configured
    (a resume after a signal once met one) never ran: it is named and left out."""
    out = []
    for res in grid:
        if isinstance(res.config, dict) and TRIAL in res.config:
            out.append(res)
        else:
            print(
                f"search: {res.path}: a trial Tune created but never configured (it never "
                "ran): left out",
                flush=True,
            )
    return out


def trial_records(grid: Any, interrupted: bool) -> list[TrialRecord]:
    """One TrialRecord per Tune result, in the grid's order. `interrupted`: the experiment
    was ended from outside (Ctrl-C, the time budget), which stops its running trials."""
    out = []
    for res in grid:
        spec, hparams = TrialSpec.split(res.config)
        metric = spec.train.metric
        history = trial_history(res)
        last = res.metrics or {}
        best, best_epoch = None, 0
        if history is not None and metric in history:
            values = history[metric]
            if values.notna().any():
                at = values.idxmin() if lower_is_better(metric) else values.idxmax()
                best, best_epoch = float(values[at]), int(history["epoch"][at])
        status, epoch = last.get("status"), int(last.get("epoch", 0) or 0)
        if res.error:
            end = "error"
        elif status in ("epochs", "early_stopped", "diverged"):
            end = status
        elif status is None:
            end = "pending"
        else:  # stopped from outside while running: by the scheduler, unless the whole
            # experiment was interrupted; then Tune's `done` (a documented auto-filled key)
            # marks the results its scheduler stopped before that
            end = "asha" if last.get("done") or not interrupted else "interrupted"
        message = str(res.error).splitlines()[0] if res.error else last.get("message", "")
        out.append(
            TrialRecord(
                study=spec.study,
                trial_id=last.get("trial_id", os.path.basename(str(res.path))),
                number=spec.number,
                end=end,
                message=message,
                best=best,
                best_epoch=best_epoch,
                epochs=epoch,
                time_s=float(last.get("time_total_s", 0.0) or 0.0),
                hparams=hparams,
                seed=spec.train.seed,
                checkpoint=res.checkpoint,
                path=str(res.path),
                node=str(last.get("node", "")),
                origin=spec.origin,
                fold=spec.fold,
            )
        )
    return out


def trial_history(res: Any) -> pd.DataFrame | None:
    """The results a trial reported, in order, as one lineage, from its `result.json` (the
    log of every result Tune writes in the trial's folder). A trial restored from a
    checkpoint (a lost node, `--resume`) reports again from the epoch after it: the rows its
    earlier run reported from that epoch on are dropped, as no checkpoint holds those
    weights. A line that a crash cut short is skipped and named (Tune's `metrics_dataframe`
    would drop the trial's whole history)."""
    path = f"{res.path}/result.json"
    try:
        with res.filesystem.open_input_stream(path) as f:
            lines = f.readall().decode().splitlines()
    except FileNotFoundError:
        return None
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            print(
                f"search: {path}, line {number}: not a whole JSON result (a write cut "
                "short by a crash): skipped",
                flush=True,
            )
            continue
        if "epoch" in row:
            rows = [r for r in rows if r.get("epoch", -1) < row["epoch"]]
        rows.append({k: v for k, v in row.items() if not isinstance(v, dict)})
    return pd.DataFrame(rows) if rows else None


def epoch_history(res: Any) -> pd.DataFrame | None:
    """A trial's per-epoch metrics (the learning curve), tagged with its study and id."""
    frame = trial_history(res)
    if frame is None:
        return None
    keep = [
        c
        for c in frame.columns
        if c.startswith(("val/", "train/")) or c in ("epoch", "trial_id", "time_total_s")
    ]
    return frame[keep].assign(study=TrialSpec.split(res.config)[0].study)


class StopSignal(threading.Event):
    """Set by the sweep's first stopping signal (`signals_stop_studies`); `signum` says
    which."""

    signum: int = signal.SIGINT


class Interrupted(KeyboardInterrupt):
    """The sweep was stopped by a signal (after writing what finished, or aborted by a
    second one): the command exits with 128 + `signum`, as a shell reports it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP = StopSignal()
# what stops a sweep as Ctrl-C does: `kill`, systemd, a scheduler's preemption (SIGTERM), a
# closed terminal or tmux session (SIGHUP)
STOPPING = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


class InterruptOnStop(tune.Callback):
    """Once `STOP` is set, interrupts the running experiment as Tune documents it (SIGUSR1,
    which Tune handles as Ctrl-C while `fit` runs): the running trials stop, Tune saves its
    state with them unfinished and the search not done, so `--resume` restarts them from
    their checkpoints and goes on searching. (A `Stopper`'s `stop_all` would mark the
    search finished.) Checked at every step of Tune's loop, so a signal that came before
    `fit` installed Tune's handler still ends it; only in the main thread, where Tune
    installs its handler. Holds no state: it pickles into Tune's experiment state and works
    again after `--resume`."""

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if STOP.is_set() and threading.current_thread() is threading.main_thread():
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's handler ends the loop after this step


@contextlib.contextmanager
def signals_stop_studies() -> Iterator[StopSignal]:
    """While the sweep runs, a first Ctrl-C, SIGTERM or SIGHUP sets `STOP` (the event it
    yields, with the signal), which interrupts the experiment through `InterruptOnStop`; the
    table, exports and report of what finished are still written. A second signal aborts.
    (Tune's own SIGINT handler takes neither SIGTERM nor SIGHUP, and would not tell the
    sweep that it stopped: a stopped trial would look like one that ASHA stopped.)"""
    STOP.clear()
    STOP.signum = signal.SIGINT
    if threading.current_thread() is not threading.main_thread():
        yield STOP  # signals reach the main thread only
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if STOP.is_set():
            raise Interrupted(signum)
        STOP.signum = signum
        STOP.set()
        print(
            f"{STOPPING[signal.Signals(signum)]}: stopping the running trials; the table of "
            "what finished follows (Ctrl-C again to abort)",
            file=sys.stderr,
            flush=True,
        )

    previous = {s: signal.signal(s, on_signal) for s in STOPPING}
    previous[signal.SIGUSR1] = signal.getsignal(signal.SIGUSR1)  # Tune's `fit` takes it over
    tune_handler = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield STOP
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if tune_handler is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_handler


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
