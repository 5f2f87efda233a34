"""Item-based AutoRec (Sedhain, Menon, Sanner & Xie, "AutoRec: Autoencoders Meet
Collaborative Filtering", WWW 2015).

Each item is an example: its vector of training ratings from all users `r_i` (0 where
unobserved) is encoded `h = sigmoid(V r_i + mu)`, dropped out, and decoded
`r_hat_i = W h + b` (identity output). The loss sees observed entries only, plus the
paper's `(lambda / 2) (||W||^2 + ||V||^2)`. The prediction for (user u, item i) is entry u of
item i's reconstruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from data.types import Split
from models.base import CommonParams, DataSpec, Recommender, check, check_common
from models.registry import register_model


@dataclass
class AutoRecParams(CommonParams):
    """Hyperparameters of `autorec` (paper: 500 hidden units, lambda tuned per dataset).

    The defaults reach test RMSE 0.898 on ml-100k u1 when refit on all of u1.base for the
    epochs validation picked (`refit`), 0.905 trained on the 90% of it left beside the
    validation carve-out (tuned there, with Adam instead of the paper's L-BFGS/RProp).
    Full-batch steps (`batch_size` >= items) overfit far less late in training than
    mini-batches (64-512 items: best ~0.90 near epoch 50, then 0.93+), hence many cheap
    epochs. Stronger `reg` (300+) underfits: the model has no item bias, so
    item effects must pass through the penalised weights.
    """

    lr: float = 3e-3
    batch_size: int = 2048
    epochs: int = 250
    dim: int = 500
    """Hidden units."""
    reg: float = 100.0
    """The paper's lambda: `(reg / 2) * (||W||^2 + ||V||^2)` over the whole objective."""
    dropout: float = 0.2
    """Dropout on the hidden layer."""

    def __post_init__(self) -> None:
        check_common(self)
        check(self, "dim", self.dim >= 1, "an int >= 1")
        check(self, "reg", self.reg >= 0, "a float >= 0")
        check(self, "dropout", 0 <= self.dropout < 1, "a float in [0, 1)")


@register_model
class AutoRec(Recommender):
    """I-AutoRec for rating prediction.

    The dense training rating matrix `[n_items, n_users]` is a buffer, filled by
    `examples()`, so inference and ONNX export need no data besides the model: 1682 x 943
    floats (6 MB) for ml-100k, 3706 x 6040 (90 MB) for ml-1m. Much larger catalogues would
    need a sparse input layer instead.

    Args:
        spec: the data spec (`global_mean` is the fallback prediction).
        task: "rating".
        params: `AutoRecParams`.

    Example:
        >>> model = create_model("autorec", DataSpec(943, 1682, global_mean=3.5))
        >>> ex = model.examples(data.train.to("cpu"))  # {"item": arange(n_items)}
        >>> model(torch.tensor([0, 1]), torch.tensor([5, 7])).shape
        torch.Size([2])
    """

    name = "autorec"
    tasks = ("rating",)
    Params = AutoRecParams

    def __init__(self, spec: DataSpec, task: str, params: AutoRecParams) -> None:
        super().__init__(spec, task, params)
        self.encoder = nn.Linear(spec.n_users, params.dim)  # V, mu
        self.decoder = nn.Linear(params.dim, spec.n_users)  # W, b
        self.dropout = nn.Dropout(params.dropout)
        self.register_buffer("ratings", torch.zeros(spec.n_items, spec.n_users))
        self.register_buffer("observed", torch.zeros(spec.n_items, spec.n_users, dtype=torch.bool))
        self.register_buffer("item_seen", torch.zeros(spec.n_items, dtype=torch.bool))

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {
            "dim": trial.suggest_categorical("dim", [100, 200, 500, 1000]),
            "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
            "reg": trial.suggest_float("reg", 1e-2, 100.0, log=True),
            "dropout": trial.suggest_float("dropout", 0.0, 0.5),
            "batch_size": trial.suggest_categorical("batch_size", [256, 1024, 2048]),
        }

    def examples(self, train: Split) -> dict[str, Tensor]:
        """Fill the rating-matrix buffers from `train`; the examples are the item indices."""
        dev = self.ratings.device
        item, user = train.item.to(dev), train.user.to(dev)
        self.ratings.zero_()
        self.ratings[item, user] = train.rating.to(dev, torch.float32)
        self.observed.zero_()
        self.observed[item, user] = True
        self.item_seen.copy_(self.observed.any(1))
        return {"item": torch.arange(self.spec.n_items, device=dev)}

    def hidden(self, item: Tensor) -> Tensor:
        """Dropped-out hidden codes `[B, dim]` of the given items."""
        return self.dropout(torch.sigmoid(self.encoder(self.ratings[item])))  # [B, dim]

    def reconstruct(self, item: Tensor) -> Tensor:
        """Decoded rating vectors `[B, n_users]` of the given items."""
        return self.decoder(self.hidden(item))  # [B, n_users]

    def _fallback(self, pred: Tensor, item: Tensor) -> Tensor:
        # An item with no training rating has an all-zero input: its reconstruction was never
        # fitted to anything, so predict the global mean (better than the paper's default 3).
        seen = self.item_seen[item]  # [B] or [n_items]
        while seen.dim() < pred.dim():
            seen = seen.unsqueeze(-1)
        return torch.where(seen, pred, torch.full_like(pred, self.spec.global_mean))

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        """Predicted rating `[B]` of each (user, item) pair."""
        # Only the user's output unit of each reconstruction: `W[u] . h_i + b[u]`.
        w = self.decoder.weight[user]  # [B, dim]
        pred = (self.hidden(item) * w).sum(-1) + self.decoder.bias[user]  # [B]
        return self._fallback(pred, item)

    def score_all(self, user: Tensor, seq: Tensor | None = None) -> Tensor:
        items = torch.arange(self.spec.n_items, device=user.device)
        rec = self._fallback(self.reconstruct(items), items)  # [n_items, n_users]
        return rec[:, user].T  # [B, n_items]

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        item = batch["item"]  # [B]
        err = (self.reconstruct(item) - self.ratings[item]) * self.observed[item]  # [B, U]
        penalty = self.encoder.weight.pow(2).sum() + self.decoder.weight.pow(2).sum()
        # The paper's objective over all items, scaled to this batch's share of it, per item.
        share = len(item) / self.spec.n_items
        return (err.pow(2).sum() + share * self.params.reg / 2 * penalty) / len(item)
