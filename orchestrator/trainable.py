"""The Ray Tune trial: build the model the searcher chose, train it with the shared loop.

`run_trial(config, data, folds)` is wrapped once per sweep with `tune.with_parameters`
(the prepared data, and with `data.folds` each other fold's, goes to the object store once,
trials never re-read files; a trial trains on its spec's fold). Each epoch `fit` hands an
`EpochState` to `on_state`, then `report`: an epoch that improves the validation metric,
checkpoints, is one of ASHA's rungs (`rungs`: so ASHA compares every trial at the same
epochs), or comes `report_every_s` after the last report
sends its metrics to Tune; every `checkpoint_every_s` and at the last epoch with that state
as one checkpoint, so a trial restarted on another node (FailureConfig) continues from its
last checkpoint. Every report carries `best_value`, the best validation value so far, and
`status`: "running", or how the trial ended ("epochs", "early_stopped", "diverged"); a trial
whose last status is "running" was stopped from outside (ASHA, Ctrl-C, the time budget).
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

from orchestrator.data.types import PreparedData
from orchestrator.engine.train import fit, load_state, pick_device, save_state, seed_everything
from orchestrator.models.base import DataSpec
from orchestrator.models.registry import create_model
from orchestrator.records import TrialSpec


def run_trial(
    config: dict[str, Any], data: PreparedData, folds: tuple[PreparedData, ...] = ()
) -> None:
    release_memory()  # a reused worker may still hold a stopped trial's GPU memory
    use_trial_cpus()
    spec, hparams = TrialSpec.split(config)
    data = (data, *folds)[spec.fold]
    cfg = spec.train
    seed_everything(cfg.seed)
    model = create_model(spec.model, DataSpec.from_data(data), spec.task, **hparams)
    rungs, epochs = set(spec.rungs), model.params.epochs
    where = pick_device(cfg.device)  # what ran it, for the run's env.json
    device = torch.cuda.get_device_name(where) if where.type == "cuda" else "cpu"
    node = ray.get_runtime_context().get_node_id()  # the trials table's `node`

    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a restart after a failure or a lost node
        with checkpoint.as_directory() as directory:
            state = load_state(directory)

    latest: dict[str, Any] = {}
    # wall-clock time of the first batch's optimizer step: from the driver scheduling the
    # trial to this is its start-up (worker up, data fetched, model and optimizer built)
    first_step: list[float] = []
    hook = register_optimizer_step_pre_hook(
        lambda *_: None if first_step else first_step.append(time.time())
    )

    saved_at = reported_at = -math.inf

    def report(metrics: dict[str, Any]) -> None:
        # Checkpoints cost a serialisation and a copy to storage: with epochs of a fraction
        # of a second they would dominate a trial, so they are spaced in time; a restarted
        # trial loses at most `checkpoint_every_s` of work, and the last epoch always saves
        # (the sweep reads the chosen trials' best weights from it).
        # A report costs the trial Tune's bookkeeping (a few percent of a short epoch): an
        # epoch that neither improves nor checkpoints reports only after `report_every_s`.
        # ASHA counts epochs (`epoch`, not Tune's report count) and every best value
        # reaches Tune, so the choice of the best trial is the same.
        nonlocal saved_at, reported_at
        state = latest["state"]
        now = time.time()
        checkpoint = state.final or now - saved_at >= cfg.checkpoint_every_s
        improved = state.best_epoch == metrics["epoch"]
        if not (
            checkpoint
            or improved
            or metrics["epoch"] in rungs
            or now - reported_at >= cfg.report_every_s
        ):
            return
        reported_at = now
        hook.remove()
        status = (
            "running"
            if not state.final
            else "epochs"
            if metrics["epoch"] == epochs
            else "early_stopped"
        )
        metrics = {
            **metrics,
            "status": status,
            "best_value": state.best_value,
            "first_batch_at": first_step[0] if first_step else math.nan,
            "device": device,
            "node": node,
        }
        if not checkpoint:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            save_state(state.full(), directory)  # the only copy of the weights it takes
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        saved_at = time.time()

    try:
        result = fit(
            model,
            data,
            cfg,
            report,
            state=state,  # judged from ASHA's grace on
            on_state=lambda s: latest.__setitem__("state", s),
            min_epochs=min(rungs, default=0),
        )
    finally:
        hook.remove()
    if result.status == "diverged":
        # the search tells Optuna the trial failed; the table shows the status and the reason
        tune.report(
            {
                cfg.metric: math.nan,
                "status": "diverged",
                "message": result.message,
                "epoch": result.epochs,
                "best_value": math.nan,
                "device": device,
                "node": node,
            }
        )
    elif state is not None and "state" not in latest and result.history:
        # restored from its last checkpoint, which was final: no epoch ran, so say again how
        # it ended (the driver may have died before Tune recorded that report)
        status = "epochs" if result.epochs == epochs else "early_stopped"
        tune.report(
            {
                **result.history[-1],
                "status": status,
                "best_value": state["best_value"],
                "first_batch_at": math.nan,
                "device": device,
                "node": node,
            }
        )
    # free the trial's memory now: a reused worker must not carry it into the next trial
    latest.clear()
    del model
    release_memory()


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
