"""PureSVD (Cremonesi, Koren & Turrin, "Performance of Recommender Algorithms on Top-N
Recommendation Tasks", RecSys 2010).

A truncated SVD of the training interactions, `X ≈ U Σ Qᵀ` with the `factors` leading
singular vectors; a user's scores are `X[u] @ Q @ Qᵀ`, the projection of their row onto the
item factors (so a new user is scored from their items with no refit). X is binary, as
for the other item models here (Cremonesi et al. factor the rating matrix).
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
class PureSVDParams(CommonParams):
    """Hyperparameters of `puresvd` (the shared ones are unused: nothing is trained)."""

    factors: int = 50
    """Singular vectors kept (Cremonesi et al.'s PureSVD50)."""
    seed: int = 0
    """Seed of the iterative SVD's start vector."""

    def __post_init__(self) -> None:
        check_common(self)
        check(self, "factors", self.factors >= 1, "an int >= 1")


@register_model
class PureSVD(Recommender):
    """Truncated SVD of the binary interactions, for ranking (scipy's `svds`, ARPACK).

    Args:
        spec: the data spec.
        task: "ranking".
        params: `PureSVDParams`.

    Example:
        >>> model = create_model("puresvd", DataSpec.from_data(data), factors=8)
        >>> _ = model.examples(data.train.to("cpu"))  # factors the interactions
        >>> model.score_all(torch.tensor([0, 1])).shape
        torch.Size([2, 80])
    """

    name = "puresvd"
    tasks = ("ranking",)
    Params = PureSVDParams
    learned = False
    interactions: Tensor  # buffer [n_users, n_items] bool
    item_factors: Tensor  # buffer [n_items, factors]

    def __init__(self, spec: DataSpec, task: str, params: PureSVDParams) -> None:
        super().__init__(spec, task, params)
        factors = max(1, min(params.factors, min(spec.n_users, spec.n_items) - 1))
        self.register_buffer(
            "interactions", torch.zeros(spec.n_users, spec.n_items, dtype=torch.bool)
        )
        self.register_buffer("item_factors", torch.zeros(spec.n_items, factors))

    @classmethod
    def search_space(cls, trial: Trial, task: str) -> dict[str, Any]:
        """The number of factors, 1..350, as Dacrema et al. search it."""
        return {"factors": trial.suggest_int("factors", 1, 350, log=True)}

    def examples(self, train: Split[Tensor]) -> dict[str, Tensor]:
        """Factor `train`'s binary interactions."""
        import numpy as np
        from scipy.sparse.linalg import svds

        X = binary_interactions(self.spec, train)  # [U, I]
        start = np.random.default_rng(self.params.seed).uniform(-1, 1, min(X.shape))
        _, _, vt = svds(X, k=self.item_factors.shape[1], v0=start)  # vt [factors, I]
        dev = self.item_factors.device
        self.item_factors.copy_(torch.from_numpy(vt.T.astype(np.float32)))
        self.interactions.zero_()[train.user.to(dev), train.item.to(dev)] = True  # [U, I]
        return super().examples(train)

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        """Score `[B]` of each (user, item) pair."""
        code = self.interactions[user].float() @ self.item_factors  # [B, factors]
        return (code * self.item_factors[item]).sum(-1)  # [B]

    def score_all(self, user: Tensor, seq: Tensor | None = None) -> Tensor:
        code = self.interactions[user].float() @ self.item_factors  # [B, factors]
        return code @ self.item_factors.T  # [B, n_items]

    def item_embeddings(self) -> Tensor:
        return self.item_factors
