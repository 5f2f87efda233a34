"""Evaluation metrics: RMSE/MAE for ratings; HR, NDCG, Recall, MRR at K for rankings.

Torch only, vectorized, computed on the device of the scores. No Ray here.

Ties (`ties.py`, the config's `train.ties`). A target is placed among the unmasked
candidates by the count scored above it and the count tied with it (other targets of the
same user count as candidates); `expected` (the default) reports each metric's expected
value under random tie-breaking, `pessimistic` ranks every tie ahead of the target (a model
that scores every item alike ranks every target last), `optimistic` behind it. A NaN score
counts as +inf for the other candidates (it beats the target) and a target with a NaN score
is a miss; a masked target is a miss.

Definitions for one user with the target set T (non-empty), rank r_t per target (under
`expected`, each metric's mean over the tie-breaks):

- HR@K     = 1 if some r_t <= K, else 0
- Recall@K = #{t : r_t <= K} / |T|
- NDCG@K   = sum over t with r_t <= K of 1 / log2(r_t + 1), divided by
             IDCG@K = sum over j = 1..min(|T|, K) of 1 / log2(j + 1)
- MRR@K    = 1 / min_t r_t if min_t r_t <= K, else 0

Reported values are means over the users with a non-empty target set.

Beyond accuracy (`beyond_accuracy`, from the top-K lists of a test pass; pop(i) is the number
of training users of item i, |U| the number of users, c_K(i) how many lists hold i):

- coverage@K = #{i : c_K(i) > 0} / n_items, the share of the catalogue recommended to
               anyone (catalogue coverage: Ge, Delgado-Battenfeld & Jannach, RecSys 2010)
- gini@K     = sum_j (2j - n - 1) c_(j) / (n sum_j c_(j)) over the n items sorted by c_K
               ascending: 0 when every item is recommended equally often, near 1 when a
               few items fill every list (the Gini index as RecBole's GiniIndex)
- arp@K      = mean over lists of the mean pop(i) of its items (average recommendation
               popularity: Abdollahpouri, Burke & Mobasher, FLAIRS 2019)
- novelty@K  = mean over lists of the mean -log2(pop(i) / |U|) of its items, an item no
               training user has counted as one user (self-information: Zhou et al., PNAS
               2010; Vargas & Castells, RecSys 2011)

Under the sampled protocol a list is the top K of a row's candidates, not of the catalogue.

Protocols: `full_ranking` scores every item for a batch of users (one `score_fn` call per
batch), masks the items the user is known to have (train, and val when testing), and ranks
the held-out items; `sampled.sampled_ranking` ranks each target among its N fixed negatives,
as the NCF papers do.

Performance: ranks are counted with one comparison pass over the [B, C] scores per target
column when a row has few targets (leave-last: one), else against the top max(ks) + 1 scores
of each row (ranks beyond max(ks) are misses at every cut-off, so they need not be exact);
the mask is scattered from a CSR in one shot. Small user batches are latency-bound on a
GPU, hence `batch_users` (timings in bench/RESULTS.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from orchestrator.data.sampling import csr_entries
from orchestrator.engine.ties import RANKING_NAMES, tie_metrics

BEYOND_NAMES = ("coverage", "gini", "arp", "novelty")  # of the test pass's top-K lists
ERROR_NAMES = ("rmse", "mae")  # the metrics that fall as a model improves


def lower_is_better(key: str) -> bool:
    """`val/rmse`, `test/mae`: errors fall as a model improves; every ranking metric rises."""
    return key.rsplit("/", 1)[-1] in ERROR_NAMES


# Rows with at most this many target columns rank by direct comparison (T passes over [B, C]);
# with more, one top-(max K + 1) of the scores is cheaper (about the cost of 4 passes on CPU).
_COMPARE_MAX_TARGETS = 4

Csr = tuple[Tensor, Tensor]
"""A per-user item list as (indptr [n_users + 1], indices [nnz]): user u has
indices[indptr[u]:indptr[u + 1]]."""


def rating_metrics(pred: Tensor, target: Tensor, lo: float, hi: float) -> dict[str, float]:
    """RMSE and MAE of rating predictions clipped to the rating range [lo, hi].

    Args:
        pred: predicted ratings `[N]`.
        target: true ratings `[N]`.
        lo, hi: the rating range; predictions outside it are clipped, as a served model would.

    Returns:
        `{"rmse": float, "mae": float}`.
    """
    return rating_summary(rating_errors(pred, target, lo, hi))


def rating_summary(errors: dict[str, Tensor]) -> dict[str, float]:
    """RMSE and MAE from `rating_errors`' per-rating values."""
    return {"rmse": errors["rmse"].mean().sqrt().item(), "mae": errors["mae"].mean().item()}


def rating_errors(pred: Tensor, target: Tensor, lo: float, hi: float) -> dict[str, Tensor]:
    """Per rating, what RMSE and MAE average: `{"rmse": squared error [N], "mae": absolute
    error [N]}` (float64) of the predictions clipped to [lo, hi]."""
    if pred.dim() != 1 or pred.shape != target.shape:
        raise ValueError(
            f"rating_metrics: expected pred and target of the same shape [N], "
            f"got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.numel() == 0:
        raise ValueError("rating_metrics: no ratings to evaluate (N = 0)")
    if not lo <= hi:
        raise ValueError(f"rating_metrics: expected lo <= hi, got lo={lo}, hi={hi}")
    err = pred.double().clamp(lo, hi) - target.double()  # [N]
    return {"rmse": err.square(), "mae": err.abs()}


def cutoffs(ks: Sequence[int]) -> list[int]:
    ks = list(ks)
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"ks: expected a non-empty list of ints >= 1, got {ks!r}")
    return ks


def _target_counts(
    scores: Tensor, targets: Tensor, mask: Tensor | None, max_k: int, tops: list[Tensor] | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Each target's rank counts `[B, T]` among the unmasked candidates (`ties`): those
    scored above it (exact up to `max_k`; larger ones read `max_k + 1`, a miss at every
    cut-off) and those scored equal, itself included (exact wherever the first is); and
    whether each target can count as a hit. With `tops`, the rows' top `max_k` columns
    (`-1` past the unmasked ones) are appended to it, from the same top-k that then ranks
    the targets."""
    safe = targets.clamp(min=0)  # [B, T] padding looks up column 0, discarded by `usable`
    target_scores = scores.gather(1, safe)  # [B, T]
    usable = (targets >= 0) & ~torch.isnan(target_scores)  # [B, T]
    if bool(torch.isnan(scores.sum())):  # one cheap reduction; true for NaN (or +inf and -inf)
        # An undefined score beats the target.
        scores = torch.nan_to_num(scores, nan=math.inf, posinf=math.inf, neginf=-math.inf)
        target_scores = scores.gather(1, safe)  # [B, T]
    if mask is not None:
        usable &= ~mask.gather(1, safe)
    keep = None if mask is None else ~mask  # [B, C]
    if targets.shape[1] <= _COMPARE_MAX_TARGETS and tops is None:
        return (*rank_counts(scores, target_scores, keep), usable)
    # Only ranks up to max_k matter, and a target has rank m <= max_k + 1 exactly when m of
    # the top max_k + 1 scores are >= its score, so those scores are all it is compared with.
    sunk = scores if mask is None else scores.masked_fill(mask, -math.inf)  # [B, C]
    best = sunk.topk(min(max_k + 1, scores.shape[1]), dim=1, sorted=tops is not None)
    top = best.values  # [B, k]
    if tops is not None:
        tops.append(_listed(top[:, :max_k], best.indices[:, :max_k], max_k).cpu())
    greater = (top[:, None, :] > target_scores[:, :, None]).sum(2)  # [B, T]
    tied = (top[:, None, :] >= target_scores[:, :, None]).sum(2) - greater  # [B, T]
    # a tie group that may reach past the top (or a target at -inf, among the masked
    # items there) is counted over the row's every candidate
    full = (tied + greater >= top.shape[1]) & (greater <= max_k) & usable  # [B, T]
    full |= usable & (target_scores == -math.inf)
    rows = full.any(1).nonzero()[:, 0]
    if len(rows):
        exact = rank_counts(scores[rows], target_scores[rows], None if keep is None else keep[rows])
        greater[rows], tied[rows] = exact
    return greater.clamp(max=max_k + 1), tied, usable


def rank_counts(
    scores: Tensor, target_scores: Tensor, keep: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Candidates `[B, T]` scored above and equal to each target (`keep`: the ones that
    count, e.g. the unmasked), one comparison pass over the `[B, C]` scores per target
    column."""
    greater, tied = [], []
    for j in range(target_scores.shape[1]):
        above = scores > target_scores[:, j : j + 1]  # [B, C]
        equal = scores == target_scores[:, j : j + 1]  # [B, C]
        if keep is not None:
            above, equal = above & keep, equal & keep
        greater.append(above.sum(1))
        tied.append(equal.sum(1))
    return torch.stack(greater, 1), torch.stack(tied, 1)


def ranking_metrics_from_scores(
    scores: Tensor,
    targets: Tensor,
    ks: Sequence[int],
    mask: Tensor | None = None,
    tops: list[Tensor] | None = None,
    ties: str = "expected",
) -> dict[str, Tensor]:
    """Per-user HR, NDCG, Recall and MRR at each K, with the tie rule `ties`.

    Args:
        scores: `[B, C]` scores of C candidates per user (higher is better).
        targets: `[B, T]` column indices of each user's targets, distinct per row, padded
            with -1.
        ks: cut-offs K.
        mask: `[B, C]` bool, True = candidate excluded (e.g. the user's training items), or None.
        tops: when given, the rows' top max(ks) columns (best first, `-1` past the
            unmasked ones, on the CPU) are appended to it.
        ties: the tie rule, one of `ties.TIES`.

    Returns:
        `{"hr@K": Tensor[B], "ndcg@K": ..., "recall@K": ..., "mrr@K": ...}` for each K
        (float32, on the scores' device). A row without targets is 0 in every metric: sum the
        rows and divide by `(targets >= 0).any(1).sum()` to get the means.

    Example:
        >>> m = ranking_metrics_from_scores(torch.tensor([[5., 4, 3, 2, 1]]),
        ...                                 torch.tensor([[2]]), ks=[5])
        >>> m["ndcg@5"], m["mrr@5"]   # rank 3: 1/log2(4) = 0.5 and 1/3
        (tensor([0.5000]), tensor([0.3333]))
    """
    ks = cutoffs(ks)
    if scores.dim() != 2 or targets.dim() != 2 or targets.shape[0] != scores.shape[0]:
        raise ValueError(
            f"expected scores [B, C] and targets [B, T], got "
            f"{tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    if mask is not None and (mask.shape != scores.shape or mask.dtype != torch.bool):
        raise ValueError(
            f"expected a bool mask of the scores' shape {tuple(scores.shape)}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    n_rows, n_cand = scores.shape
    targets = targets.long()
    ordered = targets.sort(dim=1).values  # [B, T] padding first, then duplicates are adjacent
    bad = (targets < -1) | (targets >= n_cand)  # [B, T]
    dup = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)  # [B, T - 1]
    if bad.any() or dup.any():
        row = int((bad.any(1) | torch.nn.functional.pad(dup, (0, 1)).any(1)).nonzero()[0, 0])
        raise ValueError(
            f"targets row {row}: expected distinct column indices in [0, {n_cand}) "
            f"padded with -1, got {targets[row].tolist()}"
        )

    if targets.shape[1] == 0:
        zeros = scores.new_zeros(n_rows, dtype=torch.float32)  # [B]
        return {f"{name}@{k}": zeros.clone() for name in RANKING_NAMES for k in ks}
    greater, tied, usable = _target_counts(scores, targets, mask, max(ks), tops)  # [B, T] each
    return tie_metrics(greater, tied, usable, (targets >= 0).sum(1), ks, ties)


def top_items(scores: Tensor, k: int) -> Tensor:
    """`[B, k]` column indices of each row's k best finite scores, best first; -1 where a
    row has fewer (masked columns score -inf; an undefined score ranks first, as in the
    ranks)."""
    scores = torch.nan_to_num(scores, nan=math.inf, posinf=math.inf, neginf=-math.inf)
    values, at = scores.topk(min(k, scores.shape[1]), dim=1)  # [B, k']
    return _listed(values, at, k)


def _listed(values: Tensor, at: Tensor, k: int) -> Tensor:
    """`[B, k]` top-k lists from a topk's values and columns: -1 for a masked (-inf) slot
    and for the slots past a row's last column."""
    at = torch.where(values > -math.inf, at, -1)
    return torch.nn.functional.pad(at, (0, k - at.shape[1]), value=-1)


def _check_csr(csr: Csr, what: str) -> None:
    indptr, indices = csr
    if indptr.dim() != 1 or indices.dim() != 1 or len(indptr) < 1:
        raise ValueError(f"{what}: expected a CSR (indptr [n_users + 1], indices [nnz])")
    if int(indptr[0]) != 0 or int(indptr[-1]) != len(indices) or bool((indptr.diff() < 0).any()):
        raise ValueError(f"{what}: indptr must rise from 0 to len(indices)={len(indices)}")
    if len(indices) and int(indices.min()) < 0:
        raise ValueError(f"{what}: negative item index {int(indices.min())}")


def means(per_unit: dict[str, Tensor]) -> dict[str, float]:
    """The mean of each per-user (or per-row) metric, summed in float64."""
    return {name: v.double().mean().item() for name, v in per_unit.items()}


def full_ranking(
    score_fn: Callable[[Tensor], Tensor],
    users: Tensor,
    targets: Csr | Tensor,
    known: Csr | None,
    ks: Sequence[int],
    batch_users: int = 1024,
    ties: str = "expected",
) -> dict[str, float]:
    """The means of `full_ranking_per_user`: HR, NDCG, Recall and MRR at each K.

    Example:
        >>> from orchestrator.data.sampling import user_item_csr
        >>> n_users = data.n_users
        >>> user_emb, item_emb = torch.randn(n_users, 8), torch.randn(data.n_items, 8)
        >>> full_ranking(lambda u: user_emb[u] @ item_emb.T, torch.arange(n_users),
        ...              user_item_csr(data.test, n_users), user_item_csr(data.train, n_users),
        ...              ks=[10])
        {'hr@10': ..., 'ndcg@10': ..., 'recall@10': ..., 'mrr@10': ...}
    """
    return means(full_ranking_per_user(score_fn, users, targets, known, ks, batch_users, ties=ties))


@torch.no_grad()
def _users_with_targets(
    users: Tensor, targets: Csr | Tensor, known: Csr | None
) -> tuple[Tensor, Csr | Tensor]:
    """`full_ranking_per_user`'s inputs checked, and the users (and padded targets) of users
    with at least one target."""
    if users.dim() != 1:
        raise ValueError(f"users: expected a 1-D tensor of user indices, got {tuple(users.shape)}")
    csrs = {"targets": targets} if isinstance(targets, tuple) else {}
    if known is not None:
        csrs["known"] = known
    for what, csr in csrs.items():
        _check_csr(csr, what)
        n = len(csr[0]) - 1
        if len(users) and (int(users.min()) < 0 or int(users.max()) >= n):
            raise ValueError(
                f"users: expected indices in [0, {n}) to match the {what} CSR, "
                f"got range [{int(users.min())}, {int(users.max())}]"
            )
    if isinstance(targets, tuple):
        indptr = targets[0]
        on = users.to(indptr.device)
        has_target = (indptr[on + 1] - indptr[on] > 0).to(users.device)  # [U]
    else:
        if targets.dim() != 2 or len(targets) != len(users):
            raise ValueError(
                f"targets: expected a CSR or a padded [U={len(users)}, T] tensor, "
                f"got {tuple(targets.shape)}"
            )
        has_target = (targets >= 0).any(1).to(users.device)  # [U]
        targets = targets[has_target.to(targets.device)]
    users = users[has_target]
    if len(users) == 0:
        raise ValueError("full_ranking: none of the users has a target item")
    return users, targets


def full_ranking_per_user(
    score_fn: Callable[[Tensor], Tensor],
    users: Tensor,
    targets: Csr | Tensor,
    known: Csr | None,
    ks: Sequence[int],
    batch_users: int = 1024,
    tops: list[Tensor] | None = None,
    ties: str = "expected",
) -> dict[str, Tensor]:
    """Rank every item for each user, the user's known items masked, batched over users.

    Args:
        score_fn: maps user indices `[b]` to scores of all items `[b, n_items]`.
        users: user indices `[U]` to evaluate; users without a target are skipped.
        targets: held-out items, either a CSR indexed by user index, or a padded
            `[U, T]` tensor aligned with `users` (-1 = padding).
        known: CSR of the items to mask per user (train items, plus val items when testing),
            or None to mask nothing.
        ks: cut-offs K.
        batch_users: users per `score_fn` call.
        tops: when given, each batch's top max(ks) items per user (known items masked,
            best first, on the CPU) are appended to it (for `beyond_accuracy`).
        ties: the tie rule, one of `ties.TIES`.

    Returns:
        `{"hr@K": Tensor[U'], "ndcg@K": ..., "recall@K": ..., "mrr@K": ...}`: one float32
        value per user with at least one target, in the order of `users`, on the CPU.
    """
    ks = cutoffs(ks)
    if batch_users < 1:
        raise ValueError(f"batch_users: expected an int >= 1, got {batch_users}")
    users, targets = _users_with_targets(users, targets, known)

    parts: dict[str, list[Tensor]] = {}
    device = None
    for begin in range(0, len(users), batch_users):
        batch = users[begin : begin + batch_users]  # [b]
        scores = score_fn(batch)  # [b, n_items]
        if scores.dim() != 2 or scores.shape[0] != len(batch):
            raise ValueError(
                f"score_fn: expected scores [{len(batch)}, n_items], got {tuple(scores.shape)}"
            )
        n_items = scores.shape[1]
        if device is None:  # move the item lists once, to where the scores are
            device = scores.device
            if isinstance(targets, tuple):
                targets = (targets[0].to(device), targets[1].to(device))
            else:
                targets = targets.to(device)
            if known is not None:
                known = (known[0].to(device), known[1].to(device))
                if len(known[1]) and int(known[1].max()) >= n_items:
                    raise ValueError(
                        f"known: item index {int(known[1].max())} out of range "
                        f"for {n_items} scored items"
                    )
        rows = batch.to(device)  # [b]
        if isinstance(targets, tuple):
            pos, within, flat, count = csr_entries(targets[0], rows)
            item = targets[1][flat]
            batch_targets = torch.full((len(rows), int(count.max())), -1, device=device)
            batch_targets[pos, within] = item  # [b, T]
        else:
            batch_targets = targets[begin : begin + batch_users]  # [b, T]
        mask = None
        if known is not None:
            pos, _, flat, _ = csr_entries(known[0], rows)
            item = known[1][flat]
            mask = torch.zeros(len(rows), n_items, dtype=torch.bool, device=device)
            mask[pos, item] = True  # [b, n_items]
        per_user = ranking_metrics_from_scores(scores, batch_targets, ks, mask, tops, ties)
        for name, value in per_user.items():
            parts.setdefault(name, []).append(value.cpu())
    return {name: torch.cat(values) for name, values in parts.items()}


@torch.no_grad()
def beyond_accuracy(
    tops: Tensor, popularity: Tensor, n_users: int, ks: Sequence[int]
) -> dict[str, float]:
    """Coverage, Gini, ARP and novelty at each K (definitions in the module docstring).

    Args:
        tops: `[L, >= max(ks)]` item indices of L top-K lists, best first, `-1` padded.
        popularity: `[n_items]` training users per item.
        n_users: the number of users (novelty's denominator).
        ks: cut-offs K.

    Example:
        >>> beyond_accuracy(torch.tensor([[0, 1], [0, 2]]), torch.tensor([4, 2, 1, 1]), 4, [2])
        {'coverage@2': 0.75, 'gini@2': 0.375, 'arp@2': 2.75, 'novelty@2': 0.75}
    """
    ks = cutoffs(ks)
    n_items = len(popularity)
    pop = popularity.double().cpu()
    info = -torch.log2(pop.clamp(min=1.0) / max(n_users, 1))  # [n_items]
    tops = tops.long().cpu()
    out: dict[str, float] = {}
    for k in ks:
        top = tops[:, :k]  # [L, k]
        valid = top >= 0
        safe = top.clamp(min=0)
        counts = torch.bincount(top[valid], minlength=n_items).double()  # [n_items]
        ordered = counts.sort().values
        j = torch.arange(1, n_items + 1, dtype=torch.float64)
        total = float(ordered.sum())
        per_list = valid.sum(1).clamp(min=1)  # [L]
        out[f"coverage@{k}"] = float((counts > 0).double().mean())
        out[f"gini@{k}"] = float(((2 * j - n_items - 1) * ordered).sum()) / max(
            n_items * total, 1e-12
        )
        out[f"arp@{k}"] = float((torch.where(valid, pop[safe], 0.0).sum(1) / per_list).mean())
        out[f"novelty@{k}"] = float((torch.where(valid, info[safe], 0.0).sum(1) / per_list).mean())
    return {f"{name}@{k}": out[f"{name}@{k}"] for name in BEYOND_NAMES for k in ks}
