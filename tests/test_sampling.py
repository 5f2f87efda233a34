"""Negative sampling, sequence windows, last items and the CSR builder (data/sampling.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orchestrator.data import prepare
from orchestrator.data.sampling import NegativeSampler, last_items, sequence_windows, user_item_csr
from orchestrator.data.synthetic import load_synthetic
from orchestrator.data.types import Split


def split_of(user, item, timestamp=None) -> Split:
    user, item = torch.tensor(user), torch.tensor(item)
    ts = torch.arange(len(user)) if timestamp is None else torch.tensor(timestamp)
    return Split(user, item, torch.ones(len(user)), ts)


@pytest.fixture(scope="module")
def train() -> tuple[Split, int]:
    raw = load_synthetic("synthetic:users=300,items=400,interactions=20000,seed=3")
    data = prepare(raw, "leave-last", eval_negatives=0)
    return data.train.to("cpu"), data.n_items


def positives_of(split: Split, n_items: int) -> set[int]:
    return set((split.user * n_items + split.item).tolist())


@pytest.mark.parametrize("mode", ["uniform", "popularity"])
def test_negatives_never_positive(train, mode):
    split, n_items = train
    sampler = NegativeSampler(split, n_items, mode, torch.Generator().manual_seed(0))
    neg = sampler.sample(split.user, 4)  # [N, 4]
    assert neg.shape == (len(split), 4) and neg.dtype == torch.long
    keys = (split.user[:, None] * n_items + neg).flatten().tolist()
    assert not positives_of(split, n_items) & set(keys)
    assert 0 <= int(neg.min()) and int(neg.max()) < n_items


def test_bitmap_and_binary_search_agree(train, monkeypatch):
    split, n_items = train
    a = NegativeSampler(split, n_items, generator=torch.Generator().manual_seed(5))
    assert a.bitmap is not None  # built on first use, under the limit of that moment
    monkeypatch.setattr(NegativeSampler, "BITMAP_MAX_BITS", 0)
    b = NegativeSampler(split, n_items, generator=torch.Generator().manual_seed(5))
    assert b.bitmap is None
    # the rejection draws (distinct rows) test membership in the bitmap or the sorted keys
    assert torch.equal(
        a.sample(split.user, 3, distinct=True), b.sample(split.user, 3, distinct=True)
    )


def test_free_item_draws_match_rejection_by_hand():
    # user 0 has items 1, 2, 5 of 7 (free: 0, 3, 4, 6); user 1 every item but 3; user 2 none
    split = split_of([0, 0, 0] + [1] * 6, [5, 1, 2, 0, 1, 2, 4, 5, 6])
    sampler = NegativeSampler(split, 7, generator=torch.Generator().manual_seed(0), n_users=3)
    neg = sampler.sample(torch.tensor([0] * 4000 + [1] * 50 + [2] * 7000), 1).flatten()
    assert set(neg[:4000].tolist()) == {0, 3, 4, 6} and set(neg[4000:4050].tolist()) == {3}
    assert sorted(set(neg[4050:].tolist())) == list(range(7))
    counts = np.bincount(neg[:4000].numpy(), minlength=7)[[0, 3, 4, 6]]
    assert abs(counts / 4000 - 0.25).max() < 0.03  # each free item a quarter of the draws


def test_uniform_is_uniform_over_non_positives():
    # user 0 has items 0..9 of 30; its 20 other items should come up equally often
    split = split_of([0] * 10 + [1] * 3, list(range(10)) + [0, 1, 2])
    sampler = NegativeSampler(split, 30, generator=torch.Generator().manual_seed(1))
    neg = sampler.sample(torch.zeros(20_000, dtype=torch.long), 5).flatten()
    counts = np.bincount(neg.numpy(), minlength=30)
    assert counts[:10].sum() == 0
    expected = len(neg) / 20
    chi2 = ((counts[10:] - expected) ** 2 / expected).sum()
    assert chi2 < 19 + 5 * np.sqrt(2 * 19)  # df = 19: far inside the tail at this seed


def test_popularity_mode_skews_toward_popular_items():
    # item 0 is in 50 users' histories, item 1 in 5, items 2..9 in 1 each; user 99 has none
    user = list(range(50)) + list(range(5)) + list(range(8))
    item = [0] * 50 + [1] * 5 + list(range(2, 10))
    sampler = NegativeSampler(
        split_of(user, item), 10, "popularity", torch.Generator().manual_seed(0), n_users=100
    )
    counts = np.bincount(sampler.sample(torch.full((5000,), 99), 2).flatten().numpy(), minlength=10)
    share = counts / counts.sum()
    assert abs(share[0] - 50 / 63) < 0.02 and abs(share[1] - 5 / 63) < 0.02
    # user 0 has items 0 and 1 (and 2): popularity mode must skip them
    assert not set(sampler.sample(torch.zeros(2000, dtype=torch.long), 3).flatten().tolist()) & {
        0,
        1,
        2,
    }


def test_distinct_rows_and_determinism(train):
    split, n_items = train
    users = torch.arange(300)

    def draw(seed: int) -> torch.Tensor:
        s = NegativeSampler(split, n_items, generator=torch.Generator().manual_seed(seed))
        return s.sample(users, 100, distinct=True)

    neg = draw(7)
    assert all(len(set(row)) == 100 for row in neg.tolist())
    assert torch.equal(neg, draw(7)) and not torch.equal(neg, draw(8))


def test_user_with_every_item_is_a_clear_error():
    split = split_of([0, 0, 0, 1], [0, 1, 2, 0])
    sampler = NegativeSampler(split, 3)
    assert sampler.sample(torch.tensor([1]), 4).shape == (1, 4)  # with replacement: fine
    with pytest.raises(ValueError, match="user index 0 has only 0 items"):
        sampler.sample(torch.tensor([1, 0]), 1)
    with pytest.raises(ValueError, match="user index 1 has only 2 items.*needs 3"):
        sampler.sample(torch.tensor([1]), 3, distinct=True)
    with pytest.raises(ValueError, match=r"user indices must be in \[0, n_users=2\)"):
        sampler.sample(torch.tensor([2]), 1)
    with pytest.raises(ValueError, match="mode 'zipf'"):
        NegativeSampler(split, 3, mode="zipf")


def test_sequence_windows_by_hand():
    # user 0 saw items 10, 11, 12, 13 in time (rows given out of order); user 1 saw one item
    split = split_of([0, 1, 0, 0, 0], [12, 5, 10, 13, 11], [30, 1, 10, 40, 20])
    w = sequence_windows(split, L=2, T=1, pad=99)
    assert w["user"].tolist() == [0, 0, 0]
    assert w["seq"].tolist() == [[99, 10], [10, 11], [11, 12]]
    assert w["target"].tolist() == [[11], [12], [13]]
    w = sequence_windows(split, L=3, T=2, pad=99)
    assert w["seq"].tolist() == [[99, 99, 10], [99, 10, 11]]
    assert w["target"].tolist() == [[11, 12], [12, 13]]


def test_last_items_by_hand_and_unsorted_concatenation():
    train = split_of([0, 0, 0, 2], [10, 11, 12, 7], [1, 2, 3, 5])
    val = split_of([2, 0], [8, 13], [6, 4])
    both = Split(
        *(
            torch.cat([a, b])
            for a, b in zip(
                (val.user, val.item, val.rating, val.timestamp),
                (train.user, train.item, train.rating, train.timestamp),
                strict=True,
            )
        )
    )
    out = last_items(both, n_users=4, L=3, pad=99)
    assert out.tolist() == [[11, 12, 13], [99, 99, 99], [99, 7, 8], [99, 99, 99]]
    assert last_items(train, 3, 2, 99).tolist() == [[11, 12], [99, 99], [99, 7]]
    with pytest.raises(ValueError, match="user index 2 >= n_users=2"):
        last_items(train, 2, 2, 99)


def test_user_item_csr():
    indptr, indices = user_item_csr(split_of([2, 0, 2, 2, 0], [5, 1, 0, 5, 3]), n_users=4)
    assert indptr.tolist() == [0, 2, 2, 4, 4]
    assert indices.tolist() == [1, 3, 0, 5]  # duplicates (2, 5) counted once
