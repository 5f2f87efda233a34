"""The embedded synthetic generator: spec parsing, statistics, known best RMSE, signal."""

from __future__ import annotations

import re

import numpy as np
import pytest

from orchestrator.data import load_source, prepare
from orchestrator.data.synthetic import SyntheticParams, generate, parse_spec


@pytest.fixture(scope="module")
def default():
    """ml-100k-sized synthetic data with its truth."""
    return generate(parse_spec("synthetic"))


def test_spec_parsing():
    p = parse_spec("synthetic:users=10, items=20,interactions=100,noise=0.25,seed=4")
    assert p == SyntheticParams(users=10, items=20, interactions=100, noise=0.25, seed=4)
    assert parse_spec("synthetic") == SyntheticParams()
    with pytest.raises(
        ValueError,
        match="unknown key 'user'; allowed: users, items, interactions, rank, genres, noise, seed",
    ):
        parse_spec("synthetic:user=10")
    with pytest.raises(ValueError, match="items='many' is not an integer"):
        parse_spec("synthetic:items=many")
    with pytest.raises(ValueError, match="expected key=value, got 'users'"):
        parse_spec("synthetic:users")
    with pytest.raises(ValueError, match="users <= interactions <= users \\* items"):
        parse_spec("synthetic:users=10,items=5,interactions=60")


def test_shape_and_validity(default):
    raw, inter = default.raw, default.raw.interactions
    assert len(inter) == 100_000
    assert len(np.unique(inter.user)) == 943 and len(np.unique(inter.item)) <= 1682
    assert len(np.unique(inter.user * 10_000 + inter.item)) == len(inter)  # no repeated pair
    assert set(np.unique(inter.rating).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    order = np.lexsort((inter.timestamp, inter.user))
    same_user = np.diff(inter.user[order]) == 0
    assert (np.diff(inter.timestamp[order])[same_user] > 0).all()  # strictly increasing
    assert raw.items.loc[17, "title"] == "Item 17"
    assert raw.items["genres"].str.fullmatch(r"Genre \d+").all()
    assert re.fullmatch(r"synthetic: best possible RMSE ~\d\.\d\d .*", raw.note)


def test_skewed_popularity_and_activity(default):
    inter = default.raw.interactions
    per_item = np.sort(np.bincount(inter.item))[::-1]
    assert per_item[:168].sum() / per_item.sum() > 0.3  # top 10% of items: uniform gives 10%
    per_user = np.bincount(inter.user)[1:]
    assert per_user.max() > 5 * np.median(per_user) and per_user.min() >= 5
    assert per_user.max() <= 0.45 * 1682 + 1  # every user keeps items to draw negatives from


def test_seeded_determinism():
    a = load_source("synthetic:users=50,items=80,interactions=1000,seed=1")
    b = load_source("synthetic:users=50,items=80,interactions=1000,seed=1")
    c = load_source("synthetic:users=50,items=80,interactions=1000,seed=2")
    for name in ("user", "item", "rating", "timestamp"):
        assert np.array_equal(getattr(a.interactions, name), getattr(b.interactions, name))
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert not np.array_equal(a.interactions.item, c.interactions.item)


def test_best_rmse_is_known_and_baselines_are_worse(default):
    inter = default.raw.interactions
    assert default.best_rmse == pytest.approx(
        float(re.search(r"~(\d\.\d\d)", default.raw.note).group(1)), abs=0.006
    )
    oracle = np.sqrt(np.mean((default.expected - inter.rating) ** 2))
    assert oracle == pytest.approx(default.best_rmse, abs=0.01)  # the analytic value holds
    data = prepare(default.raw, "random:0.8,0.1,0.1", eval_negatives=0)
    tr, te = data.train, data.test
    mu = tr.rating.mean()
    global_rmse = np.sqrt(np.mean((te.rating - mu) ** 2))
    # user + item bias baseline (damped means), the floor every rating model must beat
    n_u, n_i = (
        np.bincount(tr.user, minlength=data.n_users),
        np.bincount(tr.item, minlength=data.n_items),
    )
    b_u = np.bincount(tr.user, tr.rating - mu, data.n_users) / (n_u + 5)
    b_i = np.bincount(tr.item, tr.rating - mu - b_u[tr.user], data.n_items) / (n_i + 5)
    bias_rmse = np.sqrt(np.mean((te.rating - mu - b_u[te.user] - b_i[te.item]) ** 2))
    assert global_rmse > bias_rmse > default.best_rmse + 0.05


def test_noise_free_is_perfectly_predictable():
    s = generate(parse_spec("synthetic:users=30,items=50,interactions=600,noise=0"))
    assert s.best_rmse == 0
    assert np.array_equal(s.expected, s.raw.interactions.rating)


def test_ranking_and_sequence_signal(default):
    data = prepare(default.raw, "leave-last", eval_negatives=0)
    genre = np.array([int(g.split()[1]) for g in data.item_genres])
    # popularity: held-out items are far more popular than a random item
    pop = np.bincount(data.train.item, minlength=data.n_items)
    assert pop[data.test.item].mean() > 3 * pop.mean()
    # sequence: the test item shares the genre of the item just before it (the val item)
    # far more often than that of an earlier item of the same user: order carries signal
    count = np.bincount(data.train.user)
    earlier = np.cumsum(count) - count + (np.random.default_rng(0).random(len(count)) * count)
    same_as_previous = genre[data.test.item] == genre[data.val.item]
    same_as_earlier = genre[data.test.item] == genre[data.train.item[earlier.astype(int)]]
    assert same_as_previous.mean() > 0.5 > 0.2 > same_as_earlier.mean()
