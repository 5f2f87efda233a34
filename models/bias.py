"""The baseline predictor of rating prediction: `r_ui = mu + b_u + b_i`, regularised user and
item biases fitted by alternating least squares (Koren, "Factor in the Neighbors: Scalable
and Accurate Collaborative Filtering", TKDD 2010, section 2.1; the defaults are those of
Surprise's `BaselineOnly`). What a rating model must beat to show it learned more than who
rates high and what is rated high.
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
    check,
    check_common,
)
from orchestrator.models.registry import register_model


@dataclass
class BiasParams(CommonParams):
    """Hyperparameters of `bias` (the shared ones are unused: nothing is trained by SGD)."""

    reg_user: float = 15.0
    """Shrinkage of the user biases (pseudo-ratings at the global mean)."""
    reg_item: float = 10.0
    """Shrinkage of the item biases."""
    sweeps: int = 10
    """Alternating least-squares sweeps (items, then users)."""

    def __post_init__(self) -> None:
        check_common(self)
        check(self, "reg_user", self.reg_user >= 0, "a float >= 0")
        check(self, "reg_item", self.reg_item >= 0, "a float >= 0")
        check(self, "sweeps", self.sweeps >= 1, "an int >= 1")


@register_model
class Bias(Recommender):
    """Global mean plus regularised user and item biases, for rating prediction.

    Args:
        spec: the data spec (`global_mean` is `mu`).
        task: "rating".
        params: `BiasParams`.

    Example:
        >>> model = create_model("bias", DataSpec.from_data(data))
        >>> _ = model.examples(data.train.to("cpu"))  # fits the biases
        >>> model(torch.tensor([0, 1]), torch.tensor([5, 7])).shape
        torch.Size([2])
    """

    name = "bias"
    tasks = ("rating",)
    Params = BiasParams
    learned = False
    user_bias: Tensor  # buffer [n_users]
    item_bias: Tensor  # buffer [n_items]

    @classmethod
    def search_space(cls, trial: Trial, task: str) -> dict[str, Any]:
        """Both penalties, log-uniform over [0.1, 1000] pseudo-ratings (Surprise's 15 and 10
        inside)."""
        return {
            "reg_user": trial.suggest_float("reg_user", 0.1, 1000.0, log=True),
            "reg_item": trial.suggest_float("reg_item", 0.1, 1000.0, log=True),
        }

    def __init__(self, spec: DataSpec, task: str, params: BiasParams) -> None:
        super().__init__(spec, task, params)
        self.register_buffer("user_bias", torch.zeros(spec.n_users))  # [n_users]
        self.register_buffer("item_bias", torch.zeros(spec.n_items))  # [n_items]
        self.mu = spec.global_mean

    def examples(self, train: Split[Tensor]) -> dict[str, Tensor]:
        """Fit the biases on `train`: each sweep solves the items' biases given the users',
        then the users' given the items' (each a damped mean of the residuals)."""
        dev = self.user_bias.device
        user, item = train.user.to(dev), train.item.to(dev)
        residual = train.rating.to(dev, torch.float32) - self.mu  # [N]
        p = self.params
        n_u = torch.bincount(user, minlength=self.spec.n_users).float()  # [U]
        n_i = torch.bincount(item, minlength=self.spec.n_items).float()  # [I]
        bu, bi = torch.zeros_like(self.user_bias), torch.zeros_like(self.item_bias)
        for _ in range(p.sweeps):
            bi = torch.zeros_like(bi).index_add_(0, item, residual - bu[user]) / (p.reg_item + n_i)
            bu = torch.zeros_like(bu).index_add_(0, user, residual - bi[item]) / (p.reg_user + n_u)
        self.user_bias.copy_(bu)
        self.item_bias.copy_(bi)
        return super().examples(train)

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        """Predicted rating `[B]` of each (user, item) pair."""
        return self.mu + self.user_bias[user] + self.item_bias[item]

    def score_all(self, user: Tensor, seq: Tensor | None = None) -> Tensor:
        return self.mu + self.user_bias[user][:, None] + self.item_bias[None, :]  # [B, n_items]
