"""The one place that builds tables: StudyResults -> results.{csv,parquet,md}.

A sweep's results are one table per *evaluation*: rating models (RMSE/MAE) in one, ranking
and sequential models (which rank the same held-out items on the same split and protocol)
in another, each with its baselines. Every row is tested against its table's best row and
best baseline with a paired test on the table's main metric, Holm-corrected within the
table (`stats`). `results.csv`/`.parquet` hold one row per study with a `table` column; `results.md`
one section per table. All trials of all studies live in `trials.parquet` beside them.
They are read back through `rundir.RunDir`; several runs' tables side by side are
`across`'s. No Ray here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.data.files import atomic_write, write_text
from orchestrator.engine.metrics import ERROR_NAMES, RANKING_NAMES, lower_is_better
from orchestrator.records import StudyResult
from orchestrator.rundir import BY_FOLD, HISTORY, RESULTS, TRIALS, UNITS
from orchestrator.stats import aggregate, aggregate_seeds, means, significance

FIRST = [
    "table",
    "study",
    "model",
    "task",
    "baseline",
    "status",
    "origin",
    "metric",
    "trials_done",
    "trials_pruned",
    "trials_failed",
    "epochs",
    "time_s",
    "folds",
    "seeds",
]
LAST = [
    "p_vs_best",
    "p_vs_baseline",
    "significance",
    "main_metric",
    "evaluation",
    "hparams",
    "export",
]
ALPHA = 0.05  # the level of the significance markers in results.md
TABLE_TITLES = {"rating": "Rating prediction", "ranking": "Top-N ranking"}


def build(studies: list[StudyResult]) -> pd.DataFrame:
    """One row per study and baseline, grouped by table (`rating`, `ranking`); metric columns
    (`val/...`, `test/...`) sorted after FIRST, then the significance columns.

    A metric aggregated over seeds, or over folds (`aggregate`), has its mean in
    `test/rmse` and its standard deviation in `test/rmse_std`. Raises a ValueError naming
    the studies when one table would hold rows scored on different evaluations.
    """
    rows = []
    for r in studies:
        folds = r.by_fold()
        row: dict[str, Any] = {
            **_who(r),
            "status": r.status,
            "metric": r.study.metric,
            "trials_done": r.trials_done,
            "trials_pruned": r.trials_pruned,
            "trials_failed": r.trials_failed,
            "seeds": max((len(runs) for runs in folds.values()), default=0),
            "main_metric": r.main_metric,
            "evaluation": r.evaluation,
        }
        if len(folds) > 1:
            row["folds"] = len(folds)
        if r.runs:
            row.update(aggregate(r))
        if r.chosen is not None:
            row.update(
                origin=r.chosen.origin,
                epochs=0 if r.baseline else r.chosen.epochs,  # a baseline trains no epoch
                time_s=r.chosen.time_s,
                hparams=json.dumps(r.chosen.hparams, sort_keys=True),
            )
        elif r.baseline:
            row.update(epochs=0)
        rows.append(row)
    order = {name: i for i, name in enumerate(dict.fromkeys(r.study.table for r in studies))}
    frame = pd.DataFrame(rows)
    if "folds" in frame.columns:  # a row tested on no fold has none
        frame["folds"] = frame["folds"].astype("Int64")
    _check_evaluations(frame)
    frame = frame.assign(**significance(studies)) if len(frame) else frame
    frame = frame.iloc[sorted(range(len(frame)), key=lambda i: order[frame["table"].iloc[i]])]
    metric_cols = sorted(c for c in frame.columns if c.startswith(("val/", "test/")))
    rest = [c for c in frame.columns if c not in FIRST + LAST and c not in metric_cols]
    cols = (
        [c for c in FIRST if c in frame.columns]
        + metric_cols
        + rest
        + [c for c in LAST if c in frame.columns]
    )
    return frame[cols].reset_index(drop=True)


def _check_evaluations(frame: pd.DataFrame) -> None:
    for name, group in frame.groupby("table", sort=False):
        scored = group[group["evaluation"] != ""]
        if scored["evaluation"].nunique() > 1:
            parts = "; ".join(
                f"{', '.join(g['study'])}: {ev}"
                for ev, g in scored.groupby("evaluation", sort=False)
            )
            raise ValueError(
                f"table {name!r} would mix evaluations ({parts}): its rows must be "
                "scored on the same split, protocol, candidates and K"
            )


def by_fold(studies: list[StudyResult], splits: tuple[str, ...]) -> pd.DataFrame:
    """One row per tested row and fold (`fold`: its split), with the fold's metrics (mean
    and std over its seeds): what a table over folds averages (`results_by_fold.*`)."""
    rows = []
    for r in studies:
        for fold, runs in r.by_fold().items():
            metrics = aggregate_seeds([run.metrics for run in runs])
            rows.append(
                {
                    **_who(r),
                    "fold": splits[fold],
                    "seeds": len(runs),
                    **(metrics if len(runs) > 1 else means(metrics)),
                }
            )
    frame = pd.DataFrame(rows)
    metric_cols = sorted(c for c in frame.columns if c.startswith(("val/", "test/")))
    return frame[[c for c in frame.columns if c not in metric_cols] + metric_cols]


def _who(r: StudyResult) -> dict[str, Any]:
    """The columns that name a row: its table, study, model, task and whether a baseline."""
    return {
        "table": r.study.table,
        "study": r.study.name,
        "model": r.study.model,
        "task": r.study.task,
        "baseline": r.baseline,
    }


def write(run_dir: Path, frame: pd.DataFrame, folds: pd.DataFrame | None = None) -> None:
    """The results tables (and, from a sweep over folds, its rows per fold)."""
    save_frame(frame, run_dir / "results.csv")
    save_frame(frame, run_dir / RESULTS)
    write_text(run_dir / "results.md", markdown(frame))
    if folds is not None:
        save_frame(folds, run_dir / "results_by_fold.csv")
        save_frame(folds, run_dir / BY_FOLD)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy whose text cells a spreadsheet cannot run as formulas: a cell that starts with
    = + - @, a tab or a carriage return gets a leading apostrophe (OWASP's rule against CSV
    injection; titles and ids come from data files anyone may have written)."""
    out = frame.copy()
    for col in out.columns:
        if not (
            pd.api.types.is_string_dtype(out[col]) or pd.api.types.is_object_dtype(out[col])
        ):  # numbers, bools, times
            continue
        out[col] = out[col].map(
            lambda v: "'" + v if isinstance(v, str) and v.startswith(FORMULA_STARTS) else v
        )
    return out


def save_frame(frame: pd.DataFrame, path: Path) -> None:
    """A table as `.csv` (formula-safe) or `.parquet`, written atomically."""
    if path.suffix == ".csv":
        with atomic_write(path) as f:
            csv_safe(frame).to_csv(f, index=False)
    else:
        with atomic_write(path, "wb") as f:
            frame.to_parquet(f, index=False)


def write_units(run_dir: Path, studies: list[StudyResult]) -> None:
    """Each tested row's main metric per test unit (averaged over its seeds), what its
    p-values were computed from: `test_units.npz`, one array per study, in the data's order
    (per user for rankings, per rating for ratings), to test other pairs later."""
    with atomic_write(run_dir / UNITS, "wb") as f:
        tested = {r.study.name: u for r in studies if (u := r.units) is not None}  # runs
        np.savez(f, allow_pickle=True, **tested)  # the default, named: no key can be it


def decimals(col: str) -> int:
    """Decimals a readable table shows (the CSV and Parquet files keep every digit):
    seconds 1, popularity counts (ARP) 1, the metrics 4."""
    return 1 if col == "time_s" or col.rsplit("/", 1)[-1].startswith("arp@") else 4


def _cell(frame: pd.DataFrame, row: pd.Series, col: str) -> str:
    value = row[col]
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        std = row.get(f"{col}_std") if f"{col}_std" in frame.columns else None
        places = decimals(col)
        text = f"{value:.{places}f}"
        if std is not None and isinstance(std, float) and not math.isnan(std):
            text += f" ± {std:.{places}f}"
        return text
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "" if value is None or value is pd.NA else str(value)


HIDDEN = ("table", "evaluation", "main_metric", "significance", "hparams", "baseline")


def _p_cell(row: pd.Series, col: str) -> str:
    """A p-value as read: the value, or what the row is / why there is none."""
    label = col.removeprefix("p_vs_")
    p = row.get(col)
    if isinstance(p, float) and not math.isnan(p):
        return f"{p:.2g}" if p >= 1e-4 else "<1e-4"
    note = next(
        (
            n
            for n in str(row.get("significance") or "").split("; ")
            if n.startswith(f"vs {label}: ")
        ),
        "",
    )
    note = note.removeprefix(f"vs {label}: ")
    return f"({label})" if note == f"is the {label}" else note


def readable(frame: pd.DataFrame, columns: str = "main") -> pd.DataFrame:
    """One table for reading (Markdown here, HTML in the report), as strings: `x_std`
    columns fold into `x` as `mean ± std`, p-values read as p or why none, and the main
    metric carries (+) or (-) where it is better or worse than the best baseline at
    p < ALPHA. `columns`: "main" (`main_columns`: at most 14) or "all" (every metric a row
    has, the validation metrics other than the optimised one and the hyperparameters
    left to the CSV/Parquet files)."""
    if columns not in ("main", "all"):
        raise ValueError(f"--columns {columns!r}: expected main or all")
    optimised = set(frame["metric"].dropna()) if "metric" in frame.columns else set()
    cols = [
        c
        for c in frame.columns
        if not c.endswith("_std")
        and c not in HIDDEN
        and not (c.startswith("val/") and c not in optimised)
        and not (c.startswith(("val/", "test/")) and frame[c].isna().all())
    ]
    main = main_columns(frame)
    if columns == "main" and main:
        cols = [c for c in main if c in cols]
    best_base = _best_baseline(frame)
    out = []
    for _, row in frame.iterrows():
        cells = []
        for c in cols:
            text = _p_cell(row, c) if c.startswith("p_vs_") else _cell(frame, row, c)
            p = row.get("p_vs_baseline")
            if (
                c == row.get("main_metric")
                and isinstance(p, float)
                and p < ALPHA
                and best_base is not None
            ):
                lower = lower_is_better(c)
                text += " (+)" if (row[c] < best_base) == lower else " (-)"
            cells.append(text)
        out.append(cells)
    return pd.DataFrame(out, columns=cols)


def main_columns(frame: pd.DataFrame) -> list[str]:
    """The columns a reader looks at first, at most 14: who the row is, the main metric and
    its p-values, the other accuracy metrics at the main metric's K, the seeds and folds
    where there are several, the time and the export. Empty for a frame with no main
    metric (a trials table, or a run from before tables per evaluation)."""
    metric = next(iter(frame["main_metric"].dropna()), "") if "main_metric" in frame else ""
    if not metric:
        return []
    name, _, k = str(metric).removeprefix("test/").partition("@")
    names = ERROR_NAMES if name in ERROR_NAMES else RANKING_NAMES
    others = [f"test/{n}" + (f"@{k}" if k else "") for n in names if n != name]
    several = [c for c in ("folds", "seeds") if c in frame and (frame[c].fillna(1) > 1).any()]
    return [
        "study",
        "model",
        "task",
        "status",
        "origin",
        str(metric),
        *others,
        "p_vs_best",
        "p_vs_baseline",
        *several,
        "time_s",
        "export",
    ]


def _best_baseline(frame: pd.DataFrame) -> float | None:
    """The main metric of the best baseline of a table's rows (None: no baseline)."""
    if "baseline" not in frame.columns or "main_metric" not in frame.columns:
        return None
    bases = frame[frame["baseline"].astype(bool)]
    if not len(bases):
        return None
    metric = str(bases["main_metric"].iloc[0])
    if metric not in bases.columns:  # no baseline was tested
        return None
    values = bases[metric].dropna()
    lower = lower_is_better(metric)
    return None if not len(values) else float(values.min() if lower else values.max())


def sections(frame: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(title, what it evaluated, rows) per table, in the frame's order."""
    if "table" not in frame.columns:  # a run directory from before tables per evaluation
        return [("Results", "", frame)]
    out = []
    for name, group in frame.groupby("table", sort=False):
        scored = group["evaluation"].dropna() if "evaluation" in group.columns else []
        evaluation = next((e for e in scored if e), "")
        out.append((TABLE_TITLES.get(str(name), str(name)), evaluation, group))
    return out


NOTE = (
    f"p: two-sided paired t-test of the main metric per test unit (user or rating) "
    f"against the table's best row and its best baseline, Holm-corrected within the "
    f"table; (+) or (-) after the main metric: better or worse than the best baseline at "
    f"p < {ALPHA}."
)


def markdown(frame: pd.DataFrame, columns: str = "main") -> str:
    """One GitHub-flavoured Markdown section per table of `readable` rows."""
    parts = []
    for title, evaluation, group in sections(frame):
        shown = readable(group, columns)
        lines = [f"## {title}", ""] + ([evaluation, ""] if evaluation else [])
        lines.append(md_table(list(shown.columns), shown.itertuples(index=False)))
        parts.append("\n".join(lines))
    return "\n".join(parts) + ("\n" + NOTE + "\n" if "p_vs_best" in frame.columns else "")


def md_table(header: list[str], rows: Iterable[Iterable[str]]) -> str:
    """A GitHub-flavoured Markdown table (a `|` in a cell escaped), ending in a newline."""

    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |\n"

    return line(header) + "|" + "---|" * len(header) + "\n" + "".join(map(line, rows))


def render(frame: pd.DataFrame, fmt: str = "md", columns: str = "main") -> str:
    """`frame` as `results` prints it: Markdown (its `columns`), or every column as CSV or
    JSON."""
    if fmt == "md":
        return markdown(frame, columns)
    if fmt == "csv":
        return csv_safe(frame).to_csv(index=False)
    if fmt == "json":
        return frame.to_json(orient="records")
    raise ValueError(f"--format {fmt!r}: expected md, csv or json")


def write_trials(run_dir: Path, trials: pd.DataFrame, curves: pd.DataFrame | None = None) -> None:
    """All trials of all studies as one table (`trials.parquet`, `trials.csv`), and every
    trial's per-epoch metrics (`history.parquet`: the learning curves)."""
    save_frame(trials, run_dir / TRIALS)
    save_frame(trials, run_dir / "trials.csv")
    if curves is not None:
        save_frame(curves, run_dir / HISTORY)


def study_metrics(frame: pd.DataFrame | None, study: str) -> dict[str, float] | None:
    """A study's finite `val/...` and `test/...` cells of a results table (None: no table,
    or no row for the study)."""
    if frame is None or study not in set(frame["study"]):
        return None
    row = frame[frame["study"] == study].iloc[0]
    return {
        c: float(row[c])
        for c in frame.columns
        if c.startswith(("val/", "test/"))
        and isinstance(row[c], (int, float))
        and np.isfinite(row[c])
    }


def with_column(frame: pd.DataFrame, name: str, values: dict[str, Any]) -> pd.DataFrame:
    """A copy of a results table with column `name` set for the studies in `values` (the
    others keep their cell, empty when the column is new): the export's outcome.

    Raises a ValueError naming a study that is not in the table.
    """
    unknown = sorted(set(values) - set(frame["study"]))
    if unknown:
        raise ValueError(f"the results table has no row for study(ies) {unknown}")
    column = (
        frame[name].astype(object)
        if name in frame.columns
        else pd.Series([None] * len(frame), index=frame.index, dtype=object)
    )
    for study, value in values.items():
        column[frame["study"] == study] = value
    return frame.assign(**{name: column})
