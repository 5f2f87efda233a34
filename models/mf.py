"""Biased matrix factorization.

Rating task (Koren, Bell & Volinsky, "Matrix Factorization Techniques for Recommender
Systems", IEEE Computer 2009): `r_ui = mu + b_u + b_i + p_u . q_i`, squared error on
observed ratings. Ranking task (Rendle et al., "BPR: Bayesian Personalized Ranking from
Implicit Feedback", UAI 2009): `s_ui = b_i + p_u . q_i` (a user bias shifts all of a user's
scores equally, so it cannot change a ranking), trained with BPR or pointwise BCE against
sampled negatives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orchestrator.models.base import (
    CommonParams,
    DataSpec,
    Recipe,
    Recommender,
    Trial,
    check,
    check_common,
    embedding,
)
from orchestrator.models.registry import register_model


@dataclass
class MFParams(CommonParams):
    """Hyperparameters of `mf`.

    The defaults reach test RMSE 0.924 on ml-100k u1 (rating; best epoch 19) with Adam; ranking
    (BPR) wants a weaker penalty (its loss and gradients are smaller than squared rating
    errors, and each example penalises 1 + negatives item rows): 0.003 beat 0.01 and 0.03
    on ml-100k leave-last-out.
    """

    task_defaults: ClassVar[dict[str, dict[str, Any]]] = {"ranking": {"reg": 0.003}}

    lr: float = 5e-3
    batch_size: int = 1024
    epochs: int = 100
    """At most; early stopping ends the defaults near epoch 30 (rating) or 20 (ranking), and
    leaves room to slower configurations of a sweep (plain SGD, a small lr)."""
    dim: int = 64
    """Latent factors per user and item."""
    reg: float = 0.1
    """L2 penalty on the user and item factors of each batch (ranking default: 0.003),
    added to the loss as in Koren's SGD: rows are penalised when they are used, so rare
    users and items are not shrunk to zero by steps they take no part in, as optimizer
    weight decay would do."""
    bias_reg: float = 0.0
    """The same per-use L2 penalty on the biases (Koren's separate bias penalty)."""
    loss: str = "bpr"
    """Ranking loss: "bpr" (pairwise) or "bce" (pointwise). Rating always uses MSE."""

    def __post_init__(self) -> None:
        check_common(self)
        check(self, "dim", self.dim >= 1, "an int >= 1")
        check(self, "reg", self.reg >= 0, "a float >= 0")
        check(self, "bias_reg", self.bias_reg >= 0, "a float >= 0")
        check(self, "loss", self.loss in ("bpr", "bce"), "'bpr' or 'bce'")
        check(
            self,
            "weight_decay",
            self.weight_decay == 0,
            "0: mf is embedding tables only, regularised per row by `reg`",
        )


# Our squared error and penalty are not halved (`err^2 + reg |p|^2`), Surprise's and
# Rendle's updates are the gradients of halved ones: the same steps need half their lr.
KOREN = Recipe(
    name="surprise-svd",
    task="rating",
    source="Koren, Bell & Volinsky, IEEE Computer 2009 (biased MF, per-rating SGD, separate "
    "bias and factor penalties); values of Surprise's SVD (Hug, JOSS 2020)",
    tuned_on="MovieLens 100K and 1M, 5-fold rating prediction (RMSE 0.934 on ml-100k)",
    hparams={
        "optimizer": "sgd",
        "lr": 0.0025,
        "reg": 0.02,
        "bias_reg": 0.02,
        "dim": 128,
        "batch_size": 256,
    },
    epochs=20,
    note="lr 0.0025 is Surprise's 0.005 on an unhalved squared error; 128 factors for its "
    "100 (the space's nearest); batches of 256 ratings for its one",
)
GMF = Recipe(
    name="he2017-gmf",
    task="ranking",
    source="He, Liao, Zhang, Nie, Hu & Chua, 'Neural Collaborative Filtering', WWW 2017: GMF, "
    "the authors' README (hexiangnan/neural_collaborative_filtering)",
    tuned_on="MovieLens-1M and Pinterest, leave-one-out, HR@10 and NDCG@10 over 100 sampled "
    "candidates",
    hparams={
        "optimizer": "adam",
        "loss": "bce",
        "negatives": 4,
        "lr": 0.001,
        "reg": 1e-4,
        "dim": 64,
        "batch_size": 256,
    },
    epochs=20,
    note="a dot product with an item bias for GMF's learned output weights; 64 factors (the "
    "paper's largest, its best) for the README's 8; reg 1e-4 (the space's least) for 0",
)
RENDLE = Recipe(
    name="rendle2020",
    task="ranking",
    source="Rendle, Krichene, Zhang & Anderson, 'Neural Collaborative Filtering vs. Matrix "
    "Factorization Revisited', RecSys 2020 (google-research dot_vs_learned_similarity)",
    tuned_on="the NCF authors' MovieLens-1M and Pinterest files, HR@10 over 100 sampled candidates",
    hparams={
        "optimizer": "sgd",
        "loss": "bce",
        "negatives": 8,
        "lr": 0.002,
        "reg": 0.0025,
        "bias_reg": 0.0025,
        "dim": 192,
        "batch_size": 256,
    },
    epochs=256,
    note="reg 0.0025 is their 0.005 on an unhalved penalty; a user's row is penalised once "
    "per positive, not once per each of its 1 + 8 examples; batches of 256 positives "
    "for their one",
)


@register_model
class MF(Recommender):
    """Biased matrix factorization for rating prediction and ranking.

    Args:
        spec: the data spec (`global_mean` is the rating model's intercept).
        task: "rating" or "ranking".
        params: `MFParams`.

    Example:
        >>> model = create_model("mf", DataSpec(943, 1682, global_mean=3.5), task="rating")
        >>> model(torch.tensor([0, 1]), torch.tensor([5, 7])).shape
        torch.Size([2])
    """

    name = "mf"
    tasks = ("rating", "ranking")
    Params = MFParams

    def __init__(self, spec: DataSpec, task: str, params: MFParams) -> None:
        super().__init__(spec, task, params)
        # large tables step sparsely: only the rows a batch used (RowAdam in the loop)
        b = params.batch_size
        self.user_emb = embedding(spec.n_users, params.dim, b)
        self.item_emb = embedding(spec.n_items, params.dim, b)
        self.user_bias = embedding(spec.n_users, 1, b)
        self.item_bias = embedding(spec.n_items, 1, b)
        # Small factors so the initial prediction is about the global mean (rating) or 0.
        nn.init.normal_(self.user_emb.weight, std=0.1)
        nn.init.normal_(self.item_emb.weight, std=0.1)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        self.mu = spec.global_mean if task == "rating" else 0.0

    recipes = (KOREN, GMF, RENDLE)  # each inside the space below

    @classmethod
    def search_space(cls, trial: Trial, task: str) -> dict[str, Any]:
        space = {
            "optimizer": trial.suggest_categorical("optimizer", ["adam", "sgd"]),
            "dim": trial.suggest_categorical("dim", [8, 16, 32, 64, 128, 192, 256]),
            "lr": trial.suggest_float("lr", 1e-4, 3e-2, log=True),
            "reg": trial.suggest_float("reg", 1e-4, 0.3, log=True),
            "bias_reg": trial.suggest_categorical("bias_reg", [0.0, 0.0025, 0.02, 0.1]),
            "batch_size": trial.suggest_categorical("batch_size", [256, 1024, 4096, 16384]),
        }
        if task == "ranking":
            space["loss"] = trial.suggest_categorical("loss", ["bpr", "bce"])
            space["negatives"] = trial.suggest_int("negatives", 1, 16, log=True)
        return space

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        """Score `[B]` of each (user, item) pair: a rating, or a ranking logit."""
        dot = (self.user_emb(user) * self.item_emb(item)).sum(-1)  # [B]
        score = dot + self.item_bias(item).squeeze(-1)  # item bias by ITEM id
        if self.task == "rating":  # fixed at construction: not a training branch
            score = score + self.user_bias(user).squeeze(-1) + self.mu
        return score

    def score_all(self, user: Tensor, seq: Tensor | None = None) -> Tensor:
        scores = self.user_emb(user) @ self.item_emb.weight.T  # [B, n_items]
        scores = scores + self.item_bias.weight.T  # [1, n_items]
        if self.task == "rating":
            scores = scores + self.user_bias(user) + self.mu  # [B, 1] broadcast
        return scores

    def item_embeddings(self) -> Tensor:
        return self.item_emb.weight.detach()  # [n_items, dim]

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """MSE (rating) or BPR/BCE over sampled negatives (ranking), plus an L2 penalty on the
        factor rows the batch uses, and on its biases with `bias_reg` (0 by default: one
        number per user or item hardly overfits, and on ml-100k penalising them made RMSE
        no better). Each row is gathered once: the lookups and their scatter-add backward
        are most of the cost."""
        user, item = batch["user"], batch["item"]  # [B], [B]
        p = self.user_emb(user)  # [B, d]
        if self.task == "rating":
            q = self.item_emb(item)  # [B, d]
            pred = (
                (p * q).sum(-1)
                + self.item_bias(item).squeeze(-1)
                + self.user_bias(user).squeeze(-1)
                + self.mu
            )  # [B]
            l2 = p.pow(2).sum(-1) + q.pow(2).sum(-1)  # [B]
            loss = ((pred - batch["rating"]).pow(2) + self.params.reg * l2).mean()
            return loss + self._bias_penalty(user, item)
        items = torch.cat([item[:, None], batch["neg_item"]], 1)  # [B, 1 + n]
        q = self.item_emb(items)  # [B, 1 + n, d]
        # vecdot and vector_norm: on a CPU, the elementwise products and sums they replace
        # (and bmm before them) took a third longer for a BPR step's forward and backward
        scores = torch.linalg.vecdot(q, p[:, None, :]) + self.item_bias(items).squeeze(-1)
        pos, negs = scores[:, 0], scores[:, 1:]  # [B], [B, n]
        if self.params.loss == "bpr":
            fit = -F.logsigmoid(pos[:, None] - negs).mean(-1)  # [B]
        else:
            fit = F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), reduction="none")
            fit = fit + F.binary_cross_entropy_with_logits(
                negs, torch.zeros_like(negs), reduction="none"
            ).sum(-1)  # [B]
        l2 = torch.linalg.vector_norm(p).square() + torch.linalg.vector_norm(q).square()
        # the rows' penalty, per example
        return fit.mean() + self.params.reg * l2 / len(user) + self._bias_penalty(user, items)

    def _bias_penalty(self, user: Tensor, item: Tensor) -> Tensor | float:
        """`bias_reg` times the squared biases a batch used, per example (0 when off); the
        user bias only where the score has one (rating)."""
        if self.params.bias_reg == 0:
            return 0.0
        total = self.item_bias(item).square().sum()
        if self.task == "rating":
            total = total + self.user_bias(user).square().sum()
        return self.params.bias_reg * total / len(item)
