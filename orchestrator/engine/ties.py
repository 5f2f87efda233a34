"""Ranking metrics from rank counts, under a stated tie rule. No Ray here.

A target's place among its candidates is given by two counts: `greater`, the candidates
scored strictly above it, and `tied`, those scored equal to it, itself included (so its
rank lies in `greater + 1 .. greater + tied`). The three rules (`TIES`):

- `expected` (the default): the metric's expected value when ties are broken uniformly at
  random (McSherry & Najork, "Computing Information Retrieval Performance Measures
  Efficiently in the Presence of Tied Scores", ECIR 2008), computed exactly: a model that
  scores every item alike gets what a random ranking gets, no more and no less;
- `pessimistic`: every tie ranks ahead of the target (rank `greater + tied`), a lower bound;
- `optimistic`: the target ranks ahead of every tie (rank `greater + 1`), an upper bound.

Recall and NDCG add up per target, so their expectation is each target's own average over
its `tied` places. HR and MRR depend on the best-placed target: the targets of the highest
scored tie group (m of its `tied` members) take m of its places at random, and the first of
them is at place i with probability `C(tied - i, m - 1) / C(tied, m)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from orchestrator.config import TIES

RANKING_NAMES = ("hr", "ndcg", "recall", "mrr")


def check_ties(ties: str) -> None:
    if ties not in TIES:
        raise ValueError(f"ties: {ties!r}; expected one of {', '.join(TIES)}")


def tie_metrics(
    greater: Tensor,
    tied: Tensor,
    usable: Tensor,
    n_targets: Tensor,
    ks: Sequence[int],
    ties: str,
) -> dict[str, Tensor]:
    """Per row HR, NDCG, Recall and MRR at each K under the tie rule `ties`.

    Args:
        greater: `[B, T]` candidates scored above each target (exact up to max(ks); larger
            values are misses at every K).
        tied: `[B, T]` candidates scored equal to each target, itself included (>= 1; exact
            wherever `greater` <= max(ks)).
        usable: `[B, T]` whether a target can count (not padding, not masked, not NaN).
        n_targets: `[B]` each row's targets (what Recall and NDCG's ideal divide by).
        ks: the cut-offs.
        ties: one of `TIES`.

    Returns:
        `{"hr@K": Tensor[B], ...}` (float32). A row with no usable target is 0 everywhere.
    """
    check_ties(ties)
    max_k = max(ks)
    far = max_k + 1
    greater = torch.where(usable, greater.clamp(max=far), far).double()  # [B, T]
    tied = torch.where(usable, tied.clamp(min=1), 1).double()  # [B, T]
    if ties == "pessimistic":
        greater, tied = (greater + tied - 1).clamp(max=far), torch.ones_like(tied)
    elif ties == "optimistic":
        tied = torch.ones_like(tied)
    # position r (1-based) is worth 1 / log2(r + 1); cum[n] sums positions 1..n
    position = torch.arange(1, far + 1, dtype=torch.float64, device=greater.device)
    cum_gain = torch.cat([position.new_zeros(1), (1 / torch.log2(position + 1)).cumsum(0)])
    best = greater.min(1).values  # [B] the best-placed tie group's `greater`
    in_best = greater == best[:, None]  # [B, T]
    m = in_best.sum(1).double()  # [B] targets in that group
    # its size (at least m: under a bound rule, targets on one place share it)
    group = torch.maximum(torch.where(in_best, tied, 0).max(1).values, m).clamp(min=1)  # [B]
    first = _first_place(m, group, max_k)  # [B, max_k]: P(first target at place i)
    n_targets = n_targets.double().clamp(min=1)  # [B]
    first_rank = best[:, None] + position[None, :max_k]  # [B, max_k] the first's rank per place
    out: dict[str, Tensor] = {}
    for k in ks:
        lo, hi = greater.clamp(max=k), (greater + tied).clamp(max=k)  # [B, T]
        recall = ((hi - lo) / tied).sum(1)  # [B] expected targets in the top k
        dcg = ((cum_gain[hi.long()] - cum_gain[lo.long()]) / tied).sum(1)  # [B]
        hit = torch.where(first_rank <= k, first, 0.0)  # [B, max_k]
        out[f"hr@{k}"] = hit.sum(1)
        out[f"mrr@{k}"] = (hit / first_rank).sum(1)
        out[f"recall@{k}"] = recall / n_targets
        out[f"ndcg@{k}"] = dcg / cum_gain[n_targets.clamp(max=k).long()]
    return {f"{name}@{k}": out[f"{name}@{k}"].float() for name in RANKING_NAMES for k in ks}


def _first_place(m: Tensor, size: Tensor, max_k: int) -> Tensor:
    """`[B, max_k]`: the probability that the first of `m` targets placed uniformly at
    random among `size` tied places is at place i = 1..max_k (0 where m = 0)."""
    i = torch.arange(1, max_k + 2, dtype=torch.float64, device=m.device)[None, :]  # [1, K+1]
    m, size = m[:, None], size[:, None]  # [B, 1]
    # P(first >= i) = C(size - i + 1, m) / C(size, m), 0 once fewer than m places are left
    n = size - i + 1  # [B, K+1]
    log_ratio = (
        torch.lgamma(n.clamp(min=0) + 1)
        - torch.lgamma((n - m).clamp(min=0) + 1)
        - torch.lgamma(size + 1)
        + torch.lgamma(size - m + 1)
    )
    at_least = torch.where(n >= m, log_ratio.exp(), 0.0)  # [B, K+1]
    at_least = torch.where(m > 0, at_least, 0.0)
    return at_least[:, :-1] - at_least[:, 1:]  # [B, K]
