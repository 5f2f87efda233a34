"""Every registered model, on every task it supports, on a tiny synthetic dataset."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import optuna
import pytest
import torch

import orchestrator.models as models
from orchestrator.data.sampling import NegativeSampler, last_items
from orchestrator.data.types import Split
from orchestrator.engine.optim import RowAdam, make_optimizers
from orchestrator.models import DataSpec, create_model, list_models, register_model
from orchestrator.models.base import Recommender
from orchestrator.models.registry import get_model_class, make_params

N_USERS, N_ITEMS, PER_USER = 12, 20, 8
CASES = [(n, t) for n in list_models() for t in get_model_class(n).tasks]
LEARNED = [(n, t) for n, t in CASES if get_model_class(n).learned]


def tiny_train() -> Split:
    """Each user rates PER_USER distinct items, in time order, with integer ratings 1..5."""
    rng = np.random.default_rng(0)
    item = np.concatenate([rng.choice(N_ITEMS, PER_USER, replace=False) for _ in range(N_USERS)])
    user = np.repeat(np.arange(N_USERS), PER_USER)
    rating = rng.integers(1, 6, len(user)).astype(np.float32)
    ts = np.tile(np.arange(PER_USER), N_USERS) + 1000
    return Split(user, item, rating, ts).to("cpu")


def build(name: str, task: str, **hp) -> tuple[Recommender, dict[str, torch.Tensor], Split]:
    train = tiny_train()
    spec = DataSpec(N_USERS, N_ITEMS, (1.0, 5.0), float(train.rating.mean()))
    model = create_model(name, spec, task=task, **hp)
    return model, model.examples(train), train


def with_negatives(model: Recommender, ex: dict, sampler: NegativeSampler) -> dict:
    batch = dict(ex)
    if model.n_negatives > 0:
        batch["neg_item"] = sampler.sample(batch["user"], model.n_negatives)
    return batch


def score_pairs(model: Recommender, user, item, seq=None) -> torch.Tensor:
    return model(user, seq, item) if model.seq_len else model(user, item)


def user_seqs(model: Recommender, train: Split, users: torch.Tensor) -> torch.Tensor | None:
    if not model.seq_len:
        return None
    return last_items(train, N_USERS, model.seq_len, N_ITEMS)[users]  # [B, L]


def losses(name: str, task: str, steps: int, seed: int = 0, **hp) -> list[float]:
    """Loss of each Adam step on the whole tiny dataset, negatives drawn with `seed`."""
    torch.manual_seed(seed)
    model, ex, train = build(name, task, **hp)
    gen = torch.Generator().manual_seed(seed)
    sampler = NegativeSampler(train, N_ITEMS, generator=gen, n_users=N_USERS)
    opts = make_optimizers(model)  # the loop's: Adam, and RowAdam for sparse tables
    model.train()
    out = []
    fixed = with_negatives(model, ex, sampler)
    for _ in range(steps):
        loss = model.loss(fixed)
        for opt in opts:
            opt.zero_grad()
        loss.backward()
        for opt in opts:
            opt.step()
        out.append(loss.item())
    return out


TABLES = [
    (n, t)
    for n, t in LEARNED
    if any(
        isinstance(m, torch.nn.Embedding)
        for m in create_model(n, DataSpec(N_USERS, N_ITEMS), t).modules()
    )
]


def test_large_tables_are_sparse_small_ones_dense():
    assert {n for n, _ in TABLES} == {"mf", "neumf", "caser"}
    small = create_model("mf", DataSpec(943, 1682), "ranking")  # ml-100k: dense is faster
    large = create_model("mf", DataSpec(138_493, 26_744), "ranking", dim=4)  # ml-20m
    assert not small.user_emb.sparse and not small.item_emb.sparse
    assert large.user_emb.sparse and large.item_emb.sparse
    opts = make_optimizers(large)
    assert [type(o).__name__ for o in opts] == ["RowAdam"]  # mf is tables only
    neumf = create_model("neumf", DataSpec(138_493, 943), weight_decay=1e-4, dim=4)
    adam, row_adam = make_optimizers(neumf)
    decay = {id(q): g["weight_decay"] for g in adam.param_groups for q in g["params"]}
    assert decay[id(neumf.out.weight)] == 1e-4 and decay[id(neumf.gmf_item.weight)] == 0.0
    assert [id(q) for q in row_adam.param_groups[0]["params"]] == [
        id(neumf.gmf_user.weight),
        id(neumf.mlp_user.weight),
    ]  # the 138k-row tables


@pytest.mark.parametrize("fallback", [False, True], ids=["internal", "fallback"])
def test_row_adam_steps_as_sparse_adam_does(fallback, monkeypatch):
    # repeated rows in a batch, rows a batch skips, rows never touched: torch's SparseAdam
    # is the reference arithmetic, RowAdam must take the same steps (with torch's private
    # uncoalesced reader, and with its public fallback)
    from orchestrator.internals import FORCE_FALLBACKS

    monkeypatch.setenv(FORCE_FALLBACKS, "1" if fallback else "0")
    torch.manual_seed(0)
    tables = [torch.nn.Embedding(50, 3, sparse=True) for _ in range(2)]
    tables[1].load_state_dict(tables[0].state_dict())
    opts = [
        torch.optim.SparseAdam(tables[0].parameters(), lr=0.05),
        RowAdam(tables[1].parameters(), lr=0.05),
    ]
    target = torch.randn(50, 3)
    for step in range(6):
        rows = torch.tensor([1, 1, 7, 20 + step, 3, 7, 7])
        for emb, opt in zip(tables, opts, strict=True):
            opt.zero_grad()
            (emb(rows) - target[rows]).pow(2).sum().backward()
            opt.step()
        assert torch.allclose(tables[0].weight, tables[1].weight, atol=1e-6), step
    assert torch.equal(tables[1].weight[40:], tables[0].weight[40:])  # never touched
    state = opts[1].state_dict()  # a checkpoint holds it, and it loads back
    again = RowAdam(tables[1].parameters(), lr=0.05)
    again.load_state_dict(state)
    assert torch.equal(
        again.state[tables[1].weight]["exp_avg"], opts[1].state[tables[1].weight]["exp_avg"]
    )


@pytest.mark.parametrize("name,task", TABLES)
def test_sparse_and_dense_tables_train_the_same(name, task):
    # plain SGD steps on the same batches: sparse gradients are the dense ones, row by row
    trajectories = []
    for sparse in (True, False):
        torch.manual_seed(0)
        model, ex, train = (
            build(name, task, dropout=0.0)
            if "dropout" in dataclasses.asdict(make_params(name, task))
            else build(name, task)
        )
        for m in model.modules():
            if isinstance(m, torch.nn.Embedding):
                m.sparse = sparse
        sampler = NegativeSampler(
            train, N_ITEMS, generator=torch.Generator().manual_seed(0), n_users=N_USERS
        )
        batch = with_negatives(model, ex, sampler)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        losses_ = []
        for _ in range(5):
            loss = model.loss(batch)
            opt.zero_grad()
            loss.backward()
            if sparse:
                assert any(q.grad is not None and q.grad.is_sparse for q in model.parameters())
            opt.step()
            losses_.append(loss.item())
        trajectories.append(losses_)
    assert trajectories[0] == pytest.approx(trajectories[1], rel=1e-5)
    assert trajectories[0][-1] < trajectories[0][0]


def no_dropout(name: str) -> dict:
    fields = {f.name for f in dataclasses.fields(get_model_class(name).Params)}
    return {"dropout": 0.0} if "dropout" in fields else {}


@pytest.mark.parametrize("name,task", CASES)
def test_shapes_and_finite(name, task):
    model, _, train = build(name, task)
    model.eval()
    users = torch.tensor([0, 3, 7, 11])
    seq = user_seqs(model, train, users)
    with torch.no_grad():
        pair = score_pairs(model, users, torch.tensor([1, 0, 19, 5]), seq)
        full = model.score_all(users, seq) if seq is not None else model.score_all(users)
    assert pair.shape == (4,)
    assert full.shape == (4, N_ITEMS)
    assert torch.isfinite(pair).all() and torch.isfinite(full).all()


@pytest.mark.parametrize("name,task", CASES)
def test_score_all_agrees_with_forward(name, task):
    # The exported graph is forward; full-ranking metrics use score_all: they must agree.
    torch.manual_seed(1)
    model, _, train = build(name, task)
    model.eval()
    users = torch.tensor([2, 5, 9])
    seq = user_seqs(model, train, users)
    with torch.no_grad():
        full = model.score_all(users, seq) if seq is not None else model.score_all(users)
        u = users.repeat_interleave(N_ITEMS)  # [3 * I]
        i = torch.arange(N_ITEMS).repeat(len(users))  # [3 * I]
        s = seq.repeat_interleave(N_ITEMS, 0) if seq is not None else None
        pairs = score_pairs(model, u, i, s).view(len(users), N_ITEMS)
    torch.testing.assert_close(pairs, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,task", LEARNED)
def test_loss_falls(name, task):
    trace = losses(name, task, steps=20, lr=1e-2, **no_dropout(name))
    assert all(np.isfinite(trace))
    assert trace[-1] < 0.9 * trace[0], trace


@pytest.mark.parametrize("name,task", LEARNED)
def test_seeded_determinism(name, task):
    a = losses(name, task, steps=4, seed=3)
    assert a == losses(name, task, steps=4, seed=3)
    assert a != losses(name, task, steps=4, seed=4)


@pytest.mark.parametrize("task", ["rating", "ranking"])
def test_mf_item_bias_is_looked_up_by_item_id(task):
    # The slide this project started from indexed the item bias with the user id.
    model, _, _ = build("mf", task)
    with torch.no_grad():
        model.user_emb.weight.zero_()
        model.item_emb.weight.zero_()
        model.user_bias.weight.copy_(100.0 + torch.arange(N_USERS)[:, None])
        model.item_bias.weight.copy_(1000.0 + torch.arange(N_ITEMS)[:, None])
        user, item = torch.tensor([0, 1, 2]), torch.tensor([15, 6, 17])
        want = 1000.0 + item.float()
        if task == "rating":
            want = want + 100.0 + user.float() + model.spec.global_mean
        torch.testing.assert_close(model(user, item), want)
        torch.testing.assert_close(model.score_all(user)[torch.arange(3), item], want)


def test_autorec_uses_hidden_layer_and_falls_back_to_global_mean():
    model, _, train = build("autorec", "rating")
    keep = train.item != 4  # item 4 gets no training rating
    model.examples(
        Split(*(a[keep] for a in (train.user, train.item, train.rating, train.timestamp)))
    )
    model.eval()
    popular = int(torch.bincount(train.item[keep]).argmax())
    user, item = torch.tensor([0, 1]), torch.tensor([popular] * 2)
    with torch.no_grad():
        before = model(user, item)
        model.encoder.weight.mul_(2.0)  # the hidden layer must feed the output
        model.eval()  # entering eval mode recomputes the item codes
        assert not torch.allclose(before, model(user, item))
        assert (~model.item_seen).nonzero()[:, 0].tolist() == [4]
        got = model(torch.arange(3), torch.tensor([4, 4, 4]))
        full = model.score_all(torch.arange(3))[:, 4]
    torch.testing.assert_close(got, torch.full_like(got, model.spec.global_mean))
    torch.testing.assert_close(full, got)


def test_autorec_sparse_input_equals_the_dense_computation():
    model, ex, train = build("autorec", "rating", dropout=0.0)
    R = torch.zeros(N_ITEMS, N_USERS)  # [I, U] the dense rating matrix of the paper
    R[train.item, train.user] = train.rating
    V, mu = model.encoder.weight.T, model.encoder_bias  # [dim, U], [dim]
    items = torch.arange(N_ITEMS)
    with torch.no_grad():
        dense = torch.sigmoid(R @ V.T + mu)  # [I, dim]
        torch.testing.assert_close(model.encode(items), dense)
        model.eval()
        torch.testing.assert_close(model.codes, dense)
        want = (dense @ model.decoder.weight.T + model.decoder.bias).T  # [U, I]
        seen = model.item_seen
        torch.testing.assert_close(model.score_all(torch.arange(N_USERS))[:, seen], want[:, seen])
    # the loss reads the observed entries: the dense masked objective of the paper
    model.train()
    decoded = model.decoder(torch.sigmoid(R @ V.T + mu))  # [I, U]
    observed = R != 0
    err = ((decoded - R) * observed).pow(2).sum()
    penalty = model.encoder.weight.pow(2).sum() + model.decoder.weight.pow(2).sum()
    want_loss = (err + model.params.reg / 2 * penalty) / N_ITEMS
    torch.testing.assert_close(model.loss({"item": items}), want_loss)
    model.DENSE_DECODE = 0  # the entry-by-entry decode gives the same loss
    torch.testing.assert_close(model.loss({"item": items}), want_loss)


def test_neumf_pretrained_towers_combine():
    gmf, _, _ = build("neumf", "ranking", tower="gmf")
    mlp, _, _ = build("neumf", "ranking", tower="mlp")
    fused, _, _ = build("neumf", "ranking")
    fused.load_pretrained(gmf, mlp, alpha=0.3)
    user, item = torch.tensor([0, 4, 8]), torch.tensor([3, 9, 12])
    with torch.no_grad():
        want = 0.3 * gmf(user, item) + 0.7 * mlp(user, item)
        torch.testing.assert_close(fused(user, item), want)
    with pytest.raises(ValueError, match="tower"):
        gmf.load_pretrained(gmf, mlp)


def test_caser_needs_seq_and_handles_padding():
    model, ex, _ = build("caser", "sequential")
    seq, target = model.windows(ex["at"])  # a batch's windows, gathered from indices
    assert seq.shape[1] == model.seq_len == 5 and target.shape[1] == 3
    assert set(ex) == {"user", "at"}  # no [windows x L] copy in the examples
    assert model.n_negatives == 9
    with pytest.raises(ValueError, match="seq"):
        model.score_all(torch.tensor([0]))
    model.eval()
    pad = torch.full((2, model.seq_len), N_ITEMS)  # users with no history at all
    assert torch.isfinite(model.score_all(torch.tensor([0, 1]), pad)).all()


def test_baselines_match_plain_references():
    pop, _, train = build("pop", "ranking")
    counts = np.bincount(train.item.numpy(), minlength=N_ITEMS)
    np.testing.assert_array_equal(pop.score_all(torch.tensor([0]))[0].numpy(), counts)

    knn, _, _ = build("itemknn", "ranking", k=3)
    X = np.zeros((N_USERS, N_ITEMS))
    X[train.user.numpy(), train.item.numpy()] = 1
    sim = np.zeros((N_ITEMS, N_ITEMS))
    for i in range(N_ITEMS):
        for j in range(N_ITEMS):
            den = np.linalg.norm(X[:, i]) * np.linalg.norm(X[:, j])
            sim[i, j] = X[:, i] @ X[:, j] / den if i != j and den else 0.0
    for j in range(N_ITEMS):  # keep each item's 3 most similar items (ties: any 3 of them)
        cut = np.sort(sim[j])[-3]
        kept, w = knn.neighbours[j].numpy(), knn.weights[j].numpy()
        assert len(set(kept)) == 3 and np.all(w >= cut - 1e-6)
        np.testing.assert_allclose(w, sim[j, kept], rtol=1e-5)
    dense = np.zeros((N_ITEMS, N_ITEMS))
    for j in range(N_ITEMS):
        dense[knn.neighbours[j].numpy(), j] = knn.weights[j].numpy()
    np.testing.assert_allclose(
        knn.score_all(torch.arange(N_USERS)).numpy(), X @ dense, rtol=1e-5, atol=1e-7
    )

    bias, _, train = build("bias", "rating", reg_user=3.0, reg_item=2.0, sweeps=4)
    mu, u, i, r = (
        float(train.rating.mean()),
        *(t.numpy() for t in (train.user, train.item, train.rating)),
    )
    bu, bi = np.zeros(N_USERS), np.zeros(N_ITEMS)
    for _ in range(4):  # Surprise's BaselineOnly ALS, one rating at a time
        bi = np.array(
            [
                sum(r[k] - mu - bu[u[k]] for k in np.flatnonzero(i == j)) / (2.0 + (i == j).sum())
                for j in range(N_ITEMS)
            ]
        )
        bu = np.array(
            [
                sum(r[k] - mu - bi[i[k]] for k in np.flatnonzero(u == v)) / (3.0 + (u == v).sum())
                for v in range(N_USERS)
            ]
        )
    np.testing.assert_allclose(
        bias(torch.arange(N_USERS), torch.zeros(N_USERS).long()).numpy(), mu + bu + bi[0], rtol=1e-4
    )


def test_pop_rating_is_damped_item_mean():
    pop, _, train = build("pop", "rating", shrink=2.0)
    mu = float(train.rating.mean())
    i = int(train.item[0])
    r = train.rating[train.item == i].numpy()
    want = mu + (r - mu).sum() / (len(r) + 2.0)
    assert pop(torch.tensor([0]), torch.tensor([i])).item() == pytest.approx(want, rel=1e-5)


def test_registry_errors():
    spec = DataSpec(N_USERS, N_ITEMS)
    assert {"mf", "autorec", "neumf", "caser", "pop", "itemknn", "bias"} <= set(list_models())

    class Dup(get_model_class("mf")):
        name = "mf"

    Dup.__module__ = "orchestrator.models.mf"
    with pytest.raises(ValueError, match="already registered"):
        register_model(Dup)

    class Misnamed(get_model_class("mf")):
        name = "other"

    with pytest.raises(ValueError, match="file name"):
        register_model(Misnamed)

    with pytest.raises(KeyError, match="known models: .*mf"):
        create_model("nope", spec)
    with pytest.raises(ValueError, match=r"\['dimm'\].*allowed: .*dim"):
        create_model("mf", spec, dimm=8)
    with pytest.raises(ValueError, match="dim='abc'.*expected int"):
        create_model("mf", spec, dim="abc")
    with pytest.raises(ValueError, match="dim=1.5.*expected int"):
        create_model("mf", spec, dim=1.5)
    with pytest.raises(ValueError, match="dim=0: expected an int >= 1"):
        create_model("mf", spec, dim=0)
    with pytest.raises(ValueError, match="loss='hinge'"):
        create_model("mf", spec, task="ranking", loss="hinge")
    with pytest.raises(ValueError, match="dropout=1.0"):
        create_model("autorec", spec, dropout=1.0)
    with pytest.raises(ValueError, match="does not support task 'rating'.*sequential"):
        create_model("caser", spec, task="rating")
    assert create_model("mf", spec, dim="32", lr="0.01").params.dim == 32  # --set strings
    # Per-task defaults, and explicit values win over them.
    assert create_model("mf", spec, task="rating").params.reg == 0.1
    assert create_model("mf", spec, task="ranking").params.reg == 0.003
    assert create_model("mf", spec, task="ranking", reg=0.05).params.reg == 0.05


@pytest.mark.parametrize("name,task", CASES)
def test_search_space_holds_the_defaults(name, task):
    # so a sweep's first trial of each study can be exactly the model's defaults
    from orchestrator.space import default_point

    space = functools.partial(get_model_class(name).search_space, task=task)
    drawn = space(optuna.create_study().ask())
    defaults = dataclasses.asdict(make_params(name, task))
    assert set(default_point(space, {}, defaults)) == set(drawn)


RECIPES = [(n, r) for n in list_models() for r in get_model_class(n).recipes]


def test_every_searched_model_has_a_recipe_for_each_task():
    for name in list_models():
        cls = get_model_class(name)
        if cls.learned:
            assert {r.task for r in cls.recipes} == set(cls.tasks), name
            assert all(r.source and r.tuned_on for r in cls.recipes), name


@pytest.mark.parametrize("name,recipe", RECIPES, ids=[f"{n}-{r.name}" for n, r in RECIPES])
def test_recipes_lie_in_their_space(name, recipe):
    from orchestrator.space import default_point

    space = functools.partial(get_model_class(name).search_space, task=recipe.task)
    point = default_point(
        space, {}, {**dataclasses.asdict(make_params(name, recipe.task)), **recipe.hparams}
    )
    assert {k: point.get(k) for k in recipe.hparams} == recipe.hparams  # every key searched
    model = create_model(name, DataSpec(N_USERS, N_ITEMS), recipe.task, **point)
    assert all(getattr(model.params, k) == v for k, v in recipe.hparams.items())


def test_a_bad_recipe_names_model_recipe_and_key(monkeypatch):
    from orchestrator.models.base import Recipe
    from orchestrator.plan import load_config

    mf = get_model_class("mf")
    bad = Recipe("odd", "rating", "nowhere", "nothing", {"dimm": 8}, 10)

    class Odd(mf):
        name = "mf"
        recipes = (bad,)

    Odd.__module__ = "orchestrator.models.mf"
    with pytest.raises(
        ValueError,
        match=r"model 'mf', recipe 'odd': unknown hyperparameter\(s\) "
        r"\['dimm'\]",
    ):
        models.registry._check_recipes(Odd)
    with pytest.raises(ValueError, match=r"model 'mf', recipe 'odd': hyperparameter dim=0"):
        models.registry._check_recipes(
            type("Zero", (mf,), {"recipes": (dataclasses.replace(bad, hparams={"dim": 0}),)})
        )
    # a value the model takes but its space does not draw: the sweep refuses to start
    monkeypatch.setattr(mf, "recipes", (dataclasses.replace(bad, hparams={"dim": 24}),))
    with pytest.raises(
        ValueError,
        match=r"model 'mf', recipe odd: dim=24 is outside the "
        r"search space",
    ):
        load_config(None, {"models": ["mf"]})


def test_sgd_takes_the_hand_computed_step_on_a_sparse_table():
    # per-example lr: one step of batch B moves a row by lr x its summed example gradients
    model = create_model(
        "mf",
        DataSpec(40, 50, global_mean=3.0),
        "rating",
        dim=2,
        reg=0.1,
        optimizer="sgd",
        lr=0.01,
        batch_size=2,
    )
    assert model.user_emb.sparse and model.item_emb.sparse  # 40 rows > 16 batches of 2
    (opt,) = make_optimizers(model)
    user, item, rating = torch.tensor([3, 3]), torch.tensor([5, 9]), torch.tensor([4.0, 2.0])
    p, q = model.user_emb.weight.detach().clone(), model.item_emb.weight.detach().clone()
    bu, bi = model.user_bias.weight.detach().clone(), model.item_bias.weight.detach().clone()
    err = (p[3] * q[item]).sum(-1) + bi[item, 0] + bu[3, 0] + 3.0 - rating  # [2]
    opt.zero_grad()
    model.loss({"user": user, "item": item, "rating": rating}).backward()
    opt.step()
    # d/dp_u of (err^2 + reg (|p_u|^2 + |q_i|^2)), summed over the user's two ratings
    want_p = p[3] - 0.01 * (2 * err[:, None] * q[item] + 2 * 0.1 * p[3]).sum(0)
    want_q = q[item] - 0.01 * (2 * err[:, None] * p[3] + 2 * 0.1 * q[item])
    assert torch.allclose(model.user_emb.weight[3], want_p, atol=1e-6)
    assert torch.allclose(model.item_emb.weight[item], want_q, atol=1e-6)
    assert torch.allclose(model.user_bias.weight[3, 0], bu[3, 0] - 0.01 * 2 * err.sum())
    assert torch.equal(model.user_emb.weight[4:], p[4:])  # rows the batch skipped


@pytest.mark.parametrize("name", list_models())
def test_search_space_yields_valid_params(name):
    cls = get_model_class(name)
    fields = {f.name for f in dataclasses.fields(cls.Params)}
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for task in cls.tasks:
        for _ in range(3):
            trial = study.ask()
            hp = cls.search_space(trial, task)
            assert set(hp) <= fields and "epochs" not in hp
            assert hp == trial.params
            model = create_model(name, DataSpec(N_USERS, N_ITEMS), task=task, **hp)
            assert all(getattr(model.params, k) == v for k, v in hp.items())
            study.tell(trial, 0.0)


def test_package_reexports():
    assert models.create_model is create_model and models.list_models is list_models
