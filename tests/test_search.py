"""What each study's Optuna search is told: the defaults first, a budget-sized start-up,
ASHA-stopped trials as pruned with their per-epoch values, finished ones with their best."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
from optuna.trial import TrialState

from models.registry import make_params
from orchestrator.plan import load_config, model_studies, resolved, schedules
from orchestrator.search import StudySearch
from orchestrator.trainable import split_config


@pytest.fixture()
def search() -> tuple[StudySearch, optuna.storages.InMemoryStorage]:
    cfg = resolved(load_config(None, {"models": ["mf", "neumf"], "trials": 8, "epochs": 12,
                                      "search_space": {"mf": {"dim": {"values": [16, 32]}}}}))
    studies = model_studies(cfg)
    storage = optuna.storages.InMemoryStorage()
    return StudySearch(studies, cfg, schedules(cfg, studies), storage=storage), storage


def test_first_trial_of_each_study_is_the_models_defaults(search) -> None:
    searcher, _ = search
    first = [split_config(searcher.suggest(t)) for t in ("a", "b")]
    assert [(meta["study"], meta["number"]) for meta, _ in first] == [("mf", 0), ("neumf", 0)]
    for meta, params in first:
        defaults = dataclasses.asdict(make_params(meta["model"], meta["task"]))
        assert set(params) <= set(defaults)  # the metadata is beside them, not inside
        drawn = {k: v for k, v in params.items() if k != "epochs"}
        if meta["model"] == "mf":  # the override [16, 32] excludes the default dim 64
            assert drawn.pop("dim") in (16, 32)
        assert drawn and drawn == {k: defaults[k] for k in drawn}, params
        assert params["epochs"] == 12 and meta["rungs"] == [3, 6, 12]
    assert split_config(searcher.suggest("c"))[0]["number"] == 1  # then the sampler


def test_asha_stopped_trials_are_pruned_finished_ones_complete_with_their_best(search
                                                                            ) -> None:
    searcher, storage = search
    ids = ["a", "b", "c", "d"]  # mf, neumf, mf, neumf
    for trial_id in ids:
        searcher.suggest(trial_id)
    for epoch, value in ((1, 1.10), (3, 0.95)):  # reported at epochs 1 and 3 (ASHA's rung)
        searcher.on_trial_result("a", {"val/rmse": value, "epoch": epoch})
    searcher.on_trial_complete("a", {"val/rmse": 0.95, "epoch": 3, "status": "running",
                                     "best_value": 0.95})  # ASHA stopped it at the rung
    for epoch, value in ((1, 1.0), (2, 0.90), (3, 0.93)):
        searcher.on_trial_result("c", {"val/rmse": value, "epoch": epoch})
    searcher.on_trial_complete("c", {"val/rmse": 0.93, "epoch": 3, "status": "early_stopped",
                                     "best_value": 0.90})
    searcher.on_trial_complete("b", {"val/ndcg@10": float("nan"), "epoch": 2,
                                     "status": "diverged", "best_value": float("nan")})
    searcher.on_trial_complete("d", None, error=True)
    mf = optuna.load_study(study_name="mf", storage=storage).trials
    assert [t.state for t in mf] == [TrialState.PRUNED, TrialState.COMPLETE]
    assert mf[0].intermediate_values == {1: 1.10, 3: 0.95}  # steps are epochs
    assert mf[1].value == 0.90  # the best epoch's value, the state the sweep would choose
    neumf = optuna.load_study(study_name="neumf", storage=storage).trials
    assert [t.state for t in neumf] == [TrialState.FAIL, TrialState.FAIL]


def test_startup_trials_follow_the_budget() -> None:
    for trials, want in ((2, 2), (8, 2), (20, 5), (64, 10)):
        cfg = resolved(load_config(None, {"models": ["mf"], "trials": trials}))
        assert cfg.startup_trials == want
    assert resolved(load_config(None, {"startup_trials": 7})).startup_trials == 7


def test_schedule_follows_the_epoch_budget_and_is_checked() -> None:
    cfg = resolved(load_config(None, {"models": ["mf", "autorec"], "epochs": 0}))
    mf, autorec = cfg.schedule["mf"], cfg.schedule["autorec"]
    assert mf == {"max_epochs": 20, "grace_period": 5, "rungs": [5, 10, 20]}
    assert autorec["grace_period"] == autorec["max_epochs"] // 4
    again = load_config(None, {"models": ["mf", "autorec"], "schedule": cfg.schedule})
    assert resolved(again).schedule == cfg.schedule  # sweep.yaml's own plan reloads as is
    with pytest.raises(ValueError, match=r"schedule.mf.max_epochs=20, but epochs gives 30"):
        load_config(None, {"models": ["mf"], "epochs": 30, "schedule": {"mf": mf}})
    with pytest.raises(ValueError, match=r"schedule: no study \['nope'\]"):
        load_config(None, {"models": ["mf"], "schedule": {"nope": mf}})
    with pytest.raises(ValueError, match="reduction_factor=1"):
        load_config(None, {"reduction_factor": 1})


@pytest.mark.parametrize("baselines, message", [
    (["bias:ranking"], r"baselines: 'bias:ranking': model 'bias' supports rating, not "
                       r"'ranking'"),
    (["mf"], r"baselines: 'mf' is a learned model"),
    (["nope"], r"baselines: unknown model 'nope'"),
])
def test_a_baseline_must_serve_its_task(baselines: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(None, {"baselines": baselines})
