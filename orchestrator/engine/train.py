"""The shared training loop: `fit` trains any registered model (`evaluation.evaluate` scores
it), `refit` retrains on train + validation (`single_run.train_one` is the `train` command).

One loop serves every model because the model contract splits the work: `examples(train)`
gives aligned example tensors, `loss(batch)` does everything training-only, `score_all`
and `forward` score. The loop owns the rest: the device, batching (slices of a seeded
permutation, no per-sample Python), negatives drawn on the device, Adam, bf16 autocast on
CUDA, one validation pass and one `report(dict)` per epoch, early stopping on the task's
validation metric, the best state, and a clean stop when the loss diverges.

No Ray here: `report` is any callable taking a dict (`list.append` in tests, `tune.report`
in trials), and `on_state` hands the trial what it needs to checkpoint and resume.

Example:
    >>> seed_everything(0)
    >>> model = create_model("mf", DataSpec.from_data(data), task="rating", epochs=5)
    >>> reports = []
    >>> result = fit(model, data, TrainConfig(), report=reports.append)  # a dict per epoch
    >>> result.status, len(reports), result.best["val/rmse"]
    ('ok', 5, 1.0...)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from orchestrator.config import TrainConfig
from orchestrator.data.sampling import NegativeSampler
from orchestrator.data.types import PreparedData, Split
from orchestrator.engine.evaluation import (
    DeviceData,
    check_ks,
    concat_splits,
    evaluate,
    evaluate_units,
    monitored_metric,
    to_device,
)
from orchestrator.engine.optim import make_optimizers
from orchestrator.engine.runtime import TRIM_EVERY, pick_device, seed_everything, trim_heap
from orchestrator.models.base import DataSpec, Recommender
from orchestrator.models.registry import create_model


@dataclass
class EpochState:
    """What `fit` hands `on_state` after each validated epoch: the facts a caller decides by,
    and `full()`, everything needed to resume after this epoch (CPU copies of the weights,
    the optimizers' state and the random states, for `torch.save`). Copying that costs a
    pass over every weight, so `full` copies only when called, and it must be called
    before the next epoch starts (a trial calls it when it checkpoints).

    Args:
        epoch: the epoch just finished.
        final: whether it is the last (the epochs ran out, or early stopping ends here).
        best_epoch, best_value: the best validation epoch so far and its value.
        full: the resumable state (`fit(..., state=...)` takes it).
    """

    epoch: int
    final: bool
    best_epoch: int
    best_value: float
    full: Callable[[], dict[str, Any]]


@dataclass
class FitResult:
    """What `fit` returns.

    Args:
        status: "ok", "early_stopped" or "diverged" (callers mark a diverged trial failed).
        epochs: epochs trained (0 for non-learned models).
        best_epoch: the epoch whose state the model holds now.
        best: the validation metrics of that epoch.
        history: every per-epoch report, in order.
        message: one line for humans (why it stopped).
    """

    status: str
    epochs: int
    best_epoch: int
    best: dict[str, float]
    history: list[dict[str, float]]
    message: str = ""


def _resumable(
    model: Recommender,
    optimizers: list[torch.optim.Optimizer],
    generator: torch.Generator,
    device: torch.device,
    facts: dict[str, Any],
) -> dict[str, Any]:
    """An epoch's `facts` plus CPU copies of what every step changes: the weights (the best
    state's when this epoch is the best), the optimizers' state, the random states."""
    best = facts["best_epoch"] == facts["epoch"]
    return {
        **facts,
        "model": facts["best_state"] if best else _cpu_copy(model.state_dict()),
        "optimizers": [_cpu_copy(o.state_dict()) for o in optimizers],
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _cpu_copy(obj: Any) -> Any:
    """The same nested dicts/lists with every tensor copied to the CPU."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


def effective_patience(patience: int, epochs: int) -> int:
    """`patience`, or for -1 a tenth of the model's epochs, at least 3: a model trained in
    many cheap full-batch epochs (AutoRec: 250) must not stop at its first plateau."""
    return max(3, epochs // 10) if patience < 0 else patience


@dataclass
class _Loop:
    """What the training loop carries from epoch to epoch: the optimizers, the seeded
    generator of batch orders and negatives, and the best validated epoch so far."""

    optimizers: list[torch.optim.Optimizer]
    generator: torch.Generator
    sampler: NegativeSampler | None
    first: int = 1  # the first epoch to train (after a resumed state's)
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    best_value: float = math.nan
    best_epoch: int = 0
    best: dict[str, float] = dataclasses.field(default_factory=dict)
    best_state: dict[str, Any] | None = None
    bad: int = 0  # validated epochs since the best

    def keep(
        self, model: Recommender, epoch: int, metrics: dict[str, float], value: float, mode: str
    ) -> None:
        """Record a validated epoch; a new best keeps a CPU copy of the weights."""
        if math.isnan(self.best_value) or (
            value < self.best_value if mode == "min" else value > self.best_value
        ):
            self.best_value, self.best_epoch, self.best, self.bad = value, epoch, metrics, 0
            self.best_state = _cpu_copy(model.state_dict())
        else:
            self.bad += 1
        self.history.append(metrics)

    def facts(self, epoch: int) -> dict[str, Any]:
        """What a resumed run needs beside the weights, optimizers and random states."""
        return {
            "epoch": epoch,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best": self.best,
            "best_state": self.best_state,
            "bad_epochs": self.bad,
            "history": list(self.history),
        }


def _start(
    model: Recommender,
    data: PreparedData,
    tensors: Any,
    examples: dict[str, Tensor],
    cfg: TrainConfig,
    device: torch.device,
    state: dict | None,
) -> _Loop:
    """Set-up: the model's pre-trained parts, the optimizers, the seeded generator and
    negative sampler; with `state`, everything an earlier run saved after its epoch."""
    if state is None:  # a resumed trial's state holds the pre-trained weights already
        # parts train their epochs without validation passes: a part is never the model
        # chosen, and its validation (NeuMF's MLP over all items) costs more than training
        model.pretrain(lambda part: fit(part, data, cfg, validate=False))
    if len(next(iter(examples.values()))) == 0:
        raise ValueError(
            f"model {model.name!r}: the training split of {data.name!r} gives no training examples"
        )
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)
    sampler = None
    if model.n_negatives > 0:
        sampler = NegativeSampler(
            tensors.train, data.n_items, generator=generator, n_users=data.n_users
        )
    loop = _Loop(make_optimizers(model), generator, sampler)
    if state is not None:
        model.load_state_dict(state["model"])
        for optimizer, saved in zip(loop.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        loop.best_value, loop.best_epoch = state["best_value"], state["best_epoch"]
        loop.best, loop.best_state, loop.bad = (
            state["best"],
            state["best_state"],
            state["bad_epochs"],
        )
        loop.history, loop.first = list(state["history"]), state["epoch"] + 1
    return loop


def _train_epoch(model: Recommender, examples: dict[str, Tensor], loop: _Loop, amp: bool) -> float:
    """One pass over the training examples in a seeded random order; the mean loss."""
    n = len(next(iter(examples.values())))
    batch_size = model.params.batch_size
    # plain SGD's lr is per example: a step moves by lr times the batch's summed gradient,
    # the last, shorter batch included (the loss is the batch's mean)
    sgd = model.params.optimizer == "sgd"
    model.train()
    perm = torch.randperm(n, device=loop.generator.device, generator=loop.generator)  # [N]
    losses = []
    for step, begin in enumerate(range(0, n, batch_size), 1):
        if step % TRIM_EVERY == 0:
            trim_heap()
        idx = perm[begin : begin + batch_size]  # [B]
        batch = {k: v[idx] for k, v in examples.items()}
        if loop.sampler is not None:
            batch["neg_item"] = loop.sampler.sample(batch["user"], model.n_negatives)  # [B, n]
        with torch.autocast("cuda", torch.bfloat16) if amp else contextlib.nullcontext():
            loss = model.loss(batch)
        for optimizer in loop.optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in loop.optimizers:
            if sgd:
                for group in optimizer.param_groups:
                    group["lr"] = model.params.lr * len(idx)
            optimizer.step()
        losses.append(loss.detach())  # summed once per epoch: no per-batch sync
    return torch.stack(losses).float().mean().item()  # the epoch's only sync


def _timed_epoch(
    model: Recommender, examples: dict[str, Tensor], loop: _Loop, amp: bool, epoch: int
) -> dict[str, float]:
    """One epoch of training, with its loss and speed as `report` shows them."""
    start = time.perf_counter()
    train_loss = _train_epoch(model, examples, loop, amp)
    train_time = time.perf_counter() - start
    return {
        "epoch": epoch,
        "train/loss": train_loss,
        "epoch_time_s": train_time,
        "train_samples_per_s": len(next(iter(examples.values()))) / max(train_time, 1e-9),
    }


def fit(
    model: Recommender,
    data: PreparedData,
    cfg: TrainConfig,
    report: Callable[[dict], object] | None = None,
    *,
    state: dict | None = None,
    on_state: Callable[[EpochState], None] | None = None,
    validate: bool = True,
    min_epochs: int = 0,
) -> FitResult:
    """Train `model` on `data.train`, validating once per epoch; leave it in its best state.

    Args:
        model: a model from `create_model` (seed first with `seed_everything`).
        data: the prepared data.
        cfg: the training config (device, patience, amp, ks, protocol).
        report: called once per epoch with `train/loss`, the validation metrics, `epoch`,
            `epoch_time_s` and `train_samples_per_s`.
        state: a dict an earlier `on_state` received: training resumes after its epoch.
        on_state: called once per epoch, before `report`, with an `EpochState` (whose
            `full()` is everything needed to resume: CPU copies, safe to `torch.save`).
        validate: False trains all the model's epochs without validation passes (a refit
            on train + val, whose val split is empty) and keeps the last state.
        min_epochs: early stopping waits for this many epochs (a sweep's trial: its study's
            grace period, the epochs ASHA waits too): a slow starter is not judged at its
            first plateau.

    Returns:
        A `FitResult`; a non-finite loss or validation metric ends training with status
        "diverged" (no exception) and the model back in its best state, if it had one.
    """
    key, mode = monitored_metric(model.task, cfg.metric, cfg.ks)
    if model.task != "rating":
        check_ks(cfg.ks, data)
    device = pick_device(cfg.device)
    model.to(device)
    tensors = to_device(data, device)
    examples = model.examples(tensors.train)  # may register buffers, so before any restore
    report = report or (lambda metrics: None)
    if not model.learned:
        metrics = {"epoch": 0, **(evaluate(model, data, "val", cfg, tensors) if validate else {})}
        report(metrics)
        return FitResult("ok", 0, 0, metrics, [metrics], "not learned: evaluated only")
    loop = _start(model, data, tensors, examples, cfg, device, state)
    epochs, amp = model.params.epochs, cfg.amp and device.type == "cuda"
    patience = effective_patience(cfg.patience, epochs) if validate else 0

    def patience_out(epoch: int) -> bool:  # after `epoch`, early stopping ends the run
        return 0 < patience <= loop.bad and epoch >= min_epochs

    status, message = "ok", ""
    for epoch in range(loop.first, epochs + 1):
        if epoch > 1 and patience_out(epoch - 1):
            break
        metrics = _timed_epoch(model, examples, loop, amp, epoch)
        if not math.isfinite(metrics["train/loss"]):
            status, message = "diverged", f"epoch {epoch}: training loss is {metrics['train/loss']}"
            break
        if not validate:  # the last epoch is the model
            loop.best_epoch, loop.best = epoch, metrics
            loop.history.append(metrics)
            report(metrics)
            continue
        metrics.update(evaluate(model, data, "val", cfg, tensors))
        if not math.isfinite(metrics[key]):
            status, message = "diverged", f"epoch {epoch}: {key} is {metrics[key]}"
            break
        loop.keep(model, epoch, metrics, metrics[key], mode)
        if on_state is not None:
            on_state(
                _epoch_state(model, loop, device, epoch, epoch == epochs or patience_out(epoch))
            )
        report(metrics)
    if status == "ok" and len(loop.history) < epochs and patience_out(len(loop.history)):
        status = "early_stopped"
        message = f"no {key} improvement in {loop.bad} epochs (best: epoch {loop.best_epoch})"
    return _finish(model, loop, status, message, key, validate)


def _epoch_state(
    model: Recommender, loop: _Loop, device: torch.device, epoch: int, last: bool
) -> EpochState:
    """What `on_state` receives after `epoch` (`last`: training ends after it)."""
    resumable = functools.partial(
        _resumable, model, loop.optimizers, loop.generator, device, loop.facts(epoch)
    )
    return EpochState(epoch, last, loop.best_epoch, loop.best_value, resumable)


def _finish(
    model: Recommender, loop: _Loop, status: str, message: str, key: str, validate: bool
) -> FitResult:
    """The model back in its best state, and how the run went."""
    if loop.best_state is not None:
        model.load_state_dict(loop.best_state)
    trained = len(loop.history)
    if status == "diverged":
        message += (
            "; model restored to epoch " + str(loop.best_epoch)
            if loop.best_state is not None
            else "; no epoch finished"
        )
    elif not message:
        message = (
            f"trained {trained} epochs, best {key} at epoch {loop.best_epoch}"
            if validate
            else f"trained {trained} epochs without validation"
        )
    return FitResult(status, trained, loop.best_epoch, loop.best, loop.history, message)


def fold_val(data: PreparedData) -> PreparedData:
    """The data with its validation rows moved into train (sorted again) and val empty."""
    rows = concat_splits(data.train, data.val)
    cols = (rows.user, rows.item, rows.rating, rows.timestamp)
    order = np.lexsort((rows.item, rows.timestamp, rows.user))  # by user, time, item
    neg = data.val_negatives
    return dataclasses.replace(
        data,
        train=Split(*(c[order] for c in cols)),
        val=Split(*(c[:0] for c in cols)),
        val_negatives=None if neg is None else neg[:0],
    )


def refit(
    model_name: str,
    data: PreparedData,
    task: str,
    hparams: dict[str, Any],
    cfg: TrainConfig,
    epochs: int,
) -> tuple[Recommender, PreparedData]:
    """Retrain a configuration from its seed on train + val for the `epochs` validation
    picked, without validation; returns the model and the data to test it on."""
    full = fold_val(data)
    seed_everything(cfg.seed)
    model = create_model(
        model_name, DataSpec.from_data(full), task, **{**hparams, "epochs": max(epochs, 1)}
    )
    fit(model, full, cfg, validate=False)
    return model, full


def val_and_test(
    model: Recommender, data: PreparedData, cfg: TrainConfig, best_epoch: int = 0
) -> tuple[dict[str, float], Recommender, dict[str, np.ndarray]]:
    """Validation metrics of a trained model and test metrics of it or, with `cfg.refit`, of
    its refit for `best_epoch` epochs; returns them, the model tested and its test values
    per evaluation unit (`evaluate_units`)."""
    tensors: DeviceData | None = to_device(data, model.device)
    scores = evaluate(model, data, "val", cfg, tensors)
    if cfg.refit:
        model, data = refit(model.name, data, model.task, model.hparams(), cfg, best_epoch)
        tensors = None
    test, units = evaluate_units(model, data, "test", cfg, tensors)
    return {**scores, **test}, model, units


STATE_FILE = "state.pt"  # a trial checkpoint: what `fit`'s `on_state` handed over


def save_state(state: dict[str, Any], directory: str | Path) -> None:
    torch.save(state, Path(directory) / STATE_FILE)


def load_state(directory: str | Path) -> dict[str, Any]:
    """A trial checkpoint's state (tensors, numbers and lists only: nothing that runs code)."""
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
