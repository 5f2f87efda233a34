"""Results tables: one per evaluation, paired tests against the best row and the best
baseline (scipy's t-test, Holm's correction), and n/a with a reason instead of a crash."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from orchestrator import results
from orchestrator.records import ScoredRun, Study, StudyResult, TrialRecord

RATING = "ml-100k, split u1; 5 test ratings"


def rated(
    name: str, units: list[np.ndarray], baseline: bool = False, evaluation: str = RATING
) -> StudyResult:
    """A rating study whose seed runs scored these squared errors."""
    runs = [
        ScoredRun(
            i, {"test/rmse": float(np.sqrt(np.mean(u))), "val/rmse": 1.0}, np.asarray(u, float)
        )
        for i, u in enumerate(units)
    ]
    return StudyResult(
        Study(name, name, "rating", "val/rmse", "min", baseline),
        evaluation=evaluation,
        main_metric="test/rmse",
        runs=runs,
    )


def holm(ps: list[float]) -> list[float]:
    """Holm (1979), step by step: the k-th smallest p times (m - k + 1), kept monotone."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, running = [0.0] * len(ps), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - k) * ps[i]))
        out[i] = running
    return out


def test_paired_tests_are_scipys_holm_corrected_within_the_table() -> None:
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 0.5, 400)
    rows = {
        "best": base * 0.8,
        "close": base * 0.97 + rng.normal(0, 0.05, 400),
        "mid": base * 0.9 + rng.normal(0, 0.05, 400),
        "bias": base,
        "pop": base * 1.1,
    }
    studies = [rated(n, [u], baseline=n in ("bias", "pop")) for n, u in rows.items()]
    frame = results.build(studies).set_index("study")
    raw = {
        n: scipy.stats.ttest_rel(rows[n], rows["best"]).pvalue
        for n in ("close", "mid", "bias", "pop")
    }
    for name, p in zip(raw, holm(list(raw.values())), strict=True):
        assert frame.loc[name, "p_vs_best"] == pytest.approx(p, rel=1e-9)
    raw = {
        n: scipy.stats.ttest_rel(rows[n], rows["bias"]).pvalue
        for n in ("best", "close", "mid", "pop")
    }
    for name, p in zip(raw, holm(list(raw.values())), strict=True):
        assert frame.loc[name, "p_vs_baseline"] == pytest.approx(p, rel=1e-9)
    assert math.isnan(frame.loc["best", "p_vs_best"])
    assert "vs best: is the best" in frame.loc["best", "significance"]
    assert "vs baseline: is the baseline" in frame.loc["bias", "significance"]
    md = results.markdown(results.build(studies))
    assert "(best)" in md and "(baseline)" in md and "(+)" in md and "(-)" in md


def test_seed_runs_are_averaged_per_unit_before_the_test() -> None:
    a1, a2, b = np.array([1.0, 2, 3, 4]), np.array([2.0, 2, 5, 4]), np.array([3.0, 1, 2, 9])
    frame = results.build([rated("a", [a1, a2]), rated("b", [b], baseline=True)])
    want = scipy.stats.ttest_rel((a1 + a2) / 2, b).pvalue
    assert frame.loc[0, "p_vs_baseline"] == pytest.approx(want)
    assert frame.loc[0, "seeds"] == 2 and frame.loc[0, "test/rmse_std"] > 0
    assert "±" in results.markdown(frame)


def test_folds_average_their_seeds_then_show_mean_and_std_over_folds() -> None:
    def on_folds(name: str, folds: list[list[np.ndarray]], baseline: bool = False) -> StudyResult:
        result = rated(name, [u for fold in folds for u in fold], baseline=baseline)
        seeds = [fold for fold, units in enumerate(folds) for _ in units]
        for run, fold in zip(result.runs, seeds, strict=True):
            run.fold = fold
        result.runs.reverse()  # the order runs come in does not matter
        return result

    a = [[np.array([1.0, 2, 3]), np.array([2.0, 2, 5])], [np.array([4.0, 1]), np.array([1.0, 1])]]
    b = [[np.array([3.0, 1, 2])], [np.array([9.0, 2])]]
    studies = [on_folds("a", a), on_folds("b", b, baseline=True)]
    frame = results.build(studies).set_index("study")
    fold_means = [np.mean([np.sqrt(np.mean(u)) for u in fold]) for fold in a]
    assert frame.loc["a", "test/rmse"] == pytest.approx(np.mean(fold_means))
    assert frame.loc["a", "test/rmse_std"] == pytest.approx(np.std(fold_means, ddof=1))
    assert (frame.loc["a", "folds"], frame.loc["a", "seeds"]) == (2, 2)
    # each fold's units averaged over its seeds, then the folds' units side by side
    pooled = np.r_[(a[0][0] + a[0][1]) / 2, (a[1][0] + a[1][1]) / 2]
    assert frame.loc["a", "p_vs_baseline"] == pytest.approx(
        scipy.stats.ttest_rel(pooled, np.r_[b[0][0], b[1][0]]).pvalue
    )
    rows = results.by_fold(studies, ("u1", "u2")).set_index(["study", "fold"])
    assert rows.loc[("a", "u2"), "test/rmse"] == pytest.approx(fold_means[1])
    assert rows.loc[("a", "u2"), "seeds"] == 2 and rows.loc[("b", "u1"), "seeds"] == 1
    assert "test/rmse_std" in rows.columns and np.isnan(rows.loc[("b", "u1"), "test/rmse_std"])


@pytest.mark.parametrize(
    "a, b, why",
    [
        ([1.0], [2.0], "fewer than 2 units"),
        ([1.0, 2.0, 3.0], [2.0, 3.0, 4.0], "all paired differences equal"),
        ([1.0, 1.0], [1.0, 1.0], "all paired differences equal"),
    ],
)
def test_a_test_that_cannot_run_is_na_with_its_reason(a, b, why) -> None:
    frame = results.build([rated("a", [np.array(a)]), rated("b", [np.array(b)], baseline=True)])
    assert frame["p_vs_baseline"].isna().all()
    assert f"n/a ({why})" in " ".join(frame["significance"])
    assert f"n/a ({why})" in results.markdown(frame)


def test_a_table_that_would_mix_evaluations_is_an_error() -> None:
    other = "ml-100k, split u2; 5 test ratings"
    with pytest.raises(
        ValueError,
        match=r"table 'rating' would mix evaluations \(a: .*u1.*; "
        r"b: .*u2",
    ):
        results.build([rated("a", [np.ones(5)]), rated("b", [np.ones(5)], evaluation=other)])


def test_tables_group_by_evaluation_ranking_and_sequential_together() -> None:
    def ranked(name: str, task: str, baseline: bool = False) -> StudyResult:
        run = ScoredRun(0, {"test/ndcg@10": 0.1, "val/ndcg@10": 0.1}, np.linspace(0, 1, 9))
        return StudyResult(
            Study(name, name, task, "val/ndcg@10", "max", baseline),
            evaluation="leave-last; full",
            main_metric="test/ndcg@10",
            runs=[run],
        )

    studies = [
        rated("mf", [np.ones(3)]),
        ranked("neumf", "ranking"),
        ranked("caser", "sequential"),
        rated("bias", [np.ones(3) * 2], baseline=True),
        ranked("pop", "ranking", baseline=True),
    ]
    frame = results.build(studies)
    assert list(frame["study"]) == ["mf", "bias", "neumf", "caser", "pop"]
    assert list(frame["table"]) == ["rating", "rating", "ranking", "ranking", "ranking"]
    md = results.markdown(frame)
    assert md.index("## Rating prediction") < md.index("## Top-N ranking")
    rating, ranking = md.split("## Top-N ranking")
    assert "test/ndcg@10" not in rating and "test/rmse" not in ranking


def test_each_row_says_where_its_chosen_configuration_came_from() -> None:
    def chosen(origin: str) -> TrialRecord:
        return TrialRecord(
            study="s",
            trial_id="t",
            number=1,
            end="epochs",
            message="",
            best=1.0,
            best_epoch=3,
            epochs=3,
            time_s=1.0,
            hparams={"dim": 8},
            seed=0,
            origin=origin,
        )

    mf, autorec = rated("mf", [np.ones(3)]), rated("autorec", [np.ones(3) * 0.5])
    mf.chosen, autorec.chosen = chosen("recipe:surprise-svd"), chosen("search")
    frame = results.build([mf, autorec, rated("bias", [np.ones(3) * 2], baseline=True)])
    assert list(frame["origin"].fillna("")) == ["recipe:surprise-svd", "search", ""]
    header, _, first, second = results.markdown(frame).split("\n")[4:8]
    assert "| origin |" in header and "| recipe:surprise-svd |" in first
    assert "| search |" in second


def test_readable_tables_round_seconds_and_metrics_the_files_keep_every_digit() -> None:
    mf = rated("mf", [np.array([0.8123456, 0.9, 1.1])])
    frame = results.build([mf, rated("bias", [np.ones(3) * 2], baseline=True)])
    frame["time_s"] = [116.9988, np.nan]
    frame["test/arp@10"] = [309.76314, 12.0]
    header, _, first = results.markdown(frame, columns="all").split("\n")[4:7]
    cells = dict(zip(header.strip("| ").split(" | "), first.strip("| ").split(" | "), strict=True))
    assert cells["time_s"] == "117.0" and cells["test/arp@10"] == "309.8"
    assert cells["test/rmse"].startswith(f"{frame['test/rmse'].iloc[0]:.4f} ")
    assert frame["time_s"].iloc[0] == 116.9988  # what csv and parquet get


def test_the_readable_table_holds_the_main_columns_and_every_one_on_request() -> None:
    names = ("hr", "ndcg", "recall", "mrr", "coverage", "gini", "arp", "novelty")
    metrics = {f"test/{m}@{k}": 0.1 for m in names for k in (10, 20)}

    def ranked(name: str, baseline: bool = False) -> StudyResult:
        run = ScoredRun(0, {**metrics, "val/ndcg@10": 0.1}, np.linspace(0, 1, 9))
        return StudyResult(
            Study(name, name, "ranking", "val/ndcg@10", "max", baseline),
            evaluation="leave-last; full",
            main_metric="test/ndcg@10",
            runs=[run],
        )

    frame = results.build([ranked("mf"), ranked("pop", baseline=True)])
    frame = frame.assign(origin=["search", None], time_s=[12.0, None])  # as a sweep's
    main = list(results.readable(frame).columns)
    assert main == [
        "study", "model", "task", "status", "origin", "test/ndcg@10", "test/hr@10",
        "test/recall@10", "test/mrr@10", "p_vs_best", "p_vs_baseline", "time_s",
    ]  # fmt: skip
    assert len(main) <= 14 and "| test/gini@10 |" not in results.markdown(frame)
    every = list(results.readable(frame, "all").columns)
    assert {"test/ndcg@20", "test/coverage@10", "val/ndcg@10"} <= set(every) - set(main)
    header = results.markdown(frame, "all").split("\n")[4]
    assert "| test/gini@10 |" in header and "| test/ndcg@20 |" in header
    with pytest.raises(ValueError, match="--columns 'some': expected main or all"):
        results.readable(frame, "some")


def test_the_header_says_how_ties_count_and_what_was_tested() -> None:
    """The protocol defaults of the field (99 negatives: 100 candidates; ties at their
    expected value; the refit on train + val), each written in the table's header."""
    from orchestrator.config import DataConfig, TrainConfig
    from orchestrator.data import load_dataset
    from orchestrator.finalize import evaluation_name

    data = load_dataset(DataConfig(dataset="synthetic:users=150,items=200,interactions=3000"))
    assert data.test_negatives is not None and data.test_negatives.shape[1] == 99
    cfg = TrainConfig(protocol="sampled")
    assert cfg.refit and cfg.ties == "expected"
    line = evaluation_name("ranking", [data], cfg, "test/ndcg@10")
    assert "each test item among up to 99 fixed negatives" in line
    assert "ties counted at their expected value (random tie-breaking)" in line
    assert "tested after a refit on train + val (the chosen epochs)" in line
    line = evaluation_name("ranking", [data], TrainConfig(ties="pessimistic", refit=False), "m")
    assert "ties counted ahead of the target (pessimistic)" in line and "(no refit)" in line
    assert "ties" not in evaluation_name("rating", [data], cfg, "test/rmse")


def test_rows_missing_different_folds_are_paired_fold_against_fold() -> None:
    """u1..u5 have test sets of one size: a row without fold 3 and another without fold 4
    once paired fold 4 against fold 3. Now only the folds both rows have are compared."""
    rng = np.random.default_rng(0)
    units = {name: [rng.random(6) for _ in range(4)] for name in ("a", "b")}

    def on(name: str, folds: list[int], baseline: bool = False) -> StudyResult:
        result = rated(name, [units[name][f] for f in folds], baseline=baseline)
        for run, fold in zip(result.runs, folds, strict=True):
            run.fold = fold
        return result

    frame = results.build([on("a", [0, 1, 2]), on("b", [0, 1, 3], baseline=True)])
    row = frame.set_index("study").loc["a"]
    want = scipy.stats.ttest_rel(
        np.r_[units["a"][0], units["a"][1]], np.r_[units["b"][0], units["b"][1]]
    ).pvalue
    assert row["p_vs_baseline"] == pytest.approx(want)
    assert "compared on folds 1, 2 (fold 3, 4 tested in one row only)" in row["significance"]
