"""Popularity baseline: every user gets the items with the most training interactions.

For the rating task it is the damped item-mean baseline `mu + b_i`,
`b_i = sum_u (r_ui - mu) / (n_i + shrink)` (Koren, "Factor in the Neighbors", TKDD 2010,
without the user term), so rating tables also show what no personalisation achieves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from orchestrator.data.types import Split
from orchestrator.models.base import CommonParams, DataSpec, Recommender, check, check_common
from orchestrator.models.registry import register_model


@dataclass
class PopParams(CommonParams):
    """Hyperparameters of `pop` (the shared ones are unused: nothing is trained)."""

    shrink: float = 10.0
    """Rating task: pseudo-count pulling rarely rated items' bias towards 0."""

    def __post_init__(self) -> None:
        check_common(self)
        check(self, "shrink", self.shrink >= 0, "a float >= 0")


@register_model
class Pop(Recommender):
    """Scores each item by its training popularity (ranking) or damped mean rating (rating).

    Args:
        spec: the data spec.
        task: "ranking", "sequential" or "rating".
        params: `PopParams`.

    Example:
        >>> model = create_model("pop", DataSpec.from_data(data), task="ranking")
        >>> _ = model.examples(data.train.to("cpu"))  # counts the items
        >>> model.score_all(torch.tensor([0, 1])).shape
        torch.Size([2, 80])
    """

    name = "pop"
    tasks = ("ranking", "sequential", "rating")
    Params = PopParams
    learned = False
    item_score: Tensor  # buffer [n_items]

    def __init__(self, spec: DataSpec, task: str, params: PopParams) -> None:
        super().__init__(spec, task, params)
        self.register_buffer("item_score", torch.zeros(spec.n_items))  # [n_items]

    def examples(self, train: Split[Tensor]) -> dict[str, Tensor]:
        """Compute the item scores from `train`."""
        dev = self.item_score.device
        item = train.item.to(dev)
        count = torch.bincount(item, minlength=self.spec.n_items).float()  # [n_items]
        if self.task == "rating":
            dev_sum = torch.zeros_like(count).index_add_(
                0, item, train.rating.to(dev, torch.float32) - self.spec.global_mean
            )
            count = self.spec.global_mean + dev_sum / (count + self.params.shrink)
        self.item_score.copy_(count)
        return super().examples(train)

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        """Score `[B]` of each (user, item) pair (the user is ignored)."""
        return self.item_score[item]

    def score_all(self, user: Tensor, seq: Tensor | None = None) -> Tensor:
        # a fresh [B, n_items] tensor: an expanded view would let a caller's in-place masking
        # write into the model's counts
        return torch.zeros_like(user, dtype=self.item_score.dtype)[:, None] + self.item_score
