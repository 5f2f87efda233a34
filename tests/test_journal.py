"""The sweep's trials in Optuna's storage: what `optuna.load_study` reads back."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from orchestrator.journal import storage, write_journal
from orchestrator.plan import check_config, load_config, resolved, schedules
from orchestrator.records import TrialRecord
from orchestrator.search import SearchSpace


def record(number: int, end: str, best: float | None, **hparams: object) -> TrialRecord:
    return TrialRecord(
        study="mf",
        trial_id=f"t{number}",
        number=number,
        end=end,
        message="",
        best=best,
        best_epoch=2,
        epochs=2,
        time_s=1.0,
        hparams={"epochs": 4, **hparams},
        seed=0,
        origin="defaults" if number == 0 else "search",
    )


@pytest.mark.filterwarnings("error")  # a step reported twice would warn
def test_every_trial_once_with_its_state_values_and_distributions(tmp_path: Path) -> None:
    cfg = resolved(load_config(None, {"models": ["mf"], "trials": 4, "epochs": 4, "baselines": []}))
    (study,) = check_config(cfg)
    plan = schedules(cfg, [study])
    space = SearchSpace.of(study, cfg, plan)
    defaults = space.points[0][1]
    trials = [
        record(2, "diverged", None, **defaults),  # out of order: sorted by number
        record(0, "epochs", 0.95, **defaults),
        record(1, "asha", 0.99, **{**defaults, "dim": 32}),
    ]
    # t0 restarted after epoch 1 (a lost node): epoch 2 reported twice, the last one counts
    curves = pd.DataFrame(
        {
            "trial_id": ["t0", "t0", "t0", "t1"],
            "epoch": [1, 2, 2, 1],
            "val/rmse": [1.0, 0.97, 0.95, 0.99],
        }
    )
    for _ in range(2):  # a --resume writes it again: still every trial once
        write_journal(tmp_path, [study], trials, curves, lambda s: space)
    loaded = optuna.load_study(study_name="mf", storage=storage(tmp_path))
    assert loaded.direction == optuna.study.StudyDirection.MINIMIZE
    assert [t.number for t in loaded.trials] == [0, 1, 2]
    assert [t.state for t in loaded.trials] == [
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.FAIL,
    ]
    first, pruned, failed = loaded.trials
    assert first.value == 0.95 and first.intermediate_values == {1: 1.0, 2: 0.95}
    assert pruned.intermediate_values == {1: 0.99} and pruned.params["dim"] == 32
    assert first.params == {k: v for k, v in defaults.items() if k in first.params}
    assert set(first.distributions) == set(first.params) and "lr" in first.distributions
    assert failed.user_attrs["end"] == "diverged" and first.user_attrs["trial_id"] == "t0"
    assert [t.user_attrs["origin"] for t in loaded.trials] == ["defaults", "search", "search"]
    assert loaded.user_attrs["metric"] == "val/rmse"
    assert not list(tmp_path.glob(".optuna.journal.*"))  # no temporary file left
