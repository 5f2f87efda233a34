"""The item baselines a reviewer expects (`ease`, `rp3beta`, `puresvd`) against direct
computations of their definitions on a small matrix. (Every model's shapes, export and
serving are the registry's parametrized tests.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orchestrator.data.types import Split
from orchestrator.models import DataSpec, create_model

USERS, ITEMS = 30, 12


@pytest.fixture(scope="module")
def interactions() -> np.ndarray:
    """A random binary `[U, I]` matrix, every user and item with an interaction."""
    rng = np.random.default_rng(0)
    X = (rng.random((USERS, ITEMS)) < 0.3).astype(np.float64)
    X[np.arange(USERS), np.arange(USERS) % ITEMS] = 1.0
    return X


def fitted(name: str, X: np.ndarray, **hparams: object) -> torch.nn.Module:
    user, item = np.nonzero(X)
    train = Split(
        torch.as_tensor(user), torch.as_tensor(item), torch.ones(len(user)), torch.zeros(len(user))
    )
    model = create_model(name, DataSpec(USERS, ITEMS), "ranking", **hparams)
    model.examples(train)
    return model


def scores(model: torch.nn.Module) -> np.ndarray:
    return model.score_all(torch.arange(USERS)).double().numpy()


@pytest.mark.parametrize("block_cells", [2**26, 5 * ITEMS])  # the Gram in 1 or 3 blocks
def test_ease_is_its_closed_form(
    interactions: np.ndarray, block_cells: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.models.ease import EASE

    monkeypatch.setattr(EASE, "BLOCK_CELLS", block_cells)
    X, reg = interactions, 7.0
    P = np.linalg.inv(X.T @ X + reg * np.eye(ITEMS))
    B = np.eye(ITEMS) - P / np.diag(P)[None, :]  # Steck 2019, eq. (8)
    model = fitted("ease", X, reg=reg)
    assert np.abs(np.diag(model.weights.numpy())).max() == 0.0
    np.testing.assert_allclose(model.weights.numpy(), B, atol=1e-6)
    np.testing.assert_allclose(scores(model), X @ B, atol=1e-5)
    pairs = model(torch.tensor([0, 3]), torch.tensor([5, 1])).double().numpy()
    np.testing.assert_allclose(pairs, (X @ B)[[0, 3], [5, 1]], atol=1e-5)


def test_ease_refuses_a_catalogue_above_its_limit() -> None:
    from orchestrator.models.ease import EASE

    with pytest.raises(ValueError, match=r"ease: 30,001 items .* its limit is 30,000 items"):
        create_model("ease", DataSpec(10, EASE.MAX_ITEMS + 1), "ranking")


@pytest.mark.parametrize("normalize", [False, True])
def test_rp3beta_is_its_random_walk(interactions: np.ndarray, normalize: bool) -> None:
    X, alpha, beta = interactions, 0.8, 0.4
    P_ui = (X / X.sum(1, keepdims=True)) ** alpha  # user -> item
    P_iu = (X.T / X.sum(0)[:, None]) ** alpha  # item -> user
    W = (P_iu @ P_ui) / X.sum(0)[None, :] ** beta  # [I, I], columns demoted by popularity
    np.fill_diagonal(W, 0.0)  # an item is not its own neighbour (k = I - 1 keeps the rest)
    if normalize:
        W = W / W.sum(1, keepdims=True)
    model = fitted("rp3beta", X, k=ITEMS - 1, alpha=alpha, beta=beta, normalize=normalize)
    np.testing.assert_allclose(scores(model), X @ W, atol=1e-5)


def test_rp3beta_keeps_each_items_k_largest(interactions: np.ndarray) -> None:
    kept = fitted("rp3beta", interactions, k=3, normalize=False).weights.numpy()
    full = fitted("rp3beta", interactions, k=ITEMS - 1, normalize=False).weights.numpy()
    assert ((kept != 0).sum(1) <= 3).all()
    for i in range(ITEMS):  # row i's 3 largest, the rest dropped
        np.testing.assert_allclose(np.sort(kept[i])[-3:], np.sort(full[i])[-3:], atol=1e-7)
        assert set(np.flatnonzero(kept[i])) <= set(np.argsort(full[i])[-3:])


def test_puresvd_projects_on_the_leading_singular_vectors(interactions: np.ndarray) -> None:
    X, factors = interactions, 4
    _, _, vt = np.linalg.svd(X, full_matrices=False)
    Q = vt[:factors].T  # [I, factors]: signs differ, the projection does not
    model = fitted("puresvd", X, factors=factors)
    np.testing.assert_allclose(scores(model), X @ Q @ Q.T, atol=1e-5)
    again = fitted("puresvd", X, factors=factors)  # seeded: the same factors
    assert torch.equal(model.item_factors, again.item_factors)


def test_a_sweep_refuses_a_baseline_too_big_for_its_data_before_the_search(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from orchestrator.models.ease import EASE
    from orchestrator.plan import check_config, load_config
    from orchestrator.sweep import prepare_data

    cfg = load_config(
        None,
        {
            "models": ["mf:ranking"],
            "baselines": ["pop", "ease"],
            "data": {
                "dataset": "synthetic:users=60,items=80,interactions=1500,seed=1",
                "eval_negatives": 0,
            },
        },
    )
    assert len(prepare_data(cfg, check_config(cfg))[0].item_ids) == 80  # within the limit
    monkeypatch.setattr(EASE, "MAX_ITEMS", 50)
    with pytest.raises(ValueError, match=r"^ease: 80 items need a dense 80 x 80 .* limit is 50"):
        prepare_data(cfg, check_config(cfg))


def weighted_reference(X: np.ndarray, weighting: str) -> np.ndarray:
    """TF-IDF and BM25 of the `[U, I]` interactions written out, users as terms and items
    as documents."""
    if weighting == "none":
        return X
    idf = np.log(ITEMS / (1 + X.sum(1)))[:, None]  # [U, 1]
    length = X.sum(0)[None, :]  # [1, I]
    if weighting == "tfidf":
        return X / length * idf
    k1, b = 1.2, 0.75
    return X * (k1 + 1) / (X + k1 * (1 - b + b * length / length.mean())) * idf


@pytest.mark.parametrize(
    "similarity,weighting",
    [("cosine", "none"), ("asymmetric", "tfidf"), ("jaccard", "none"), ("cosine", "bm25")],
)
def test_itemknn_is_its_similarity(interactions: np.ndarray, similarity, weighting) -> None:
    X, shrink, a = interactions, 3.0, 0.3
    F = weighted_reference(X, weighting)
    dot, sq = F.T @ F, (F * F).sum(0)  # [I, I], [I]
    den = {
        "cosine": np.sqrt(sq[:, None] * sq[None, :]),
        "asymmetric": sq[:, None] ** a * sq[None, :] ** (1 - a),
        "jaccard": sq[:, None] + sq[None, :] - dot,
    }[similarity]
    S = dot / (den + shrink)  # S[j, n]: target j, neighbour n
    np.fill_diagonal(S, 0.0)
    model = fitted(
        "itemknn",
        X,
        k=ITEMS - 1,
        shrink=shrink,
        similarity=similarity,
        asymmetric_alpha=a,
        weighting=weighting,
    )
    np.testing.assert_allclose(scores(model), X @ S.T, rtol=1e-4, atol=1e-6)


def test_itemknn_refuses_an_unknown_similarity() -> None:
    with pytest.raises(ValueError, match=r"similarity='pearson': expected cosine or asym"):
        create_model("itemknn", DataSpec(USERS, ITEMS), "ranking", similarity="pearson")


def test_ials_is_implicits_als_with_hus_confidence(interactions: np.ndarray) -> None:
    """The factors are those `implicit` fits with confidence 1 + alpha, and they fit: the
    observed pairs score above the unobserved ones."""
    import scipy.sparse as sp
    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    X = interactions
    model = fitted("ials", X, factors=4, regularization=0.1, alpha=9.0, iterations=5, seed=3)
    als = AlternatingLeastSquares(
        factors=4, regularization=0.1, alpha=10.0, iterations=5, random_state=3, num_threads=1
    )
    with threadpool_limits(1, "blas"):
        als.fit(sp.csr_matrix(X.astype(np.float32)), show_progress=False)
    np.testing.assert_allclose(scores(model), als.user_factors @ als.item_factors.T, atol=1e-4)
    assert scores(model)[X == 1].mean() > scores(model)[X == 0].mean() + 0.3
