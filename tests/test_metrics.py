"""Metrics against a plain, obviously-correct Python reference, ties included."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from orchestrator.data.sampling import user_item_csr
from orchestrator.data.types import Split
from orchestrator.engine import metrics
from orchestrator.engine.metrics import (
    full_ranking,
    ranking_metrics_from_scores,
    rating_metrics,
)
from orchestrator.engine.sampled import sampled_ranking

KS = [1, 3, 5, 10]


# ----------------------------------------------------------------------------- the reference
def reference_user(
    scores: list[float],
    targets: list[int],
    masked: set[int],
    ks: list[int],
    ties: str = "pessimistic",
) -> dict[str, float]:
    """One user's metrics, written straight from the definitions in the module docstring:
    a tie counts ahead of the target (pessimistic) or behind it (optimistic); `expected`
    averages the metrics over every order of the candidates used to break the ties (so
    keep such rows to a few candidates)."""
    open_ = [c for c in range(len(scores)) if c not in masked]
    if ties == "expected":
        orders = list(itertools.permutations(open_))
        runs = [_user_ranked(scores, targets, masked, ks, order) for order in orders]
        return {key: sum(r[key] for r in runs) / len(runs) for key in runs[0]}
    return _user_ranked(scores, targets, masked, ks, None, ahead=ties == "pessimistic")


def _user_ranked(scores, targets, masked, ks, order, ahead=True) -> dict[str, float]:
    """The metrics with ties broken by `order` (earlier ranks first), or all ties ahead
    of each target (`ahead`) or behind it."""
    place = {c: i for i, c in enumerate(order)} if order else {}

    def beats(c: int, t: int) -> bool:
        if math.isnan(scores[c]) or scores[c] > scores[t]:  # NaN beats the target
            return True
        if scores[c] == scores[t]:
            return place[c] < place[t] if order else ahead
        return False

    ranks = []  # rank of each target that can be a hit
    for t in targets:
        if t in masked or math.isnan(scores[t]):
            continue
        others = [c for c in range(len(scores)) if c != t and c not in masked]
        ranks.append(1 + sum(beats(c, t) for c in others))
    out = {}
    for k in ks:
        hits = sorted(r for r in ranks if r <= k)
        idcg = sum(1 / math.log2(j + 1) for j in range(1, min(len(targets), k) + 1))
        out[f"hr@{k}"] = 1.0 if hits else 0.0
        out[f"ndcg@{k}"] = sum(1 / math.log2(r + 1) for r in hits) / idcg
        out[f"recall@{k}"] = len(hits) / len(targets)
        out[f"mrr@{k}"] = 1 / hits[0] if hits else 0.0
    return out


def reference_mean(
    rows: list[tuple[list[float], list[int], set[int]]], ks: list[int], ties: str = "pessimistic"
) -> dict[str, float]:
    """Mean over the users with a non-empty target set."""
    per_user = [reference_user(s, t, m, ks, ties) for s, t, m in rows if t]
    return {key: sum(u[key] for u in per_user) / len(per_user) for key in per_user[0]}


def random_case(seed: int, n_rows: int, n_cand: int, max_targets: int):
    """Integer scores from a small range (many ties), 0..max_targets distinct targets, masks."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (n_rows, n_cand), generator=g).float()  # [B, C]
    mask = torch.rand(n_rows, n_cand, generator=g) < 0.2  # [B, C]
    targets = torch.full((n_rows, max_targets), -1)  # [B, T]
    for r in range(n_rows):
        n = int(torch.randint(0, max_targets + 1, (1,), generator=g))
        unmasked = (~mask[r]).nonzero().flatten()
        pick = unmasked[torch.randperm(len(unmasked), generator=g)[:n]]
        targets[r, : len(pick)] = pick
    # Some targets masked anyway (must be a miss), and a shuffled padding position.
    targets[0, 0] = 3
    mask[0, 3] = True
    targets = targets[:, torch.randperm(max_targets, generator=g)]
    return scores, targets, mask


def as_rows(scores, targets, mask):
    return [
        (
            scores[r].tolist(),
            [t for t in targets[r].tolist() if t >= 0],
            set(mask[r].nonzero().flatten().tolist()) if mask is not None else set(),
        )
        for r in range(len(scores))
    ]


def assert_close(got: dict, want: dict) -> None:
    assert list(got) == list(want) or set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key


def per_user_means(per_user: dict, targets) -> dict[str, float]:
    n = int((targets >= 0).any(1).sum())
    return {key: float(v.sum()) / n for key, v in per_user.items()}


# ----------------------------------------------------------------------------- hand-computed
def test_target_third_of_five():
    m = ranking_metrics_from_scores(
        torch.tensor([[5.0, 4, 3, 2, 1]]), torch.tensor([[2]]), ks=[2, 3, 5]
    )
    assert m["ndcg@5"].item() == pytest.approx(0.5)  # 1 / log2(4)
    assert m["mrr@5"].item() == pytest.approx(1 / 3)
    assert m["hr@2"].item() == 0.0 and m["mrr@2"].item() == 0.0 and m["ndcg@2"].item() == 0.0
    assert m["hr@3"].item() == 1.0 and m["recall@3"].item() == 1.0


def test_two_targets_hand_computed():
    # Targets at ranks 1 and 3: NDCG@3 = (1 + 1/log2 4) / (1 + 1/log2 3); Recall@2 = 1/2.
    m = ranking_metrics_from_scores(
        torch.tensor([[5.0, 4, 3, 2, 1]]), torch.tensor([[0, 2]]), ks=[2, 3]
    )
    assert m["ndcg@3"].item() == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert m["ndcg@2"].item() == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert m["recall@2"].item() == pytest.approx(0.5) and m["recall@3"].item() == 1.0
    assert m["mrr@2"].item() == 1.0 and m["hr@2"].item() == 1.0


def test_constant_scores_rank_as_a_random_ranking_or_by_the_bound_asked_for():
    # A constant model must not look perfect. 6 candidates, 1 masked -> 5 places.
    scores = torch.zeros(4, 6)  # [B, C]
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, 5] = True
    targets = torch.tensor([[0], [1], [2], [4]])
    m = ranking_metrics_from_scores(scores, targets, [4, 5], mask, ties="pessimistic")
    assert m["hr@4"].sum().item() == 0.0 and m["mrr@4"].sum().item() == 0.0
    assert m["hr@5"].tolist() == [1.0] * 4
    assert m["mrr@5"].tolist() == pytest.approx([0.2] * 4)
    m = ranking_metrics_from_scores(scores, targets, [4, 5], mask, ties="optimistic")
    assert m["hr@4"].tolist() == [1.0] * 4 and m["mrr@5"].tolist() == [1.0] * 4
    m = ranking_metrics_from_scores(scores, targets, [4, 5], mask)  # expected: uniform place
    assert m["hr@4"].tolist() == pytest.approx([0.8] * 4)
    assert m["mrr@5"].tolist() == pytest.approx([sum(1 / r for r in range(1, 6)) / 5] * 4)
    ndcg = sum(1 / math.log2(r + 1) for r in range(1, 5)) / 5
    assert m["ndcg@4"].tolist() == pytest.approx([ndcg] * 4)
    with pytest.raises(ValueError, match="ties: 'random'; expected one of expected"):
        ranking_metrics_from_scores(scores, targets, [4], mask, ties="random")


def test_masked_target_and_nan_are_misses_and_nan_beats_target():
    scores = torch.tensor(
        [
            [1.0, float("nan"), 0.5, 3.0],  # NaN candidate outranks target 0
            [float("nan"), 1.0, 0.0, 0.0],  # NaN target: a miss
            [2.0, 1.0, 0.0, 0.0],
        ]
    )  # masked target: a miss
    mask = torch.tensor([[False] * 4, [False] * 4, [True, False, False, False]])
    m = ranking_metrics_from_scores(scores, torch.tensor([[0], [0], [0]]), [2, 3, 4], mask)
    assert m["hr@4"].tolist() == [1.0, 0.0, 0.0]
    assert m["hr@2"].tolist() == [0.0, 0.0, 0.0]
    assert m["mrr@4"][0].item() == pytest.approx(1 / 3)  # beaten by NaN and 3.0


def test_minus_inf_target_is_not_pushed_down_by_masked_items():
    scores = torch.tensor([[-math.inf, -math.inf, 5.0, 1.0]])
    mask = torch.tensor([[False, True, False, False]])
    m = ranking_metrics_from_scores(scores, torch.tensor([[0]]), [3], mask)
    assert m["mrr@3"].item() == pytest.approx(1 / 3)  # last of the 3 unmasked candidates


def test_empty_rows_are_zero():
    m = ranking_metrics_from_scores(
        torch.rand(3, 5), torch.tensor([[-1, -1], [1, -1], [-1, -1]]), [5]
    )
    assert m["hr@5"].tolist() == [0.0, 1.0, 0.0] and m["ndcg@5"][0].item() == 0.0
    m = ranking_metrics_from_scores(torch.rand(3, 5), torch.zeros(3, 0, dtype=torch.long), [5])
    assert m["recall@5"].tolist() == [0.0, 0.0, 0.0]


# ----------------------------------------------------------------------------- vs reference
@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
@pytest.mark.parametrize("max_targets", [1, 3, metrics._COMPARE_MAX_TARGETS + 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_reference_with_ties_and_masks(seed, max_targets, ties):
    scores, targets, mask = random_case(seed, n_rows=40, n_cand=30, max_targets=max_targets)
    per_user = ranking_metrics_from_scores(scores, targets, KS, mask, ties=ties)
    assert all(v.shape == (40,) for v in per_user.values())
    assert_close(
        per_user_means(per_user, targets),
        reference_mean(as_rows(scores, targets, mask), KS, ties),
    )
    # Per-user values equal the reference user by user, not only on average.
    for r, row in enumerate(as_rows(scores, targets, mask)):
        if row[1]:
            want = reference_user(*row, KS, ties)
            assert {k: v[r].item() for k, v in per_user.items()} == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("ties", ["expected", "pessimistic"])
@pytest.mark.parametrize("n_cand", [25, 7])  # 7: fewer candidates than max(KS) + 1
@pytest.mark.parametrize("seed", [3, 4])
def test_compare_and_topk_paths_agree(seed, n_cand, ties, monkeypatch):
    scores, targets, mask = random_case(seed, n_rows=30, n_cand=n_cand, max_targets=4)
    scores[0, n_cand - 1] = float("nan")
    scores[1, :] = -math.inf
    scores[2, :] = 1.0  # a tie group larger than the top the top-k path reads
    compare = ranking_metrics_from_scores(scores, targets, KS, mask, ties=ties)
    monkeypatch.setattr(metrics, "_COMPARE_MAX_TARGETS", 0)
    by_topk = ranking_metrics_from_scores(scores, targets, KS, mask, ties=ties)
    for key in compare:
        torch.testing.assert_close(compare[key], by_topk[key])
    if ties == "pessimistic":
        want = reference_mean(as_rows(scores, targets, mask), KS, ties)
        assert_close(per_user_means(by_topk, targets), want)


@pytest.mark.parametrize("compare_max", [0, metrics._COMPARE_MAX_TARGETS])  # both paths
def test_expected_ties_are_the_mean_over_every_tie_break(compare_max, monkeypatch):
    """Rows of 6 candidates with scores in {0, 1, 2} (tie groups of every size), 0 to 3
    targets, masks: each metric equals its mean over all 720 orders of the candidates."""
    monkeypatch.setattr(metrics, "_COMPARE_MAX_TARGETS", compare_max)
    scores, targets, mask = random_case(21, n_rows=24, n_cand=6, max_targets=3)
    scores = scores.clamp(max=2)
    ks = [1, 2, 4]
    got = ranking_metrics_from_scores(scores, targets, ks, mask)
    for r, row in enumerate(as_rows(scores, targets, mask)):
        if row[1]:
            want = reference_user(*row, ks, "expected")
            assert {k: v[r].item() for k, v in got.items()} == pytest.approx(want, abs=1e-6)
    low = ranking_metrics_from_scores(scores, targets, ks, mask, ties="pessimistic")
    high = ranking_metrics_from_scores(scores, targets, ks, mask, ties="optimistic")
    for key, value in got.items():
        assert bool((low[key] <= value + 1e-6).all() and (value <= high[key] + 1e-6).all()), key
    assert any(bool((low[k] < high[k]).any()) for k in got)  # the case has ties that matter


# ----------------------------------------------------------------------------- full ranking
def csr_from_lists(lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    counts = torch.tensor([len(x) for x in lists])
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    indices = torch.tensor([i for x in lists for i in x], dtype=torch.long)
    return indptr, indices


def full_case(seed: int, n_users: int = 50, n_items: int = 40):
    g = torch.Generator().manual_seed(seed)
    table = torch.randint(0, 5, (n_users, n_items), generator=g).float()  # [U, I] ties
    known, held = [], []
    for _ in range(n_users):
        perm = torch.randperm(n_items, generator=g).tolist()
        n_known = int(torch.randint(0, 10, (1,), generator=g))
        n_held = int(torch.randint(0, 4, (1,), generator=g))  # some users have no target
        known.append(sorted(perm[:n_known]))
        held.append(perm[n_known : n_known + n_held])
    return table, known, held


@pytest.mark.parametrize("batch_users", [1, 7, 13, 50, 1024])
def test_full_ranking_batched_matches_reference(batch_users):
    table, known, held = full_case(seed=5)
    users = torch.randperm(50, generator=torch.Generator().manual_seed(6))[:45]  # [U] subset
    calls = []

    def score_fn(u):
        calls.append(len(u))
        return table[u]

    got = full_ranking(
        score_fn,
        users,
        csr_from_lists(held),
        csr_from_lists(known),
        KS,
        batch_users=batch_users,
        ties="pessimistic",
    )
    rows = [(table[u].tolist(), held[u], set(known[u])) for u in users.tolist()]
    assert_close(got, reference_mean(rows, KS))
    n_with_target = sum(1 for u in users.tolist() if held[u])
    assert sum(calls) == n_with_target and max(calls) <= batch_users


def test_full_ranking_with_user_item_csr_from_splits():
    # The CSR builder of data/sampling.py feeds full_ranking directly (train masked).
    table, known, held = full_case(seed=12)

    def split_of(lists):
        user = np.array([u for u, x in enumerate(lists) for _ in x], dtype=np.int64)
        item = np.array([i for x in lists for i in x], dtype=np.int64)
        return Split(user, item, np.ones(len(user), np.float32), np.zeros(len(user), np.int64))

    got = full_ranking(
        lambda u: table[u],
        torch.arange(50),
        user_item_csr(split_of(held), 50),
        user_item_csr(split_of(known), 50),
        KS,
        ties="pessimistic",
    )
    assert_close(
        got, reference_mean([(table[u].tolist(), held[u], set(known[u])) for u in range(50)], KS)
    )


def test_full_ranking_padded_targets_and_no_mask():
    table, known, held = full_case(seed=7)
    users = torch.arange(50)
    padded = torch.full((50, 3), -1)
    for u, items in enumerate(held):
        padded[u, : len(items)] = torch.tensor(items, dtype=torch.long)
    got = full_ranking(
        lambda u: table[u], users, padded, None, KS, batch_users=9, ties="pessimistic"
    )
    assert_close(got, reference_mean([(table[u].tolist(), held[u], set()) for u in range(50)], KS))
    # Masking the known items changes the answer (the mask is really applied).
    masked = full_ranking(lambda u: table[u], users, padded, csr_from_lists(known), KS)
    assert masked["mrr@10"] > got["mrr@10"]


def test_full_ranking_errors():
    table, known, held = full_case(seed=8)
    users = torch.arange(50)
    with pytest.raises(ValueError, match="none of the users"):
        full_ranking(lambda u: table[u], users, csr_from_lists([[]] * 50), None, KS)
    with pytest.raises(ValueError, match=r"users: expected indices in \[0, 50\)"):
        full_ranking(lambda u: table[u], torch.tensor([50]), csr_from_lists(held), None, KS)
    with pytest.raises(ValueError, match="known: item index 40 out of range"):
        full_ranking(
            lambda u: table[u], users, csr_from_lists(held), csr_from_lists([[40]] * 50), KS
        )
    with pytest.raises(ValueError, match="score_fn: expected scores"):
        full_ranking(lambda u: table[u][:1], users, csr_from_lists(held), None, KS)
    with pytest.raises(ValueError, match="indptr must rise"):
        full_ranking(lambda u: table[u], users, (torch.tensor([0, 2]), torch.tensor([1])), None, KS)
    with pytest.raises(ValueError, match="ks: expected"):
        full_ranking(lambda u: table[u], users, csr_from_lists(held), None, [0])


def test_targets_errors():
    with pytest.raises(ValueError, match="targets row 1: expected distinct"):
        ranking_metrics_from_scores(torch.rand(2, 5), torch.tensor([[0, 1], [2, 2]]), [5])
    with pytest.raises(ValueError, match="targets row 0"):
        ranking_metrics_from_scores(torch.rand(2, 5), torch.tensor([[5], [1]]), [5])


# ----------------------------------------------------------------------------- sampled
@pytest.mark.parametrize("batch", [1, 6, 64])
def test_sampled_matches_reference(batch):
    g = torch.Generator().manual_seed(9)
    table = torch.randint(0, 3, (20, 60), generator=g).float()  # [U, I] many ties
    rows = 33
    users = torch.randint(0, 20, (rows,), generator=g)
    items = torch.randint(0, 60, (rows,), generator=g)
    negatives = torch.stack(
        [
            torch.tensor([i for i in torch.randperm(60, generator=g).tolist() if i != t][:10])
            for t in items.tolist()
        ]
    )  # [R, N]

    def score_pairs(u, cand):
        return table[u[:, None], cand]  # [b, 1 + N]

    got = sampled_ranking(score_pairs, users, items, negatives, KS, batch, "pessimistic")
    ref_rows = [
        ([table[u, i].item() for i in [t] + negatives[r].tolist()], [0], set())
        for r, (u, t) in enumerate(zip(users.tolist(), items.tolist(), strict=True))
    ]
    want = reference_mean(ref_rows, KS)
    assert_close(got, want)
    assert got["hr@10"] == pytest.approx(got["recall@10"])
    with pytest.raises(ValueError, match="negatives row 2: expected item indices >= 0"):
        bad = negatives.clone()
        bad[2, 4] = -3
        sampled_ranking(score_pairs, users, items, bad, KS)


def ncf_authors_eval(
    scores: dict[int, float], target: int, negatives: list[int], k: int
) -> tuple[float, float]:
    """He et al.'s `evaluate.py` (NCF, 2017) line by line: the negatives, then the target
    appended, scored into a dict keyed by item; `heapq.nlargest` of its keys by score."""
    import heapq

    items = list(negatives)
    items.append(target)
    map_item_score = {}
    for item in items:
        map_item_score[item] = scores[item]
    ranklist = heapq.nlargest(k, map_item_score, key=map_item_score.get)
    hr = 1.0 if target in ranklist else 0.0
    ndcg = next(
        (math.log(2) / math.log(i + 2) for i, item in enumerate(ranklist) if item == target), 0.0
    )
    return hr, ndcg


def test_sampled_agrees_with_the_ncf_authors_evaluation_and_bounds_it_with_ties():
    """Without ties every rule is the authors' evaluation, a target repeated among its own
    negatives included; with ties, the authors' (one tie-break, by their dict's order) lies
    between the pessimistic and the optimistic rule."""
    g = torch.Generator().manual_seed(4)
    n_items, rows = 40, 200
    items = torch.randint(0, n_items, (rows,), generator=g)
    lines = []
    for r, t in enumerate(items.tolist()):
        negs = [i for i in torch.randperm(n_items, generator=g).tolist() if i != t]
        negs = negs[: int(torch.randint(5, 12, (1,), generator=g))]  # uneven counts
        if r % 3 == 0:  # the target repeated among its own negatives, at some place
            negs.insert(int(torch.randint(0, len(negs) + 1, (1,), generator=g)), t)
        lines.append(negs)
    width = max(map(len, lines))
    negatives = torch.tensor([n + [-1] * (width - len(n)) for n in lines])  # [R, N] padded
    users = torch.arange(rows)
    distinct = torch.rand(rows, n_items, generator=g)  # [R, I] no ties
    tied = torch.randint(0, 4, (rows, n_items), generator=g).float()  # [R, I] many ties
    for table in (distinct, tied):
        for k in (1, 3, 10):
            got = {
                ties: sampled_ranking(
                    lambda u, c, t=table: t[u[:, None], c], users, items, negatives, [k], ties=ties
                )
                for ties in ("pessimistic", "expected", "optimistic")
            }
            want = [
                ncf_authors_eval(dict(enumerate(table[r].tolist())), int(items[r]), lines[r], k)
                for r in range(rows)
            ]
            hr = sum(w[0] for w in want) / rows
            ndcg = sum(w[1] for w in want) / rows
            if table is distinct:
                for rule in got.values():
                    assert (rule[f"hr@{k}"], rule[f"ndcg@{k}"]) == pytest.approx((hr, ndcg))
            else:
                low, high = got["pessimistic"][f"hr@{k}"], got["optimistic"][f"hr@{k}"]
                assert low < hr < high and low < got["expected"][f"hr@{k}"] < high


# ----------------------------------------------------------------------------- rating
def test_rating_metrics_match_numpy_with_clipping():
    rng = np.random.default_rng(0)
    pred = rng.uniform(-1, 7, 500)
    target = rng.integers(1, 6, 500).astype(float)
    got = rating_metrics(torch.tensor(pred, dtype=torch.float32), torch.tensor(target), 1, 5)
    err = np.clip(pred.astype(np.float32).astype(float), 1, 5) - target
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)), rel=1e-9)
    assert got["mae"] == pytest.approx(np.mean(np.abs(err)), rel=1e-9)
    unclipped = np.sqrt(np.mean((pred - target) ** 2))
    assert got["rmse"] < unclipped  # clipping happened and helped
    assert rating_metrics(torch.tensor([0.0, 9.0]), torch.tensor([1.0, 5.0]), 1, 5) == {
        "rmse": 0.0,
        "mae": 0.0,
    }
    with pytest.raises(ValueError, match="same shape"):
        rating_metrics(torch.zeros(3), torch.zeros(4), 1, 5)
    with pytest.raises(ValueError, match="N = 0"):
        rating_metrics(torch.zeros(0), torch.zeros(0), 1, 5)


# ----------------------------------------------------------------------------- devices
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_computed_on_the_scores_device(device):
    for max_targets in (2, metrics._COMPARE_MAX_TARGETS + 3):  # both ranking paths
        scores, targets, mask = random_case(10, n_rows=20, n_cand=30, max_targets=max_targets)
        on_cpu = ranking_metrics_from_scores(scores, targets, KS, mask)
        there = ranking_metrics_from_scores(
            scores.to(device), targets.to(device), KS, mask.to(device)
        )
        for key, value in there.items():
            assert value.device.type == device
            torch.testing.assert_close(value.cpu(), on_cpu[key])
    # CSR lists on the CPU, scores on the device: the lists follow the scores.
    table, known, held = full_case(seed=11)
    on_device = table.to(device)
    got = full_ranking(
        lambda u: on_device[u.to(device)],
        torch.arange(50),
        csr_from_lists(held),
        csr_from_lists(known),
        KS,
        batch_users=16,
        ties="pessimistic",
    )
    assert_close(
        got, reference_mean([(table[u].tolist(), held[u], set(known[u])) for u in range(50)], KS)
    )


def test_beyond_accuracy_on_hand_computed_lists() -> None:
    # 3 lists over 5 items; pop = training users per item, |U| = 8
    tops = torch.tensor([[0, 1, 2], [0, 1, -1], [0, 3, 1]])
    pop = torch.tensor([8, 4, 2, 1, 0])
    out = metrics.beyond_accuracy(tops, pop, 8, ks=[1, 3])
    assert out["coverage@1"] == pytest.approx(1 / 5)  # item 0 only
    assert out["coverage@3"] == pytest.approx(4 / 5)  # 0, 1, 2, 3
    # counts at 3: item 0: 3, 1: 3, 2: 1, 3: 1, 4: 0 -> sorted 0, 1, 1, 3, 3; n = 5, sum 8
    # sum_j (2j - 6) c_(j) = -4*0 - 2*1 + 0*1 + 2*3 + 4*3 = 16 -> 16 / (5 * 8)
    assert out["gini@3"] == pytest.approx(16 / 40)
    assert out["gini@1"] == pytest.approx((4 * 3) / (5 * 3))  # all on one item: (n-1)/n
    # ARP: (8+4+2)/3, (8+4)/2 (the padded slot is no item), (8+1+4)/3
    assert out["arp@3"] == pytest.approx((14 / 3 + 12 / 2 + 13 / 3) / 3)
    # self-information -log2(pop/8): 0, 1, 2, 3, and 3 for the unseen item (counted as one)
    assert out["novelty@3"] == pytest.approx((3 / 3 + 1 / 2 + 4 / 3) / 3)
    assert out["novelty@1"] == 0.0 and out["arp@1"] == 8.0
    assert list(out) == [f"{m}@{k}" for m in metrics.BEYOND_NAMES for k in (1, 3)]


def test_the_full_ranking_pass_hands_over_the_lists_it_ranked() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]])
    known = user_item_csr(Split(*map(torch.tensor, ([0, 1], [0, 3], [1.0, 1.0], [0, 0]))), 2)
    targets = user_item_csr(Split(*map(torch.tensor, ([0, 1], [2, 0], [1.0, 1.0], [0, 0]))), 2)
    tops: list[torch.Tensor] = []
    metrics.full_ranking_per_user(
        lambda u: scores[u], torch.arange(2), targets, known, [2], 1, tops
    )
    # user 0 knows item 0, user 1 item 3: they are not recommended
    assert torch.cat(tops).tolist() == [[1, 2], [2, 1]]
