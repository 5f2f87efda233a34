"""Tune's results of an experiment -> `TrialRecord`s, read once: each trial's end (finished,
stopped by ASHA or from outside, failed), its best epoch and value from its own result log,
and its learning curve."""

from __future__ import annotations

import json
import os
from typing import Any

import pandas as pd

from orchestrator.engine.metrics import lower_is_better
from orchestrator.records import TRIAL, TrialRecord, TrialSpec


def configured(grid: Any) -> list[Any]:
    """The results of the trials Tune gave a config. One it created but never configured
    (a resume after a signal once met one) never ran: it is named and left out."""
    out = []
    for res in grid:
        if isinstance(res.config, dict) and TRIAL in res.config:
            out.append(res)
        else:
            print(
                f"search: {res.path}: a trial Tune created but never configured (it never "
                "ran): left out",
                flush=True,
            )
    return out


def trial_records(grid: Any, interrupted: bool) -> list[TrialRecord]:
    """One TrialRecord per Tune result, in the grid's order. `interrupted`: the experiment
    was ended from outside (Ctrl-C, the time budget), which stops its running trials."""
    out = []
    for res in grid:
        spec, hparams = TrialSpec.split(res.config)
        metric = spec.train.metric
        history = trial_history(res)
        last = res.metrics or {}
        best, best_epoch = None, 0
        if history is not None and metric in history:
            values = history[metric]
            if values.notna().any():
                at = values.idxmin() if lower_is_better(metric) else values.idxmax()
                best, best_epoch = float(values[at]), int(history["epoch"][at])
        status, epoch = last.get("status"), int(last.get("epoch", 0) or 0)
        if res.error:
            end = "error"
        elif status in ("epochs", "early_stopped", "diverged"):
            end = status
        elif status is None:
            end = "pending"
        else:  # stopped from outside while running: by the scheduler, unless the whole
            # experiment was interrupted; then Tune's `done` (a documented auto-filled key)
            # marks the results its scheduler stopped before that
            end = "asha" if last.get("done") or not interrupted else "interrupted"
        message = str(res.error).splitlines()[0] if res.error else last.get("message", "")
        out.append(
            TrialRecord(
                study=spec.study,
                trial_id=last.get("trial_id", os.path.basename(str(res.path))),
                number=spec.number,
                end=end,
                message=message,
                best=best,
                best_epoch=best_epoch,
                epochs=epoch,
                time_s=float(last.get("time_total_s", 0.0) or 0.0),
                hparams=hparams,
                seed=spec.train.seed,
                checkpoint=res.checkpoint,
                path=str(res.path),
                node=str(last.get("node", "")),
                origin=spec.origin,
                fold=spec.fold,
            )
        )
    return out


def trial_history(res: Any) -> pd.DataFrame | None:
    """The results a trial reported, in order, as one lineage, from its `result.json` (the
    log of every result Tune writes in the trial's folder). A trial restored from a
    checkpoint (a lost node, `--resume`) reports again from the epoch after it: the rows its
    earlier run reported from that epoch on are dropped, as no checkpoint holds those
    weights. A line that a crash cut short is skipped and named (Tune's `metrics_dataframe`
    would drop the trial's whole history)."""
    path = f"{res.path}/result.json"
    try:
        with res.filesystem.open_input_stream(path) as f:
            lines = f.readall().decode().splitlines()
    except FileNotFoundError:
        return None
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            print(
                f"search: {path}, line {number}: not a whole JSON result (a write cut "
                "short by a crash): skipped",
                flush=True,
            )
            continue
        if "epoch" in row:
            rows = [r for r in rows if r.get("epoch", -1) < row["epoch"]]
        rows.append({k: v for k, v in row.items() if not isinstance(v, dict)})
    return pd.DataFrame(rows) if rows else None


def epoch_history(res: Any) -> pd.DataFrame | None:
    """A trial's per-epoch metrics (the learning curve), tagged with its study and id."""
    frame = trial_history(res)
    if frame is None:
        return None
    keep = [
        c
        for c in frame.columns
        if c.startswith(("val/", "train/")) or c in ("epoch", "trial_id", "time_total_s")
    ]
    return frame[keep].assign(study=TrialSpec.split(res.config)[0].study)
