"""A sweep's chosen models to `models/` as verified ONNX (`export.export_model` for each):
`export_results` in the sweep, from the models `finalize` tested (in memory);
`export_run` for the `export` command, from a run directory's checkpoints (`RunDir`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from orchestrator.data.types import PreparedData
from orchestrator.export import export_model
from orchestrator.models.base import Recommender
from orchestrator.rundir import RESULTS, RunDir


def export_study(
    model: Recommender | Path,
    saved: dict[str, Any],
    metrics: dict[str, float] | None,
    data: PreparedData,
    run_dir: Path,
    study: str,
    k: int,
) -> str:
    """Export one study's chosen model (or the checkpoint at that path) to
    `run_dir/models/<study>.onnx` with `metrics` (None: the checkpoint's own) and `saved`
    (what its checkpoint holds beside the weights) in the sidecar. Returns "ok" or
    "failed: <why>"; an earlier valid export of the study stays in place, and says so."""
    from orchestrator.models.registry import load_model

    try:
        if isinstance(model, Path):
            path = model
            model, meta = load_model(path)
            saved = {"checkpoint": str(path), **meta}
            if meta.get("study", study) != study:
                raise ValueError(
                    f"{path}: a checkpoint of study {meta['study']!r} ({model.name}, "
                    f"{model.task}), not of {study!r}"
                )
        fingerprint = saved.get("data_fingerprint")
        if fingerprint and fingerprint != data.fingerprint:
            raise ValueError(
                f"{saved.get('checkpoint', study)}: trained on data "
                f"{fingerprint[:12]}, but sweep.yaml now prepares "
                f"{data.fingerprint[:12]} (data changed?)"
            )
        if metrics is None:
            metrics = dict(saved.get("metrics") or {})
        export_model(
            model,
            data,
            run_dir / "models" / f"{study}.onnx",
            metrics=metrics,
            k=k,
            extra_meta=saved,
        )
        return "ok"
    except Exception as e:  # noqa: BLE001 - each study's failure is recorded, not fatal
        print(f"export: {study}: FAILED: {e}", file=sys.stderr, flush=True)
        kept = (run_dir / "models" / f"{study}.json").exists()
        return f"failed: {e}" + ("; models/ keeps the earlier export of this study" if kept else "")


def export_results(
    run_dir: Path, studies: list[Any], frame: Any, data: PreparedData, k: int = 10
) -> dict[str, str]:
    """The sweep's export: each study's chosen model as `finalize` tested it (in memory, no
    checkpoint read back), with its metrics from the results table `frame`. Returns
    {study: "ok" | "failed: <reason>"}."""
    from orchestrator.results import study_metrics

    return {
        r.study.name: export_study(
            r.runs[0].model,
            r.runs[0].saved,
            study_metrics(frame, r.study.name),
            data,
            run_dir,
            r.study.name,
            k,
        )
        for r in studies
        if r.runs and r.runs[0].model is not None
    }


def export_run(run_dir: str | Path, study: str | None = None, *, k: int = 10) -> dict[str, str]:
    """The `export` command: export the best checkpoint of every study of a sweep (or of
    one) to `models/`, from the run directory.

    Reads `checkpoints/<study>.pt` (seed re-runs are skipped), rebuilds the data from
    `sweep.yaml`, exports and verifies each, and records the outcome in the `export` column
    of `results.*` when the table exists. One study failing does not stop the others.

    Args:
        run_dir: the sweep's run directory.
        study: export only this study.
        k: K of the top-K parity check.

    Returns:
        {study: "ok" | "failed: <reason>"}; the caller decides how loud to be (the CLI
        exits non-zero when any failed).

    Raises:
        ValueError: no checkpoints at all, or `study` has none.
        FileNotFoundError: no `sweep.yaml`.
    """
    import orchestrator.models  # noqa: F401 - registers every model, so checkpoints can name them
    from orchestrator import results

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"-k {k!r}: expected an integer >= 1")
    run = RunDir(run_dir)
    checkpoints, folder = run.checkpoints, run.path / "checkpoints"
    if not checkpoints:
        raise ValueError(
            f"{run.path}: no checkpoints ({folder}/<study>.pt): no study of this "
            "run finished a trial, so there is nothing to export"
        )
    if study is not None:
        if study not in checkpoints:
            raise ValueError(
                f"--study {study!r}: no checkpoint {folder / (study + '.pt')}; "
                f"studies with one: {', '.join(checkpoints)}"
            )
        checkpoints = {study: checkpoints[study]}
    table = run.results if (run.path / RESULTS).exists() else None
    statuses = {
        name: export_study(
            path, {}, results.study_metrics(table, name), run.data, run.path, name, k
        )
        for name, path in checkpoints.items()
    }
    if table is not None:
        known = set(table["study"])
        results.write(
            run.path,
            results.with_column(table, "export", {s: v for s, v in statuses.items() if s in known}),
        )
    return statuses
