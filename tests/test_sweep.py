"""The sweep on a real local Ray cluster: the suite's smoke run (conftest's `smoke_run`) read
end to end (tables, trials, Optuna's storage, W&B offline, exports, every command on it),
and a run directory checked before it is believed."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from helpers import SECRET, run_cli
from helpers import SMOKE_STUDIES as STUDIES
from wandb_log import wandb_run

from orchestrator.cli import main
from orchestrator.rundir import RunDir

pytestmark = pytest.mark.sweep  # the smoke run, and commands run on it
BASELINES = ["bias", "itemknn", "ease", "rp3beta", "puresvd", "ials"]  # searched, as studies


@pytest.fixture
def cli(capsys: pytest.CaptureFixture) -> Callable[..., SimpleNamespace]:
    """The command line in-process (`main`), answering as `run_cli` does: where a test needs
    no process of its own (the project-folder test runs every command as a user does)."""

    def run(*args: str) -> SimpleNamespace:
        code = main(list(args))
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


def test_smoke_tables_compare_like_with_like_and_hold_a_baseline(smoke_run: Path) -> None:
    table = pd.read_csv(smoke_run / "results.csv")
    assert list(table["study"]) == STUDIES
    assert (table["status"] == "ok").all(), table[["study", "status"]]
    assert list(table["table"]) == ["rating"] * 3 + ["ranking"] * 9
    for name, group in table.groupby("table"):
        assert group["baseline"].any(), name  # every table has a baseline row
        assert group["evaluation"].nunique() == 1 and group["main_metric"].nunique() == 1
    rating = table[table["table"] == "rating"]
    assert ((rating["test/rmse"] > 0) & (rating["test/rmse"] < 4)).all()
    assert rating[["test/ndcg@10"]].isna().all().all()  # no ranking metric in that table
    ranked = table[table["table"] == "ranking"]
    for col in ("test/hr@10", "test/ndcg@10", "val/ndcg@10"):
        assert ranked[col].between(0, 1).all(), col
    searched = table[table["study"] != "pop"]  # the baselines' searches too; pop: one fit
    assert (searched["trials_done"] + searched["trials_pruned"] == 2).all()
    assert table.set_index("study").loc["pop", "trials_done"] == 1
    # each row is tested against its table's best row and best baseline, or says why not
    for _, row in table.iterrows():
        for col, label in (("p_vs_best", "best"), ("p_vs_baseline", "baseline")):
            p = row[col]
            assert 0 <= p <= 1 or f"vs {label}: " in row["significance"], (row["study"], col)
    units = RunDir(smoke_run).units
    assert set(units) == set(STUDIES)
    test_rows = json.loads((smoke_run / "data.json").read_text())["split"]["test"]
    assert {len(u) for u in units.values()} == {test_rows}  # leave-last: one per user
    md = (smoke_run / "results.md").read_text(encoding="utf-8")
    assert md.startswith("## Rating prediction\n") and "## Top-N ranking" in md
    assert "paired t-test" in md and "(baseline)" in md


def test_smoke_search_starts_from_the_defaults_and_asha_compares_rungs(smoke_run: Path) -> None:
    from orchestrator.models.registry import make_params

    trials = pd.read_parquet(smoke_run / "trials.parquet")
    resolved = yaml.safe_load((smoke_run / "sweep.yaml").read_text())
    assert resolved["startup_trials"] == 2  # min(10, max(2, 2 // 4))
    for study, group in trials.groupby("study"):
        first = group[group["number"] == 0]
        assert len(first) == 1, study
        defaults = make_params(first["model"].iloc[0], first["task"].iloc[0])
        hparams = json.loads(first["hparams"].iloc[0])
        searched = {k: v for k, v in hparams.items() if k != "epochs"}
        assert searched and all(getattr(defaults, k) == v for k, v in searched.items()), study
        assert first["end"].iloc[0] in ("epochs", "early_stopped")  # ASHA never stops it
        rungs = resolved["schedule"][study]["rungs"]
        # grace a quarter of 2 epochs (at least 1), factor 2; a baseline's one fit: 1
        assert rungs == ([1] if study in BASELINES else [1, 2]), study
    assert set(trials["end"]) <= {"epochs", "early_stopped", "asha"}
    assert (trials.loc[trials["end"] == "asha", "epochs"] == 1).all()  # at the rung
    # the defaults, then the recipes (2 trials: the first recipe); caser's is its defaults
    origins = trials.sort_values("number").groupby("study")["origin"].agg(list).to_dict()
    assert origins == {
        "mf": ["defaults", "recipe:surprise-svd"],
        "autorec": ["defaults", "recipe:sedhain2015"],
        "mf-ranking": ["defaults", "recipe:he2017-gmf"],
        "neumf": ["defaults", "recipe:he2017"],
        "caser": ["defaults", "search"],
        "ials": ["defaults", "recipe:rendle2022"],
        **{b: ["defaults", "search"] for b in BASELINES if b != "ials"},
    }
    assert resolved["sampler"] == {
        "name": "tpe",
        "seed": 0,
        "n_startup_trials": 2,
        "n_ei_candidates": 24,
        "multivariate": True,
        "group": False,
        "constant_liar": True,
    }
    table = pd.read_parquet(smoke_run / "results.parquet").set_index("study")
    for study, group in trials.groupby("study"):  # each row names its chosen trial's origin
        assert table.loc[study, "origin"] in set(group["origin"]), study


def test_smoke_run_directory_layout(smoke_run: Path) -> None:
    for name in (
        "sweep.yaml",
        "data.json",
        "results.csv",
        "results.parquet",
        "results.md",
        "trials.parquet",
    ):
        assert (smoke_run / name).is_file(), name
    assert (smoke_run / "search").is_dir()  # the Tune experiment of all studies (--resume)
    for study in ("mf", "autorec", "mf-ranking", "neumf", "caser"):
        assert (smoke_run / "checkpoints" / f"{study}.pt").is_file()
    resolved = yaml.safe_load((smoke_run / "sweep.yaml").read_text())
    assert resolved["trials"] == 2 and resolved["data"]["dataset"].startswith("synthetic")
    assert json.loads((smoke_run / "data.json").read_text())["users"] > 0
    trials = pd.read_parquet(smoke_run / "trials.parquet")
    assert len(trials) == 2 * 11 and trials["trial_id"].is_unique  # 5 models, 6 baselines
    # the Ray node each trial ran on (one here: a local cluster)
    assert trials["node"].str.fullmatch("[0-9a-f]{56}").all() and trials["node"].nunique() == 1


def test_optuna_storage_holds_every_trial_once_as_it_ended(smoke_run: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    from orchestrator.journal import storage

    trials = pd.read_parquet(smoke_run / "trials.parquet")
    state = {
        "epochs": TrialState.COMPLETE,
        "early_stopped": TrialState.COMPLETE,
        "asha": TrialState.PRUNED,
    }
    names = optuna.get_all_study_names(storage(smoke_run))
    assert sorted(names) == sorted(trials["study"].unique())
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage(smoke_run))
        group = trials[trials["study"] == name].sort_values("number")
        assert [t.user_attrs["trial_id"] for t in study.trials] == list(group["trial_id"])
        assert [t.state for t in study.trials] == [state[e] for e in group["end"]]
        assert [t.value for t in study.trials if t.state == TrialState.COMPLETE] == list(
            group.loc[group["end"] != "asha", "best"]
        )  # a complete one: its best epoch
        assert all(t.intermediate_values for t in study.trials)  # the curve per epoch


def test_env_json_records_versions_commit_and_nodes(smoke_run: Path) -> None:
    import ray
    import torch

    env = json.loads((smoke_run / "env.json").read_text())
    assert env["versions"]["torch"] == torch.__version__
    assert env["versions"]["ray"] == ray.__version__ and env["versions"]["optuna"]
    assert env["command"][1:3] == ["sweep", "--smoke"]
    assert env["nodes"] and all(n["device"] == "cpu" and n["host"] for n in env["nodes"])
    sidecar = json.loads((smoke_run / "models" / "mf.json").read_text())
    assert sidecar["environment"]["onnxruntime"] == env["versions"]["onnxruntime"]
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("recsweep ")


def test_every_command_runs_from_a_project_folder_holding_data_and_models(
    smoke_run: Path, project: Path, tmp_path: Path
) -> None:
    recsweep = (str(Path(sys.executable).with_name("recsweep")),)  # the console script
    spec = "synthetic:users=60,items=300,interactions=1500,seed=1"
    runs = {
        "models": run_cli("models", "--json", cwd=project, command=recsweep),
        "data": run_cli("data", "describe", "--dataset", spec, cwd=project),
        "train": run_cli(
            "train",
            "--model",
            "mf",
            "--dataset",
            spec,
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "train"),
            cwd=project,
        ),
        "results": run_cli("results", str(smoke_run), cwd=project, command=recsweep),
        "export": run_cli("export", str(smoke_run), "--study", "mf", "--json", cwd=project),
        "recommend": run_cli(
            "recommend", str(smoke_run / "models" / "mf.onnx"), "--user", "1", cwd=project
        ),
        "report": run_cli("report", str(smoke_run), cwd=project),
    }
    for name, proc in runs.items():  # `sweep` ran from there too: the smoke_run fixture
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
        assert "the project's own" not in proc.stderr
    assert "mf" in {m["name"] for m in json.loads(runs["models"].stdout)["models"]}
    assert "60" in runs["data"].stdout and "## Rating prediction" in runs["results"].stdout
    # --json: the last line of stdout is one object, the human line went to stderr
    assert json.loads(runs["export"].stdout.splitlines()[-1]) == {
        "run_dir": str(smoke_run),
        "exports": {"mf": "ok"},
        "exit_code": 0,
    }
    assert "mf: ok" in runs["export"].stderr


def test_results_command_prints_the_table(smoke_run: Path, cli: Callable) -> None:
    proc = cli("results", str(smoke_run), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["study"] for r in rows] == STUDIES
    md = cli("results", str(smoke_run)).stdout
    assert md == (smoke_run / "results.md").read_text(encoding="utf-8")
    assert md.startswith("## Rating prediction") and "caser" in md


def test_results_of_several_runs_make_one_table_per_kind(
    smoke_run: Path, tmp_path: Path, cli: Callable
) -> None:
    import shutil

    runs = []
    for name in ("first", "second"):
        run = tmp_path / name
        run.mkdir()
        for f in ("sweep.yaml", "results.parquet"):
            shutil.copy(smoke_run / f, run / f)
        runs.append(run)
    frame = pd.read_parquet(runs[1] / "results.parquet")
    frame.loc[frame["study"] == "bias", "test/rmse"] = 0.5  # the best of its column now
    frame.to_parquet(runs[1] / "results.parquet")
    md = cli("results", *map(str, runs))
    assert md.returncode == 0, md.stderr
    rating = md.stdout.split("## Top-N ranking")[0]
    header = next(line for line in rating.splitlines() if line.startswith("| study"))
    # one column group per run, named by its dataset and split (or its folder's name, when
    # the dataset's is long or another run's)
    data = yaml.safe_load((smoke_run / "sweep.yaml").read_text())["data"]
    first = data["dataset"] if len(data["dataset"]) <= 24 else "first"
    split = data["split"]
    assert f"| {first} {split}: test/rmse |" in header, header
    assert f"| second {split}: test/rmse |" in header, header
    bias = next(line for line in rating.splitlines() if line.startswith("| bias "))
    assert "**0.5000**" in bias
    best = pd.read_parquet(smoke_run / "results.parquet").query("table == 'rating'")
    top = best.set_index("study")["test/rmse"].idxmin()
    row = next(line for line in rating.splitlines() if line.startswith(f"| {top} "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[header.strip("|").split("|").index(f" {first} {split}: test/rmse ")][:2] == "**"

    tex = cli("results", *map(str, runs), "--format", "latex")
    assert tex.returncode == 0, tex.stderr
    for table in tex.stdout.split("% ")[1:]:  # one tabular per kind, booktabs rules
        spec = re.search(r"\\begin\{tabular\}\{(l(r+))\}", table)
        assert spec and all(rule in table for rule in (r"\toprule", r"\midrule", r"\bottomrule"))
        body = table.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
        assert body and all(
            len(re.findall(r"(?<!\\)&", line)) == len(spec.group(2)) for line in body
        )
        assert table.count(r"\multicolumn") == 2
    assert r"\textbf{0.5000}" in tex.stdout

    frame.columns = [c.replace("ndcg@10", "ndcg@5") for c in frame.columns]  # another K
    frame.to_parquet(runs[1] / "results.parquet")
    bad = cli("results", *map(str, runs))
    assert bad.returncode == 2 and "cannot be aligned" in bad.stderr, bad.stderr
    assert f"second {split}" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_wandb_offline_runs_hold_metrics_and_no_key(smoke_run: Path) -> None:
    runs = [wandb_run(folder) for folder in (smoke_run / "wandb").glob("offline-run-*")]
    summary = [r for r in runs if r["run"].job_type == "summary"]
    runs = [r for r in runs if r["run"].job_type != "summary"]
    assert len(runs) == 22, runs  # one W&B run per trial (5 models', 6 baselines' studies)
    # and one for the sweep: its tables and the exported models as a versioned artifact
    (summary,) = summary
    assert summary["run"].run_group == "smoke" and summary["exit_code"] == 0
    (logged,) = summary["history"]
    assert logged["results/_type"] == logged["trials/_type"] == "table-file"
    assert logged["results/nrows"] == len(pd.read_csv(smoke_run / "results.csv"))
    assert logged["trials/nrows"] == 22
    (artifact,) = [a for a in summary["artifacts"] if a.type == "model"]
    assert artifact.name == "smoke-models" and "latest" in artifact.aliases
    files = {entry.path for entry in artifact.manifest.contents}
    assert {"mf.onnx", "mf.topk.onnx", "mf.json", "mf.npz"} <= files
    trials = pd.read_parquet(smoke_run / "trials.parquet").set_index("trial_id")
    for run in runs:
        folder = run["run"].run_id
        trial = trials.loc[run["run"].run_id]  # the run's id is its trial's id
        assert run["run"].run_group == f"smoke/{trial['study']}"
        assert run["exit_code"] == 0
        epochs = [row["epoch"] for row in run["history"]]
        assert epochs == sorted(set(epochs)) and epochs[-1] == trial["epochs"], epochs
        # every improving epoch was logged: the run's best is the trial's best
        values = [row[trial["metric"]] for row in run["history"]]
        best = min(values) if trial["metric"] == "val/rmse" else max(values)
        assert best == pytest.approx(trial["best"]), folder
    for path in smoke_run.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_trial_that_fails_before_its_first_result_still_has_its_wandb_run(
    tmp_path: Path, local_ray: None
) -> None:
    from ray import tune

    from orchestrator.callbacks import SweepWandb
    from orchestrator.config import TrainConfig
    from orchestrator.records import Schedule, Study, TrialSpec

    def fails(config: dict) -> None:  # nested: pickled by value for the workers
        raise RuntimeError("diverged before its first epoch ended")

    # the W&B actor starts with the first result; this trial has none
    spec = TrialSpec.of(
        Study("mf", "mf", "rating", "val/rmse", "min"),
        Schedule(1, 1, ()),
        TrainConfig(),
        0,
        0,
        "defaults",
    )
    tune.Tuner(
        fails,
        param_space=spec.config({}),
        run_config=tune.RunConfig(
            name="failed",
            storage_path=str(tmp_path),
            verbose=0,
            callbacks=[SweepWandb("night", tmp_path, "offline", "p")],
        ),
    ).fit()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    run = wandb_run(runs[0])
    assert run["run"].run_group == "night/mf" and run["exit_code"] == 1  # failed
    assert run["history"] == []


def test_a_run_directory_is_checked_before_it_is_believed(
    smoke_run: Path, tmp_path: Path, cli: Callable
) -> None:
    import shutil

    def edited(name: str, change) -> Path:
        run = tmp_path / name
        shutil.copytree(smoke_run, run, ignore=shutil.ignore_patterns("wandb", "search"))
        change(run)
        return run

    # a trials table copied over the results table is not printed as the results
    swapped = edited("tables", lambda r: shutil.copy(r / "trials.parquet", r / "results.parquet"))
    proc = cli("results", str(swapped))
    assert proc.returncode == 2 and "results.parquet: not a results table" in proc.stderr

    # sweep.yaml's data edited: the report will not draw another dataset under this run's name
    def other_data(run: Path) -> None:
        cfg = yaml.safe_load((run / "sweep.yaml").read_text())
        cfg["data"]["seed"] = cfg["data"]["seed"] + 1
        (run / "sweep.yaml").write_text(yaml.safe_dump(cfg))

    proc = cli("report", str(edited("data", other_data)))
    assert proc.returncode == 2 and "data.json: the sweep ran on data" in proc.stderr, proc.stderr

    # another study's checkpoint copied over mf's is not exported as mf
    def other_checkpoint(run: Path) -> None:
        shutil.copy(run / "checkpoints" / "neumf.pt", run / "checkpoints" / "mf.pt")

    proc = cli("export", str(edited("checkpoint", other_checkpoint)), "--study", "mf")
    assert proc.returncode == 1, proc.stderr
    assert "mf.pt: a checkpoint of study 'neumf' (neumf, ranking), not of 'mf'" in proc.stderr

    # Tune's experiment state cut short by a kill: Tune would start the search over
    cut = tmp_path / "state"
    shutil.copytree(smoke_run, cut, ignore=shutil.ignore_patterns("wandb"))
    state = max((cut / "search").glob("experiment_state-*.json"))
    state.write_bytes(state.read_bytes()[:1000])
    files = {f: f.stat().st_mtime_ns for f in cut.rglob("*")}
    proc = cli("sweep", "--resume", str(cut))
    assert proc.returncode == 2, proc.stderr
    assert f"error: {state}: Ray Tune's experiment state is cut short" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert {f: f.stat().st_mtime_ns for f in cut.rglob("*")} == files  # nothing changed
