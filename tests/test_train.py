"""The shared loop: every registered model trains, reports, stops, diverges and resumes."""

from __future__ import annotations

import dataclasses
import io
import json
import math

import numpy as np
import pytest
import torch

import orchestrator.models  # noqa: F401  (registers every model)
from orchestrator.config import DataConfig, TrainConfig
from orchestrator.data import load_dataset
from orchestrator.engine.evaluation import evaluate, monitored_metric, task_metric, to_device
from orchestrator.engine.single_run import train_one, validate_request
from orchestrator.engine.train import (
    EpochState,
    fit,
    fold_val,
    pick_device,
    seed_everything,
)
from orchestrator.models.base import DataSpec
from orchestrator.models.registry import create_model, get_model_class, list_models, load_model

CASES = [(name, task) for name in list_models() for task in get_model_class(name).tasks]
CPU = TrainConfig(device="cpu", patience=10, ks=(5, 10), refit=False)
TIMING = ("epoch_time_s", "train_samples_per_s", "val/eval_users_per_s")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster, and immune to other processes on the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    """60 users, 120 items, ~2000 ratings: every model gets a few steps per epoch."""
    return load_dataset(
        DataConfig(
            dataset="synthetic:users=60,items=120,interactions=2000,seed=3",
            split="leave-last",
            eval_negatives=20,
        )
    )


def make(name: str, task: str, data, seed: int = 0, **hp):
    seed_everything(seed)
    return create_model(name, DataSpec.from_data(data), task, **hp)


def untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def check_ranges(metrics: dict[str, float], split: str, task: str, ks=(5, 10)) -> None:
    if task == "rating":
        assert 0 < metrics[f"{split}/mae"] <= metrics[f"{split}/rmse"] < 4.0
        return
    for k in ks:
        hr, ndcg = metrics[f"{split}/hr@{k}"], metrics[f"{split}/ndcg@{k}"]
        assert 0 <= ndcg <= hr <= 1 and 0 <= metrics[f"{split}/mrr@{k}"] <= hr
        assert 0 <= metrics[f"{split}/recall@{k}"] <= 1
    assert metrics[f"{split}/hr@5"] <= metrics[f"{split}/hr@10"]


@pytest.mark.parametrize("name,task", CASES)
def test_every_model_fits_and_reports_each_epoch(name, task, data):
    model = make(name, task, data, epochs=4, batch_size=64)
    reports: list[dict] = []
    result = fit(model, data, CPU, reports.append)
    key, _ = task_metric(task)
    if not model.learned:
        assert result.status == "ok" and result.epochs == 0 and len(reports) == 1
        check_ranges(reports[0], "val", task)
        return
    assert result.status == "ok", result.message
    assert [r["epoch"] for r in reports] == [1, 2, 3, 4] and result.history == reports
    for r in reports:
        assert {
            "train/loss",
            key,
            "epoch_time_s",
            "train_samples_per_s",
            "val/eval_users_per_s",
        } <= set(r)
        assert all(math.isfinite(v) for v in r.values())
        check_ranges(r, "val", task)
    assert reports[-1]["train/loss"] < reports[0]["train/loss"]
    assert result.best == reports[result.best_epoch - 1]
    check_ranges(evaluate(model, data, "test", CPU), "test", task)


def test_early_stopping_restores_the_best_state(data):
    # A large step and no regularisation overfit the tiny data: val RMSE turns up.
    model = make("mf", "rating", data, epochs=30, lr=0.05, reg=0.0, batch_size=128)
    reports: list[dict] = []
    cfg = TrainConfig(device="cpu", patience=2)
    result = fit(model, data, cfg, reports.append)
    assert result.status == "early_stopped" and "no val/rmse improvement" in result.message
    assert result.epochs == result.best_epoch + 2 == len(reports) < 30
    best = min(r["val/rmse"] for r in reports)
    assert result.best["val/rmse"] == best == reports[result.best_epoch - 1]["val/rmse"]
    assert reports[-1]["val/rmse"] > best  # the last epoch is worse ...
    assert evaluate(model, data, "val", cfg)["val/rmse"] == best  # ... and was rolled back


def test_early_stopping_waits_for_min_epochs(data):
    # a step too small to move a float32 weight: validation never improves after epoch 1
    runs = {}
    for wait in (0, 6):
        model = make("mf", "rating", data, epochs=30, lr=1e-12)
        runs[wait] = fit(model, data, TrainConfig(device="cpu", patience=2), min_epochs=wait)
    assert [r.best_epoch for r in runs.values()] == [1, 1]
    assert runs[0].epochs == 3 and runs[6].epochs == 6  # patience ran out at 3, judged at 6
    assert runs[6].status == "early_stopped"


def test_divergence_stops_cleanly_without_an_epoch(data):
    model = make("mf", "rating", data, epochs=3, lr=1e20)  # Adam steps of 1e20 overflow
    reports: list[dict] = []
    result = fit(model, data, CPU, reports.append)
    assert result.status == "diverged" and reports == [] and result.best == {}
    assert "loss is nan" in result.message or "loss is inf" in result.message
    assert "no epoch finished" in result.message


def test_divergence_after_good_epochs_restores_the_best(data):
    model = make("mf", "ranking", data, epochs=6)
    reports: list[dict] = []

    def poison(metrics: dict) -> None:
        reports.append(metrics)
        if metrics["epoch"] == 2:  # NaN weights make epoch 3's loss NaN
            with torch.no_grad():
                model.item_emb.weight.fill_(math.nan)

    result = fit(model, data, CPU, poison)
    assert result.status == "diverged" and len(reports) == 2 and result.epochs == 2
    assert (
        "epoch 3" in result.message and f"restored to epoch {result.best_epoch}" in result.message
    )
    assert all(torch.isfinite(p).all() for p in model.parameters())
    again = evaluate(model, data, "val", CPU)
    assert again["val/ndcg@10"] == result.best["val/ndcg@10"]


@pytest.mark.parametrize(
    "name,task",
    [("mf", "ranking"), ("mf", "rating")]
    + [c for c in CASES if c[0] in ("neumf", "caser", "autorec")][:3],
)
def test_same_seed_same_metrics(name, task, data):
    runs = [
        fit(make(name, task, data, seed=s, epochs=2, batch_size=64), data, CPU) for s in (5, 5, 6)
    ]
    assert untimed(runs[0].history) == untimed(runs[1].history)
    assert untimed(runs[0].history) != untimed(runs[2].history)  # the seed matters


def test_resume_from_state_equals_an_uninterrupted_fit(data):
    cfg = TrainConfig(device="cpu", patience=10)
    full_states: list[dict] = []
    full = fit(
        make("mf", "ranking", data, epochs=4, batch_size=64),
        data,
        cfg,
        on_state=lambda s: full_states.append(s.full()),
    )
    # Round-trip the epoch-2 state through torch.save, as a Ray checkpoint would.
    buffer = io.BytesIO()
    torch.save(full_states[1], buffer)
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    resumed_reports: list[dict] = []
    resumed = fit(
        make("mf", "ranking", data, seed=99, epochs=4, batch_size=64),
        data,
        cfg,
        resumed_reports.append,
        state=state,
    )
    assert [r["epoch"] for r in resumed_reports] == [3, 4]
    assert untimed(resumed.history) == untimed(full.history)
    assert resumed.best_epoch == full.best_epoch
    assert untimed([resumed.best]) == untimed([full.best])


def test_on_state_comes_before_report_and_holds_cpu_copies(data):
    order: list[str] = []
    states: list[dict] = []

    def on_state(s: EpochState) -> None:
        order.append("state")
        states.append(s.full())
        assert (s.epoch, s.best_epoch, s.final) == (
            states[-1]["epoch"],
            states[-1]["best_epoch"],
            s.epoch == 2,
        )

    fit(
        make("mf", "rating", data, epochs=2),
        data,
        CPU,
        lambda m: order.append("report"),
        on_state=on_state,
    )
    assert order == ["state", "report", "state", "report"]
    first = states[0]["model"]["user_emb.weight"].clone()
    assert torch.equal(states[0]["model"]["user_emb.weight"], first)  # not a live reference
    assert not torch.equal(states[1]["model"]["user_emb.weight"], first)
    assert states[1]["best_state"].keys() == states[1]["model"].keys()


def test_sampled_protocol_and_test_masks(data):
    model = make("mf", "ranking", data, epochs=2)
    fit(model, data, CPU)
    cfg = TrainConfig(device="cpu", protocol="sampled", ks=(5, 10))
    sampled = evaluate(model, data, "test", cfg)
    check_ranges(sampled, "test", "ranking")
    full = evaluate(model, data, "test", CPU)
    assert sampled["test/hr@10"] > full["test/hr@10"]  # 1 of 21 is easier than 1 of 120
    tensors = to_device(data, "cpu")
    indptr, indices = tensors.known("test")
    assert len(indices) == len(data.train) + len(data.val)  # val items are masked for test
    assert tensors.last_items("test", 3).shape == (data.n_users, 3)
    assert torch.equal(
        tensors.last_items("test", 1)[:, 0][torch.as_tensor(data.val.user)],
        torch.as_tensor(data.val.item),
    )  # leave-last: val is the latest known


def test_train_one_writes_files_that_rebuild_the_model(data, tmp_path):
    metrics = train_one("mf", data, "rating", {"epochs": 2}, CPU, out_dir=tmp_path, progress=False)
    assert metrics["status"] == "ok" and metrics["epochs"] == 2
    assert {"val/rmse", "test/rmse", "train_samples_per_s", "eval_users_per_s"} <= set(metrics)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"] == "mf" and config["hparams"]["epochs"] == 2
    assert config["train"]["device"] == "cpu"
    model, meta = load_model(tmp_path / "checkpoint.pt")
    assert meta == {"metrics": metrics, "data_fingerprint": data.fingerprint}
    again = evaluate(model, data, "test", CPU)
    assert again["test/rmse"] == metrics["test/rmse"]


def test_fold_val_moves_val_into_train_in_order(data):
    full = fold_val(data)
    assert len(full.val) == 0 and full.val_negatives.shape == (0, data.val_negatives.shape[1])
    assert full.test is data.test and len(full.train) == len(data.train) + len(data.val)
    t = full.train
    assert (np.lexsort((t.item, t.timestamp, t.user)) == np.arange(len(t))).all()
    pairs = {
        *zip(data.train.user, data.train.item, strict=True),
        *zip(data.val.user, data.val.item, strict=True),
    }
    assert set(zip(t.user, t.item, strict=True)) == pairs
    tensors = to_device(full, "cpu")  # test history: train + val, each interaction once
    assert len(tensors.known("test")[1]) == len(pairs)
    assert torch.equal(
        tensors.last_items("test", 1)[:, 0][torch.as_tensor(data.val.user)],
        torch.as_tensor(data.val.item),
    )


@pytest.mark.parametrize("name,task", CASES)
def test_refit_tests_a_retrain_on_train_and_val_for_the_epochs_val_picked(
    name, task, data, tmp_path
):
    plain = train_one(name, data, task, {"epochs": 3}, CPU, progress=False)
    refit = train_one(
        name,
        data,
        task,
        {"epochs": 3},
        dataclasses.replace(CPU, refit=True),
        out_dir=tmp_path,
        progress=False,
    )
    val = [k for k in plain if k.startswith("val/")]
    test = [k for k in plain if k.startswith("test/")]
    assert val and test and {k: refit[k] for k in val} == {k: plain[k] for k in val}
    full = fold_val(data)
    seed_everything(CPU.seed)  # by hand: from the seed, on train + val, for the picked epochs
    model = create_model(name, DataSpec.from_data(full), task, epochs=max(plain["best_epoch"], 1))
    result = fit(model, full, CPU, validate=False)
    assert not any(k.startswith("val/") for h in result.history for k in h)
    assert result.epochs == (model.params.epochs if model.learned else 0)
    by_hand = evaluate(model, full, "test", CPU)
    assert {k: refit[k] for k in test} == {k: by_hand[k] for k in test}
    saved = evaluate(load_model(tmp_path / "checkpoint.pt")[0], full, "test", CPU)
    assert {k: saved[k] for k in test} == {k: by_hand[k] for k in test}
    if task == "rating":  # the refit also saw the val ratings: a different model
        assert refit["test/rmse"] != plain["test/rmse"]


def test_neumf_scores_in_cache_sized_user_batches_with_the_same_metrics(data):
    model = make("neumf", "ranking", data, dim=16, layers=2)
    e = model.mlp_user.embedding_dim
    limit = model.eval_batch_users
    assert limit & (limit - 1) == 0 and limit * data.n_items * e <= 2**21
    # on an accelerator (here the meta device, whose tensors hold no data): larger calls,
    # still bounded at 2^28 floats of activations
    wide = make("neumf", "ranking", data, dim=16, layers=2).to("meta").eval_batch_users
    assert wide > limit and wide & (wide - 1) == 0 and wide * data.n_items * e <= 2**28
    timed = {f"test/{k}" for k in ("eval_users_per_s",)}
    small, large = (
        evaluate(model, data, "test", TrainConfig(device="cpu", eval_batch_users=b))
        for b in (3, 4096)
    )
    assert {k: v for k, v in small.items() if k not in timed} == {
        k: v for k, v in large.items() if k not in timed
    }


def test_bad_requests_name_the_key():
    with pytest.raises(KeyError, match="known models"):
        validate_request("nope", None, {})
    with pytest.raises(ValueError, match="sequential"):
        validate_request("mf", "sequential", {})
    with pytest.raises(ValueError, match="lrr"):
        validate_request("mf", None, {"lrr": 0.1})
    with pytest.raises(ValueError, match="lr=-1"):
        validate_request("mf", None, {"lr": "-1"})
    with pytest.raises(ValueError, match="val/ndcg@50"):
        monitored_metric("ranking", "val/ndcg@50", (10, 20))
    assert monitored_metric("rating", "val/mae") == ("val/mae", "min")
    assert task_metric("sequential") == ("val/ndcg@10", "max")
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device"):
        pick_device("tpu")


def test_neumf_pretraining_runs_in_the_loop_and_fuses_the_towers(data):
    seed_everything(0)
    fused = create_model(
        "neumf", DataSpec.from_data(data), pretrain=True, alpha=0.3, epochs=5, pretrain_epochs=2
    )
    cfg = TrainConfig(device="cpu", amp=False, ks=(10,))
    towers = []

    def train(part):
        towers.append(part)
        return fit(part, data, cfg)

    fused.pretrain(train)
    assert [t.params.tower for t in towers] == ["gmf", "mlp"]
    # each tower trains its own epochs, whatever the fused model's (a refit changes those)
    assert [t.params.epochs for t in towers] == [2, 2]
    user, item = torch.tensor([0, 4, 8]), torch.tensor([3, 9, 12])
    with torch.no_grad():  # the fused model starts as alpha * GMF + (1 - alpha) * MLP
        want = 0.3 * towers[0](user, item) + 0.7 * towers[1](user, item)
        torch.testing.assert_close(fused(user, item), want)
    seed_everything(0)
    fused = create_model("neumf", DataSpec.from_data(data), pretrain=True, epochs=2)
    plain = make("neumf", "ranking", data, epochs=2)
    assert fit(fused, data, cfg).best != fit(plain, data, cfg).best  # fit pre-trained it
    with pytest.raises(ValueError, match="pretrain=True: expected False for a single tower"):
        create_model("neumf", DataSpec.from_data(data), tower="gmf", pretrain=True)


@pytest.mark.scale
def test_every_model_trains_an_epoch_on_a_million_ratings():
    # a million ratings (20,000 users x 4,000 items): one epoch of each model and task, with
    # small dims, within the suite's time; the loss is a number and nothing runs out of memory
    data = load_dataset(
        DataConfig(
            dataset="synthetic:users=20000,items=4000,interactions=1000000", eval_negatives=0
        )
    )
    assert len(data.train) + len(data.val) + len(data.test) == 1_000_000
    cfg = TrainConfig(device="cpu", amp=False)
    for name in list_models():
        cls = get_model_class(name)
        fields = {f.name for f in dataclasses.fields(cls.Params)}
        small = {k: v for k, v in {"dim": 8, "batch_size": 4096}.items() if k in fields}
        for task in cls.tasks:
            seed_everything(0)
            model = create_model(name, DataSpec.from_data(data), task, epochs=1, **small)
            result = fit(model, data, cfg, validate=False)
            assert result.status == "ok", (name, task, result.message)
            if model.learned:
                assert math.isfinite(result.history[-1]["train/loss"]), (name, task)
                assert result.history[-1]["train_samples_per_s"] > 0


def test_sgd_steps_lr_per_example_in_a_batch_shorter_than_batch_size(data) -> None:
    """One epoch of 5 examples in one batch (batch_size 1024): the step is lr times the
    summed gradient of those 5, not of 1,024 (the last batch of every epoch is such)."""
    from orchestrator.engine.train import fit

    t = data.train
    small = dataclasses.replace(
        data, train=type(t)(t.user[:5], t.item[:5], t.rating[:5], t.timestamp[:5])
    )
    model = make("mf", "rating", small, optimizer="sgd", lr=0.01, epochs=1, dim=4)
    reference = make("mf", "rating", small, optimizer="sgd", lr=0.01, epochs=1, dim=4)
    reference.load_state_dict(model.state_dict())
    examples = reference.examples(to_device(small, "cpu").train)
    (reference.loss(examples) * 5).backward()  # the loss is the mean over the 5
    fit(model, small, CPU, validate=False)
    pairs = zip(model.named_parameters(), reference.parameters(), strict=True)
    for (name, trained), start in pairs:
        grad = start.grad.to_dense() if start.grad.is_sparse else start.grad
        torch.testing.assert_close(trained.detach(), start.detach() - 0.01 * grad, msg=name)
