"""RP3beta (Paudel, Christoffel, Newell & Bernstein, "Updatable, Accurate, Diverse, and
Scalable Recommendations for Interactive Applications", ACM TiiS 2017), as Dacrema et al.
("A Troubling Analysis of Reproducibility and Progress in Recommender Systems Research",
TOIS 2021) run it as a baseline.

A random walk of three steps, item -> user -> item, on the bipartite graph of the training
interactions: `W = P_iu^alpha @ P_ui^alpha`, where `P_ui` is each user's row of the binary
interactions divided by its degree and `P_iu` each item's column divided by its popularity,
each transition probability raised to `alpha`; column j of W is then divided by the
popularity of item j to the power `beta` (which demotes popular items). Each item keeps the
`k` largest entries of its row (itself excluded), optionally L1-normalised, and a user's
scores are `X[u] @ W`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from orchestrator.models.base import CommonParams, ItemToItem, Trial, check, check_common
from orchestrator.models.registry import register_model


@dataclass
class RP3betaParams(CommonParams):
    """Hyperparameters of `rp3beta` (the defaults: Dacrema et al.'s implementation's)."""

    k: int = 100
    """Entries kept per item's row of W."""
    alpha: float = 1.0
    """Power of each transition probability (1: the plain random walk)."""
    beta: float = 0.6
    """Power of the target item's popularity that divides its column (0: none)."""
    normalize: bool = True
    """L1-normalise each item's kept row."""

    def __post_init__(self) -> None:
        check_common(self)
        check(self, "k", self.k >= 1, "an int >= 1")
        check(self, "alpha", 0 <= self.alpha <= 2, "a float in [0, 2]")
        check(self, "beta", 0 <= self.beta <= 2, "a float in [0, 2]")


@register_model
class RP3beta(ItemToItem):
    """Item-to-item random-walk weights with a popularity penalty, for ranking; W is built
    a block of rows at a time (about 256 MB of float32 each) and stored dense.

    Args:
        spec: the data spec.
        task: "ranking".
        params: `RP3betaParams`.

    Example:
        >>> model = create_model("rp3beta", DataSpec.from_data(data), k=50, beta=0.5)
        >>> _ = model.examples(data.train.to("cpu"))  # the walk's weights
        >>> model.score_all(torch.tensor([0, 1])).shape
        torch.Size([2, 80])
    """

    name = "rp3beta"
    Params = RP3betaParams
    BLOCK_CELLS = 2**26

    @classmethod
    def search_space(cls, trial: Trial, task: str) -> dict[str, Any]:
        """Dacrema et al.'s ranges: neighbourhood 5..1000, alpha and beta in [0, 2]."""
        return {
            "k": trial.suggest_int("k", 5, 1000, log=True),
            "alpha": trial.suggest_float("alpha", 0.0, 2.0),
            "beta": trial.suggest_float("beta", 0.0, 2.0),
            "normalize": trial.suggest_categorical("normalize", [True, False]),
        }

    def item_weights(self, X: Any) -> Tensor:
        import numpy as np
        import scipy.sparse as sp

        p, n_items = self.params, self.spec.n_items
        popularity = np.asarray(X.sum(0)).ravel()  # [I]
        P_ui = (sp.diags(1.0 / np.asarray(X.sum(1)).ravel().clip(min=1.0)) @ X).tocsr()
        P_iu = (sp.diags(1.0 / popularity.clip(min=1.0)) @ X.T).tocsr()  # [I, U]
        P_ui.data **= p.alpha
        P_iu.data **= p.alpha
        penalty = np.where(popularity > 0, popularity.clip(min=1.0) ** -p.beta, 0.0)  # [I]
        k = min(p.k, n_items - 1)
        W = np.zeros((n_items, n_items), np.float32)
        block = max(1, self.BLOCK_CELLS // n_items)
        for begin in range(0, n_items, block):
            rows = np.arange(begin, min(begin + block, n_items))
            walk = (P_iu[rows] @ P_ui).toarray() * penalty[None, :]  # [b, I]
            walk[np.arange(len(rows)), rows] = 0.0  # an item is not its own neighbour
            top = np.argpartition(-walk, k - 1, axis=1)[:, :k]  # [b, k]
            kept = np.take_along_axis(walk, top, 1)
            if p.normalize:
                total = kept.sum(1, keepdims=True)
                kept = kept / np.where(total > 0, total, 1.0)
            W[rows[:, None], top] = kept
        return torch.from_numpy(W)
