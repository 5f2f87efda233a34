"""Item-based k-nearest-neighbours (Sarwar, Karypis, Konstan & Riedl, "Item-Based
Collaborative Filtering Recommendation Algorithms", WWW 2001; Deshpande & Karypis,
"Item-Based Top-N Recommendation Algorithms", TOIS 2004), with the similarities, shrinkage
and feature weightings Dacrema et al. tune it over ("A Troubling Analysis of
Reproducibility and Progress in Recommender Systems Research", TOIS 2021).

Each item is a vector over the users (a column of the binary interactions X, optionally
re-weighted by TF-IDF or BM25, the users as terms); the similarity of items i and j, with
x_i . x_j their dot product, s_i = x_i . x_i and `shrink` h:

- cosine:     x_i . x_j / (sqrt(s_i s_j) + h)
- asymmetric: x_i . x_j / (s_i^a s_j^(1 - a) + h), a = `asymmetric_alpha` (0.5: cosine)
- jaccard:    x_i . x_j / (s_i + s_j - x_i . x_j + h) (on binary vectors |i & j| / |i | j|)

Each item keeps its k most similar items; a user's score of item j sums the similarities
between j and those of its neighbours the user has in training: `X[u] @ S` with S sparse.
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

SIMILARITIES = ("cosine", "asymmetric", "jaccard")
WEIGHTINGS = ("none", "tfidf", "bm25")
BM25_K1, BM25_B = 1.2, 0.75  # Okapi BM25's usual constants (Dacrema et al.'s too)


@dataclass
class ItemKNNParams(CommonParams):
    """Hyperparameters of `itemknn` (the shared ones are unused: nothing is trained)."""

    k: int = 100
    """Neighbours kept per item."""
    shrink: float = 0.0
    """Added to each similarity's denominator: pulls the similarity of items with few
    users towards 0."""
    similarity: str = "cosine"
    """cosine, asymmetric (cosine) or jaccard."""
    asymmetric_alpha: float = 0.5
    """The asymmetric cosine's exponent a (0.5 is the cosine)."""
    weighting: str = "none"
    """Re-weighting of the interactions before the similarity: none, tfidf or bm25."""

    def __post_init__(self) -> None:
        check_common(self)
        check(self, "k", self.k >= 1, "an int >= 1")
        check(self, "shrink", 0 <= self.shrink < float("inf"), "a finite float >= 0")
        check(self, "similarity", self.similarity in SIMILARITIES, " or ".join(SIMILARITIES))
        check(self, "asymmetric_alpha", 0 <= self.asymmetric_alpha <= 2, "a float in [0, 2]")
        check(self, "weighting", self.weighting in WEIGHTINGS, " or ".join(WEIGHTINGS))


@register_model
class ItemKNN(Recommender):
    """Item-item kNN for ranking, from a sparse similarity: each item keeps only its
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
        """Dacrema et al.'s ranges: neighbourhood 5..1000, shrinkage 0..1000, the similarity
        (and the asymmetric cosine's exponent in [0, 2], drawn always: one space, which
        multivariate TPE models whole), the feature weighting."""
        return {
            "k": trial.suggest_int("k", 5, 1000, log=True),
            "shrink": trial.suggest_float("shrink", 0.0, 1000.0),
            "similarity": trial.suggest_categorical("similarity", list(SIMILARITIES)),
            "asymmetric_alpha": trial.suggest_float("asymmetric_alpha", 0.0, 2.0),
            "weighting": trial.suggest_categorical("weighting", list(WEIGHTINGS)),
        }

    @property
    def eval_batch_users(self) -> int:
        """Users per `score_all` call: it gathers `[users, n_items, k]` weights at once."""
        return max(1, self.BLOCK_CELLS // (self.spec.n_items * self.neighbours.shape[1]))

    def examples(self, train: Split[Tensor]) -> dict[str, Tensor]:
        """Build the interactions and each item's `k` most similar items from `train`."""
        import numpy as np

        n_items, p = self.spec.n_items, self.params
        X = weighted(binary_interactions(self.spec, train, np.float32), p.weighting)  # [U, I]
        XT = X.T.tocsr()  # [I, U]
        sq = np.asarray(X.multiply(X).sum(0)).ravel()  # [I] s_i = x_i . x_i
        k = self.neighbours.shape[1]
        neighbours = np.zeros((n_items, k), np.int64)
        weights = np.zeros((n_items, k), np.float32)
        block = max(1, self.BLOCK_CELLS // n_items)
        for begin in range(0, n_items, block):
            rows = np.arange(begin, min(begin + block, n_items))
            sim = (XT[rows] @ X).toarray()  # [b, I] dot products
            if p.similarity == "cosine":
                den = np.sqrt(sq[rows, None] * sq[None, :])
            elif p.similarity == "asymmetric":
                a = p.asymmetric_alpha
                den = sq[rows, None] ** a * sq[None, :] ** (1 - a)
            else:  # jaccard
                den = sq[rows, None] + sq[None, :] - sim
            sim /= (den + p.shrink).clip(min=1e-12)
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


def weighted(X: Any, weighting: str) -> Any:
    """The interactions X (scipy CSR `[users, items]`) re-weighted with the users as terms
    and the items as documents: `tfidf` scales each entry by its item's length
    normalisation and its user's idf, log(items / (1 + the user's items)); `bm25` by
    Okapi BM25's saturation and length normalisation (k1 = 1.2, b = 0.75) and the same idf."""
    import numpy as np

    if weighting == "none":
        return X
    X = X.tocsr(copy=True).astype(np.float32)
    n_items = X.shape[1]
    idf = np.log(n_items / (1.0 + np.diff(X.indptr))).astype(np.float32)  # [U] per user row
    length = np.asarray(X.sum(0)).ravel()  # [I] each item's document length
    item = X.indices  # the column (item) of each entry
    user_idf = np.repeat(idf, np.diff(X.indptr))  # the idf of each entry's user
    if weighting == "tfidf":
        X.data = X.data / np.maximum(length[item], 1e-12) * user_idf
    else:  # bm25
        norm = BM25_K1 * (1 - BM25_B + BM25_B * length / max(length.mean(), 1e-12))  # [I]
        X.data = X.data * (BM25_K1 + 1) / (X.data + norm[item]) * user_idf
    return X
