"""The report's figures, each drawn to a PNG: Optuna's own plots of a study (history,
fANOVA importances), learning curves, the data's popularity and activity, and the UMAP map
of item embeddings. matplotlib (the `viz` extra) is imported inside: callers check
`missing_viz` first.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from orchestrator.data.files import atomic_write

if TYPE_CHECKING:  # matplotlib and Optuna load with the first figure
    import optuna
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

LABELS = 8  # titles written next to the most popular items on the map


def missing_viz() -> list[str]:
    """The `viz` packages that cannot be imported (a `sys.modules` entry of None counts)."""
    missing = []
    for module, package in (("matplotlib", "matplotlib"), ("umap", "umap-learn")):
        try:
            found = importlib.util.find_spec(module) is not None
        except ValueError:  # in sys.modules without a spec
            found = False
        if not found:
            missing.append(package)
    return missing


@functools.cache  # once per process
def compile_umap_in_background() -> None:
    """Start compiling UMAP's numba kernels (seconds, on their first use in a process) in a
    daemon thread, so that the report at the end of a sweep finds them ready: a sweep's
    driver mostly waits on its trials. Any failure here is left for the report to meet."""
    if missing_viz():
        return

    def compile_kernels() -> None:
        try:
            import umap

            points = np.random.default_rng(0).random((32, 4), dtype=np.float32)
            # the report's settings: exact neighbours (< 4096 points), cosine, seeded layout
            umap.UMAP(
                n_neighbors=5, min_dist=0.1, metric="cosine", random_state=0, n_jobs=1, n_epochs=5
            ).fit_transform(points)
        except Exception:  # noqa: BLE001, S110 - the report will say what is wrong
            pass

    threading.Thread(target=compile_kernels, name="umap-compile", daemon=True).start()


def figure(width: float = 6.4, height: float = 4.0) -> Figure:
    # A bare Figure renders through Agg without pyplot's global state or a display.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def whole_x(*axes: Axes) -> None:
    """Ticks at whole numbers only: trials and epochs are counted."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def save(fig: Figure, path: Path) -> Path:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, dpi=110, format="png")
    return path


def optuna_figure(kind: str, study: optuna.Study, path: Path) -> Path:
    """Optuna's own matplotlib figure of a study: its optimization history, or parameter
    importances by fANOVA (seeded) over the complete trials."""
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    fig = optuna_axes(kind, study).figure
    assert isinstance(fig, Figure)  # optuna draws on a pyplot figure's axes, no subfigure
    try:
        return save(fig, path)
    finally:
        plt.close(fig)


def optuna_axes(kind: str, study: optuna.Study) -> Axes:
    """`optuna_figure`'s axes, laid out on a 6.4 x 4 inch figure, the title wrapped to fit
    its width."""
    import textwrap
    import warnings

    from matplotlib.figure import Figure
    from optuna.exceptions import ExperimentalWarning
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import matplotlib as optuna_plots

    with warnings.catch_warnings():  # the matplotlib backend is marked experimental, and
        warnings.simplefilter("ignore", ExperimentalWarning)  # a study with no complete
        warnings.simplefilter("ignore", UserWarning)  # trial has an empty legend
        if kind == "history":
            ax = optuna_plots.plot_optimization_history(study)
        else:
            ax = optuna_plots.plot_param_importances(
                study, evaluator=FanovaImportanceEvaluator(seed=0)
            )
    complete = sum(t.state.name == "COMPLETE" for t in study.trials)
    title = ax.get_title() or ax.get_title(loc="left")  # optuna puts either one
    ax.set_title("")
    full = (
        f"{study.study_name}: {title} ({complete} complete trials"
        f"{', too few to trust' if kind != 'history' and complete < 10 else ''})"
    )
    ax.set_title("\n".join(textwrap.wrap(full, 60)), loc="left", fontsize=10)
    if kind == "history":
        ax.set_ylabel(study.user_attrs.get("metric", "value"))
    fig = ax.figure
    assert isinstance(fig, Figure)  # optuna draws on a pyplot figure's axes, no subfigure
    fig.set_size_inches(6.4, 4.0)
    fig.tight_layout()
    return ax


def plot_curves(curves: pd.DataFrame, order: list[str], metric: str, path: Path) -> Path:
    fig = figure(9.6, 3.6)
    val, loss = fig.subplots(1, 2)
    for rank, trial_id in enumerate(order):
        one = curves[curves["trial_id"] == trial_id].sort_values("epoch")
        label = f"#{rank + 1} {trial_id}"
        if metric in one:
            val.plot(one["epoch"], one[metric], marker="o", label=label)
        if "train/loss" in one:
            loss.plot(one["epoch"], one["train/loss"], marker="o", label=label)
    val.set(xlabel="epoch", ylabel=metric, title=f"{metric} of the best trials")
    loss.set(xlabel="epoch", ylabel="train/loss", title="training loss")
    val.legend()
    whole_x(val, loss)
    return save(fig, path)


def plot_accuracy_coverage(rows: pd.DataFrame, metric: str, coverage: str, path: Path) -> Path:
    """One point per results row (its study named): `coverage` against `metric`."""
    fig = figure(5.6, 4.0)
    ax = fig.add_subplot()
    ax.scatter(rows[coverage], rows[metric])
    for _, row in rows.iterrows():
        ax.annotate(str(row["study"]), (row[coverage], row[metric]), fontsize=8,
                    xytext=(3, 3), textcoords="offset points")  # fmt: skip
    ax.set(xlabel=f"{coverage} (share of the catalogue recommended)", ylabel=metric,
           title="accuracy against catalogue coverage")  # fmt: skip
    return save(fig, path)


def plot_popularity(counts: np.ndarray, path: Path) -> Path:
    fig = figure()
    ax = fig.add_subplot()
    ranked = np.sort(counts)[::-1]  # [n_items]
    ax.plot(np.arange(1, len(ranked) + 1), np.maximum(ranked, 0.5))
    head = ranked.cumsum() / max(ranked.sum(), 1)
    top = int(np.searchsorted(head, 0.5)) + 1
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="item rank",
        ylabel="train interactions",
        title=f"item popularity: the top {top} of {len(ranked)} items hold half the data",
    )
    return save(fig, path)


def plot_activity(counts: np.ndarray, path: Path) -> Path:
    fig = figure()
    ax = fig.add_subplot()
    low = max(counts.min(), 1)
    bins = np.unique(np.geomspace(low, max(counts.max(), low + 1), 40).round())
    ax.hist(np.maximum(counts, 1), bins=bins.tolist())  # the edges (a list, as typed)
    ax.set(
        xscale="log",
        xlabel="train interactions per user",
        ylabel="users",
        title=f"user activity: median {np.median(counts):.0f}, max {counts.max()}",
    )
    return save(fig, path)


def plot_umap(coords: pd.DataFrame, title: str, path: Path) -> Path:
    fig = figure(8.0, 6.4)
    ax = fig.add_subplot()
    size = 3 + 60 * np.sqrt(coords["popularity"] / max(coords["popularity"].max(), 1))
    if coords["genre"].astype(bool).any():
        from matplotlib import colormaps

        for i, genre in enumerate(coords["genre"].value_counts().index):
            one = coords["genre"] == genre  # the 20 commonest genres get colours, others grey
            ax.scatter(
                coords.x[one],
                coords.y[one],
                s=size[one],
                alpha=0.6,
                linewidths=0,
                color=colormaps["tab20"](i) if i < 20 else "lightgray",
                label=genre or "(none)",
            )
        ax.legend(
            title="first genre",
            fontsize=7,
            markerscale=0.7,
            loc="center left",
            bbox_to_anchor=(1, 0.5),
        )
    else:
        ax.scatter(coords.x, coords.y, s=size, alpha=0.6, linewidths=0)
    # Label the most popular items, skipping one whose label would overlap an earlier one.
    span = np.ptp(coords[["x", "y"]].to_numpy(), axis=0) * (0.2, 0.03)
    placed: list[np.ndarray] = []
    for _, row in coords.nlargest(5 * LABELS, "popularity").iterrows():
        at = np.array([row["x"], row["y"]])
        if len(placed) < LABELS and all((abs(at - q) >= span).any() for q in placed):
            placed.append(at)
            ax.annotate(str(row["title"] or row["item"])[:40], (row["x"], row["y"]), fontsize=7)
    ax.set(title=title + "; size = popularity", xticks=[], yticks=[])
    return save(fig, path)
