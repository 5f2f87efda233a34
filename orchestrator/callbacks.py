"""Tune callbacks of a sweep: one W&B run per trial (one logging actor on the driver's
node), the progress lines, and the kernel timings trials report."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrator.config import SweepConfig
from orchestrator.plots import compile_umap_in_background
from orchestrator.records import TRIAL, Study, TrialSpec
from orchestrator.tracking import WandbRuns


class SweepWandb(tune.Callback):
    """One W&B run per trial, grouped by `<sweep>/<study>`, its id the trial's id, fed from
    Tune's events to one `WandbRuns` actor (Ray's `WandbLoggerCallback` starts three
    processes per trial, a third of a smoke sweep's time: bench/RESULTS.md). Every call to
    the actor is sent without waiting, in order; the actor starts with the first result,
    once the trials have their workers."""

    # Tune's bookkeeping: W&B records time and host itself
    SKIP = {
        "done",
        "training_iteration",
        "timestamp",
        "time_this_iter_s",
        "time_total_s",
        "time_since_restore",
        "iterations_since_restore",
        "pid",
        "first_batch_at",
    }
    UPLOAD_TIMEOUT_S = 60  # an interrupted online sweep must not hang on its uploads

    def __init__(self, sweep: str, run_dir: Path, mode: str, project: str) -> None:
        self.sweep, self.run_dir, self.mode, self.project = sweep, str(run_dir), mode, project
        self.actor: Any = None
        self.started: set[str] = set()

    def _start(self, trial: Any) -> None:
        if self.actor is None:
            # Pinned to the driver's node: the runs are written into the run directory there.
            # No key is handed over (an actor's runtime_env is public through Ray's state
            # API and dashboard): W&B finds it there as it does anywhere, in the netrc
            # `wandb login` wrote or the environment Ray's processes on the node inherited.
            self.actor = (
                ray.remote(WandbRuns)
                .options(
                    num_cpus=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(
                        ray.get_runtime_context().get_node_id(), soft=False
                    ),
                )
                .remote(self.run_dir, self.mode, self.project)
            )
        if trial.trial_id not in self.started:
            self.started.add(trial.trial_id)
            spec, hparams = TrialSpec.split(trial.config)
            self.actor.start.remote(
                trial.trial_id,
                str(trial),
                f"{self.sweep}/{spec.study}",
                spec.study,
                {"hparams": hparams, "trial": trial.config[TRIAL]},
            )

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self._start(trial)
        metrics = {
            k: v
            for k, v in result.items()
            if k not in self.SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        ended = result.get("status", "running") != "running"  # diverged: status and reason
        summary = {k: result[k] for k in ("status", "message") if ended and k in result}
        self.actor.log.remote(trial.trial_id, metrics, summary)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._start(trial)  # a trial that ended before its first result still has its run
        self.actor.finish.remote(trial.trial_id, 0)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._start(trial)
        self.actor.finish.remote(trial.trial_id, 1)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.actor is None:
            return
        try:
            errors = ray.get(self.actor.close.remote(), timeout=self.UPLOAD_TIMEOUT_S)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as e:
            errors = [f"the W&B runs did not finish: {type(e).__name__}: {e}"]
        ray.kill(self.actor)
        self.actor = None
        for error in errors:
            print(f"W&B: {error}", file=sys.stderr, flush=True)


def wandb_callbacks(cfg: SweepConfig, run_dir: Path) -> list[Any]:
    """The W&B callback, its runs written to `<run_dir>/wandb/` on the driver's node."""
    return (
        []
        if cfg.wandb == "disabled"
        else [SweepWandb(cfg.name, run_dir, cfg.wandb, cfg.wandb_project)]
    )


class ReportKernels(tune.Callback):
    """Compiles the report's UMAP kernels in the background from the first trial result on;
    any earlier, their CPU would slow the first trials' start on the same cores."""

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        compile_umap_in_background()


class TimeBudget(tune.Stopper):
    """The sweep's time budget, counted while Tune's loop runs (as Tune's `time_budget_s`
    counts it) and pickled with the experiment's state: `--resume` goes on with what was
    left, not with a new budget. Each check publishes the seconds left in `BudgetLeft`."""

    def __init__(self, seconds: float) -> None:
        self.left = seconds
        self._last: float | None = None

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        now = time.time()
        if self._last is not None:
            self.left -= now - self._last
        self._last = now
        BudgetLeft.seconds = max(0.0, self.left)
        return self.left <= 0

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _last=None)  # the time between runs is not counted


class BudgetLeft:
    """Seconds of the running experiment's time budget left at its last check; None
    without a budget (`search` resets it before each experiment)."""

    seconds: float | None = None

    @classmethod
    def spent(cls) -> bool:
        return cls.seconds is not None and cls.seconds <= 0


class Progress(tune.Callback):
    """Per study, trials done / running / pending, its best so far, the time elapsed and
    the budget left: a progress bar per study on a terminal, else (a log file, CI, a tmux
    pipe) one line per finished trial."""

    def __init__(self, studies: list[Study], total: int, start: float) -> None:
        self.studies = {s.name: s for s in studies}
        self.total, self.start = total, start
        self.best: dict[str, float] = {}
        self.bars: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "bars": {}}  # Tune pickles its callbacks; bars stay here

    def _line(self, trials: list[Any], trial: Any, event: str) -> None:
        study = self.studies[TrialSpec.split(trial.config)[0].study]
        of_study = [t for t in trials if TrialSpec.split(t.config)[0].study == study.name]
        ended = event != "started"  # Tune calls this before it marks `trial` ended
        done = sum((ended and t is trial) or t.status in ("TERMINATED", "ERROR") for t in of_study)
        running = sum(
            (t is trial and not ended) or (t is not trial and t.status == "RUNNING")
            for t in of_study
        )
        best = self.best.get(study.name)
        shown = f"best {study.metric} {'-' if best is None else f'{best:.4f}'}"
        left = (
            "" if BudgetLeft.seconds is None else f"budget left {BudgetLeft.seconds / 60:.1f} min"
        )
        if sys.stdout.isatty():  # else a line per finished trial
            self._bar(
                study.name, done, f"{running} running, {shown}" + (f", {left}" if left else "")
            )
            return
        if not ended:
            return
        print(
            f"[{study.name}] trial {trial.trial_id} {event}: {done}/{self.total} done, "
            f"{running} running, {self.total - done - running} pending, {shown}, "
            f"elapsed {(time.time() - self.start) / 60:.1f} min" + (f", {left}" if left else ""),
            flush=True,
        )

    def _bar(self, study: str, done: int, postfix: str) -> None:
        from tqdm import tqdm

        if study not in self.bars:
            position = list(self.studies).index(study)
            self.bars[study] = tqdm(
                total=self.total,
                desc=study,
                position=position,
                bar_format="{desc}: {n}/{total} trials done |{bar:20}| {postfix}",
            )
        bar = self.bars[study]
        bar.n = done
        bar.set_postfix_str(postfix, refresh=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars = {}

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        study = self.studies[TrialSpec.split(trial.config)[0].study]
        value = result.get(study.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            best = self.best.get(study.name, value)
            self.best[study.name] = min(best, value) if study.mode == "min" else max(best, value)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trials, trial, "started")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trials, trial, "finished")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trials, trial, "failed")
