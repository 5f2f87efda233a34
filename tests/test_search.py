"""What each study's Optuna search is told: the defaults first, a budget-sized start-up,
ASHA-stopped trials as pruned with their per-epoch values, finished ones with their best."""

from __future__ import annotations

import dataclasses
import json
import types
import warnings

import optuna
import pyarrow.fs
import pytest
from optuna.trial import TrialState

from orchestrator.models.registry import get_model_class, make_params
from orchestrator.plan import check_config, load_config, resolved, schedules, study_points
from orchestrator.records import TrialSpec
from orchestrator.search import StudySearch
from orchestrator.trials import trial_history


@pytest.fixture()
def search() -> tuple[StudySearch, optuna.storages.InMemoryStorage]:
    cfg = resolved(
        load_config(
            None,
            {
                "models": ["mf", "neumf"],
                "baselines": [],
                "trials": 8,
                "epochs": 12,
                "search_space": {"mf": {"dim": {"values": [16, 32]}}},
            },
        )
    )
    studies = check_config(cfg)
    storage = optuna.storages.InMemoryStorage()
    return StudySearch(studies, cfg, schedules(cfg, studies), storage=storage), storage


def test_first_trial_of_each_study_is_the_models_defaults(search) -> None:
    searcher, _ = search
    first = [TrialSpec.split(searcher.suggest(t)) for t in ("a", "b")]
    assert [(meta.study, meta.number) for meta, _ in first] == [("mf", 0), ("neumf", 0)]
    for meta, params in first:
        defaults = dataclasses.asdict(make_params(meta.model, meta.task))
        assert set(params) <= set(defaults)  # the metadata is beside them, not inside
        drawn = {k: v for k, v in params.items() if k != "epochs"}
        if meta.model == "mf":  # the override [16, 32] excludes the default dim 64
            assert drawn.pop("dim") in (16, 32)
        assert drawn and drawn == {k: defaults[k] for k in drawn}, params
        assert params["epochs"] == 12 and meta.rungs == (3, 6, 12)
    assert TrialSpec.split(searcher.suggest("c"))[0].number == 1  # then the sampler


def test_first_trials_are_the_defaults_then_the_recipes_then_the_search(capsys) -> None:
    cfg = resolved(
        load_config(
            None,
            {
                "models": ["mf:ranking", "neumf", "mf"],
                "baselines": [],
                "trials": 4,
                "search_space": {"mf": {"dim": {"values": [16, 64]}}},
            },
        )
    )
    studies = check_config(cfg)
    searcher = StudySearch(
        studies, cfg, schedules(cfg, studies), storage=optuna.storages.InMemoryStorage()
    )
    metas = [TrialSpec.split(searcher.suggest(str(i))) for i in range(12)]
    origins = {s.name: [m.origin for m, _ in metas if m.study == s.name] for s in studies}
    # the override dim [16, 64] drops surprise-svd (128) and rendle2020 (192), not he2017-gmf
    assert origins == {
        "mf-ranking": ["defaults", "recipe:he2017-gmf", "search", "search"],
        "neumf": ["defaults", "recipe:he2017", "recipe:he2017-pretrain", "search"],
        "mf": ["defaults", "search", "search", "search"],
    }
    neumf = [params for meta, params in metas if meta.study == "neumf"]
    for params, recipe in zip(neumf[1:3], get_model_class("neumf").recipes, strict=True):
        assert {k: params[k] for k in recipe.hparams} == recipe.hparams
    assert neumf[0]["lr"] == make_params("neumf").lr  # the defaults, not a recipe's


def test_a_recipe_sets_its_studys_epoch_budget_and_an_override_can_drop_it() -> None:
    cfg = resolved(load_config(None, {"models": ["mf:ranking", "mf"]}))
    assert cfg.schedule["mf-ranking"]["max_epochs"] == 256  # rendle2020 trains 256 epochs
    assert cfg.schedule["mf"]["max_epochs"] == 100  # mf's own, above surprise-svd's 20
    narrow = resolved(
        load_config(
            None,
            {
                "models": ["mf:ranking"],
                "baselines": [],
                "search_space": {"mf": {"optimizer": {"value": "adam"}}},
            },
        )
    )
    assert narrow.schedule["mf-ranking"]["max_epochs"] == 100  # rendle2020 not tried
    (study,) = check_config(narrow)
    points, dropped = study_points(study, narrow.search_space["mf"])
    assert [origin for origin, _ in points] == ["defaults", "recipe:he2017-gmf"]
    assert dropped["outside"] == [
        "recipe rendle2020: optimizer='sgd' is outside the search space; not tried"
    ]


def test_the_sampler_is_written_out_seeded_and_checked() -> None:
    cfg = resolved(load_config(None, {"seed": 7, "trials": 20}))
    assert cfg.sampler == {
        "name": "tpe",
        "seed": 7,
        "n_startup_trials": 5,
        "n_ei_candidates": 24,
        "multivariate": True,
        "group": False,
        "constant_liar": True,
    }
    assert resolved(load_config(None, {"sampler": cfg.sampler})).sampler == cfg.sampler
    assert resolved(load_config(None, {"sampler": {"name": "random"}})).sampler == {
        "name": "random",
        "seed": 0,
    }
    with pytest.raises(ValueError, match=r"sampler: unknown key\(s\) \['gamma'\] for tpe"):
        load_config(None, {"sampler": {"gamma": 0.1}})
    with pytest.raises(ValueError, match=r"sampler.multivariate: 'yes'; expected bool"):
        load_config(None, {"sampler": {"multivariate": "yes"}})
    with pytest.raises(ValueError, match=r"sampler.name: 'cma'"):
        load_config(None, {"sampler": {"name": "cma"}})


def test_asha_stopped_trials_are_pruned_finished_ones_complete_with_their_best(search) -> None:
    searcher, storage = search
    ids = ["a", "b", "c", "d"]  # mf, neumf, mf, neumf
    for trial_id in ids:
        searcher.suggest(trial_id)
    for epoch, value in ((1, 1.10), (3, 0.95)):  # reported at epochs 1 and 3 (ASHA's rung)
        searcher.on_trial_result("a", {"val/rmse": value, "epoch": epoch})
    searcher.on_trial_complete(
        "a", {"val/rmse": 0.95, "epoch": 3, "status": "running", "best_value": 0.95}
    )  # ASHA stopped it at the rung
    for epoch, value in ((1, 1.0), (2, 0.90), (3, 0.93)):
        searcher.on_trial_result("c", {"val/rmse": value, "epoch": epoch})
    with warnings.catch_warnings():  # restarted from its epoch-1 checkpoint (a lost node)
        warnings.simplefilter("error")  # Optuna warns at a step reported twice
        for epoch, value in ((2, 0.91), (3, 0.94), (4, 0.96)):
            searcher.on_trial_result("c", {"val/rmse": value, "epoch": epoch})
    searcher.on_trial_complete(
        "c", {"val/rmse": 0.96, "epoch": 4, "status": "early_stopped", "best_value": 0.90}
    )
    searcher.on_trial_complete(
        "b",
        {"val/ndcg@10": float("nan"), "epoch": 2, "status": "diverged", "best_value": float("nan")},
    )
    searcher.on_trial_complete("d", None, error=True)
    mf = optuna.load_study(study_name="mf", storage=storage).trials
    assert [t.state for t in mf] == [TrialState.PRUNED, TrialState.COMPLETE]
    assert mf[0].intermediate_values == {1: 1.10, 3: 0.95}  # steps are epochs
    assert mf[1].intermediate_values == {1: 1.0, 2: 0.90, 3: 0.93, 4: 0.96}  # once a step
    assert mf[1].value == 0.90  # the best epoch's value, the state the sweep would choose
    neumf = optuna.load_study(study_name="neumf", storage=storage).trials
    assert [t.state for t in neumf[:2]] == [TrialState.FAIL, TrialState.FAIL]


def test_startup_trials_follow_the_budget() -> None:
    for trials, want in ((2, 2), (8, 2), (20, 5), (64, 10)):
        cfg = resolved(load_config(None, {"models": ["mf"], "trials": trials}))
        assert cfg.startup_trials == want
    assert resolved(load_config(None, {"startup_trials": 7})).startup_trials == 7


def test_schedule_follows_the_epoch_budget_and_is_checked() -> None:
    cfg = resolved(load_config(None, {"models": ["mf", "autorec"], "epochs": 0}))
    mf, autorec = cfg.schedule["mf"], cfg.schedule["autorec"]
    assert mf == {"max_epochs": 100, "grace_period": 25, "rungs": [25, 50, 100]}
    assert autorec["grace_period"] == autorec["max_epochs"] // 4
    again = load_config(None, {"models": ["mf", "autorec"], "schedule": cfg.schedule})
    assert resolved(again).schedule == cfg.schedule  # sweep.yaml's own plan reloads as is
    with pytest.raises(ValueError, match=r"schedule.mf.max_epochs=100, but epochs gives 30"):
        load_config(None, {"models": ["mf"], "epochs": 30, "schedule": {"mf": mf}})
    with pytest.raises(ValueError, match=r"schedule: no study \['nope'\]"):
        load_config(None, {"models": ["mf"], "schedule": {"nope": mf}})
    with pytest.raises(ValueError, match="reduction_factor=1"):
        load_config(None, {"reduction_factor": 1})


@pytest.mark.parametrize(
    "baselines, message",
    [
        (
            ["bias:ranking"],
            r"baselines: 'bias:ranking': model 'bias' supports rating, not "
            r"'ranking'",
        ),
        (["mf"], r"baselines: 'mf' is a learned model"),
        (["nope"], r"baselines: unknown model 'nope'"),
    ],
)
def test_a_baseline_must_serve_its_task(baselines: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(None, {"baselines": baselines})


def test_a_baseline_is_listed_as_one() -> None:
    with pytest.raises(ValueError, match=r"models: 'ease' is a baseline .* list it in `base"):
        load_config(None, {"models": ["mf:ranking", "ease"]})


def test_a_trials_history_is_its_lineage_and_survives_a_line_cut_short(tmp_path, capsys) -> None:
    # a trial that reported epochs 1..3, was killed while its last line was written, then
    # restored from its epoch-1 checkpoint and ran epoch 2 again
    rows = [
        {"epoch": 1, "val/rmse": 0.90, "config": {"lr": 0.1}},
        {"epoch": 2, "val/rmse": 0.87},
        {"epoch": 3, "val/rmse": 0.85},
    ]
    lines = [json.dumps(r) for r in rows]
    lines.append(lines[-1][:20])  # cut short
    lines.append(json.dumps({"epoch": 2, "val/rmse": 0.86}))
    (tmp_path / "result.json").write_text("\n".join(lines) + "\n")
    res = types.SimpleNamespace(path=str(tmp_path), filesystem=pyarrow.fs.LocalFileSystem())
    history = trial_history(res)
    assert list(history["epoch"]) == [1, 2] and list(history["val/rmse"]) == [0.90, 0.86]
    assert "config" not in history  # the trial's config is not a metric
    assert "line 4: not a whole JSON result" in capsys.readouterr().out
    assert (
        trial_history(types.SimpleNamespace(path=str(tmp_path / "none"), filesystem=res.filesystem))
        is None
    )


def test_the_time_budget_goes_on_after_a_resume_with_what_was_left() -> None:
    import pickle
    import time

    from orchestrator.callbacks import BudgetLeft, TimeBudget

    budget = TimeBudget(1.0)
    assert not budget.stop_all()  # the clock starts at Tune's first check
    time.sleep(0.3)
    assert not budget.stop_all()
    assert 0.5 < BudgetLeft.seconds < 0.75
    restored = pickle.loads(pickle.dumps(budget))  # Tune's experiment state, then --resume
    time.sleep(0.5)  # between the runs: not counted
    assert not restored.stop_all()
    assert 0.5 < restored.left < 0.75
    time.sleep(0.8)
    assert restored.stop_all() and BudgetLeft.spent()
