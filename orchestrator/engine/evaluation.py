"""Evaluation: the metric names a task reports, and `evaluate`, which scores any registered
model on validation or test.

Rating models are scored on the split's rows (RMSE, MAE); ranking and sequential models by
full ranking over the catalogue with the known items masked, or by the sampled protocol
among fixed negatives (HR, NDCG, Recall, MRR at each K). `DeviceData` keeps the splits on
the model's device with the lookups an evaluation needs, built once.

Example:
    >>> tensors = to_device(data, model.device)
    >>> evaluate(model, data, "val", TrainConfig(), tensors)["val/ndcg@10"]
    0.10...
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from orchestrator.config import TrainConfig
from orchestrator.data.sampling import last_items, user_item_csr
from orchestrator.data.types import Array, PreparedData, Split
from orchestrator.engine.metrics import (
    beyond_accuracy,
    full_ranking_per_user,
    lower_is_better,
    means,
    rating_errors,
    rating_summary,
)
from orchestrator.engine.sampled import sampled_ranking_per_row
from orchestrator.models.base import Recommender

SPLITS = ("val", "test")
T = TypeVar("T")
EVAL_CELLS = 2**25  # scores per full-ranking call: 128 MB of float32 (ml-25m: 567 users)


def task_metric(task: str) -> tuple[str, str]:
    """The validation metric early stopping and the sweeps optimise, and its direction."""
    if task == "rating":
        return "val/rmse", "min"
    if task in ("ranking", "sequential"):
        return "val/ndcg@10", "max"
    raise ValueError(f"task {task!r}: expected rating, ranking or sequential")


def val_metric_names(task: str, ks: tuple[int, ...]) -> list[str]:
    """The validation metrics `evaluate` reports for a task (the ones a sweep may optimise)."""
    task_metric(task)  # validates the task
    if task == "rating":
        return ["val/rmse", "val/mae"]
    return [f"val/{m}@{k}" for m in ("hr", "ndcg", "recall", "mrr") for k in ks]


def check_ks(ks: tuple[int, ...], data: PreparedData) -> None:
    """Cut-offs must be >= 1 and fit the catalogue (HR@K of K >= n_items is always 1)."""
    bad = [k for k in ks if not 1 <= k < data.n_items]
    if bad:
        raise ValueError(
            f"ks: {bad}: expected cut-offs from 1 to {data.n_items - 1} (the "
            f"dataset {data.name!r} has {data.n_items} items)"
        )


def monitored_metric(task: str, metric: str = "", ks: tuple[int, ...] = (10,)) -> tuple[str, str]:
    """The metric early stopping watches and its direction: `metric` when given (rmse and
    mae fall, the rest rise), else the task's default."""
    if not metric:
        return task_metric(task)
    allowed = val_metric_names(task, ks)
    if metric not in allowed:
        raise ValueError(
            f"metric {metric!r} is not reported for task {task!r}; allowed: {', '.join(allowed)}"
        )
    return metric, "min" if lower_is_better(metric) else "max"


def concat_splits(a: Split[Array], b: Split[Array]) -> Split[Array]:
    """The rows of `a`, then those of `b` (tensors or NumPy arrays alike)."""
    cat = torch.cat if isinstance(a.user, Tensor) else np.concatenate
    return Split(
        *(
            cat(p)
            for p in zip(
                (a.user, a.item, a.rating, a.timestamp),
                (b.user, b.item, b.rating, b.timestamp),
                strict=True,
            )
        )
    )


@dataclass
class DeviceData:
    """A `PreparedData`'s splits as tensors on one device, with the evaluation lookups
    (masks, targets, histories, negatives) built on first use and kept.

    Args:
        data: the prepared data.
        device: where the tensors live.

    Example:
        >>> tensors = to_device(data, torch.device("cpu"))
        >>> indptr, indices = tensors.known("test")  # train + val items per user
        >>> len(indptr) - 1, len(indices) == len(data.train) + len(data.val)
        (60, True)
    """

    data: PreparedData
    device: torch.device
    train: Split[Tensor] = field(init=False)
    val: Split[Tensor] = field(init=False)
    test: Split[Tensor] = field(init=False)
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.train, self.val, self.test = (
            s.to(self.device) for s in (self.data.train, self.data.val, self.data.test)
        )

    def _cached(self, key: tuple, build: Callable[[], T]) -> T:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def history(self, split: str) -> Split[Tensor]:
        """What is known when evaluating `split`: train for val, train + val for test."""
        _check_split(split)
        if split == "val":
            return self.train
        return self._cached(("history",), lambda: concat_splits(self.train, self.val))

    def known(self, split: str) -> tuple[Tensor, Tensor]:
        """CSR of the items masked when ranking for `split`."""
        return self._cached(
            ("known", split), lambda: user_item_csr(self.history(split), self.data.n_users)
        )

    def targets(self, split: str) -> tuple[Tensor, Tensor]:
        """CSR of the held-out items of `split`."""
        return self._cached(
            ("targets", split), lambda: user_item_csr(getattr(self, split), self.data.n_users)
        )

    def n_target_users(self, split: str) -> int:
        return self._cached(
            ("n_users", split), lambda: int((self.targets(split)[0].diff() > 0).sum())
        )

    def last_items(self, split: str, length: int) -> Tensor:
        """Each user's last `length` known items, `[n_users, L]`, padded with `n_items`."""
        return self._cached(
            ("seq", split, length),
            lambda: last_items(self.history(split), self.data.n_users, length, self.data.n_items),
        )

    def popularity(self) -> Tensor:
        """Training interactions per item, `[n_items]` (its users: pairs are unique after the
        data's dedup)."""
        return self._cached(
            ("popularity",), lambda: torch.bincount(self.train.item, minlength=self.data.n_items)
        )

    def negatives(self, split: str) -> Tensor:
        """The fixed sampled-protocol negatives of `split`, `[n_rows, N]`."""

        def build() -> Tensor:
            neg = getattr(self.data, f"{split}_negatives")
            if neg is None:
                raise ValueError(
                    f"protocol 'sampled' needs data.{split}_negatives; prepare "
                    "the data with eval_negatives > 0 or use protocol 'full'"
                )
            return torch.as_tensor(neg, dtype=torch.long, device=self.device)

        return self._cached(("negatives", split), build)


def to_device(data: PreparedData, device: torch.device | str) -> DeviceData:
    """The data's splits as tensors on `device` (built once; pass it on to `evaluate`)."""
    return DeviceData(data, torch.device(device))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {SPLITS}")


def evaluate(
    model: Recommender,
    data: PreparedData,
    split: str,
    cfg: TrainConfig,
    tensors: DeviceData | None = None,
) -> dict[str, float]:
    """Validation or test metrics of `model`, keyed `split/name` (`val/rmse`, `test/ndcg@10`).

    Rating: RMSE and MAE of `model(user, item)` on the split's rows. Ranking and sequential:
    HR, NDCG, Recall and MRR at each of `cfg.ks`, either over all items with the user's
    known items masked (train, plus val when testing), or, with `cfg.protocol == "sampled"`,
    among the split's fixed negatives; the full-ranking test pass adds coverage, Gini, ARP
    and novelty at each K from the same top-K lists (`metrics.beyond_accuracy`). Sequential models
    score from each user's last `model.seq_len` known items. Also `split/eval_users_per_s`.

    Args:
        model: a trained model (it is evaluated where it lives).
        data: the prepared data.
        split: "val" or "test".
        cfg: the training config (ks, protocol, eval_batch_users).
        tensors: `to_device(data, model.device)` when the caller already has it.
    """
    return evaluate_units(model, data, split, cfg, tensors)[0]


@torch.no_grad()
def evaluate_units(
    model: Recommender,
    data: PreparedData,
    split: str,
    cfg: TrainConfig,
    tensors: DeviceData | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """`evaluate`'s metrics, and each metric's value per evaluation unit (`split/name` ->
    `[n]`): per rating (squared and absolute errors) for rating models, per user with a
    target (full protocol) or per row (sampled) for rankings, in the data's order, so that
    two models evaluated on the same data pair up unit by unit (significance tests)."""
    _check_split(split)
    tensors = tensors or to_device(data, model.device)
    rows = getattr(tensors, split)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    if model.task == "rating":
        step = 8192  # rows per call: AutoRec's forward holds [rows, n_users] floats
        pred = torch.cat(
            [
                model(rows.user[i : i + step], rows.item[i : i + step])
                for i in range(0, len(rows), step)
            ]
        )  # [N]
        lo, hi = data.rating_range
        units = rating_errors(pred.float(), rows.rating, lo, hi)
        metrics = rating_summary(units)
        n_users = len(torch.unique(rows.user))
    else:
        seqs = tensors.last_items(split, model.seq_len) if model.seq_len > 0 else None

        def score_all(user: Tensor) -> Tensor:  # [b] -> [b, n_items]
            return model.score_all(user, None if seqs is None else seqs[user]).float()

        # users per scoring call: the config's, the model's own limit, and what keeps the
        # [users, items] scores (and mask) of one call near EVAL_CELLS cells at any catalogue
        batch = min(
            cfg.eval_batch_users,
            model.eval_batch_users or cfg.eval_batch_users,
            max(1, EVAL_CELLS // data.n_items),
        )
        # the full-ranking test pass keeps its top-K lists for the beyond-accuracy metrics (a
        # sampled list describes the sampler, not the catalogue)
        tops: list[Tensor] | None = [] if split == "test" and cfg.protocol == "full" else None
        if cfg.protocol == "full":
            users = torch.arange(data.n_users, device=tensors.device)
            units = full_ranking_per_user(
                score_all,
                users,
                tensors.targets(split),
                tensors.known(split),
                cfg.ks,
                batch,
                tops,
                cfg.ties,
            )
            n_users = tensors.n_target_users(split)
        elif cfg.protocol == "sampled":
            units = sampled_ranking_per_row(
                lambda u, c: score_all(u).gather(1, c),
                rows.user,
                rows.item,
                tensors.negatives(split),
                cfg.ks,
                batch,
                cfg.ties,
            )
            n_users = len(rows)
        else:
            raise ValueError(f"protocol {cfg.protocol!r}: expected 'full' or 'sampled'")
        metrics = means(units)
        if tops:
            metrics |= beyond_accuracy(torch.cat(tops), tensors.popularity(), data.n_users, cfg.ks)
    elapsed = time.perf_counter() - start
    model.train(was_training)
    out = {f"{split}/{k}": float(v) for k, v in metrics.items()}
    out[f"{split}/eval_users_per_s"] = n_users / max(elapsed, 1e-9)
    return out, {f"{split}/{k}": v.cpu().numpy() for k, v in units.items()}
