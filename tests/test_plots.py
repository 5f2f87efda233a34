"""The report's pieces without a sweep: Optuna's importances over complete trials, and a
folder that is no run refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.cli import main


def test_importances_come_from_optuna_over_complete_trials(tmp_path: Path) -> None:
    import optuna

    from orchestrator.plots import optuna_figure

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(12):
        trial = study.ask()
        lr, dim = trial.suggest_float("lr", 1e-4, 1e-1, log=True), trial.suggest_int("dim", 8, 64)
        if i == 11:  # a pruned trial is not a result: importances leave it out
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        study.tell(trial, lr * 100 + dim * 1e-6)  # lr decides the value
    scores = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
    )
    assert list(scores)[0] == "lr" and scores["lr"] > 0.9
    path = optuna_figure("importance", study, tmp_path / "importance.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_optuna_titles_fit_their_figures() -> None:
    """A long study name and Optuna's own title are wrapped inside the figure (the report
    once cut "Optimization History Plot (5 complete trials" at its right edge)."""
    import matplotlib.pyplot as plt
    import optuna

    from orchestrator.plots import optuna_axes

    study = optuna.create_study(study_name="mf-ranking-fold2-with-a-long-name")
    for x in range(5):
        study.enqueue_trial({"x": float(x)})
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", 0, 4) ** 2)
    for kind in ("history", "importance"):
        ax = optuna_axes(kind, study)
        fig = ax.figure
        box = ax.title.get_window_extent(fig.canvas.get_renderer())  # type: ignore[attr-defined]
        assert "5 complete trials" in ax.get_title(loc="left").replace("\n", " ")
        assert 0 <= box.x0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1, kind
        plt.close(fig)


def test_report_of_a_directory_that_is_no_run(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "sweep.yaml").write_text("name: x\n")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a sweep run directory" in err and "results.parquet, trials.parquet" in err
