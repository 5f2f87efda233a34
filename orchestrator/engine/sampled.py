"""The sampled protocol of the NCF papers: each held-out target ranked among its own fixed
negatives (He et al. 2017), with the metrics and tie rules of `ties`. No Ray here."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from orchestrator.engine.metrics import RANKING_NAMES, cutoffs, means, rank_counts
from orchestrator.engine.ties import tie_metrics


def sampled_ranking(
    score_pairs: Callable[[Tensor, Tensor], Tensor],
    users: Tensor,
    items: Tensor,
    negatives: Tensor,
    ks: Sequence[int],
    batch: int = 8192,
    ties: str = "expected",
) -> dict[str, float]:
    """The means of `sampled_ranking_per_row` over the rows.

    Example:
        >>> user_emb, item_emb = torch.randn(data.n_users, 8), torch.randn(data.n_items, 8)
        >>> sampled_ranking(lambda u, i: (user_emb[u, None] * item_emb[i]).sum(-1),
        ...                 torch.as_tensor(data.test.user), torch.as_tensor(data.test.item),
        ...                 torch.as_tensor(data.test_negatives), ks=[10])
        {'hr@10': ..., 'ndcg@10': ..., 'recall@10': ..., 'mrr@10': ...}
    """
    return means(sampled_ranking_per_row(score_pairs, users, items, negatives, ks, batch, ties))


@torch.no_grad()
def sampled_ranking_per_row(
    score_pairs: Callable[[Tensor, Tensor], Tensor],
    users: Tensor,
    items: Tensor,
    negatives: Tensor,
    ks: Sequence[int],
    batch: int = 8192,
    ties: str = "expected",
) -> dict[str, Tensor]:
    """Rank each target item among its own sampled negatives (the NCF protocol, He et al.
    2017, `evaluate.py`): the candidates are the row's negatives, then the target, each item
    scored once, so a target repeated among its own negatives (156 lines of the authors'
    ml-1m file) is one candidate. A tie with a negative counts by `ties` (`ties.py`; the
    authors' code ranks by a dict of scores, so its ties follow the dict's order, which
    Python 2, where it ran, did not fix). Rows may have fewer negatives than others: `-1`
    pads a row.

    Args:
        score_pairs: maps users `[b]` and candidate items `[b, 1 + N]` to scores `[b, 1 + N]`
            (candidate 0 is the target; padding is scored as the target and ignored).
        users: user index per evaluation row `[R]`.
        items: the held-out (target) item per row `[R]`.
        negatives: `[R, N]` negative items per row, distinct within a row, `-1` padded.
        ks: cut-offs K.
        batch: rows per `score_pairs` call.
        ties: the tie rule, one of `ties.TIES`.

    Returns:
        `{"hr@K": Tensor[R], ...}` per row (float32, CPU). Recall@K equals HR@K here.
    """
    ks = cutoffs(ks)
    _check_rows(users, items, negatives, batch)
    parts: dict[str, list[Tensor]] = {}
    for begin in range(0, len(users), batch):
        end = begin + batch
        own, greater, tied = _target_counts(
            score_pairs, users[begin:end], items[begin:end], negatives[begin:end]
        )
        usable = ~torch.isnan(own)  # [b, 1] a target scored NaN is a miss
        values = tie_metrics(greater, tied, usable, torch.ones_like(greater[:, 0]), ks, ties)
        for name, value in values.items():
            parts.setdefault(name, []).append(value.cpu())
    return {f"{name}@{k}": torch.cat(parts[f"{name}@{k}"]) for name in RANKING_NAMES for k in ks}


def _check_rows(users: Tensor, items: Tensor, negatives: Tensor, batch: int) -> None:
    """The rows' shapes, the padding and the batch size are ones `sampled_ranking_per_row`
    takes."""
    if (
        users.dim() != 1
        or items.shape != users.shape
        or negatives.dim() != 2
        or len(negatives) != len(users)
        or negatives.shape[1] < 1
    ):
        raise ValueError(
            f"expected users [R], items [R] and negatives [R, N >= 1], got "
            f"{tuple(users.shape)}, {tuple(items.shape)}, {tuple(negatives.shape)}"
        )
    if len(users) == 0:
        raise ValueError("sampled_ranking: no rows to evaluate (R = 0)")
    if batch < 1:
        raise ValueError(f"batch: expected an int >= 1, got {batch}")
    if bool((negatives < -1).any()):
        row = int((negatives < -1).any(1).nonzero()[0, 0])
        raise ValueError(
            f"negatives row {row}: expected item indices >= 0 padded with -1, "
            f"got {negatives[row].tolist()}"
        )


def _target_counts(
    score_pairs: Callable[[Tensor, Tensor], Tensor],
    users: Tensor,
    items: Tensor,
    negs: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """One batch of rows: the target's score `[b, 1]`, the negatives scored above it and
    those tied with it, itself included (`[b, 1]` each)."""
    target = items[:, None].to(negs.device)  # [b, 1]
    counted = (negs >= 0) & (negs != target)  # [b, N] each other item once
    candidates = torch.cat([target, torch.where(negs >= 0, negs, target)], 1)  # [b, 1+N]
    scores = score_pairs(users, candidates)  # [b, 1 + N]
    if scores.shape != candidates.shape:
        raise ValueError(
            f"score_pairs: expected scores {tuple(candidates.shape)}, got {tuple(scores.shape)}"
        )
    own, other = scores[:, :1], scores[:, 1:]  # [b, 1], [b, N]
    counted = counted.to(scores.device)
    other = torch.nan_to_num(other, nan=math.inf)  # an undefined score beats the target
    greater, equal = rank_counts(other, own, counted)  # [b, 1] each
    return own, greater, 1 + equal
