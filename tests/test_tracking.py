"""W&B runs of a sweep (`tracking.WandbRuns`), offline, in one process: runs open at once
keep their rows apart, and an error is reported, never raised into the search."""

from __future__ import annotations

from pathlib import Path

from wandb_log import wandb_run


def test_wandb_runs_open_at_once_keep_their_rows_apart_and_in_order(tmp_path: Path) -> None:
    from orchestrator.tracking import WandbRuns

    runs = WandbRuns(str(tmp_path), "offline", "p")
    runs.start("a", "trial a", "night/mf", "mf", {"lr": 0.1})
    runs.start("b", "trial b", "night/neumf", "neumf", {"lr": 0.2})
    for epoch in range(1, 6):  # interleaved, as the trials of a sweep report
        runs.log("a", {"epoch": epoch, "val/rmse": 1 / epoch}, {})
        runs.log("b", {"epoch": epoch, "val/ndcg@10": epoch / 10}, {})
    runs.log(
        "b",
        {"epoch": 6, "val/ndcg@10": float("nan")},
        {"status": "diverged", "message": "epoch 6: val/ndcg@10 is nan"},
    )
    runs.finish("a", 0)
    runs.finish("b", 1)
    runs.start("c", "trial c", "night/mf", "mf", {})  # open when the search ends
    runs.log("ghost", {"epoch": 1}, {})  # no run was started for it: said, not dropped
    assert runs.close() == ["trial ghost: log: no run was started for it"]

    found = {r["run"].run_id: r for r in map(wandb_run, (tmp_path / "wandb").glob("offline-*"))}
    assert sorted(found) == ["a", "b", "c"]
    a, b = found["a"], found["b"]
    assert (a["run"].run_group, b["run"].run_group) == ("night/mf", "night/neumf")
    assert [r["val/rmse"] for r in a["history"]] == [1 / e for e in range(1, 6)]
    assert [r["epoch"] for r in b["history"]] == [1, 2, 3, 4, 5, 6]
    assert "val/rmse" not in b["history"][0] and "val/ndcg@10" not in a["history"][0]
    assert b["summary"]["status"] == "diverged" and "diverged" not in a["summary"].values()
    assert (a["exit_code"], b["exit_code"], found["c"]["exit_code"]) == (0, 1, 0)


def test_a_wandb_error_is_reported_and_does_not_stop_the_caller(tmp_path: Path) -> None:
    from orchestrator.tracking import WandbRuns

    runs = WandbRuns(str(tmp_path), "sideways", "p")  # not a W&B mode: init raises
    runs.start("a", "trial a", "night/mf", "mf", {})
    runs.log("a", {"epoch": 1}, {})
    runs.finish("a", 0)
    errors = runs.close()
    assert len(errors) == 1 and errors[0].startswith("trial a: start:"), errors
    assert "sideways" in errors[0]
