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

from orchestrator.data.sampling import csr_entries
from orchestrator.data.types import Split
from orchestrator.models.base import (
    CommonParams,
    DataSpec,
    Recipe,
    Recommender,
    Trial,
    check,
    check_common,
)
from orchestrator.models.registry import register_model


@dataclass
class AutoRecParams(CommonParams):
    """Hyperparameters of `autorec` (paper: 500 hidden units, lambda tuned per dataset).

    Adam instead of the paper's L-BFGS/RProp. Full-batch steps (`batch_size` >= items)
    overfit far less late in training than mini-batches, hence many cheap epochs; a much
    stronger `reg` underfits (the model has no item bias, so item effects pass through the
    penalised weights). Measurements: bench/RESULTS.md.
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
    """I-AutoRec for rating prediction, with a sparse input layer.

    Training reads each item's ratings from a CSR of the training ratings (`examples()`
    keeps it beside the model, not in its state): the encoder is an `EmbeddingBag` over the
    users, so `V r_i` is the rating-weighted sum of the rated users' rows, and the loss
    decodes only the observed entries `W[u] . h_i + b[u]`. Memory is O(ratings +
    parameters), never O(items x users). For inference the model keeps each item's hidden
    code `h_i = sigmoid(V r_i + mu)` as a buffer `codes [n_items, dim]`, recomputed from the
    CSR whenever the model enters eval mode (`model.eval()`), so `forward`, `score_all` and
    the ONNX graph need the weights and those codes only (no rating matrix).

    Args:
        spec: the data spec (`global_mean` is the fallback prediction).
        task: "rating".
        params: `AutoRecParams`.

    Example:
        >>> model = create_model("autorec", DataSpec.from_data(data))
        >>> model.examples(data.train.to("cpu"))["item"].shape  # arange(n_items)
        torch.Size([80])
        >>> model.eval()(torch.tensor([0, 1]), torch.tensor([5, 7])).shape
        torch.Size([2])
    """

    name = "autorec"
    tasks = ("rating",)
    Params = AutoRecParams
    # The loss decodes a batch densely (one GEMM, then the observed entries) when at least
    # 1 in DENSE_DECODE of its cells is observed, else entry by entry: the same values, the
    # cheaper way for the batch's density.
    DENSE_DECODE = 50
    codes: Tensor  # buffer [n_items, dim]: the items' hidden codes, set on entering eval
    item_seen: Tensor  # buffer [n_items] bool: the items with a training rating

    def __init__(self, spec: DataSpec, task: str, params: AutoRecParams) -> None:
        super().__init__(spec, task, params)
        # V [n_users, dim] and mu, initialised as nn.Linear(n_users, dim) would be (the same
        # draws in the same order), stored one row per user for the bag lookups
        dense = nn.Linear(spec.n_users, params.dim)
        self.encoder = nn.EmbeddingBag.from_pretrained(
            dense.weight.detach().T.contiguous(), freeze=False, mode="sum"
        )
        self.encoder_bias = nn.Parameter(dense.bias.detach().clone())  # [dim]
        self.decoder = nn.Linear(params.dim, spec.n_users)  # W [n_users, dim], b
        self.dropout = nn.Dropout(params.dropout)
        self.register_buffer("codes", torch.zeros(spec.n_items, params.dim))  # [I, dim]
        self.register_buffer("item_seen", torch.zeros(spec.n_items, dtype=torch.bool))
        self.csr: tuple[Tensor, Tensor, Tensor] | None = None  # indptr, users, ratings

    recipes = (
        Recipe(
            name="sedhain2015",
            task="rating",
            source="Sedhain, Menon, Sanner & Xie, WWW 2015 (I-AutoRec, 500 hidden units, lambda "
            "from {0.001, 0.01, 0.1, 1, 100, 1000}); lambda 1, Adam 1e-3, batches of 100 "
            "items from the TensorFlow reproduction gtshs2/Autorec",
            tuned_on="MovieLens 1M and 10M, random 90/10 splits, RMSE",
            hparams={"dim": 500, "reg": 1.0, "lr": 1e-3, "dropout": 0.0, "batch_size": 256},
            epochs=500,
            note="Adam for the paper's L-BFGS/RProp; batches of 256 items (the space's "
            "smallest) for 100",
        ),
    )

    @classmethod
    def search_space(cls, trial: Trial, task: str) -> dict[str, Any]:
        return {
            "dim": trial.suggest_categorical("dim", [100, 200, 500, 1000]),
            "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
            "reg": trial.suggest_float("reg", 1e-3, 1000.0, log=True),  # the paper's grid
            "dropout": trial.suggest_float("dropout", 0.0, 0.5),
            "batch_size": trial.suggest_categorical("batch_size", [256, 1024, 2048, 8192]),
        }

    def examples(self, train: Split[Tensor]) -> dict[str, Tensor]:
        """Keep `train` as a CSR by item (repeats of a pair: the last one counts, as the
        dense matrix had it); the examples are the item indices."""
        dev = self.codes.device
        item, user = train.item.to(dev), train.user.to(dev)
        rating = train.rating.to(dev, torch.float32)
        pair = item * self.spec.n_users + user  # [N] sorted by item, then user
        order = torch.argsort(pair, stable=True)
        pair, rating = pair[order], rating[order]
        last = torch.ones_like(pair, dtype=torch.bool)
        last[:-1] = pair[1:] != pair[:-1]  # the last of each run of equal pairs
        pair, rating = pair[last], rating[last]
        counts = torch.bincount(pair // self.spec.n_users, minlength=self.spec.n_items)
        indptr = torch.zeros(self.spec.n_items + 1, dtype=torch.long, device=dev)
        indptr[1:] = counts.cumsum(0)
        self.csr = (indptr, pair % self.spec.n_users, rating)
        self.item_seen.copy_(counts > 0)
        return {"item": torch.arange(self.spec.n_items, device=dev)}

    def _entries(self, item: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The observed entries of the given items: their row in `item` [E], user [E] and
        rating [E], and where each item's entries begin [B]."""
        if self.csr is None:
            raise ValueError("autorec: no training ratings; call examples(train) first")
        indptr, users, ratings = self.csr
        row, _, flat, count = csr_entries(indptr, item)  # [E], [E], [B]
        return row, users[flat], ratings[flat], count.cumsum(0) - count

    def encode(self, item: Tensor) -> Tensor:
        """Hidden codes `sigmoid(V r_i + mu)` `[B, dim]` of the given items (no dropout)."""
        _, user, rating, offsets = self._entries(item)
        vr = self.encoder(user, offsets, per_sample_weights=rating)  # [B, dim]
        return torch.sigmoid(vr + self.encoder_bias)

    def train(self, mode: bool = True) -> AutoRec:
        super().train(mode)
        if not mode and self.csr is not None:  # entering eval: codes of the current weights
            with torch.no_grad():
                self.codes.copy_(
                    self.encode(torch.arange(self.spec.n_items, device=self.codes.device))
                )
        return self

    def _fallback(self, pred: Tensor, item: Tensor) -> Tensor:
        # An item with no training rating has an all-zero input: its reconstruction was never
        # fitted to anything, so predict the global mean (better than the paper's default 3).
        seen = self.item_seen[item]  # [B] or [n_items]
        while seen.dim() < pred.dim():
            seen = seen.unsqueeze(-1)
        return torch.where(seen, pred, torch.full_like(pred, self.spec.global_mean))

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        """Predicted rating `[B]` of each (user, item) pair: `W[u] . h_i + b[u]`."""
        w = self.decoder.weight[user]  # [B, dim]
        pred = (self.codes[item] * w).sum(-1) + self.decoder.bias[user]  # [B]
        return self._fallback(pred, item)

    def score_all(self, user: Tensor, seq: Tensor | None = None) -> Tensor:
        pred = self.decoder.weight[user] @ self.codes.T + self.decoder.bias[user][:, None]
        items = torch.arange(self.spec.n_items, device=user.device)
        return self._fallback(pred.T, items).T  # [B, n_items]

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        item = batch["item"]  # [B]
        h = self.dropout(self.encode(item))  # [B, dim]
        row, user, rating, _ = self._entries(item)  # observed entries only, [E]
        if len(row) * self.DENSE_DECODE >= len(item) * self.spec.n_users:
            pred = self.decoder(h)[row, user]  # dense enough: one GEMM [B, U], then gather
        else:
            pred = (h[row] * self.decoder.weight[user]).sum(-1) + self.decoder.bias[user]
        penalty = self.encoder.weight.pow(2).sum() + self.decoder.weight.pow(2).sum()
        # The paper's objective over all items, scaled to this batch's share of it, per item.
        share = len(item) / self.spec.n_items
        return ((pred - rating).pow(2).sum() + share * self.params.reg / 2 * penalty) / len(item)
