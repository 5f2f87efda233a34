"""The model contract every registered recommender follows.

A model is a `torch.nn.Module` that declares its `name`, the `tasks` it supports, a
hyperparameter dataclass `Params`, an Optuna define-by-run `search_space` and its published
`recipes` (each inside that space, a registry test checks it). The split of
responsibilities is what makes one training loop and one ONNX exporter serve every model:

- `forward(...)` is pure inference scoring, the exact graph ONNX exports (no
  `self.training` branches, no sampling);
- `score_all(user[, seq])` scores every item for a batch of users (full ranking, top-K
  export);
- `examples(train)` turns the training split into aligned example tensors the loop slices
  into batches (and may register buffers the model needs at inference, e.g. AutoRec's
  rating matrix);
- `loss(batch)` holds everything only training needs: negatives, masks, regularisers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from orchestrator.data.types import PreparedData, Split

TASKS = ("rating", "ranking", "sequential")

Choice = None | bool | int | float | str
"""A categorical choice (Optuna's `CategoricalChoiceType`)."""


class Trial(Protocol):
    """What a define-by-run `search_space` may call on its trial: the `suggest_*` methods of
    Optuna's `BaseTrial` (which satisfies this), without importing Optuna."""

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int: ...

    def suggest_categorical(self, name: str, choices: Sequence[Choice]) -> Choice: ...


@dataclass(frozen=True)
class Recipe:
    """A configuration its authors (or the best reproduction) published: a sweep tries it
    right after the model's defaults, and `python -m orchestrator models` lists it.

    Args:
        name: short and unique within the model (`rendle2020`); the trials table's origin
            is `recipe:<name>`.
        task: the task it is for.
        source: the paper or code it comes from.
        tuned_on: the data and protocol its authors tuned it on.
        hparams: its hyperparameters; each one the model searches, inside that space, and
            unnamed ones take the model's defaults.
        epochs: the epochs it trains: a study's epoch budget is at least this.
        note: where it differs from the source, and why.
    """

    name: str
    task: str
    source: str
    tuned_on: str
    hparams: dict[str, Any]
    epochs: int
    note: str = ""


@dataclass(frozen=True)
class DataSpec:
    """The little a model needs to know about its data.

    Args:
        n_users: number of user indices.
        n_items: number of item indices (index `n_items` is free for padding).
        rating_range: (min, max) rating, for clipping rating predictions.
        global_mean: mean training rating (the bias term of rating models).
    """

    n_users: int
    n_items: int
    rating_range: tuple[float, float] = (1.0, 5.0)
    global_mean: float = 0.0

    @classmethod
    def from_data(cls, data: PreparedData) -> DataSpec:
        mean = float(data.train.rating.mean()) if len(data.train) else 0.0
        lo, hi = data.rating_range
        return cls(data.n_users, data.n_items, (lo, hi), mean)


@dataclass
class CommonParams:
    """Hyperparameters every model shares; the names mean the same thing everywhere."""

    task_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    """Per-task overrides of the defaults, e.g. `{"ranking": {"reg": 0.003}}`."""

    optimizer: str = "adam"
    """"adam", or "sgd": plain SGD whose `lr` is per training example (each step moves by
    `lr` times the batch's summed gradient, the per-example SGD of Koren's and Rendle's
    recipes taken a batch at a time); both step sparse tables sparsely."""
    lr: float = 1e-3
    """Learning rate (Adam's; with `optimizer="sgd"`, per example)."""
    weight_decay: float = 0.0
    """L2 penalty: by Adam on the dense parameters (coupled, not AdamW's decoupled), and in
    the loss on the rows of sparse embedding tables that a batch uses (`row_penalty`)."""
    batch_size: int = 1024
    """Training examples per step."""
    epochs: int = 20
    """Maximum number of passes over the training examples (early stopping may end sooner)."""
    negatives: int = 4
    """Sampled negative items per positive (implicit tasks only)."""


def check(params: CommonParams, key: str, ok: bool, expected: str) -> None:
    """Raise a ValueError naming a hyperparameter and what was expected of it."""
    if not ok:
        value = getattr(params, key)
        raise ValueError(f"hyperparameter {key}={value!r}: expected {expected}")


SPARSE_ROWS_PER_EXAMPLE = 16
"""A table steps sparsely once it has more rows than this many batches' examples: below,
a batch touches most rows anyway and dense fused Adam is faster; above, a sparse step
(`orchestrator.engine.optim.RowAdam`) costs what the batch touches, not the table."""


def embedding(rows: int, dim: int, batch_size: int, **kwargs: Any) -> nn.Embedding:
    """An embedding table, with sparse gradients when it is large for the batch
    (`SPARSE_ROWS_PER_EXAMPLE`); look rows up (`embedding(index)`) in `loss`, never read the
    whole weight there, so its gradient stays sparse."""
    return nn.Embedding(rows, dim, sparse=rows > SPARSE_ROWS_PER_EXAMPLE * batch_size, **kwargs)


def row_penalty(*uses: tuple[Sequence[nn.Module], Tensor]) -> Tensor:
    """The squared norm of the embedding rows a batch used, each row once: for each
    (tables, indices), the rows `indices` of every table. With sparse embedding tables (no
    optimizer weight decay: RowAdam has none) this is the `weight_decay` of dense Adam
    restricted to the rows the step touches, the rows it can change."""
    total = None
    for tables, index in uses:
        rows = torch.unique(index)
        for emb in tables:
            term = emb(rows).pow(2).sum()
            total = term if total is None else total + term
    assert total is not None, "row_penalty: no tables"
    return total


# the largest values that can finish: beyond them a run never ends or never fits in memory
MAX_EPOCHS, MAX_BATCH, MAX_NEGATIVES = 100_000, 2**24, 1_000


def check_common(p: CommonParams) -> None:
    check(p, "optimizer", p.optimizer in ("adam", "sgd"), "'adam' or 'sgd'")
    check(p, "lr", 0 < p.lr < math.inf, "a positive finite float")
    check(p, "weight_decay", 0 <= p.weight_decay < math.inf, "a finite float >= 0")
    check(p, "batch_size", 1 <= p.batch_size <= MAX_BATCH, f"an int from 1 to {MAX_BATCH:,}")
    check(p, "epochs", 1 <= p.epochs <= MAX_EPOCHS, f"an int from 1 to {MAX_EPOCHS:,}")
    check(p, "negatives", 1 <= p.negatives <= MAX_NEGATIVES, f"an int from 1 to {MAX_NEGATIVES:,}")


class Recommender(nn.Module):
    """Base class of all models.

    Subclasses set the class attributes and implement `forward`, `score_all`, `loss`
    (and override `examples` when their training examples are not (user, item) pairs).

    Args:
        spec: the data spec.
        task: one of `tasks`.
        params: an instance of `Params`.
    """

    name: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]]
    Params: ClassVar[type[CommonParams]] = CommonParams
    learned: ClassVar[bool] = True
    """False for baselines computed from counts: the loop evaluates them without training."""
    recipes: ClassVar[tuple[Recipe, ...]] = ()
    """Published configurations, tried first in a sweep after the defaults."""

    def __init__(self, spec: DataSpec, task: str, params: Any) -> None:
        super().__init__()
        self.check_data(spec)
        self.spec, self.task, self.params = spec, task, params

    @classmethod
    def check_data(cls, spec: DataSpec) -> None:
        """Raise a ValueError naming the limit when the model cannot be built for data of
        this size (a sweep asks before its search starts); most models can."""

    @classmethod
    def search_space(cls, trial: Trial, task: str) -> dict[str, Any]:
        """Optuna define-by-run space of `task`: `trial.suggest_*` calls only; returns the
        hparams."""
        return {}

    @property
    def seq_len(self) -> int:
        """> 0 when `score_all` takes each user's last `seq_len` items as a second input."""
        return 0

    @property
    def eval_batch_users(self) -> int | None:
        """At most this many users per `score_all` call in evaluation (None: no model limit)."""
        return None

    @property
    def n_negatives(self) -> int:
        """Negatives the loop samples per example into `batch["neg_item"]`, `[B, n]`."""
        return 0 if self.task == "rating" else self.params.negatives

    def examples(self, train: Split[Tensor]) -> dict[str, Tensor]:
        """Aligned training example tensors on the model's device; default (user, item, rating)."""
        return {"user": train.user, "item": train.item, "rating": train.rating}

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def pretrain(self, train: Callable[[Recommender], object]) -> None:
        """Before its own training, train and load parts of the model (`train(model)` runs
        the shared loop on another model); most models have nothing to pre-train."""

    def score_all(self, user: Tensor, seq: Tensor | None = None) -> Tensor:
        """Scores of every item for a batch of users: `[B] (, [B, L]) -> [B, n_items]`."""
        raise NotImplementedError

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (`engine.optim.make_optimizers` splits off the
        embedding tables); one group of every parameter unless a model says otherwise."""
        return [{"params": list(self.parameters())}]

    def hparams(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params)

    def item_embeddings(self) -> Tensor | None:
        """The learned vector of each item, `[n_items, d]`, for maps of the catalogue (the
        report's UMAP); None for models without one."""
        return None

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")


def binary_interactions(spec: DataSpec, train: Split[Tensor], dtype: Any = "float64") -> Any:
    """`train` as a scipy CSR `[n_users, n_items]` matrix of ones, each (user, item) pair
    once however often it repeats: what the item baselines are computed from."""
    import numpy as np
    import scipy.sparse as sp

    user, item = train.user.cpu().numpy(), train.item.cpu().numpy()
    X = sp.csr_matrix((np.ones(len(user), dtype), (user, item)), shape=(spec.n_users, spec.n_items))
    X.data[:] = 1.0  # repeats count once
    return X


class ItemToItem(Recommender):
    """A linear item-to-item model for ranking: a user's scores are `X[u] @ W`, X the binary
    training interactions (a `[n_users, n_items]` bool buffer) and W a dense `[n_items,
    n_items]` float32 matrix that a subclass computes from X in `item_weights` (its fit:
    nothing is trained). W's size grows with the catalogue squared, so a catalogue above
    `MAX_ITEMS` is refused when the model is built, before anything is allocated.
    """

    tasks = ("ranking",)
    learned = False
    MAX_ITEMS: ClassVar[int] = 30_000
    FIT_BYTES_PER_CELL: ClassVar[int] = 4
    """Peak bytes per `[n_items, n_items]` cell while fitting (the message of a refusal)."""
    interactions: Tensor  # buffer [n_users, n_items] bool
    weights: Tensor  # buffer [n_items, n_items]

    def __init__(self, spec: DataSpec, task: str, params: Any) -> None:
        super().__init__(spec, task, params)
        self.register_buffer(
            "interactions", torch.zeros(spec.n_users, spec.n_items, dtype=torch.bool)
        )
        self.register_buffer("weights", torch.zeros(spec.n_items, spec.n_items))

    @classmethod
    def check_data(cls, spec: DataSpec) -> None:
        if spec.n_items > cls.MAX_ITEMS:
            # the fit's item matrices and the [users, items] interactions (a byte a cell)
            gb = (spec.n_items**2 * cls.FIT_BYTES_PER_CELL + spec.n_users * spec.n_items) / 1e9
            raise ValueError(
                f"{cls.name}: {spec.n_items:,} items need a dense {spec.n_items:,} x "
                f"{spec.n_items:,} item matrix (about {gb:.0f} GB to fit); its limit is "
                f"{cls.MAX_ITEMS:,} items (filter the catalogue with --item-core)"
            )

    @property
    def eval_batch_users(self) -> int:
        """Users per `score_all` call: `[users, n_items]` float32 at about 256 MB."""
        return max(1, 2**26 // self.spec.n_items)

    def item_weights(self, X: Any) -> Tensor:
        """W `[n_items, n_items]` from the binary interactions X (scipy CSR, float64)."""
        raise NotImplementedError

    def examples(self, train: Split[Tensor]) -> dict[str, Tensor]:
        """Compute W from `train`'s binary interactions (each pair once)."""
        self.weights.copy_(self.item_weights(binary_interactions(self.spec, train)))
        dev = self.weights.device
        self.interactions.zero_()[train.user.to(dev), train.item.to(dev)] = True  # [U, I]
        return super().examples(train)

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        """Score `[B]` of each (user, item) pair: the user's items' weights towards `item`."""
        had = self.interactions[user].to(self.weights.dtype)  # [B, I]
        return (had * self.weights[:, item].T).sum(-1)  # [B]

    def score_all(self, user: Tensor, seq: Tensor | None = None) -> Tensor:
        return self.interactions[user].to(self.weights.dtype) @ self.weights  # [B, n_items]
