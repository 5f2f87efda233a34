"""iALS: implicit alternating least squares (Hu, Koren & Volinsky, "Collaborative Filtering
for Implicit Feedback Datasets", ICDM 2008), fitted by the `implicit` library (its
conjugate-gradient solver; on CUDA where its GPU build is installed).

Every (user, item) pair is a target, 1 for an observed pair and 0 otherwise, weighted by a
confidence: 1 + `alpha` for an observed pair, 1 for the rest; user and item factors
minimise the weighted squared error plus `regularization` times their squared norms, each
side solved in closed form given the other. A user's scores are `p_u @ Q^T`.
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
    Recipe,
    Recommender,
    Trial,
    binary_interactions,
    check,
    check_common,
)
from orchestrator.models.registry import register_model


@dataclass
class IALSParams(CommonParams):
    """Hyperparameters of `ials` (the shared ones are unused: `implicit` fits it)."""

    factors: int = 100
    """Latent factors per user and item (`implicit`'s default)."""
    regularization: float = 0.01
    """L2 penalty on the factors (`implicit`'s default)."""
    alpha: float = 40.0
    """An observed pair's confidence is 1 + alpha (Hu et al.'s choice: 40)."""
    iterations: int = 15
    """Alternating sweeps (users, then items); `implicit`'s default."""
    seed: int = 0
    """Seed of the initial factors."""

    def __post_init__(self) -> None:
        check_common(self)
        check(self, "factors", 1 <= self.factors <= 4096, "an int from 1 to 4,096")
        check(self, "regularization", 0 <= self.regularization < float("inf"), "a float >= 0")
        check(self, "alpha", 0 <= self.alpha < float("inf"), "a finite float >= 0")
        check(self, "iterations", 1 <= self.iterations <= 1000, "an int from 1 to 1,000")


RENDLE2022 = Recipe(
    name="rendle2022",
    task="ranking",
    source="Rendle, Krichene, Zhang & Koren, 'Revisiting the Performance of iALS on Item "
    "Recommendation Benchmarks', RecSys 2022",
    tuned_on="MovieLens 1M (NCF's files), sampled protocol",
    hparams={"factors": 192, "regularization": 0.007 / 0.3, "alpha": 1 / 0.3, "iterations": 12},
    epochs=12,
    note="their loss weighs every pair by 0.3 (the unobserved weight) and observed pairs by 1 "
    "more; divided by 0.3 that is `implicit`'s form with an observed confidence of 1 + 1/0.3 "
    "and a penalty of 0.007/0.3. Not matched: their penalty is scaled by each user's and "
    "item's frequency, their observed pairs are also pulled towards 0 by the all-pairs term "
    "(a target of 1/1.3 after the division, not 1), and they solve each step exactly where "
    "`implicit` takes conjugate-gradient steps",
)


@register_model
class IALS(Recommender):
    """iALS for ranking, fitted by `implicit` on the binary interactions.

    Args:
        spec: the data spec.
        task: "ranking".
        params: `IALSParams`.

    Example:
        >>> model = create_model("ials", DataSpec.from_data(data), factors=8, iterations=2)
        >>> _ = model.examples(data.train.to("cpu"))  # fits the factors
        >>> model.score_all(torch.tensor([0, 1])).shape
        torch.Size([2, 80])
    """

    name = "ials"
    tasks = ("ranking",)
    Params = IALSParams
    learned = False
    recipes = (RENDLE2022,)
    user_factors: Tensor  # buffer [n_users, factors]
    item_factors: Tensor  # buffer [n_items, factors]

    def __init__(self, spec: DataSpec, task: str, params: IALSParams) -> None:
        super().__init__(spec, task, params)
        self.register_buffer("user_factors", torch.zeros(spec.n_users, params.factors))
        self.register_buffer("item_factors", torch.zeros(spec.n_items, params.factors))

    @classmethod
    def check_data(cls, spec: DataSpec) -> None:
        try:
            import implicit  # noqa: F401
        except ImportError as e:
            raise ValueError(
                f"ials needs the `implicit` library ({e}): pip install implicit"
            ) from None

    @classmethod
    def search_space(cls, trial: Trial, task: str) -> dict[str, Any]:
        """Dacrema et al.'s ranges, widened to hold the defaults and the recipe: factors
        1..256, penalty 1e-5..100, confidence 1e-3..100 (log), 1..50 sweeps."""
        return {
            "factors": trial.suggest_int("factors", 1, 256, log=True),
            "regularization": trial.suggest_float("regularization", 1e-5, 100.0, log=True),
            "alpha": trial.suggest_float("alpha", 1e-3, 100.0, log=True),
            "iterations": trial.suggest_int("iterations", 1, 50),
        }

    def examples(self, train: Split[Tensor]) -> dict[str, Tensor]:
        """Fit the factors on `train`'s binary interactions (each pair once)."""
        import implicit.gpu
        from implicit.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        p = self.params
        gpu = self.user_factors.device.type == "cuda" and implicit.gpu.HAS_CUDA
        X = binary_interactions(self.spec, train, "float32")  # [U, I]
        with threadpool_limits(1, "blas"):  # implicit's threads, not BLAS's, share the CPUs
            als = AlternatingLeastSquares(
                factors=p.factors,
                regularization=p.regularization,
                alpha=1.0 + p.alpha,  # implicit's confidence of an observed pair
                iterations=p.iterations,
                random_state=p.seed,
                use_gpu=gpu,
                **({} if gpu else {"num_threads": torch.get_num_threads()}),
            )
            als.fit(X, show_progress=False)
        if gpu:
            als = als.to_cpu()
        self.user_factors.copy_(torch.as_tensor(als.user_factors))
        self.item_factors.copy_(torch.as_tensor(als.item_factors))
        return super().examples(train)

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        """Score `[B]` of each (user, item) pair."""
        return (self.user_factors[user] * self.item_factors[item]).sum(-1)

    def score_all(self, user: Tensor, seq: Tensor | None = None) -> Tensor:
        return self.user_factors[user] @ self.item_factors.T  # [B, n_items]

    def item_embeddings(self) -> Tensor:
        return self.item_factors
