"""EASE^R (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019).

A linear item-to-item model with a closed form: with X the binary `[U, I]` training
interactions and G = XᵀX, `P = (G + λI)^-1` and `B = I - P diag(1 / diag(P))`, so B's
diagonal is zero (an item does not predict itself) and a user's scores are `X[u] @ B`.
The fit is one `[I, I]` inverse: its cost grows with the catalogue squared (memory) and
cubed (time), not with the interactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from orchestrator.models.base import CommonParams, ItemToItem, Trial, check, check_common
from orchestrator.models.registry import register_model


@dataclass
class EASEParams(CommonParams):
    """Hyperparameters of `ease` (the shared ones are unused: nothing is trained)."""

    reg: float = 500.0
    """λ, added to the diagonal of XᵀX (Steck's choice on ML-20M: 500)."""

    def __post_init__(self) -> None:
        check_common(self)
        check(self, "reg", self.reg > 0, "a float > 0")


@register_model
class EASE(ItemToItem):
    """EASE^R for ranking: a dense item-to-item matrix in closed form, the inverse taken in
    float64 (torch's Cholesky) on the model's device from the sparse interactions' Gram
    matrix (two float64 `[I, I]` matrices at once, then the float32 weights).

    Args:
        spec: the data spec.
        task: "ranking".
        params: `EASEParams`.

    Example:
        >>> model = create_model("ease", DataSpec.from_data(data), reg=100.0)
        >>> _ = model.examples(data.train.to("cpu"))  # solves for the weights
        >>> model.score_all(torch.tensor([0, 1])).shape
        torch.Size([2, 80])
    """

    name = "ease"
    Params = EASEParams
    FIT_BYTES_PER_CELL = 2 * 8 + 4  # ml-20m's 26,744 items: 14 GB; the limit's 30,000: 18 GB
    BLOCK_CELLS = 2**26  # Gram cells computed at once (512 MB of float64)

    @classmethod
    def search_space(cls, trial: Trial, task: str) -> dict[str, Any]:
        """λ log-uniform over [1, 1e7], as Dacrema et al. search it."""
        return {"reg": trial.suggest_float("reg", 1.0, 1e7, log=True)}

    def item_weights(self, X: Any) -> Tensor:
        n = X.shape[1]
        gram = torch.empty(n, n, dtype=torch.float64, device=self.weights.device)  # [I, I]
        # XᵀX a block of columns at a time: the whole sparse product, nearly dense at
        # ml-20m's 26,744 items, held 9 GB beside the dense copy
        XT, columns = X.T.tocsr(), X.tocsc()
        block = max(1, self.BLOCK_CELLS // max(n, 1))
        for begin in range(0, n, block):
            part = (XT @ columns[:, begin : begin + block]).toarray()  # [I, b]
            gram[:, begin : begin + block] = torch.from_numpy(part)
        gram.diagonal().add_(self.params.reg)
        lower = torch.linalg.cholesky(gram)
        del gram
        P = torch.cholesky_inverse(lower)  # [I, I]
        del lower
        P.div_(-P.diagonal().clone()[None, :])  # column j divided by -P_jj
        P.diagonal().zero_()
        return P
