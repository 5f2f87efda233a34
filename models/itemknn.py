"""Item-based k-nearest-neighbours (Sarwar, Karypis, Konstan & Riedl, "Item-Based
Collaborative Filtering Recommendation Algorithms", WWW 2001; Deshpande & Karypis,
"Item-Based Top-N Recommendation Algorithms", TOIS 2004).

Cosine similarity between items' binary user vectors, each item keeping its k most
similar items; a user's score of item j sums the similarities between j and the user's
training items: `X[u] @ S`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from data.types import Split
from models.base import CommonParams, DataSpec, Recommender, check, check_common
from models.registry import register_model


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
    """Item-item cosine kNN for ranking.

    The interaction matrix `[n_users, n_items]` and the similarity matrix
    `[n_items, n_items]` are dense buffers: 6 MB + 11 MB for ml-100k, 90 MB + 55 MB for
    ml-1m; far larger catalogues would need sparse matrices.

    Args:
        spec: the data spec.
        task: "ranking".
        params: `ItemKNNParams`.

    Example:
        >>> model = create_model("itemknn", DataSpec(943, 1682), k=50)
        >>> _ = model.examples(data.train.to("cpu"))  # builds the similarities
        >>> model.score_all(torch.tensor([0, 1])).shape
        torch.Size([2, 1682])
    """

    name = "itemknn"
    tasks = ("ranking",)
    Params = ItemKNNParams
    learned = False

    def __init__(self, spec: DataSpec, task: str, params: ItemKNNParams) -> None:
        super().__init__(spec, task, params)
        self.register_buffer("interactions", torch.zeros(spec.n_users, spec.n_items))
        self.register_buffer("sim", torch.zeros(spec.n_items, spec.n_items))

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {"k": trial.suggest_int("k", 10, 500, log=True)}

    def examples(self, train: Split) -> dict[str, Tensor]:
        """Build the interaction and the pruned similarity matrices from `train`."""
        dev = self.sim.device
        X = self.interactions.zero_()
        X[train.user.to(dev), train.item.to(dev)] = 1.0  # [U, I], repeats count once
        norm = X.sum(0).sqrt().clamp(min=1e-12)  # [I] (binary: |x|^2 = count)
        S = (X.T @ X) / norm[:, None] / norm[None, :]  # [I, I] cosine
        S.fill_diagonal_(0.0)  # an item is not its own neighbour
        # Keep, for each target item j (column), its k most similar items.
        k = min(self.params.k, self.spec.n_items)
        top = S.topk(k, dim=0).indices  # [k, I]
        self.sim.zero_().scatter_(0, top, S.gather(0, top))
        return super().examples(train)

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        """Score `[B]` of each (user, item) pair."""
        return (self.interactions[user] * self.sim[:, item].T).sum(-1)  # [B]

    def score_all(self, user: Tensor, seq: Tensor | None = None) -> Tensor:
        return self.interactions[user] @ self.sim  # [B, n_items]
