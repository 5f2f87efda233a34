"""A sweep's configuration is checked before Ray starts: bad sweep files and settings fail
with one line naming the key, and the search's studies take turns. No Ray is started."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import SECRET

from orchestrator.cli import main
from orchestrator.plan import load_config


@pytest.mark.parametrize(
    "content, message",
    [
        ({"trails": 3}, "trails"),
        ({"data": {"datset": "x"}}, "data.datset"),
        ({"models": ["mf", "nope"]}, "unknown model 'nope'"),
        ({"metric": "val/auc"}, "val/auc"),
        ({"search_space": {"mf": {"lr": {"min": 0.1, "max": 0.01}}}}, "search_space.mf.lr"),
        (
            {
                "search_space": {
                    "mf": {"lr": {"distribution": "log_uniform_values", "min": 0, "max": 1}}
                }
            },
            "min > 0",
        ),
        ({"search_space": {"mf": {"dimm": {"values": [8]}}}}, "dimm"),
        ({"time_budget": "8 hours"}, "time_budget"),
    ],
)
def test_bad_sweep_files_fail_before_any_trial(tmp_path: Path, content: dict, message: str) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ValueError, match=None) as err:
        load_config(path, {})
    assert message in str(err.value) and str(path) in str(err.value)


def test_wandb_sweep_syntax_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "models": ["mf", "neumf"],
                "search_space": {
                    "mf": {
                        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
                        "dim": {"values": [16, 32]},
                        "weight_decay": {"value": 0.0},
                    }
                },
            }
        )
    )
    cfg = load_config(path, {"trials": 3})
    assert cfg.trials == 3 and cfg.models == ("mf", "neumf")


def test_online_wandb_takes_the_key_of_wandb_login_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("WANDB_API_KEY", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="wandb login"):
        load_config(None, {"wandb": "online"})
    netrc = tmp_path / ".netrc"  # as `wandb login` leaves it
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {SECRET}\n")
    netrc.chmod(0o600)
    assert load_config(None, {"wandb": "online"}).wandb == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")  # a key for another host
    with pytest.raises(ValueError, match="wandb login"):
        load_config(None, {"wandb": "online"})
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    assert load_config(None, {"wandb": "online"}).wandb == "online"


def test_resume_of_a_folder_that_is_not_a_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["sweep", "--resume", str(tmp_path)]) == 2
    assert "not a sweep run directory" in capsys.readouterr().err


def test_unreachable_address_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, no_shared_ray: None
) -> None:
    args = ["sweep", "--smoke", "--address", "127.0.0.1:1", "--storage", str(tmp_path)]
    assert main(args) == 2
    assert "cannot reach a Ray cluster" in capsys.readouterr().err


def test_studies_take_turns_in_one_search_that_survives_a_save(tmp_path: Path) -> None:
    from ray.tune.search import Searcher

    from orchestrator.plan import check_config, schedules
    from orchestrator.records import TRIAL
    from orchestrator.search import StudySearch

    cfg = load_config(None, {"models": ["mf", "neumf"], "trials": 2, "baselines": []})
    plan = schedules(cfg, check_config(cfg))
    search = StudySearch(check_config(cfg), cfg, plan)
    first = [search.suggest(f"t{i}") for i in range(3)]
    assert [c[TRIAL]["study"] for c in first] == ["mf", "neumf", "mf"]
    assert [c[TRIAL]["train"]["metric"] for c in first] == ["val/rmse", "val/ndcg@10", "val/rmse"]
    assert "negatives" in first[1] and "negatives" not in first[0]  # each model's own space
    search.on_trial_complete("t0", {"val/rmse": 0.95, "status": "epochs", "best_value": 0.9})
    search.save(str(tmp_path / "searcher.pkl"))  # what Tune keeps for --resume

    restored = StudySearch(check_config(cfg), cfg, plan)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("t3")[TRIAL]["study"] == "neumf"  # mf has had its 2 trials
    assert restored.suggest("t4") == Searcher.FINISHED
    # the finished trial is part of mf's TPE history, and of mf's only
    told = {
        name: [t.value for t in s._ot_study.trials if t.value is not None]
        for name, s in restored.searches.items()
    }
    assert told == {"mf": [0.9], "neumf": []}


def test_a_study_of_long_trials_holds_one_slot_while_the_short_ones_take_turns() -> None:
    from orchestrator.plan import check_config, schedules
    from orchestrator.records import TRIAL
    from orchestrator.search import StudySearch

    cfg = load_config(None, {"models": ["mf"], "baselines": ["bias"], "trials": 3})
    studies = check_config(cfg)
    search = StudySearch(studies, cfg, schedules(cfg, studies))
    assert search.suggest("t0")[TRIAL]["study"] == "mf"  # a long trial, still running
    for i in range(1, 4):  # bias's fits end one after another in the other slot
        assert search.suggest(f"t{i}")[TRIAL]["study"] == "bias"
        search.on_trial_complete(f"t{i}", {"val/rmse": 0.9, "status": "epochs", "best_value": 0.9})
    assert search.suggest("t4")[TRIAL]["study"] == "mf"  # bias has had its 3
