"""NeuMF (He, Liao, Zhang, Nie, Hu & Chua, "Neural Collaborative Filtering", WWW 2017).

A GMF tower (element-wise product of user and item embeddings) and an MLP tower (a
halving ReLU tower over the concatenated user and item embeddings), with separate
embeddings, fused by one linear layer over `[gmf_vector, mlp_vector]`, trained pointwise
with binary cross-entropy against sampled negatives.

Pre-training as in the paper (section 3.4.1), chosen by the hyperparameter `pretrain`: the
shared loop first trains a `tower="gmf"` and a `tower="mlp"` model alone (for
`pretrain_epochs`, the authors' 20, without validation passes: a trial reports nothing while
its towers train, and NeuMF's full-ranking validation costs more than its training), then
`load_pretrained(gmf, mlp, alpha)` initialises the fused model, which trains as usual.
Unlike the paper, the fused model is trained with Adam from a fresh state (the paper
switches to plain SGD because Adam's moments are not carried over; here the one loop keeps
its one optimizer; not compared with the paper's SGD).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orchestrator.models.base import (
    MAX_EPOCHS,
    CommonParams,
    DataSpec,
    Recipe,
    Recommender,
    Trial,
    check,
    check_common,
    embedding,
    row_penalty,
)
from orchestrator.models.registry import register_model


@dataclass
class NeuMFParams(CommonParams):
    """Hyperparameters of `neumf`; defaults from the paper's code (8 factors, [64, 32, 16, 8],
    batch 256, 4 negatives) except the step size and length: ml-100k gives a tenth of the
    paper's ml-1m steps per epoch, and at the paper's lr 1e-3 ranking stays at the popularity
    level for 5 epochs (early stopping ends it there) and still climbs at epoch 20. With 3e-3
    and 40 epochs it passes popularity by epoch 2 and peaks near epoch 17 (leave-last-out
    test HR@10 0.134 vs 0.084 for `pop`)."""

    lr: float = 3e-3
    batch_size: int = 256
    epochs: int = 40
    negatives: int = 4
    dim: int = 8
    """Predictive factors: GMF embedding size and the MLP's last hidden size."""
    layers: int = 3
    """MLP layers; the MLP embeddings are `dim * 2**(layers - 1)` wide and each layer halves."""
    dropout: float = 0.0
    """Dropout after each MLP hidden layer (the paper uses none)."""
    tower: str = "neumf"
    """"neumf", or "gmf" / "mlp" alone (to pre-train the towers for `load_pretrained`)."""
    pretrain: bool = False
    """Pre-train the GMF and MLP towers alone first, then fuse them (the paper's best)."""
    alpha: float = 0.5
    """With `pretrain`: the fused output layer's weight on the GMF tower (1 - alpha on MLP)."""
    pretrain_epochs: int = 20
    """With `pretrain`: the epochs each tower trains alone (the authors' README: 20). Apart
    from `epochs`, so that a refit for the fused model's best epoch count pre-trains its
    towers as the trial did."""

    def __post_init__(self) -> None:
        check_common(self)
        check(self, "dim", self.dim >= 1, "an int >= 1")
        check(self, "layers", 1 <= self.layers <= 6, "an int in [1, 6]")
        check(self, "dropout", 0 <= self.dropout < 1, "a float in [0, 1)")
        check(self, "tower", self.tower in ("neumf", "gmf", "mlp"), "'neumf', 'gmf' or 'mlp'")
        check(
            self,
            "pretrain",
            not self.pretrain or self.tower == "neumf",
            "False for a single tower (only tower='neumf' fuses pre-trained towers)",
        )
        check(self, "alpha", 0 <= self.alpha <= 1, "a float in [0, 1]")
        check(
            self,
            "pretrain_epochs",
            1 <= self.pretrain_epochs <= MAX_EPOCHS,
            f"an int from 1 to {MAX_EPOCHS:,}",
        )


NCF = Recipe(
    name="he2017",
    task="ranking",
    source="He, Liao, Zhang, Nie, Hu & Chua, 'Neural Collaborative Filtering', WWW 2017, and "
    "the authors' README (hexiangnan/neural_collaborative_filtering)",
    tuned_on="MovieLens-1M and Pinterest, leave-one-out, HR@10 and NDCG@10 over 100 sampled "
    "candidates",
    hparams={
        "dim": 8,
        "layers": 3,
        "lr": 1e-3,
        "batch_size": 256,
        "negatives": 4,
        "weight_decay": 0.0,
        "dropout": 0.0,
        "pretrain": False,
    },
    epochs=20,
    note="MLP layers [64, 32, 16, 8] are `layers=3` here (the 64 is the input)",
)


@register_model
class NeuMF(Recommender):
    """Neural matrix factorization for implicit-feedback ranking.

    Args:
        spec: the data spec.
        task: "ranking".
        params: `NeuMFParams`.

    Example:
        >>> model = create_model("neumf", DataSpec(943, 1682), dim=16)
        >>> model.score_all(torch.tensor([0, 1])).shape
        torch.Size([2, 1682])
    """

    name = "neumf"
    tasks = ("ranking",)
    Params = NeuMFParams

    def __init__(self, spec: DataSpec, task: str, params: NeuMFParams) -> None:
        super().__init__(spec, task, params)
        d, tower = params.dim, params.tower
        self.use_gmf, self.use_mlp = tower in ("neumf", "gmf"), tower in ("neumf", "mlp")
        if self.use_gmf:
            self.gmf_user = embedding(spec.n_users, d, params.batch_size)
            self.gmf_item = embedding(spec.n_items, d, params.batch_size)
        if self.use_mlp:
            e = d * 2 ** (params.layers - 1)
            self.mlp_user = embedding(spec.n_users, e, params.batch_size)
            self.mlp_item = embedding(spec.n_items, e, params.batch_size)
            # first: [user half | item half] of the input; split apart in score_all.
            self.first = nn.Linear(2 * e, e)
            rest: list[nn.Module] = [nn.Dropout(params.dropout)]
            for i in range(params.layers - 1):
                rest += [nn.Linear(e >> i, e >> (i + 1)), nn.ReLU(), nn.Dropout(params.dropout)]
            self.rest = nn.Sequential(*rest)
        self.out = nn.Linear(d * (self.use_gmf + self.use_mlp), 1)
        for m in self.modules():  # the paper's initialisation: N(0, 0.01) embeddings
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.01)

    recipes = (
        NCF,
        dataclasses.replace(
            NCF,
            name="he2017-pretrain",
            hparams={**NCF.hparams, "pretrain": True},
            note="pre-trained GMF and MLP towers (the README's second command); Adam, not the "
            "paper's SGD, after fusing them",
        ),
    )

    @classmethod
    def search_space(cls, trial: Trial, task: str) -> dict[str, Any]:
        return {
            "dim": trial.suggest_categorical("dim", [8, 16, 32, 64]),
            "layers": trial.suggest_int("layers", 1, 4),
            "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
            "weight_decay": trial.suggest_categorical(
                "weight_decay", [0.0, 1e-7, 1e-6, 1e-5, 1e-4]
            ),
            "negatives": trial.suggest_int("negatives", 1, 8),
            "dropout": trial.suggest_float("dropout", 0.0, 0.5),
            "batch_size": trial.suggest_categorical("batch_size", [256, 1024, 4096, 16384]),
            "pretrain": trial.suggest_categorical("pretrain", [False, True]),
        }

    def _split_out(self) -> tuple[Tensor | None, Tensor | None]:
        """The output layer's weights on the GMF and on the MLP vector, `[d]` each."""
        w = self.out.weight[0]  # [d * towers]
        d = self.params.dim
        gmf = w[:d] if self.use_gmf else None
        mlp = w[-d:] if self.use_mlp else None
        return gmf, mlp

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        """Logit `[B]` of each (user, item) pair."""
        w_gmf, w_mlp = self._split_out()
        # [1], broadcast by the [B] terms below; `expand(len(user))` would bake the export's
        # example batch size into the ONNX graph
        score = self.out.bias
        if self.use_gmf:
            score = score + (self.gmf_user(user) * self.gmf_item(item)) @ w_gmf  # [B]
        if self.use_mlp:
            x = torch.cat([self.mlp_user(user), self.mlp_item(item)], -1)  # [B, 2e]
            score = score + self.rest(F.relu(self.first(x))) @ w_mlp  # [B]
        return score

    def score_all(self, user: Tensor, seq: Tensor | None = None) -> Tensor:
        """`[B] -> [B, n_items]`; the MLP part holds `[B, n_items, e]` (see `eval_batch_users`)."""
        w_gmf, w_mlp = self._split_out()
        score = self.out.bias  # [1]
        if self.use_gmf:
            score = score + (self.gmf_user(user) * w_gmf) @ self.gmf_item.weight.T  # [B, I]
        if self.use_mlp:
            e = self.mlp_user.embedding_dim
            w_user, w_item = self.first.weight[:, :e], self.first.weight[:, e:]  # [e, e] each
            hu = self.mlp_user(user) @ w_user.T + self.first.bias  # [B, e]
            hi = self.mlp_item.weight @ w_item.T  # [I, e]
            h = F.relu(hu[:, None, :] + hi[None, :, :])  # [B, I, e]
            score = score + self.rest(h) @ w_mlp  # [B, I]
        return score

    @property
    def eval_batch_users(self) -> int | None:
        # score_all's [B, n_items, e] MLP activations, in a power of two of users. On a CPU,
        # past the caches scoring is memory-bound: calls of up to 2M floats score all users
        # faster than one call for all. An accelerator wants large calls, but bounded: 2^28
        # floats (1 GiB) per layer is 128 users at ml-20m's 26,744 items (e = 64), where
        # other models' 1,024 users would take 7 GiB per layer and trials sharing one GPU
        # would run out of memory.
        if not self.use_mlp:
            return None
        budget = 2**21 if self.device.type == "cpu" else 2**28
        fit = max(1, budget // (self.spec.n_items * self.mlp_user.embedding_dim))
        return 1 << (fit.bit_length() - 1)

    def item_embeddings(self) -> Tensor:
        """The GMF and MLP item vectors side by side (whichever towers the model has)."""
        parts = ([self.gmf_item.weight] if self.use_gmf else []) + (
            [self.mlp_item.weight] if self.use_mlp else []
        )
        return torch.cat(parts, 1).detach()  # [n_items, d (+ e)]

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        user, item, neg = batch["user"], batch["item"], batch["neg_item"]  # [B], [B], [B, n]
        users = torch.cat([user, user.repeat_interleave(neg.shape[1])])  # [B (1 + n)]
        items = torch.cat([item, neg.reshape(-1)])  # [B (1 + n)]
        label = torch.zeros(len(items), device=items.device)
        label[: len(user)] = 1.0
        # Pointwise log loss averaged over positive and negative instances, as the paper.
        loss = F.binary_cross_entropy_with_logits(self(users, items), label)
        if self.params.weight_decay > 0:  # L2 on the embedding rows this batch used
            loss = loss + self.params.weight_decay / 2 * row_penalty(
                (self.user_tables(), user), (self.item_tables(), items)
            )
        return loss

    def user_tables(self) -> list[nn.Embedding]:
        return ([self.gmf_user] if self.use_gmf else []) + ([self.mlp_user] if self.use_mlp else [])

    def item_tables(self) -> list[nn.Embedding]:
        return ([self.gmf_item] if self.use_gmf else []) + ([self.mlp_item] if self.use_mlp else [])

    def pretrain(self, train: Callable[[Recommender], object]) -> None:
        """With `params.pretrain`: build the GMF and MLP towers with this model's
        hyperparameters and `pretrain_epochs`, `train` each (the shared loop), and load them."""
        if not self.params.pretrain:
            return
        towers = [
            type(self)(
                self.spec,
                self.task,
                dataclasses.replace(
                    self.params, tower=tower, pretrain=False, epochs=self.params.pretrain_epochs
                ),
            ).to(self.device)
            for tower in ("gmf", "mlp")
        ]
        for tower in towers:
            train(tower)
        gmf, mlp = towers
        self.load_pretrained(gmf, mlp, alpha=self.params.alpha)

    @torch.no_grad()
    def load_pretrained(self, gmf: NeuMF, mlp: NeuMF, alpha: float = 0.5) -> None:
        """Initialise a `tower="neumf"` model from trained GMF and MLP models (paper 3.4.1).

        The output layer becomes `[alpha * h_gmf, (1 - alpha) * h_mlp]`.
        """
        if (
            not (self.use_gmf and self.use_mlp)
            or gmf.params.tower != "gmf"
            or mlp.params.tower != "mlp"
        ):
            raise ValueError(
                "load_pretrained: expected a tower='neumf' model, a tower='gmf' "
                "and a tower='mlp' model"
            )
        for name in ("gmf_user", "gmf_item"):
            getattr(self, name).load_state_dict(getattr(gmf, name).state_dict())
        for name in ("mlp_user", "mlp_item", "first", "rest"):
            getattr(self, name).load_state_dict(getattr(mlp, name).state_dict())
        self.out.weight.copy_(torch.cat([alpha * gmf.out.weight, (1 - alpha) * mlp.out.weight], 1))
        self.out.bias.copy_(alpha * gmf.out.bias + (1 - alpha) * mlp.out.bias)
