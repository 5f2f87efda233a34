"""Item-based k-nearest-neighbours (Sarwar, Karypis, Konstan & Riedl, "Item-Based
Collaborative Filtering Recommendation Algorithms", WWW 2001; Deshpande & Karypis,
"Item-Based Top-N Recommendation Algorithms", TOIS 2004).

Cosine similarity between items' binary user vectors, each item keeping its k most
similar items; a user's score of item j sums the similarities between j and those of its
neighbours the user has in training: `X[u] @ S` with S sparse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from orchestrator.data.types import Split
from orchestrator.models.base import (
    CommonParams,
    DataSpec,
    Recommender,
    Trial,
    binary_interactions,
    check,
    check_common,
)
from orchestrator.models.registry import register_model


@dataclass
class ItemKNNParams(CommonParams):
    """Hyperparameters of `itemknn` (the shared ones are unused: nothing is trained)."""

    k: int = 100
    """Neighbours kept per item."""

    def __post_init__(self) -> None:
        check_common(self)
        check(self, "k", self.k >= 1, "an int >= 1")


@register_model
class ItemKNN(Recommender):
    """Item-item cosine kNN for ranking, from a sparse similarity: each item keeps only its
    `k` nearest items, as an `[n_items, k]` table of neighbours and weights, so the
    similarity costs O(items x k) memory, not O(items^2) (ml-20m: 27k x 100, not 27k^2).

    The similarities are computed on the CPU (scipy.sparse), a block of items at a time, so
    the co-occurrence counts never need more than about 256 MB. The training interactions
    stay a dense `[n_users, n_items]` bool buffer (1 byte a cell: 1.6 MB on ml-100k, 22 MB on
    ml-1m), which `score_all` reads a batch of users at a time.

    Args:
        spec: the data spec.
        task: "ranking".
        params: `ItemKNNParams`.

    Example:
        >>> model = create_model("itemknn", DataSpec.from_data(data), k=50)
        >>> _ = model.examples(data.train.to("cpu"))  # builds the similarities
        >>> model.score_all(torch.tensor([0, 1])).shape
        torch.Size([2, 80])
    """

    name = "itemknn"
    tasks = ("ranking",)
    Params = ItemKNNParams
    learned = False
    BLOCK_CELLS = 2**26  # co-occurrence counts computed at once (float32: 256 MB)
    interactions: Tensor  # buffer [n_users, n_items] bool
    neighbours: Tensor  # buffer [n_items, k]
    weights: Tensor  # buffer [n_items, k]

    def __init__(self, spec: DataSpec, task: str, params: ItemKNNParams) -> None:
        super().__init__(spec, task, params)
        k = min(params.k, max(spec.n_items - 1, 1))
        self.register_buffer(
            "interactions", torch.zeros(spec.n_users, spec.n_items, dtype=torch.bool)
        )
        self.register_buffer("neighbours", torch.zeros(spec.n_items, k, dtype=torch.long))
        self.register_buffer("weights", torch.zeros(spec.n_items, k))  # [n_items, k]

    @classmethod
    def search_space(cls, trial: Trial, task: str) -> dict[str, Any]:
        return {"k": trial.suggest_int("k", 10, 500, log=True)}

    @property
    def eval_batch_users(self) -> int:
        """Users per `score_all` call: it gathers `[users, n_items, k]` weights at once."""
        return max(1, self.BLOCK_CELLS // (self.spec.n_items * self.neighbours.shape[1]))

    def examples(self, train: Split[Tensor]) -> dict[str, Tensor]:
        """Build the interactions and each item's `k` most similar items from `train`."""
        import numpy as np

        n_items = self.spec.n_items
        X = binary_interactions(self.spec, train, np.float32)  # [U, I]
        XT = X.T.tocsr()  # [I, U]
        norm = np.sqrt(np.asarray(X.sum(0)).ravel()).clip(min=1e-12)  # [I] |x|^2 = count
        k = self.neighbours.shape[1]
        neighbours = np.zeros((n_items, k), np.int64)
        weights = np.zeros((n_items, k), np.float32)
        block = max(1, self.BLOCK_CELLS // n_items)
        for begin in range(0, n_items, block):
            rows = np.arange(begin, min(begin + block, n_items))
            sim = (XT[rows] @ X).toarray()  # [b, I] co-occurrences
            sim /= norm[rows, None] * norm[None, :]  # cosine
            sim[np.arange(len(rows)), rows] = 0.0  # an item is not its own neighbour
            top = (
                np.argpartition(-sim, k - 1, axis=1)[:, :k]
                if k < n_items
                else np.argsort(-sim, axis=1)[:, :k]
            )  # [b, k]
            neighbours[rows], weights[rows] = top, np.take_along_axis(sim, top, 1)
        dev = self.weights.device
        self.neighbours.copy_(torch.from_numpy(neighbours))
        self.weights.copy_(torch.from_numpy(weights))
        self.interactions.zero_()[train.user.to(dev), train.item.to(dev)] = True  # [U, I]
        return super().examples(train)

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        """Score `[B]` of each (user, item) pair: the similarities of `item`'s neighbours
        that the user has."""
        had = self.interactions[user[:, None], self.neighbours[item]]  # [B, k]
        return (had * self.weights[item]).sum(-1)  # [B]

    def score_all(self, user: Tensor, seq: Tensor | None = None) -> Tensor:
        had = self.interactions[user][:, self.neighbours]  # [B, n_items, k]
        return (had * self.weights).sum(-1)  # [B, n_items]
