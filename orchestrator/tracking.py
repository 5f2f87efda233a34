"""Experiment tracking: Weights & Biases runs, one per trial, several open at once
(`WandbRuns`), and one summary run per sweep with its tables and models (`summary_run`).

No Ray here: the sweep hosts `WandbRuns` in a Ray actor, and Ray imports this module (not
the sweep's, which imports torch) in that actor's process.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class WandbRuns:
    """Many W&B runs open at once in one process, sharing its W&B service (starting one is
    cheap there, not a new process). The sweep runs this as one Ray actor on the driver's node (see
    `callbacks.SweepWandb`), one run per trial.

    Args:
        directory: where the runs are written (`<directory>/wandb/`).
        mode: "offline" or "online".
        project: the W&B project.

    Example:
        >>> runs = WandbRuns("runs/x", "offline", "recsweep")
        >>> runs.start("t1", "trial 1", "x/mf", "mf", {"lr": 0.01})
        >>> runs.log("t1", {"epoch": 1, "val/rmse": 0.95}, {})  # metrics, summary
        >>> runs.finish("t1", 0)
        >>> runs.close()  # the errors met, if any: a W&B error never stops the caller
        []
    """

    def __init__(self, directory: str, mode: str, project: str) -> None:
        import wandb  # here: the driver imports this module but never needs wandb

        self.wandb, self.directory, self.mode, self.project = wandb, directory, mode, project
        self.runs: dict[str, Any] = {}
        self.failed: set[str] = set()  # runs that could not start
        self.errors: list[str] = []

    @contextlib.contextmanager
    def _kept(self, trial_id: str, what: str) -> Iterator[None]:
        try:
            yield
        except Exception as e:  # noqa: BLE001 - tracking must not stop the search
            self.errors.append(f"trial {trial_id}: {what}: {type(e).__name__}: {e}")

    def _open(self, trial_id: str, what: str) -> bool:
        if trial_id not in self.runs and trial_id not in self.failed:
            self.errors.append(f"trial {trial_id}: {what}: no run was started for it")
        return trial_id in self.runs

    def start(self, trial_id: str, name: str, group: str, study: str, config: dict) -> None:
        with self._kept(trial_id, "start"):
            run = self.wandb.init(
                dir=self.directory,
                mode=self.mode,  # type: ignore[arg-type]  # W&B checks it
                project=self.project,
                id=trial_id,
                name=name,
                group=group,
                job_type=study,
                config=config,
                resume="allow",
                reinit="create_new",
                settings=self.wandb.Settings(silent=True),
            )
            run.define_metric("*", step_metric="epoch")  # charts over epochs, not reports
            self.runs[trial_id] = run
        if trial_id not in self.runs:
            self.failed.add(trial_id)  # said once: its rows and end are not errors again

    def log(self, trial_id: str, metrics: dict, summary: dict) -> None:
        if self._open(trial_id, "log"):
            with self._kept(trial_id, "log"):
                self.runs[trial_id].log(metrics)
                self.runs[trial_id].summary.update(summary)

    def finish(self, trial_id: str, exit_code: int) -> None:
        if self._open(trial_id, "finish"):
            with self._kept(trial_id, "finish"):
                self.runs.pop(trial_id).finish(exit_code)

    def close(self) -> list[str]:
        """Finish the runs still open (a search stopped early) and wait until W&B has
        written everything (`run.finish` returns before the last records are on disk, and
        the sweep kills this actor next); the errors met on the way."""
        for trial_id in list(self.runs):
            self.finish(trial_id, 0)
        with self._kept("all", "teardown"):
            self.wandb.teardown()
        return self.errors


def summary_run(
    run_dir: Path, mode: str, project: str, sweep: str, tables: dict[str, Any], models: Path | None
) -> str | None:
    """One W&B run for the whole sweep (job type `summary`, in the sweep's group): each of
    `tables` (name -> DataFrame) as a `wandb.Table`, and the exported models (`models/`:
    ONNX graphs, sidecars, id maps) as a versioned artifact `<sweep>-models` of type
    `model`. Offline runs land in `<run_dir>/wandb/` beside the trials' (`wandb sync`
    uploads them together). Returns an error line, or None; it never raises.
    """
    import wandb

    try:
        run = wandb.init(
            dir=str(run_dir),
            mode=mode,  # type: ignore[arg-type]  # W&B checks it
            project=project,
            group=sweep,
            name=f"{sweep} summary",
            job_type="summary",
            reinit="create_new",
            settings=wandb.Settings(silent=True),
        )
        run.log({name: wandb.Table(dataframe=frame) for name, frame in tables.items()})
        if models is not None and any(models.iterdir()):
            artifact = wandb.Artifact(
                re.sub(r"[^\w.-]", "_", f"{sweep}-models"),
                type="model",
                description=f"the ONNX exports of sweep {sweep}",
            )
            artifact.add_dir(str(models))
            run.log_artifact(artifact)
        run.finish()
        wandb.teardown()  # written to disk before the driver goes on (see WandbRuns.close)
    except Exception as e:  # noqa: BLE001 - tracking must not cost the night's results
        return f"W&B summary run: {type(e).__name__}: {e}"
    return None
