"""Preparation: filters, indexing, splits and evaluation negatives (data/prepare.py)."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.config import DataConfig
from orchestrator.data import describe, index_of, load_datasets, load_source, prepare
from orchestrator.data.splits import fold_splits
from orchestrator.data.types import Interactions, PreparedData, RawDataset, Split

SPLITS = ["leave-last", "random:0.8,0.1,0.1", "temporal:0.7,0.1,0.2", "u1", "ua", "kfold:2/5"]


def raw_of(user, item, rating=None, timestamp=None, **kw) -> RawDataset:
    arr = [np.asarray(x) if x is not None else None for x in (user, item, rating, timestamp)]
    if arr[2] is not None:
        arr[2] = arr[2].astype(np.float32)
    return RawDataset(name="hand", interactions=Interactions(*arr), fingerprint="f", **kw)


def pairs(data: PreparedData, split: Split) -> set[tuple]:
    return set(
        zip(data.user_ids[split.user].tolist(), data.item_ids[split.item].tolist(), strict=True)
    )


@pytest.fixture(scope="module")
def ml100k(ml100k_dir) -> RawDataset:
    return load_source("ml-100k", ml100k_dir.parent)


@pytest.fixture(scope="module")
def prepared(ml100k) -> dict[str, PreparedData]:
    return {s: prepare(ml100k, s, eval_negatives=5) for s in SPLITS}


# --- splits on the real MovieLens 100K -------------------------------------------------------


def test_ml100k_counts_and_ids(prepared):
    data = prepared["leave-last"]
    assert (data.n_users, data.n_items) == (943, 1682)
    assert data.stats["interactions"] == 100_000 and data.has_ratings
    assert data.user_ids.tolist() == list(range(1, 944))  # sorted raw ids
    assert data.rating_range == (1.0, 5.0)
    assert data.item_titles[0] == "Toy Story (1995)" and "Animation" in data.item_genres[0]
    assert data.stats["ratings"] == {"1": 6110, "2": 11370, "3": 27145, "4": 34174, "5": 21201}
    assert data.stats["time_span"]["first"] == "1997-09-20"


@pytest.mark.parametrize("split", SPLITS)
def test_splits_partition_without_leakage(prepared, split):
    data = prepared[split]
    train, val, test = pairs(data, data.train), pairs(data, data.val), pairs(data, data.test)
    assert len(train) + len(val) + len(test) == 100_000  # nothing lost, no pair twice
    assert not (train & test) and not (train & val) and not (val & test)
    for part in (data.train, data.val, data.test):  # sorted by (user, timestamp)
        key = np.lexsort((part.timestamp, part.user))  # stable: ties keep their order
        assert (key == np.arange(len(part))).all()
    assert data.test_negatives.shape == (len(data.test), 5)
    assert data.val_negatives.shape == (len(data.val), 5)


def test_split_sizes(prepared):
    sizes = {s: (len(d.train), len(d.val), len(d.test)) for s, d in prepared.items()}
    assert sizes["leave-last"] == (100_000 - 2 * 943, 943, 943)
    assert sizes["random:0.8,0.1,0.1"] == (80_000, 10_000, 10_000)
    assert sizes["u1"] == (72_000, 8_000, 20_000)  # val: 10% of u1.base
    assert sizes["ua"][2] == 9430  # ten per user
    temporal = prepared["temporal:0.7,0.1,0.2"]
    counts = np.bincount(temporal.test.user, minlength=943)
    n = np.bincount(np.r_[temporal.train.user, temporal.val.user, temporal.test.user])
    assert (counts == n - np.floor(0.8 * n + 0.5)).all()  # the last 20% of each user


def test_leave_last_takes_the_last_in_time(ml100k, prepared):
    data = prepared["leave-last"]
    inter = ml100k.interactions
    for u in (1, 50, 943):  # raw ids
        mine = np.flatnonzero(inter.user == u)
        by_time = mine[np.lexsort((mine, inter.timestamp[mine]))]  # ties: source order
        test_row = data.test.user == index_of(data.user_ids, u, "user")[0]
        val_row = data.val.user == index_of(data.user_ids, u, "user")[0]
        assert data.item_ids[data.test.item[test_row]].tolist() == [inter.item[by_time[-1]]]
        assert data.item_ids[data.val.item[val_row]].tolist() == [inter.item[by_time[-2]]]


def test_temporal_order_within_users(prepared):
    data = prepared["temporal:0.7,0.1,0.2"]
    last_train = np.full(data.n_users, -1)
    np.maximum.at(last_train, data.train.user, data.train.timestamp)
    first_test = np.full(data.n_users, 2**62)
    np.minimum.at(first_test, data.test.user, data.test.timestamp)
    assert (last_train <= first_test).all()


def test_u1_test_is_the_release_file(ml100k, prepared):
    base, test = ml100k.fixed_splits["u1"]()
    data = prepared["u1"]
    assert pairs(data, data.test) == set(zip(test.user.tolist(), test.item.tolist(), strict=True))
    assert pairs(data, data.train) | pairs(data, data.val) == set(
        zip(base.user.tolist(), base.item.tolist(), strict=True)
    )


def test_determinism_and_seed(ml100k):
    a = prepare(ml100k, "random:0.8,0.1,0.1", seed=1, eval_negatives=3)
    b = prepare(ml100k, "random:0.8,0.1,0.1", seed=1, eval_negatives=3)
    c = prepare(ml100k, "random:0.8,0.1,0.1", seed=2, eval_negatives=3)
    assert np.array_equal(a.test.item, b.test.item) and a.fingerprint == b.fingerprint
    assert np.array_equal(a.test_negatives, b.test_negatives)
    assert not np.array_equal(a.test.item, c.test.item) and a.fingerprint != c.fingerprint


def test_eval_negatives_are_never_interactions(prepared):
    data = prepared["leave-last"]
    seen = set()
    for part in (data.train, data.val, data.test):
        seen |= set((part.user * data.n_items + part.item).tolist())
    for part, neg in ((data.val, data.val_negatives), (data.test, data.test_negatives)):
        keys = (part.user[:, None] * data.n_items + neg).ravel().tolist()
        assert not seen & set(keys)
        assert all(len(set(row)) == neg.shape[1] for row in neg.tolist())


def test_the_sampled_protocol_has_100_candidates_by_default(ml100k) -> None:
    # NCF's files and the papers that follow them: the target among 99 negatives
    from orchestrator.config import DataConfig

    assert DataConfig().eval_negatives == 99
    data = prepare(ml100k, "leave-last")
    assert data.test_negatives.shape == (len(data.test), 99)
    assert data.val_negatives.shape == (len(data.val), 99)


# --- filters ---------------------------------------------------------------------------------


def test_k_core_property_and_counts(ml100k):
    data = prepare(ml100k, "leave-last", min_rating=4, user_core=20, item_core=20, eval_negatives=0)
    f = data.stats["filters"]
    assert f["min_rating_removed"] == 6110 + 11370 + 27145
    assert f["k_core_rounds"] >= 2  # dropping items pushed users under the bar
    total = len(data.train) + len(data.val) + len(data.test)
    assert (
        total
        == data.stats["interactions"]
        == 100_000 - f["min_rating_removed"] - f["k_core_removed"]
    )
    users = np.r_[data.train.user, data.val.user, data.test.user]
    items = np.r_[data.train.item, data.val.item, data.test.item]
    assert np.bincount(users).min() >= 20 and np.bincount(items).min() >= 20
    assert f["min_rating_users_removed"] == 1  # a user who never rated 4 or 5
    assert data.n_users == 943 - f["min_rating_users_removed"] - f["k_core_users_removed"]
    assert data.n_items == 1682 - f["min_rating_items_removed"] - f["k_core_items_removed"]
    assert min(np.r_[data.train.rating, data.test.rating]) >= 4


def test_dedup_policies():
    raw = raw_of(
        user=[1, 1, 1, 2, 1],
        item=[7, 7, 8, 7, 7],
        rating=[1, 3, 4, 5, 5],
        timestamp=[10, 30, 5, 1, 20],
    )
    got = {}
    for policy in ("last", "first", "mean"):
        data = prepare(raw, "random:1,0,0", dedup=policy, eval_negatives=0)
        assert data.stats["filters"]["dedup_removed"] == 2
        rows = {
            (int(data.user_ids[u]), int(data.item_ids[i])): (float(r), int(t))
            for u, i, r, t in zip(
                data.train.user,
                data.train.item,
                data.train.rating,
                data.train.timestamp,
                strict=True,
            )
        }
        assert rows[(1, 8)] == (4.0, 5) and rows[(2, 7)] == (5.0, 1)
        got[policy] = rows[(1, 7)]
    assert got == {"last": (3.0, 30), "first": (1.0, 10), "mean": (3.0, 30)}
    with pytest.raises(ValueError, match=r"2 repeated \(user, item\) rows, e.g. user 1 item 7"):
        prepare(raw, dedup="error")


def test_empty_after_filter_names_the_filter():
    raw = raw_of(user=[1, 2, 2], item=[1, 1, 2], rating=[1, 2, 3])
    with pytest.raises(ValueError, match="no interactions left after min_rating=4"):
        prepare(raw, min_rating=4)
    with pytest.raises(ValueError, match=r"after k-core \(user_core=5"):
        prepare(raw, user_core=5)
    with pytest.raises(ValueError, match="has no ratings"):
        prepare(raw_of(user=[1], item=[1]), min_rating=1)


def test_equal_timestamps_keep_source_order():
    # user 1 rates items 9, 4, 7, 2 in one second, listed after a later row of user 2; a
    # repeated pair elsewhere takes the dedup path, which must keep source order too
    for extra in ([], [(2, 5, 1)]):
        rows = [(2, 5, 1), (1, 9, 0), (1, 4, 0), (1, 7, 0), (1, 2, 0), (2, 6, 2), (2, 8, 3)]
        user, item, ts = map(list, zip(*(rows + extra), strict=True))
        data = prepare(raw_of(user=user, item=item, timestamp=ts), "leave-last", eval_negatives=0)
        train = data.item_ids[data.train.item[data.user_ids[data.train.user] == 1]]
        assert train.tolist() == [9, 4]
        assert data.item_ids[data.val.item].tolist() == [7, 6]
        assert data.item_ids[data.test.item].tolist() == [2, 8]
        assert data.stats["filters"]["dedup_removed"] == len(extra)


def test_short_users_stay_in_train_and_implicit_data():
    raw = raw_of(user=["a", "a", "b", "b", "b"], item=["x", "y", "x", "y", "z"])
    data = prepare(raw, "leave-last", eval_negatives=0)
    assert data.stats["split"]["short_users_all_in_train"] == 1
    assert (len(data.train), len(data.val), len(data.test)) == (3, 1, 1)
    assert data.user_ids[data.test.user].tolist() == ["b"]
    assert data.item_ids[data.test.item].tolist() == ["z"]  # no timestamps: source order
    assert not data.has_ratings and data.rating_range == (0.0, 1.0)
    assert data.stats["time_span"] is None


def test_kfold_puts_each_rating_in_one_test_fold(ml100k):
    folds = [prepare(ml100k, s, eval_negatives=0) for s in fold_splits(5)]
    tests = [pairs(d, d.test) for d in folds]
    assert [len(t) for t in tests] == [20_000] * 5
    assert len(set().union(*tests)) == 100_000  # disjoint, and every rating is in one
    for data, test in zip(folds, tests, strict=True):
        assert (len(data.train), len(data.val)) == (72_000, 8_000)  # val: 10% of the rest
        assert not (pairs(data, data.train) | pairs(data, data.val)) & test
    again = prepare(ml100k, "kfold:3/5", eval_negatives=0)
    assert pairs(again, again.test) == tests[2]  # seeded
    other = prepare(ml100k, "kfold:3/5", seed=1, eval_negatives=0)
    assert pairs(other, other.test) != tests[2]


@pytest.mark.parametrize(
    ("folds", "match"),
    [
        (1, "data.folds: 1: expected K >= 2"),
        (("u1",), r"data.folds: \['u1'\] mixes protocols, repeats a split or names one"),
        (("u1", "ua"), "mixes protocols"),
        (("u1", "u1"), "repeats a split"),
        (("kfold:1/3", "kfold:2/4"), "mixes protocols"),
        (("leave-last", "u1"), "data.folds: 'leave-last' is not a fold: expected K >= 2"),
        (("kfold:4/3", "kfold:1/3"), r"data.folds: split 'kfold:4/3': expected kfold:F/K"),
    ],
)
def test_folds_that_are_not_disjoint_test_sets_are_errors(folds, match):
    with pytest.raises(ValueError, match=match):
        fold_splits(folds)


def test_folds_the_dataset_does_not_ship_are_an_error_naming_the_key():
    cfg = DataConfig(dataset="synthetic:users=30,items=20,interactions=300")
    with pytest.raises(ValueError, match=r"data\.folds: split 'u1': dataset .* does not ship"):
        load_datasets(cfg, ("u1", "u2"))


def test_bad_specs_and_settings(ml100k):
    raw = raw_of(user=[1, 2], item=[1, 2])
    for spec in ("random:0.8,0.2", "random:a,b,c", "temporal:0.5,0.1,0.1"):
        with pytest.raises(ValueError, match="three shares"):
            prepare(raw, spec)
    with pytest.raises(ValueError, match="unknown split 'last'.*leave-last"):
        prepare(raw, "last")
    with pytest.raises(ValueError, match="does not ship it"):
        prepare(raw, "u1")
    with pytest.raises(ValueError, match=r"kfold:0/5': expected kfold:F/K"):
        prepare(raw, "kfold:0/5")
    with pytest.raises(ValueError, match="dedup='newest'"):
        prepare(raw, dedup="newest")
    with pytest.raises(ValueError, match="eval_negatives=2000: user index"):
        prepare(ml100k, eval_negatives=2000)


def test_fixed_split_overlap_is_an_error():
    base = Interactions(np.array([1, 1]), np.array([5, 6]))
    test = Interactions(np.array([1]), np.array([6]))
    raw = raw_of(user=[1, 1, 1], item=[5, 6, 6], fixed_splits={"u1": lambda: (base, test)})
    with pytest.raises(ValueError, match=r"1 \(user, item\) pairs are in both base and test"):
        prepare(raw, "u1")


def test_ncf_keeps_the_benchmark(tmp_path):
    # 3 users (0-based, as the NCF files), items 0..9; item 9 only appears as a negative
    train = [(0, 1, 5, 10), (0, 2, 4, 20), (0, 3, 3, 30), (1, 1, 4, 10), (1, 4, 2, 5), (2, 5, 1, 7)]
    test = [(0, 4, 5, 40), (1, 2, 3, 50), (2, 1, 4, 60)]
    negatives = [[5, 9, 6], [7, 9, 8], [2, 3, 9]]
    prefix = tmp_path / "bench"
    (tmp_path / "bench.train.rating").write_text(
        "".join("\t".join(map(str, r)) + "\n" for r in train)
    )
    (tmp_path / "bench.test.rating").write_text(
        "".join("\t".join(map(str, r)) + "\n" for r in test)
    )
    (tmp_path / "bench.test.negative").write_text(
        "".join(
            f"({u},{i})\t" + "\t".join(map(str, n)) + "\n"
            for (u, i, _, _), n in zip(test, negatives, strict=True)
        )
    )
    data = prepare(load_source(f"ncf:{prefix}"), "ncf", eval_negatives=2)
    assert pairs(data, data.test) == {(u, i) for u, i, _, _ in test}
    assert pairs(data, data.val) == {(0, 3), (1, 1)}  # each user's last in time (user 2: one)
    assert pairs(data, data.train) | pairs(data, data.val) == {(u, i) for u, i, _, _ in train}
    assert 9 in data.item_ids.tolist()
    got = data.item_ids[data.test_negatives].tolist()
    assert got == [negatives[k] for k in data.user_ids[data.test.user]]  # aligned with rows
    assert data.val_negatives.shape == (2, 2)
    assert describe(data)["test_negatives"] == {
        "max_per_row": 3,
        "rows_with_fewer": 0,
        "rows_listing_the_test_item": 0,
        "repeats_removed": 0,
    }

    # as the authors published theirs: a test item among its own negatives, uneven counts
    negatives[1], negatives[2] = [7, 2, 9, 8], [3, 9]
    (tmp_path / "bench.test.negative").write_text(
        "".join(
            f"({u},{i})\t" + "\t".join(map(str, n)) + "\n"
            for (u, i, _, _), n in zip(test, negatives, strict=True)
        )
    )
    data = prepare(load_source(f"ncf:{prefix}"), "ncf", eval_negatives=2)
    rows = data.user_ids[data.test.user]
    got = [data.item_ids[n[n >= 0]].tolist() for n in data.test_negatives]
    assert got == [negatives[k] for k in rows]
    assert describe(data)["test_negatives"] == {
        "max_per_row": 4,
        "rows_with_fewer": 2,
        "rows_listing_the_test_item": 1,
        "repeats_removed": 1,
    }


def test_index_of_maps_raw_ids(prepared):
    data = prepared["leave-last"]
    idx = index_of(data.item_ids, [50, 181, 1])
    assert data.item_ids[idx].tolist() == [50, 181, 1]
    assert index_of(data.user_ids, "943", "user").tolist() == [942]  # typed on a command line
    with pytest.raises(ValueError, match=r"unknown item id\(s\) \[99999\]"):
        index_of(data.item_ids, [1, 99999])
    with pytest.raises(ValueError, match="expected integers"):
        index_of(data.user_ids, "bob", "user")


def test_a_declared_rating_scale_clips_predictions_and_names_the_data(ml100k):
    inferred = prepare(ml100k, "u1", eval_negatives=0)
    declared = prepare(ml100k, "u1", eval_negatives=0, rating_range=(0.5, 5.0))
    assert inferred.rating_range == (1.0, 5.0) and declared.rating_range == (0.5, 5.0)
    assert declared.fingerprint != inferred.fingerprint  # another preparation
    with pytest.raises(ValueError, match=r"21,201 of 100,000 ratings .* item 1, rating 5 "):
        prepare(ml100k, "u1", eval_negatives=0, rating_range=(1.0, 4.0))
