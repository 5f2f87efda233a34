"""`python -m orchestrator train`: end to end on synthetic data, and bad input exits 2 early."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main

ROOT = Path(__file__).resolve().parents[1]
DATASET = "synthetic:users=60,items=120,interactions=2000,seed=3"


def test_train_end_to_end_writes_metrics_config_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "orchestrator",
        "train",
        "--model",
        "mf",
        "--task",
        "ranking",
        "--dataset",
        DATASET,
        "--eval-negatives",
        "20",
        "--epochs",
        "2",
        "--set",
        "dim=8",
        "--seed",
        "1",
        "--device",
        "cpu",
        "--ks",
        "[5, 10]",
        "--out",
        str(out),
        "--json",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    metrics = json.loads(lines[-1])
    assert metrics["status"] == "ok" and metrics["epochs"] == 2
    assert 0 <= metrics["test/ndcg@10"] <= metrics["test/hr@10"] <= 1
    assert metrics["train_samples_per_s"] > 0 and metrics["eval_users_per_s"] > 0
    assert any(line.startswith("val/ndcg@10") for line in lines)  # the human-readable table
    assert "epoch 2/2" in proc.stderr  # one progress line per epoch
    assert json.loads((out / "metrics.json").read_text()) == metrics
    config = json.loads((out / "config.json").read_text())
    assert config["hparams"]["dim"] == 8 and config["hparams"]["epochs"] == 2
    assert config["train"]["seed"] == 1 and config["train"]["ks"] == [5, 10]
    assert config["data"]["dataset"] == DATASET and config["data"]["eval_negatives"] == 20
    assert (out / "checkpoint.pt").stat().st_size > 0


# A dataset that cannot load: an error about it would mean validation came too late.
MISSING = ["--dataset", "csv:/nonexistent/ratings.csv"]


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--model", "nope"], "unknown model 'nope'; known models: "),
        (["--model", "mf", "--task", "sequential"], "does not support task 'sequential'"),
        (
            ["--model", "mf", "--task", "ranking", "--set", "lrr=0.1"],
            "unknown hyperparameter(s) ['lrr'] for model 'mf'; allowed: ",
        ),
        (["--model", "mf", "--set", "dim=abc"], "dim='abc' of model 'mf': expected int"),
        (["--model", "mf", "--set", "lr=-1"], "lr=-1.0: expected a positive finite float"),
        (["--model", "mf", "--epochs", "0"], "epochs=0: expected an int from 1 to 100,000"),
        (["--model", "mf", "--set", "dim"], "--set 'dim': expected KEY=VALUE"),
        (["--model", "mf", "--patience", "x"], "--patience: expected int"),
    ],
)
def test_bad_input_exits_2_naming_the_key_before_loading(args, expected, capsys):
    assert main(["train", *args, *MISSING]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert "nonexistent" not in err


def test_the_data_flags_are_the_same_on_sweep_train_and_describe() -> None:
    import dataclasses

    from orchestrator.cli import build_parser
    from orchestrator.commands import data_flags
    from orchestrator.config import DataConfig

    values = {
        "dataset": "csv:ratings.csv",
        "split": "random:0.8,0.1,0.1",
        "data_dir": "/data",
        "min_rating": "4",
        "user_core": "5",
        "item_core": "2",
        "dedup": "first",
        "eval_negatives": "99",
        "rating_range": "0.5,5",
    }
    # every data field but the folds, which only a sweep has
    assert set(values) | {"seed", "folds"} == {f.name for f in dataclasses.fields(DataConfig)}
    argv = [a for k, v in values.items() for a in (f"--{k.replace('_', '-')}", v)]
    argv += ["--data-seed", "7"]
    parsed = [
        data_flags(build_parser().parse_args([*command, *argv]))
        for command in (["sweep"], ["train", "--model", "mf"], ["data", "describe"])
    ]
    assert parsed[0] == parsed[1] == parsed[2]
    assert parsed[0]["seed"] == 7 and parsed[0]["rating_range"] == [0.5, 5]
    assert parsed[0]["data_dir"] == "/data" and parsed[0]["min_rating"] == 4
    for folds, want in (("3", 3), ("u1,u2", ["u1", "u2"])):  # a count, or the splits
        args = build_parser().parse_args(["sweep", "--folds", folds])
        assert data_flags(args)["folds"] == want
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--model", "mf", "--folds", "3"])
