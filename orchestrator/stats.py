"""The numbers a results table shows: a row's mean and std over its seeds and folds, and the
paired tests of each row against its table's best row and best baseline (Holm-corrected).
No Ray here."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.stats

from orchestrator.engine.metrics import lower_is_better
from orchestrator.records import StudyResult


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


def matched(a: StudyResult, b: StudyResult) -> tuple[tuple[np.ndarray, np.ndarray], str]:
    """Two tested rows' units on the folds both have, fold against fold (a row whose re-run
    on a fold failed or was cut by the budget lacks that fold), and a note naming the folds
    left out ("" when none)."""
    mine, theirs = a.fold_units(), b.fold_units()
    common = sorted(set(mine) & set(theirs))
    empty = np.zeros(0)
    pair = (
        np.concatenate([mine[f] for f in common]) if common else empty,
        np.concatenate([theirs[f] for f in common]) if common else empty,
    )
    left = sorted(set(mine) ^ set(theirs))
    note = (
        f"compared on folds {', '.join(str(f + 1) for f in common) or 'none'} "
        f"(fold {', '.join(str(f + 1) for f in left)} tested in one row only)"
        if left
        else ""
    )
    return pair, note


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
                    (units, ref_units), missing = matched(studies[i], studies[ref])
                    if missing:
                        notes[i].append(f"vs {label}: {missing}")
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
        return folds[0] if len(result.runs) > 1 else means(folds[0])
    return aggregate_seeds([means(fold) for fold in folds])


def means(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics without their `_std` companions."""
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
