"""`report.html`: what a sweep found, in one self-contained file that opens offline.

Reads a run directory through `rundir.RunDir` (`results.parquet`, `trials.parquet`,
`history.parquet`, `sweep.yaml`, `checkpoints/`; `optuna.journal`) and writes
`figures/*.png` (plus the UMAP coordinates as CSV) and `report.html` with every figure
embedded as a base64 PNG. The plotting libraries are the `viz` extra and are imported
inside the functions that draw, so the sweep runs without them.

Example:
    >>> write_report("runs/dev", progress=False)  # a sweep's run directory
    PosixPath('runs/dev/report.html')
"""

from __future__ import annotations

import base64
import html
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from orchestrator import plots, results
from orchestrator.data.files import atomic_write, write_text
from orchestrator.journal import JOURNAL, storage
from orchestrator.rundir import CONFIG, HISTORY, RESULTS, TRIALS, NotThisRun, RunDir

if TYPE_CHECKING:
    import optuna

    from orchestrator.data.types import PreparedData
    from orchestrator.models.base import Recommender

VIZ_HINT = "the report needs the viz extra (matplotlib, umap-learn): pip install -e '.[viz]'"
NEEDED = (RESULTS, TRIALS, CONFIG)
MAX_UMAP_ITEMS = 20_000  # the most popular items are mapped when the catalogue is larger
CURVES = 3  # learning curves of this many best trials per study


def write_report(run: str | Path | RunDir, *, progress: bool = True) -> Path | None:
    """Draw the figures and write `report.html` in a run directory; returns its path.

    The sweep passes a `RunDir` holding the prepared data and chosen models it has in
    memory; the `report` command passes the directory, and they are rebuilt from
    `sweep.yaml` and `checkpoints/`.

    Without the `viz` extra it prints what to install on stderr and returns None (so the
    sweep that calls it still finishes). A directory that is not a run directory raises a
    FileNotFoundError naming the missing file.
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    run_dir = run.path
    run.require(*NEEDED)
    missing = plots.missing_viz()
    if missing:
        print(f"report: {', '.join(missing)} not installed; {VIZ_HINT}", file=sys.stderr)
        return None
    start = time.time()

    def say(msg: str) -> None:
        if progress:
            print(f"report: {msg} ({time.time() - start:.1f} s)", flush=True)

    # the figures are drawn into a fresh folder that replaces figures/ once the report is
    # written: until then an earlier report's figures stay, and figures/ never mixes two
    figures = Path(tempfile.mkdtemp(dir=run_dir, prefix=".figures."))
    try:
        out = _report(run, figures, say)
    except BaseException:
        shutil.rmtree(figures, ignore_errors=True)
        raise
    old = run_dir / "figures"
    retired = old.rename(run_dir / f"{figures.name}.old") if old.exists() else None
    figures.rename(old)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
    say(f"wrote {out} and {run_dir / 'figures'}/")
    return out


def _report(run: RunDir, figures: Path, say: Callable[[str], None]) -> Path:
    """The report's body: draw into `figures`, write report.html; returns its path."""
    run_dir, cfg, frame, history = run.path, run.config, run.results, run.history
    notes: list[str] = []
    if history is None:
        notes.append(
            f"{HISTORY} is missing (a sweep from before learning curves were kept): "
            "no learning curves."
        )
    try:
        if not run.holds_data:
            say(f"loading {cfg.data.dataset}")
        data = run.data
    except NotThisRun:
        raise
    except (FileNotFoundError, ValueError) as e:  # e.g. reported on another machine
        data = None
        notes.append(
            f"the dataset of sweep.yaml could not be loaded, so there are no "
            f"data statistics or item maps: {e}"
        )
    parts = [f"<h2>Results</h2>{_table_html(frame, figures, run.by_fold)}"]
    popularity = None
    if data is not None:
        popularity = np.bincount(data.train.item, minlength=data.n_items)  # [n_items]
        activity = np.bincount(data.train.user, minlength=data.n_users)  # [n_users]
        parts.append(
            f"<h2>Data: {html.escape(data.name)}, split {html.escape(data.split_name)}</h2>"
            f"<p>{data.n_users} users, {data.n_items} items, {len(data.train)} / "
            f"{len(data.val)} / {len(data.test)} train / val / test interactions.</p>"
            + _img(plots.plot_popularity(popularity, figures / "data-popularity.png"))
            + _img(plots.plot_activity(activity, figures / "data-activity.png"))
        )
    for study, group in run.trials.groupby("study", sort=False):
        say(f"plots of study {study}")
        # in memory, else its checkpoint's path (or None)
        model: Recommender | Path | None = run.models.get(str(study))
        if model is None:
            model = run.checkpoints.get(str(study))
        parts.append(_study_html(run, figures, str(study), group, data, model, popularity, say))
    if notes:
        parts.insert(
            0, "<ul class='notes'>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"
        )
    out = run_dir / "report.html"
    write_text(out, _page(cfg.name, run_dir, parts))
    return out


def _study_html(
    run: RunDir,
    figures: Path,
    study: str,
    trials: pd.DataFrame,
    data: PreparedData | None,
    model: Recommender | Path | None,
    popularity: np.ndarray | None,
    say: Callable[[str], None],
) -> str:
    """A study's section: its best hyperparameters, Optuna's history and importances, the
    learning curves of its best trials, the UMAP of its items (with the data and model)."""
    from orchestrator.engine.evaluation import monitored_metric

    frame, history = run.results, run.history
    metric, mode = monitored_metric(
        str(trials["task"].iloc[0]), str(trials["metric"].iloc[0]), tuple(run.config.train.ks)
    )
    trials = _in_order(trials)
    out = [f"<h2>Study {html.escape(study)}</h2>"]
    row = frame[frame["study"] == study]
    if len(row) and isinstance(row["hparams"].iloc[0], str):
        out.append(
            f"<p>Best hyperparameters: <code>{html.escape(row['hparams'].iloc[0])}</code></p>"
        )
    searched = _optuna_study(run.path, study)
    if searched is None:
        out.append(
            f"<p>No optimization history or importances: {JOURNAL} is missing (a "
            "sweep from before the Optuna storage).</p>"
        )
    else:
        out.append(_img(plots.optuna_figure("history", searched, figures / f"history-{study}.png")))
        complete = [t for t in searched.trials if t.state.name == "COMPLETE"]
        varied = len({json.dumps(t.params, sort_keys=True) for t in complete}) > 1
        if len(complete) < 3 or not varied:
            why = (
                f"only {len(complete)} complete (pruned trials do not count), 3 needed"
                if len(complete) < 3
                else "no hyperparameter varied across them"
            )
            out.append(f"<p>Parameter importances: not enough trials ({why}).</p>")
        else:
            out.append(
                _img(
                    plots.optuna_figure("importance", searched, figures / f"importance-{study}.png")
                )
            )
    if history is not None:
        best = trials[_finished(trials)].sort_values("best", ascending=mode == "min")
        curves = history[
            (history["study"] == study) & history["trial_id"].isin(best["trial_id"].head(CURVES))
        ]
        if curves["epoch"].nunique() > 1:  # a baseline's one fit draws no curve
            out.append(
                _img(
                    plots.plot_curves(
                        curves,
                        list(best["trial_id"].head(CURVES)),
                        metric,
                        figures / f"curves-{study}.png",
                    )
                )
            )
    if data is not None and popularity is not None and model is not None:  # data: popularity
        out.append(_umap_html(model, study, data, popularity, figures, say))
    return "".join(out)


def _in_order(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials in their study's order of suggestion (`number`; 0 is the defaults trial)."""
    if "number" not in trials.columns:  # a run directory from before trial numbers
        return trials.reset_index(drop=True)
    return trials.sort_values("number", kind="stable").reset_index(drop=True)


def _finished(trials: pd.DataFrame) -> np.ndarray:
    """Trials with a validation value to show (ASHA-stopped ones too)."""
    ended = trials["end"] if "end" in trials.columns else trials["status"]
    return (trials["best"].notna() & (ended != "error")).to_numpy()


def _optuna_study(run_dir: Path, name: str) -> optuna.Study | None:
    """The study's trials as the sweep recorded them for Optuna (None: no journal)."""
    import optuna

    if not (run_dir / JOURNAL).exists():
        return None
    return optuna.load_study(study_name=name, storage=storage(run_dir))


def _umap_html(
    model: Recommender | Path,
    study: str,
    data: PreparedData,
    popularity: np.ndarray,
    figures: Path,
    say: Callable[[str], None],
) -> str:
    """The map of a study's item vectors: `model` in memory (trained on `data`), or the path
    of its checkpoint."""
    import orchestrator.models  # noqa: F401 - registers the models load_model rebuilds
    from orchestrator.models.registry import load_model

    fingerprint = data.fingerprint
    if isinstance(model, Path):
        model, meta = load_model(model)
        fingerprint = meta.get("data_fingerprint") or data.fingerprint
    vectors = model.item_embeddings()
    if vectors is None:
        return ""
    if fingerprint != data.fingerprint or len(vectors) != data.n_items:
        return (
            f"<p>No map of {html.escape(study)}'s items: its checkpoint was trained on "
            "other data than sweep.yaml now loads.</p>"
        )
    if data.n_items < 10:
        return f"<p>No map of {html.escape(study)}'s items: only {data.n_items} items.</p>"
    keep = np.sort(np.argsort(-popularity, kind="stable")[:MAX_UMAP_ITEMS])  # [m]
    note = (
        ""
        if len(keep) == data.n_items
        else f" (the {len(keep)} most popular of {data.n_items} items)"
    )
    say(f"UMAP of {len(keep)} items of {study} ({vectors.shape[1]}-d){note}")
    import umap

    xy = umap.UMAP(
        n_neighbors=min(15, len(keep) - 1), min_dist=0.1, metric="cosine", random_state=0, n_jobs=1
    ).fit_transform(vectors[keep].numpy())  # [m, 2]
    titles = data.item_titles or [""] * data.n_items
    genres = [g.split("|")[0] if g else "" for g in data.item_genres] if data.item_genres else None
    coords = pd.DataFrame(
        {
            "item": data.item_ids[keep],
            "title": [titles[i] for i in keep],
            "genre": [genres[i] for i in keep] if genres else "",
            "popularity": popularity[keep],
            "x": xy[:, 0],
            "y": xy[:, 1],
        }
    )
    with atomic_write(figures / f"umap-items-{study}.csv") as f:
        results.csv_safe(coords).to_csv(f, index=False)
    path = plots.plot_umap(
        coords, f"{study}: UMAP of item embeddings{note}", figures / f"umap-items-{study}.png"
    )
    return _img(path)


def _table_html(frame: pd.DataFrame, figures: Path, by_fold: pd.DataFrame | None) -> str:
    """One HTML table per evaluation, each under its title and what it evaluated; a top-N
    table with catalogue coverage also gets its accuracy against coverage; a sweep over folds
    shows each row's main metric on each fold (`by_fold`)."""
    seeds = frame["seeds"].max() if "seeds" in frame.columns else 1
    note = (
        f"<p>Test metrics are mean ± std over {int(seeds)} seeds where seeds &gt; 1.</p>"
        if seeds and seeds > 1 and by_fold is None
        else ""
    )
    parts = []
    for title, evaluation, group in results.sections(frame):
        table = results.readable(group).to_html(index=False, border=0, classes="results")
        parts.append(
            f"<h3>{html.escape(title)}</h3><p>{html.escape(evaluation)}</p>"
            f"<div class='scroll'>{table}</div>"
        )
        metric = str(group["main_metric"].dropna().iloc[0]) if "main_metric" in group else ""
        if by_fold is not None and metric in by_fold.columns:
            rows = by_fold[by_fold["table"] == group["table"].iloc[0]]
            folds = rows.pivot(index="study", columns="fold", values=metric)
            folds = folds.reindex(index=list(dict.fromkeys(rows["study"])))
            folds = folds[list(dict.fromkeys(rows["fold"]))].map(
                f"{{:.{results.decimals(metric)}f}}".format
            )
            folds.columns.name = None
            parts.append(
                f"<p>{html.escape(metric)} on each fold:</p><div class='scroll'>"
                f"{folds.reset_index().to_html(index=False, border=0, classes='results')}</div>"
            )
        coverage = f"test/coverage@{metric.rpartition('@')[2]}"
        if coverage in group.columns and group[[metric, coverage]].notna().all(axis=1).any():
            rows = group.dropna(subset=[metric, coverage])
            path = figures / f"coverage-{group['table'].iloc[0]}.png"
            parts.append(_img(plots.plot_accuracy_coverage(rows, metric, coverage, path)))
    if "p_vs_best" in frame.columns:
        note += f"<p>{html.escape(results.NOTE)}</p>"
    return "".join(parts) + note


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f"<figure><img alt='{html.escape(path.stem)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{html.escape(path.name)}</figcaption></figure>"
    )


STYLE = """body{font-family:sans-serif;margin:2em;max-width:1100px}
table.results{border-collapse:collapse;font-size:13px} div.scroll{overflow-x:auto}
table.results td,table.results th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
figure{display:inline-block;margin:0.5em} img{max-width:100%} code{font-size:12px}
figcaption{font-size:11px;color:#666}"""


def _page(name: str, run_dir: Path, parts: list[str]) -> str:
    title = f"recsweep report: {html.escape(name)}"
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{STYLE}</style></head><body><h1>{title}</h1>"
        f"<p>{html.escape(str(run_dir.resolve()))}, written "
        f"{time.strftime('%Y-%m-%d %H:%M')}</p>{''.join(parts)}</body></html>\n"
    )
