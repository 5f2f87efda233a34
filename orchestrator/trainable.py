"""The Ray Tune trial: build the model the searcher chose, train it with the shared loop.

`run_trial(config, data, folds)` is wrapped once per sweep with `tune.with_parameters`
(the prepared data, and with `data.folds` each other fold's, goes to the object store once,
trials never re-read files; a trial trains on its spec's fold). Each epoch `fit` hands an
`EpochState` to `on_state`, then `report` (both a `TrialReports`'): an epoch that improves
the validation metric, checkpoints, is one of ASHA's rungs (`rungs`: so ASHA compares every
trial at the same epochs), or comes `report_every_s` after the last report sends its
metrics to Tune; every `checkpoint_every_s` and at the last epoch with that state as one
checkpoint, so a trial restarted on another node (FailureConfig) continues from its last
checkpoint. Every report carries `best_value`, the best validation value so far, and
`status`: "running", or how the trial ended ("epochs", "early_stopped", "diverged"); a trial
whose last status is "running" was stopped from outside (ASHA, Ctrl-C, the time budget).
A baseline's trial (`fit_baseline`) is one closed-form fit, reported once as epoch 1, with
no checkpoint: the sweep fits the chosen configuration again to test it.
"""

from __future__ import annotations

import gc
import math
import os
import tempfile
import time
from typing import Any

import ray
import torch
from ray import tune
from torch.optim.optimizer import register_optimizer_step_pre_hook

from orchestrator.config import TrainConfig
from orchestrator.data.types import PreparedData
from orchestrator.engine.runtime import pick_device, seed_everything
from orchestrator.engine.train import EpochState, FitResult, fit, load_state, save_state
from orchestrator.models.base import DataSpec, Recommender
from orchestrator.models.registry import create_model
from orchestrator.records import TrialSpec


def run_trial(
    config: dict[str, Any], data: PreparedData, folds: tuple[PreparedData, ...] = ()
) -> None:
    """One trial: the model its spec names, trained on its fold by `fit`, reporting to Tune
    through a `TrialReports`; restarted from its last checkpoint when Tune has one."""
    release_memory()  # a reused worker may still hold a stopped trial's GPU memory
    use_trial_cpus()
    spec, hparams = TrialSpec.split(config)
    data = (data, *folds)[spec.fold]
    cfg = spec.train
    seed_everything(cfg.seed)
    model = create_model(spec.model, DataSpec.from_data(data), spec.task, **hparams)
    if not model.learned:
        fit_baseline(model, data, cfg)
        return
    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a restart after a failure or a lost node
        with checkpoint.as_directory() as directory:
            state = load_state(directory)
    reports = TrialReports(cfg, set(spec.rungs), model.params.epochs)
    try:
        result = fit(
            model,
            data,
            cfg,
            reports,
            state=state,  # judged from ASHA's grace on
            on_state=reports.keep,
            min_epochs=min(spec.rungs, default=0),
        )
    finally:
        reports.hook.remove()
    reports.end(result, state)
    # free the trial's memory now: a reused worker must not carry it into the next trial
    del model, reports
    release_memory()


def fit_baseline(model: Recommender, data: PreparedData, cfg: TrainConfig) -> None:
    """A baseline's trial: its one closed-form fit scored on validation, reported as its only
    epoch, with no checkpoint (the sweep fits the chosen configuration again to test it)."""
    metrics = fit(model, data, cfg).history[-1]
    tune.report(
        {
            **metrics,
            "epoch": 1,
            "status": "epochs",
            "best_value": metrics[cfg.metric],
            "first_batch_at": math.nan,
            **placement(cfg),
        }
    )


def placement(cfg: TrainConfig) -> dict[str, str]:
    """Where a trial runs: its device and Ray node (the trials table's `device`, `node`)."""
    where = pick_device(cfg.device)
    device = torch.cuda.get_device_name(where) if where.type == "cuda" else "cpu"
    return {"device": device, "node": ray.get_runtime_context().get_node_id()}


class TrialReports:
    """`fit`'s `report` and `on_state` for a trial: what reaches Tune, and when.

    Checkpoints cost a serialisation and a copy to storage: with epochs of a fraction of a
    second they would dominate a trial, so they are spaced in time; a restarted trial loses
    at most `checkpoint_every_s` of work, and the last epoch always saves (the sweep reads
    the chosen trials' best weights from it). A report costs the trial Tune's bookkeeping (a
    few percent of a short epoch): an epoch that neither improves nor checkpoints reports
    only after `report_every_s`. ASHA counts epochs (`epoch`, not Tune's report count) and
    every best value reaches Tune, so the choice of the best trial is the same."""

    def __init__(self, cfg: TrainConfig, rungs: set[int], epochs: int) -> None:
        self.cfg, self.rungs, self.epochs = cfg, rungs, epochs
        self.placed = placement(cfg)  # what ran it, for the run's env.json
        self.latest: EpochState | None = None
        self.saved_at = self.reported_at = -math.inf
        # wall-clock time of the first batch's optimizer step: from the driver scheduling
        # the trial to this is its start-up (worker up, data fetched, model and optimizer built)
        self.first_step: list[float] = []
        self.hook = register_optimizer_step_pre_hook(
            lambda *_: None if self.first_step else self.first_step.append(time.time())
        )

    def keep(self, state: EpochState) -> None:
        self.latest = state

    def where(self) -> dict[str, Any]:
        return self.placed

    def __call__(self, metrics: dict[str, Any]) -> None:
        state = self.latest
        assert state is not None  # fit hands the state over before each report
        now = time.time()
        checkpoint = state.final or now - self.saved_at >= self.cfg.checkpoint_every_s
        if not (
            checkpoint
            or state.best_epoch == metrics["epoch"]  # improved
            or metrics["epoch"] in self.rungs
            or now - self.reported_at >= self.cfg.report_every_s
        ):
            return
        self.reported_at = now
        self.hook.remove()
        metrics = {
            **metrics,
            "status": self.status(metrics["epoch"]) if state.final else "running",
            "best_value": state.best_value,
            "first_batch_at": self.first_step[0] if self.first_step else math.nan,
            **self.where(),
        }
        if not checkpoint:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            save_state(state.full(), directory)  # the only copy of the weights it takes
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        self.saved_at = time.time()

    def status(self, epoch: int) -> str:
        """How a trial that ended after `epoch` ended."""
        return "epochs" if epoch == self.epochs else "early_stopped"

    def end(self, result: FitResult, restored: dict[str, Any] | None) -> None:
        """The last report where the epochs' reports did not say how the trial ended."""
        if result.status == "diverged":
            # the search tells Optuna the trial failed; the table shows the status and reason
            tune.report(
                {
                    self.cfg.metric: math.nan,
                    "status": "diverged",
                    "message": result.message,
                    "epoch": result.epochs,
                    "best_value": math.nan,
                    **self.where(),
                }
            )
        elif restored is not None and self.latest is None and result.history:
            # restored from its last checkpoint, which was final: no epoch ran, so say again
            # how it ended (the driver may have died before Tune recorded that report)
            tune.report(
                {
                    **result.history[-1],
                    "status": self.status(result.epochs),
                    "best_value": restored["best_value"],
                    "first_batch_at": math.nan,
                    **self.where(),
                }
            )


def use_trial_cpus() -> int:
    """Size torch's thread pool to the trial's CPUs, as Ray sets OMP_NUM_THREADS for the
    trial: a worker that imported torch before (a reused worker) may have sized it for the
    whole machine, and oversubscribed cores slow every trial several times over. Returns
    the thread count."""
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    return torch.get_num_threads()


def release_memory() -> None:
    """Hand a trial's GPU memory back (a stopped trial's, at the start of the next one).
    Only for a GPU, the scarce memory: on a CPU a trial's tensors die with its frames, and a
    full collection with torch and Ray loaded costs a noticeable part of a short trial."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
