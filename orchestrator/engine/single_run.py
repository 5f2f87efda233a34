"""`python -m orchestrator train`: one model trained, tested and written, no Ray.

`validate_request` checks the model, task and hyperparameters before any data is loaded;
`train_one` seeds, fits with a line per epoch on stderr, tests, and writes `metrics.json`,
`config.json` and `checkpoint.pt`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.config import DataConfig, TrainConfig, to_dict
from orchestrator.data.files import write_text
from orchestrator.data.types import PreparedData
from orchestrator.engine.runtime import seed_everything
from orchestrator.engine.train import fit, val_and_test
from orchestrator.models.base import DataSpec
from orchestrator.models.registry import create_model, save_model


def validate_request(model_name: str, task: str | None, hparams: dict[str, Any]) -> str:
    """Check a model name, task and hyperparameters before any data is loaded.

    Builds the model on a two-user, two-item spec, so every check its `Params` and
    constructor make runs. Returns the task (the model's first when `task` is None).
    Raises KeyError (unknown model) or ValueError naming the key and what is allowed.
    """
    model = create_model(model_name, DataSpec(2, 2), task, **hparams)
    return model.task


def _progress(epochs: int) -> Callable[[dict], None]:
    """A one-line-per-epoch progress printer on stderr."""

    def show(m: dict) -> None:
        parts = [f"epoch {m['epoch']}/{epochs}"]
        parts += [
            f"{k} {m[k]:.4f}"
            for k in ("train/loss", "val/rmse", "val/mae", "val/hr@10", "val/ndcg@10")
            if k in m
        ]
        if "train_samples_per_s" in m:
            parts.append(f"{m['train_samples_per_s']:,.0f} samples/s {m['epoch_time_s']:.1f}s")
        print("  ".join(parts), file=sys.stderr, flush=True)

    return show


def train_one(
    model_name: str,
    data: PreparedData,
    task: str | None,
    hparams: dict[str, Any],
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    progress: bool = True,
    data_cfg: DataConfig | None = None,
) -> dict[str, Any]:
    """Seed, build, fit, test the best state (or with `cfg.refit` a refit of it on train + val),
    and write the run's files.

    Args:
        model_name: a registered model.
        data: the prepared data.
        task: the task (the model's first when None).
        hparams: hyperparameter overrides.
        cfg: the training config.
        out_dir: where `metrics.json`, `config.json` and `checkpoint.pt` go (None: nowhere).
        progress: print a line per epoch to stderr.
        data_cfg: the data config, recorded in `config.json`.

    Returns:
        The metrics: `val/...` of the best epoch, `test/...` of that state (or its refit),
        `train_samples_per_s`, `eval_users_per_s`, `status`, `epochs`, `best_epoch`.
    """
    seed_everything(cfg.seed)
    model = create_model(model_name, DataSpec.from_data(data), task, **hparams)
    result = fit(model, data, cfg, _progress(model.params.epochs) if progress else None)
    metrics: dict[str, Any] = {}
    if result.best:  # a model that diverged before its first epoch has nothing to test
        scores, model, _ = val_and_test(model, data, cfg, result.best_epoch)
        metrics = {k: v for k, v in scores.items() if not k.endswith("/eval_users_per_s")}
        metrics["eval_users_per_s"] = scores["test/eval_users_per_s"]
    speeds = [h["train_samples_per_s"] for h in result.history if "train_samples_per_s" in h]
    if speeds:
        metrics["train_samples_per_s"] = sum(speeds) / len(speeds)
    metrics.update(
        status=result.status,
        epochs=result.epochs,
        best_epoch=result.best_epoch,
        message=result.message,
    )
    if out_dir is not None and result.status == "diverged":
        # a diverged model is no result: a good earlier run in out_dir stays as it was
        print(f"train: {result.message}; nothing written to {out_dir}", file=sys.stderr)
    elif out_dir is not None:
        out = Path(out_dir)
        write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        config = {
            "model": model_name,
            "task": model.task,
            "hparams": model.hparams(),
            "train": to_dict(cfg),
            "data": to_dict(data_cfg) if data_cfg else None,
            "dataset": data.name,
            "split": data.split_name,
            "fingerprint": data.fingerprint,
            "spec": dataclasses.asdict(model.spec),
        }
        write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
        save_model(model, out / "checkpoint.pt", metrics=metrics, data_fingerprint=data.fingerprint)
    return metrics
