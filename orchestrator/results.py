"""The one place that builds tables: StudyResults -> results.{csv,parquet,md}.

A sweep's results are one table per *evaluation*: rating models (RMSE/MAE) in one, ranking
and sequential models (which rank the same held-out items on the same split and protocol)
in another, each with its baselines. Every row is tested against its table's best row and
best baseline with a paired test on the table's main metric, Holm-corrected within the
table. `results.csv`/`.parquet` hold one row per study with a `table` column; `results.md`
one section per table. All trials of all studies live in `trials.parquet` beside them.
They are read back through `rundir.RunDir`. No Ray here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats

from orchestrator.data.files import atomic_write, write_text
from orchestrator.engine.metrics import lower_is_better
from orchestrator.records import StudyResult
from orchestrator.rundir import BY_FOLD, HISTORY, RESULTS, TRIALS, UNITS

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
                epochs=r.chosen.epochs,
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


def paired_test(a: np.ndarray, b: np.ndarray) -> tuple[float, str]:
    """Two-sided paired t-test (scipy's `ttest_rel`) of two models' values on the same units
    (users or ratings); returns (p, "") or (NaN, why it cannot run).

    Why a t-test and not Wilcoxon's signed-rank test: the tables report means over units
    (mean NDCG over users, mean squared error under RMSE), and the t-test asks exactly
    whether the mean difference is zero, which the central limit theorem makes reliable at
    the hundreds to millions of units a test split has; Wilcoxon tests the median of the
    differences (zero for most users when most get no hit), a different question.
    (Urbano, Lima & Hanjalic, "Statistical Significance Testing in Information Retrieval",
    SIGIR 2019, found the t-test the best-behaved of the common tests.)
    """
    if len(a) != len(b):
        return math.nan, f"different units ({len(a)} vs {len(b)})"
    if len(a) < 2:
        return math.nan, "fewer than 2 units"
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if np.ptp(diff) == 0:
        return math.nan, "all paired differences equal"
    return float(scipy.stats.ttest_rel(a, b).pvalue), ""


def significance(studies: list[StudyResult]) -> dict[str, list[Any]]:
    """Per row, the paired test of its main metric against its table's best row and its
    table's best baseline, Holm-corrected over the rows of the table (each column a family of
    its own): columns `p_vs_best`, `p_vs_baseline` and `significance` (why a p is n/a)."""
    from statsmodels.stats.multitest import multipletests

    p_best, p_base = [math.nan] * len(studies), [math.nan] * len(studies)
    notes: list[list[str]] = [[] for _ in studies]
    for name in dict.fromkeys(r.study.table for r in studies):
        rows = [i for i, r in enumerate(studies) if r.study.table == name]
        scored = [i for i in rows if studies[i].runs]
        if not scored:
            continue
        metric = studies[scored[0]].main_metric
        lower = lower_is_better(metric)

        def value(i: int, metric: str = metric) -> float:
            return aggregate(studies[i])[metric]

        pick = min if lower else max
        best = pick(scored, key=value)
        bases = [i for i in scored if studies[i].baseline]
        base = pick(bases, key=value) if bases else None
        for column, ref, label in ((p_best, best, "best"), (p_base, base, "baseline")):
            family: dict[int, float] = {}
            for i in rows:
                if ref is None:
                    notes[i].append(f"vs {label}: no baseline in the table")
                elif i == ref:
                    notes[i].append(f"vs {label}: is the {label}")
                elif not studies[i].runs:
                    notes[i].append(f"vs {label}: not tested")
                else:
                    units, ref_units = studies[i].units, studies[ref].units
                    assert units is not None and ref_units is not None  # both have runs
                    p, why = paired_test(units, ref_units)
                    if why:
                        notes[i].append(f"vs {label}: n/a ({why})")
                    else:
                        family[i] = p
            if family:
                corrected = multipletests(list(family.values()), method="holm")[1]
                for i, p in zip(family, corrected, strict=True):
                    column[i] = float(p)
    return {
        "p_vs_best": p_best,
        "p_vs_baseline": p_base,
        "significance": ["; ".join(n) for n in notes],
    }


def aggregate(result: StudyResult) -> dict[str, float]:
    """A tested row's metrics: on one fold, the mean and std over its seeds (no std for a
    single run); over folds, the mean and std over folds of each fold's seed mean."""
    folds = [aggregate_seeds([run.metrics for run in runs]) for runs in result.by_fold().values()]
    if len(folds) == 1:
        return folds[0] if len(result.runs) > 1 else _means(folds[0])
    return aggregate_seeds([_means(fold) for fold in folds])


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
                    **(metrics if len(runs) > 1 else _means(metrics)),
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


def _means(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.endswith("_std")}


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


def readable(frame: pd.DataFrame) -> pd.DataFrame:
    """One table for reading (Markdown here, HTML in the report), as strings: `x_std`
    columns fold into `x` as `mean ± std`, p-values read as p or why none, and the main
    metric carries (+) or (-) where it is better or worse than the best baseline at
    p < ALPHA;
    validation metrics other than the optimised one, metrics no row has, and the
    hyperparameters are left to the CSV/Parquet files."""
    optimised = set(frame["metric"].dropna()) if "metric" in frame.columns else set()
    cols = [
        c
        for c in frame.columns
        if not c.endswith("_std")
        and c not in HIDDEN
        and not (c.startswith("val/") and c not in optimised)
        and not (c.startswith(("val/", "test/")) and frame[c].isna().all())
    ]
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


def markdown(frame: pd.DataFrame) -> str:
    """One GitHub-flavoured Markdown section per table of `readable` rows."""
    parts = []
    for title, evaluation, group in sections(frame):
        shown = readable(group)
        lines = [f"## {title}", ""] + ([evaluation, ""] if evaluation else [])
        lines.append(_md_table(list(shown.columns), shown.itertuples(index=False)))
        parts.append("\n".join(lines))
    return "\n".join(parts) + ("\n" + NOTE + "\n" if "p_vs_best" in frame.columns else "")


def _md_table(header: list[str], rows: Iterable[Iterable[str]]) -> str:
    """A GitHub-flavoured Markdown table (a `|` in a cell escaped), ending in a newline."""

    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |\n"

    return line(header) + "|" + "---|" * len(header) + "\n" + "".join(map(line, rows))


def render(frame: pd.DataFrame, fmt: str = "md") -> str:
    if fmt == "md":
        return markdown(frame)
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


def across_runs(runs: dict[str, pd.DataFrame], fmt: str) -> str:
    """One table per evaluation kind (rating, top-N) over several runs' results tables
    (label -> frame, the label naming the run's dataset and split): the studies as rows,
    one column group per run with its test metrics as in its own table (mean ± std, and
    (+)/(-) against its best baseline), the best value of each column in bold. `fmt`:
    md, latex (pandas' Styler, booktabs rules) or csv. Runs whose tables of one kind hold
    different metrics (another K, another task) cannot be aligned: a ValueError names them."""
    kinds: dict[str, list[tuple[str, pd.DataFrame]]] = {}
    for label, frame in runs.items():
        for name, group in frame.groupby("table", sort=False):
            kinds.setdefault(str(name), []).append((label, group))
    parts = []
    for kind, groups in kinds.items():
        metrics = {label: _test_metrics(group) for label, group in groups}
        (first, want), *rest = metrics.items()
        for label, have in rest:
            if have != want:
                raise ValueError(
                    f"results: the {TABLE_TITLES.get(kind, kind)} tables of {first} and "
                    f"{label} cannot be aligned: {first} has {want}, {label} has {have}"
                )
        text, best = _aligned(groups, want)
        title = TABLE_TITLES.get(kind, kind)
        if fmt == "csv":
            flat = text.copy()
            flat.columns = [f"{label}: {metric}" for label, metric in text.columns]
            parts.append(
                flat.rename_axis("study").reset_index().assign(table=kind).to_csv(index=False)
            )
        elif fmt == "latex":
            parts.append(f"% {title}\n" + _latex(text, best))
        elif fmt == "md":
            header = ["study"] + [f"{label}: {metric}" for label, metric in text.columns]
            rows = [
                [str(study)] + [f"**{v}**" if best.loc[study, c] else v for c, v in row.items()]
                for study, row in text.iterrows()
            ]
            parts.append("\n".join([f"## {title}", "", _md_table(header, rows)]))
        else:
            raise ValueError(f"--format {fmt!r}: expected md, latex or csv for several runs")
    note = "\nBold: the best value of its column; (+)/(-) and p as in each run's own table.\n"
    return "\n".join(parts) + (note if fmt == "md" else "")


def _test_metrics(group: pd.DataFrame) -> list[str]:
    return [
        c
        for c in group.columns
        if c.startswith("test/") and not c.endswith("_std") and group[c].notna().any()
    ]


def _aligned(
    groups: list[tuple[str, pd.DataFrame]], metrics: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cells as text (`readable`'s) and where each column's best value is, studies as
    rows in order of first appearance, (run label, metric) columns."""
    text, value = {}, {}
    for label, group in groups:
        shown = readable(group).set_index(group["study"].to_numpy())
        for metric in metrics:
            text[label, metric] = shown[metric]
            value[label, metric] = group.set_index("study")[metric].astype(float)
    text_frame = pd.DataFrame(text).fillna("")
    values = pd.DataFrame(value).reindex(text_frame.index)
    best = pd.DataFrame(False, index=values.index, columns=values.columns)
    for col in values.columns:
        column = values[col]
        if column.notna().any():
            top = column.min() if lower_is_better(col[1]) else column.max()
            best[col] = column == top
    return text_frame, best


def _latex(text: pd.DataFrame, best: pd.DataFrame) -> str:
    """A booktabs tabular through pandas' Styler: column groups per run, best in bold."""

    def cell(value: str) -> str:
        escaped = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in value)
        return escaped.replace("±", r"$\pm$")

    frame = text.copy()
    frame.columns = pd.MultiIndex.from_tuples(
        [(cell(label), cell(metric)) for label, metric in text.columns]
    )
    frame.index = [cell(str(s)) for s in text.index]
    props = pd.DataFrame(
        np.where(best.to_numpy(), "textbf:--rwrap;", ""), index=frame.index, columns=frame.columns
    )
    styler = frame.style.format(cell).apply(lambda _: props, axis=None)
    return styler.to_latex(
        hrules=True, multicol_align="c", column_format="l" + "r" * len(frame.columns)
    )


_LATEX_ESCAPES = {c: "\\" + c for c in "&%$#_{}"} | {
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
    "\\": r"\textbackslash{}",
}
