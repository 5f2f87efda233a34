"""The docstring examples of the package's modules run as doctests.

Every module with a `>>>` example is one test, named by the module. The examples run in a
small shared namespace (`SHARED`, built once per session): a tiny synthetic dataset `data`,
a `model` trained on it for two epochs, and, in the working directory (a fresh temporary
folder per module), the files examples read: an export of that model in
`runs/sweep/models/` and a small sweep run directory `runs/dev`. Examples that name
`ml-100k` read the real release from the suite's shared data folder ($RECSWEEP_DATA).
"""

from __future__ import annotations

import copy
import doctest
import importlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import package_modules

import orchestrator.models  # noqa: F401 - registers the models
from orchestrator import results
from orchestrator.config import DataConfig, SweepConfig, TrainConfig, to_dict
from orchestrator.data import load_dataset
from orchestrator.data.types import PreparedData
from orchestrator.engine.runtime import seed_everything
from orchestrator.engine.train import fit
from orchestrator.export import export_model
from orchestrator.finalize import main_metric
from orchestrator.models.base import DataSpec
from orchestrator.models.registry import create_model
from orchestrator.records import ScoredRun, Study, StudyResult, TrialRecord

REPO = Path(__file__).resolve().parents[1]
SPEC = "synthetic:users=60,items=80,interactions=1500,seed=1"
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def modules_with_examples() -> list[str]:
    """Dotted names of the package's modules whose source holds a `>>>` example."""
    return [
        name
        for name, path in package_modules().items()
        if ">>>" in path.read_text(encoding="utf-8")
    ]


def write_run_dir(run_dir: Path, data: PreparedData, cfg: DataConfig) -> None:
    """A small sweep run directory as a finished sweep leaves it (`sweep.yaml`,
    `results.parquet`, `trials.parquet`), of one study of three trials, for the report."""
    run_dir.mkdir(parents=True)
    sweep = SweepConfig(name="dev", models=("mf:ranking",), baselines=(), trials=3, data=cfg)
    (run_dir / "sweep.yaml").write_text(yaml.safe_dump(to_dict(sweep)))
    study = Study("mf-ranking", "mf", "ranking", "val/ndcg@10", "max")
    trials = [
        TrialRecord(
            study.name,
            f"t{i}",
            i,
            "epochs",
            "",
            0.1 + 0.01 * i,
            2,
            2,
            1.0,
            {"lr": 0.001 * (i + 1), "dim": 8 * (i + 1)},
            0,
        )
        for i in range(3)
    ]
    units = np.linspace(0.0, 0.3, data.n_users)  # [n_users] test NDCG@10 per user
    run = ScoredRun(0, {"val/ndcg@10": 0.12, "test/ndcg@10": float(units.mean())}, units)
    result = StudyResult(
        study,
        evaluation="synthetic, split leave-last; full ranking",
        main_metric=main_metric(study),
        trials_done=3,
        chosen=trials[-1],
        runs=[run],
    )
    results.write(run_dir, results.build([result]))
    results.write_trials(run_dir, pd.DataFrame([t.row(study) for t in trials]))


@pytest.fixture(scope="session")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """The names every example may use, and a folder of the files examples read."""
    cfg = DataConfig(dataset=SPEC, eval_negatives=20)
    data = load_dataset(cfg)
    seed_everything(0)
    model = create_model("mf", DataSpec.from_data(data), task="ranking", epochs=2)
    fit(model, data, TrainConfig(device="cpu"))
    files = tmp_path_factory.mktemp("doctest-files")
    export_model(model, data, files / "runs" / "sweep" / "models" / "mf.onnx")
    write_run_dir(files / "runs" / "dev", data, cfg)
    names = {
        "torch": torch,
        "np": np,
        "pd": pd,
        "Path": Path,
        "json": json,
        "data": data,
        "model": model,
        "create_model": create_model,
        "DataSpec": DataSpec,
        "DataConfig": DataConfig,
        "TrainConfig": TrainConfig,
    }
    return names, files


@pytest.fixture
def namespace(
    shared: tuple[dict[str, Any], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ml100k_dir: Path,
) -> dict[str, Any]:
    """The shared names (a fresh copy of the model) in a temporary working directory that
    holds the shared files; MovieLens is looked up where the suite keeps it."""
    names, files = shared
    shutil.copytree(files, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECSWEEP_DATA", str(ml100k_dir.parent))
    monkeypatch.setenv("WANDB_MODE", "offline")
    for key in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "wandb-home"))
    return {**names, "model": copy.deepcopy(names["model"])}


@pytest.mark.parametrize("name", modules_with_examples())
def test_docstring_examples(name: str, namespace: dict[str, Any]) -> None:
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name, extraglobs=namespace)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    out = io.StringIO()
    for test in sorted(tests, key=lambda t: t.lineno or 0):
        runner.run(test, out=out.write)
    failed, attempted = runner.failures, runner.tries
    assert attempted > 0, f"{name}: no docstring example found"
    assert failed == 0, f"{name}: {failed} of {attempted} examples failed\n{out.getvalue()}"
