"""The one place that builds tables: best trial per study, baselines, seeds -> results.*

Rows are plain dicts made by the sweep (one per study or baseline); this module turns them
into a DataFrame, writes `results.{csv,parquet,md}`, and reads them back for the `results`
command. All trials of all studies live in `trials.parquet` beside them. No Ray here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

FIRST = ["study", "model", "task", "status", "metric", "trials_done", "trials_failed",
         "epochs", "time_s", "seeds"]


def table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per study/baseline; metric columns (`val/...`, `test/...`) sorted after FIRST.

    A metric aggregated over seeds has its mean in `test/rmse` and its standard deviation in
    `test/rmse_std`.
    """
    frame = pd.DataFrame(rows)
    metrics = sorted(c for c in frame.columns if c.startswith(("val/", "test/")))
    rest = [c for c in frame.columns if c not in FIRST and c not in metrics]
    return frame[[c for c in FIRST if c in frame.columns] + metrics + rest]


def aggregate_seeds(runs: list[dict[str, float]]) -> dict[str, float]:
    """Mean and sample std (`<key>_std`) of each metric over seeded runs."""
    out: dict[str, float] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if not values:
            continue
        mean = sum(values) / len(values)
        out[key] = mean
        var = sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
        out[f"{key}_std"] = math.sqrt(var)
    return out


def write(run_dir: Path, frame: pd.DataFrame) -> None:
    frame.to_csv(run_dir / "results.csv", index=False)
    frame.to_parquet(run_dir / "results.parquet", index=False)
    (run_dir / "results.md").write_text(markdown(frame))


def load(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / "results.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results table; is {run_dir} a finished sweep's run "
                                "directory?")
    return pd.read_parquet(path)


def load_trials(run_dir: str | Path) -> pd.DataFrame:
    """Every trial of every study (one row per trial, its last and best metrics)."""
    path = Path(run_dir) / "trials.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no trials; is {run_dir} a sweep's run directory?")
    return pd.read_parquet(path)


def _cell(frame: pd.DataFrame, row: pd.Series, col: str) -> str:
    value = row[col]
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        std = row.get(f"{col}_std") if f"{col}_std" in frame.columns else None
        text = f"{value:.4f}"
        if std is not None and isinstance(std, float) and not math.isnan(std):
            text += f" ± {std:.4f}"
        return text
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "" if value is None else str(value)


def readable(frame: pd.DataFrame) -> pd.DataFrame:
    """The table for reading (Markdown here, HTML in the report), as strings: `x_std` columns
    fold into `x` as `mean ± std`; validation metrics other than the optimised one and the
    hyperparameters are left to the CSV/Parquet files."""
    optimised = set(frame["metric"].dropna()) if "metric" in frame.columns else set()
    cols = [c for c in frame.columns if not c.endswith("_std") and c != "hparams"
            and not (c.startswith("val/") and c not in optimised)]
    return pd.DataFrame([[_cell(frame, row, c) for c in cols] for _, row in frame.iterrows()],
                        columns=cols)


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of `readable(frame)`."""
    shown = readable(frame)
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    for cells in shown.itertuples(index=False):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def render(frame: pd.DataFrame, fmt: str = "md") -> str:
    if fmt == "md":
        return markdown(frame)
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "json":
        return frame.to_json(orient="records")
    raise ValueError(f"--format {fmt!r}: expected md, csv or json")


def write_trials(run_dir: Path, rows: list[dict[str, Any]],
                 histories: list[pd.DataFrame] | None = None) -> None:
    """All trials of all studies as one table (`trials.parquet`, `trials.csv`), and every
    trial's per-epoch metrics (`history.parquet`: the learning curves)."""
    frame = pd.DataFrame(rows)
    frame.to_parquet(run_dir / "trials.parquet", index=False)
    frame.to_csv(run_dir / "trials.csv", index=False)
    if histories:
        pd.concat(histories, ignore_index=True).to_parquet(run_dir / "history.parquet",
                                                           index=False)


def add_column(run_dir: str | Path, name: str, values: dict[str, Any]) -> pd.DataFrame:
    """Set column `name` of `results.*` for the studies in `values` (others keep their cell,
    empty when the column is new) and write the table again. Used by the ONNX export.

    Raises a ValueError naming a study that is not in the table.
    """
    frame = load(run_dir)
    unknown = sorted(set(values) - set(frame["study"]))
    if unknown:
        raise ValueError(f"{Path(run_dir) / 'results.parquet'}: no row for study(ies) {unknown}")
    column = frame[name].astype(object) if name in frame.columns \
        else pd.Series([None] * len(frame), index=frame.index, dtype=object)
    for study, value in values.items():
        column[frame["study"] == study] = value
    frame[name] = column
    write(Path(run_dir), frame)
    return frame
