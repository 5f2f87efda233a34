"""Caser (Tang & Wang, "Personalized Top-N Sequential Recommendation via Convolutional
Sequence Embedding", WSDM 2018).

The last L items' embeddings form an `L x d` "image". Horizontal filters of heights 1..L
(`n_h` each, ReLU, max-pooled over time) catch union-level and point-level sequential
patterns; vertical filters (`n_v`, spanning all L rows) are weighted sums of the L
embeddings. Their concatenation, after dropout, goes through a ReLU layer to `z`, which is
concatenated with the user's embedding and scored against every item by `W2`, `b2`. The
next T items are the positives; `negatives * T` sampled items the negatives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orchestrator.data.sampling import gather_windows, window_starts
from orchestrator.data.types import Split
from orchestrator.models.base import (
    CommonParams,
    DataSpec,
    Recipe,
    Recommender,
    Trial,
    check,
    check_common,
    embedding,
    row_penalty,
)
from orchestrator.models.registry import register_model


@dataclass
class CaserParams(CommonParams):
    """Hyperparameters of `caser`; defaults from the paper and its code."""

    lr: float = 1e-3
    weight_decay: float = 1e-6
    batch_size: int = 512
    epochs: int = 50
    negatives: int = 3
    """Negatives per target item (the loop samples `negatives * T` per window)."""
    dim: int = 50
    """Item and user embedding size d."""
    L: int = 5
    """Items in the input window."""
    T: int = 3
    """Next items predicted per window."""
    n_v: int = 4
    """Vertical filters."""
    n_h: int = 16
    """Horizontal filters of each height 1..L."""
    dropout: float = 0.5
    """Dropout on the convolution features."""

    def __post_init__(self) -> None:
        check_common(self)
        check(self, "dim", self.dim >= 1, "an int >= 1")
        check(self, "L", self.L >= 1, "an int >= 1")
        check(self, "T", self.T >= 1, "an int >= 1")
        check(self, "n_v", self.n_v >= 0, "an int >= 0")
        check(self, "n_h", self.n_h >= 0, "an int >= 0")
        check(self, "n_h", self.n_h + self.n_v >= 1, "n_h + n_v >= 1")
        check(self, "dropout", 0 <= self.dropout < 1, "a float in [0, 1)")


@register_model
class Caser(Recommender):
    """Convolutional sequence embedding for next-item recommendation.

    Args:
        spec: the data spec; item index `n_items` is the padding of short histories.
        task: "sequential".
        params: `CaserParams`.

    Example:
        >>> model = create_model("caser", DataSpec(943, 1682))
        >>> seq = torch.full((2, model.seq_len), 1682)  # [B, L], all padding
        >>> model.score_all(torch.tensor([0, 1]), seq).shape
        torch.Size([2, 1682])
    """

    name = "caser"
    tasks = ("sequential",)
    Params = CaserParams

    def __init__(self, spec: DataSpec, task: str, params: CaserParams) -> None:
        super().__init__(spec, task, params)
        d, L = params.dim, params.L
        # large tables step sparsely: only the rows a batch used (RowAdam in the loop)
        b = params.batch_size
        self.user_emb = embedding(spec.n_users, d, b)
        self.item_emb = embedding(spec.n_items + 1, d, b, padding_idx=spec.n_items)
        # A vertical filter spanning all L rows is a weighted sum of the L embeddings.
        self.vertical = nn.Linear(L, params.n_v)
        # One conv per height over [B, d, L] (channels = embedding), each a single batched op.
        self.horizontal = nn.ModuleList(
            nn.Conv1d(d, params.n_h, kernel_size=h) for h in range(1, L + 1)
        )
        self.dropout = nn.Dropout(params.dropout)
        self.fc = nn.Linear(params.n_v * d + params.n_h * L, d)
        self.W2 = embedding(spec.n_items + 1, 2 * d, b)
        self.b2 = embedding(spec.n_items + 1, 1, b)
        # The paper's code: N(0, 1/d) embeddings, N(0, 1/2d) output weights, zero output bias.
        nn.init.normal_(self.user_emb.weight, std=1.0 / d)
        nn.init.normal_(self.item_emb.weight, std=1.0 / d)
        nn.init.normal_(self.W2.weight, std=1.0 / (2 * d))
        nn.init.zeros_(self.b2.weight)
        with torch.no_grad():
            self.item_emb.weight[spec.n_items].zero_()

    @property
    def seq_len(self) -> int:
        return self.params.L

    @property
    def n_negatives(self) -> int:
        return self.params.negatives * self.params.T

    recipes = (
        Recipe(
            name="tang2018",
            task="sequential",
            source="Tang & Wang, WSDM 2018, and the authors' code (graytowne/caser_pytorch)",
            tuned_on="MovieLens-1M (and Gowalla, Foursquare, Tmall): 70/10/20 of each user's "
            "sequence in time, MAP and Prec@N",
            hparams={
                "dim": 50,
                "L": 5,
                "n_h": 16,
                "n_v": 4,
                "dropout": 0.5,
                "lr": 1e-3,
                "weight_decay": 1e-6,
                "negatives": 3,
                "batch_size": 512,
            },
            epochs=50,
        ),
    )

    @classmethod
    def search_space(cls, trial: Trial, task: str) -> dict[str, Any]:
        # the paper's grids: d, L, n_v and n_h as its figures 5 and 6 vary them
        return {
            "dim": trial.suggest_categorical("dim", [10, 20, 30, 50, 100]),
            "L": trial.suggest_int("L", 1, 9),
            "n_h": trial.suggest_categorical("n_h", [4, 8, 16, 32, 64]),
            "n_v": trial.suggest_categorical("n_v", [1, 2, 4, 8, 16]),
            "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-8, 1e-4, log=True),
            "dropout": trial.suggest_float("dropout", 0.0, 0.7),
            "negatives": trial.suggest_int("negatives", 1, 5),
            "batch_size": trial.suggest_categorical("batch_size", [256, 512, 2048, 8192]),
        }

    def examples(self, train: Split[Tensor]) -> dict[str, Tensor]:
        """Sliding windows, as `user [W]` and the row `at [W]` of each window's first target:
        the loss gathers a batch's `seq [B, L]` and `target [B, T]` from the time-ordered
        items kept beside the model (O(interactions) memory, not O(interactions x L))."""
        user, at, item, pos = window_starts(train, self.params.T)
        self.history = (item, pos)
        return {"user": user, "at": at}

    def windows(self, at: Tensor) -> tuple[Tensor, Tensor]:
        """`seq [B, L]` and `target [B, T]` of the windows starting at rows `at`."""
        return gather_windows(*self.history, at, self.params.L, self.params.T, self.spec.n_items)

    def features(self, user: Tensor, seq: Tensor) -> Tensor:
        """The `[B, 2d]` vector `[z, P_u]` that is scored against the items."""
        E = self.item_emb(seq).transpose(1, 2)  # [B, d, L]
        out_v = self.vertical(E).flatten(1)  # [B, d * n_v]
        out_h = [F.relu(conv(E)).amax(-1) for conv in self.horizontal]  # L x [B, n_h]
        x = self.dropout(torch.cat([out_v, *out_h], 1))  # [B, n_v d + n_h L]
        z = F.relu(self.fc(x))  # [B, d]
        return torch.cat([z, self.user_emb(user)], 1)  # [B, 2d]

    def forward(self, user: Tensor, seq: Tensor, item: Tensor) -> Tensor:
        """Logit `[B]` of each user's next item being `item`, given the last L items `seq`."""
        x = self.features(user, seq)  # [B, 2d]
        return (x * self.W2(item)).sum(-1) + self.b2(item).squeeze(-1)

    def score_all(self, user: Tensor, seq: Tensor | None = None) -> Tensor:
        if seq is None:
            raise ValueError("caser.score_all needs seq, each user's last L items [B, L]")
        n = self.spec.n_items
        x = self.features(user, seq)  # [B, 2d]
        return x @ self.W2.weight[:n].T + self.b2.weight[:n, 0]  # [B, n_items]

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        seq, target = self.windows(batch["at"])  # [B, L], [B, T]
        neg = batch["neg_item"]  # [B, n T]
        x = self.features(batch["user"], seq)  # [B, 2d]
        items = torch.cat([target, neg], 1)  # [B, T + n T]
        logits = torch.einsum("bd,bkd->bk", x, self.W2(items)) + self.b2(items).squeeze(-1)
        T = target.shape[1]
        # The paper's code: mean log loss of the positives plus that of the negatives.
        loss = -F.logsigmoid(logits[:, :T]).mean() - F.logsigmoid(-logits[:, T:]).mean()
        if self.params.weight_decay > 0:  # L2 on the embedding rows this batch used
            loss = loss + self.params.weight_decay / 2 * row_penalty(
                ([self.user_emb], batch["user"]),
                ([self.item_emb], seq),
                ([self.W2, self.b2], items),
            )
        return loss
