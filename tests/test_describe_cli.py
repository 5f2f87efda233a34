"""`python -m orchestrator data describe`, run as a user would (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from orchestrator.cli import main
from orchestrator.config import DataConfig
from orchestrator.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]


def describe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "data", "describe", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_describe_synthetic_json():
    out = describe(
        "--dataset",
        "synthetic:users=200,items=300,interactions=5000",
        "--split",
        "random:0.8,0.1,0.1",
        "--min-rating",
        "3",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["users"] <= 200 and info["items"] <= 300
    assert info["interactions"] == 5000 - info["filters"]["min_rating_removed"]
    assert info["filters"]["min_rating_removed"] == 5000 - sum(info["ratings"].values())
    assert set(info["ratings"]) <= {"3", "4", "5"}
    assert sum(info["split"][k] for k in ("train", "val", "test")) == info["interactions"]
    assert info["note"].startswith("synthetic: best possible RMSE ~")


def test_describe_default_finds_ml100k_offline(ml100k_dir, capsys):
    # in-process (same code path as the subprocess above, without another torch start-up)
    assert main(["data", "describe", "--data-dir", str(ml100k_dir.parent), "--json"]) == 0
    out, err = capsys.readouterr()
    info = json.loads(out)
    assert (info["users"], info["items"], info["interactions"]) == (943, 1682, 100_000)
    assert info["split"] == {
        "name": "leave-last",
        "train": 98_114,
        "val": 943,
        "test": 943,
        "short_users_all_in_train": 0,
    }
    assert err.strip() == "data: default dataset -> ml-100k (found offline)"


def test_describe_text_and_bad_split(capsys):
    spec = "synthetic:users=50,items=60,interactions=800"
    assert main(["data", "describe", "--dataset", spec, "--eval-negatives", "5"]) == 0
    out = capsys.readouterr().out
    assert "users: 50\n" in out and "  test: 50\n" in out and "\nnote: synthetic" in out
    assert main(["data", "describe", "--dataset", spec, "--split", "u1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: split 'u1'") and "does not ship it" in err


def test_default_falls_back_to_synthetic(tmp_path, capsys):
    data = load_dataset(DataConfig(data_dir=str(tmp_path), eval_negatives=0))
    assert data.name.startswith("synthetic:") and data.n_users == 943
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("data: default dataset -> synthetic")
