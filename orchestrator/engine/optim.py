"""The shared loop's optimizers: fused Adam for dense parameters, `RowAdam` for large tables,
or plain SGD for both (the recipes of Koren and Rendle).

Dense Adam updates every row of every embedding table at every step, so an epoch costs
examples x (users + items) / batch, which grows with the square of the data. The large
tables (`models.base.embedding`: more rows than 16 batches' examples) are built with sparse
gradients instead, and `RowAdam` steps only the rows a batch touched.
"""

from __future__ import annotations

import torch
from torch import nn

from orchestrator import internals
from orchestrator.models.base import Recommender


class RowAdam(torch.optim.Optimizer):
    """Adam on the rows a sparse gradient touches: the arithmetic of `torch.optim.SparseAdam`
    (moments and bias correction per step; rows a batch skips keep their moments), in five
    row-indexed ops, faster than SparseAdam, whose coalescing and sparse masks cost more
    than the update itself (bench/RESULTS.md).

    Args:
        params: the tables (gradients must be sparse COO: `nn.Embedding(sparse=True)`).
        lr, betas, eps: as in Adam.
    """

    def __init__(
        self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None if closure is None else closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise ValueError(
                        "RowAdam steps sparse gradients only (an nn.Embedding "
                        "built with sparse=True)"
                    )
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                # an embedding's gradient is uncoalesced: one row per lookup, repeats included
                indices, values = internals.coo_entries(p.grad)
                rows, inverse = torch.unique(indices, return_inverse=True)
                grad = torch.zeros((len(rows), *p.shape[1:]), dtype=p.dtype, device=p.device)
                grad.index_add_(0, inverse, values)  # [R, d] summed per row
                m = state["exp_avg"].index_select(0, rows).mul_(b1).add_(grad, alpha=1 - b1)
                v = (
                    state["exp_avg_sq"]
                    .index_select(0, rows)
                    .mul_(b2)
                    .addcmul_(grad, grad, value=1 - b2)
                )
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)
                step_size = group["lr"] * (1 - b2**t) ** 0.5 / (1 - b1**t)
                p.index_add_(0, rows, m.div_(v.sqrt_().add_(group["eps"])).mul_(-step_size))
        return loss


def make_optimizers(model: Recommender) -> list[torch.optim.Optimizer]:
    """Adam (fused) with the model's lr for the dense parameters and `RowAdam` with the same
    lr for the embedding tables built sparse (`models.base.embedding`: the large ones); or, with
    `optimizer="sgd"`, one plain SGD for both, its `lr` per example.

    No embedding table gets the optimizer's weight decay, sparse or not: the models penalise
    the rows a batch uses in their loss instead (mf: `reg`; neumf, caser: `weight_decay`
    through `row_penalty`), so a table's regularisation does not depend on which optimizer
    steps it. A model may hand over its own parameter groups (`param_groups()`).
    """
    p = model.params
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    sparse = [m.weight for m in tables if m.sparse]
    is_table, is_sparse = {id(m.weight) for m in tables}, {id(t) for t in sparse}
    groups = model.param_groups()
    dense = []
    for g in groups:
        dense.append({**g, "params": [q for q in g["params"] if id(q) not in is_table]})
        dense.append(
            {
                **g,
                "weight_decay": 0.0,
                "params": [q for q in g["params"] if id(q) in is_table and id(q) not in is_sparse],
            }
        )
    dense = [g for g in dense if g["params"]]
    if p.optimizer == "sgd":
        # torch's SGD steps a sparse gradient's rows only; the loss is a mean over the
        # batch, so `lr * batch_size` moves each example's parameters by `lr` x its gradient
        # (the loop sets `lr` x the actual batch's size before each step: the last is shorter)
        sparse_group = [{"params": sparse, "weight_decay": 0.0}] if sparse else []
        return [
            torch.optim.SGD(
                dense + sparse_group, lr=p.lr * p.batch_size, weight_decay=p.weight_decay
            )
        ]
    out: list[torch.optim.Optimizer] = []
    if dense:
        # The fused kernel: on CPU too, an Adam step of BPR-MF on ml-100k took 96 us, not 247.
        out.append(torch.optim.Adam(dense, lr=p.lr, weight_decay=p.weight_decay, fused=True))
    if sparse:
        out.append(RowAdam(sparse, lr=p.lr))
    return out
