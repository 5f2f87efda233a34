"""`python -m orchestrator recommend`: top-K through the CLI from an exported model, the
cold-start fallback, clear errors for bad input, and no torch on the onnxruntime path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import orchestrator.models  # noqa: F401 - registers every model
from orchestrator import serve
from orchestrator.cli import main
from orchestrator.config import DataConfig, TrainConfig
from orchestrator.data import load_dataset
from orchestrator.data.types import PreparedData
from orchestrator.engine.runtime import seed_everything
from orchestrator.engine.train import fit
from orchestrator.export import export_model
from orchestrator.models.base import DataSpec, Recommender
from orchestrator.models.registry import create_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Recommender, PreparedData, Path]:
    """A small MF ranking model, trained for one epoch and exported once."""
    data = load_dataset(
        DataConfig(dataset="synthetic:users=60,items=50,interactions=1500", eval_negatives=0)
    )
    seed_everything(0)
    model = create_model("mf", DataSpec.from_data(data), "ranking", epochs=1, dim=8)
    fit(model, data, TrainConfig(device="cpu", amp=False, patience=1, ks=(10,)))
    path = tmp_path_factory.mktemp("served") / "mf-ranking.onnx"
    export_model(model.eval(), data, path)
    return model, data, path


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "recommend", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def known_items(data: PreparedData, user: int) -> set[int]:
    return {int(i) for s in (data.train, data.val, data.test) for i in s.item[s.user == user]}


def test_recommend_known_user_matches_pytorch(trained) -> None:
    model, data, path = trained
    index = 4
    proc = cli(str(path), "--user", str(data.user_ids[index]), "-k", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["cold_start"] is False and out["k"] == 5 and len(out["items"]) == 5
    assert out["score_kind"] == "ranking score"
    item_index = {str(raw): i for i, raw in enumerate(data.item_ids)}
    got = [item_index[r["item"]] for r in out["items"]]
    assert [r["title"] for r in out["items"]] == [data.item_titles[i] for i in got]
    known = known_items(data, index)
    assert not known & set(got)
    with torch.no_grad():
        full = model.score_all(torch.tensor([index]))[0].numpy()  # [n_items]
    full[list(known)] = -np.inf
    want = np.argsort(-full, kind="stable")[:5]
    scores = [r["score"] for r in out["items"]]
    np.testing.assert_allclose(scores, full[want], atol=1e-4)  # same scores, same order
    untied = np.abs(np.diff(full[want], append=-np.inf)) > 1e-5
    assert [g for g, u in zip(got, untied, strict=True) if u] == [
        w for w, u in zip(want.tolist(), untied, strict=True) if u
    ]

    text = cli(str(path), "--user", str(data.user_ids[index]), "-k", "5")
    assert text.returncode == 0 and "excluded" in text.stdout
    assert data.item_titles[got[0]] in text.stdout.splitlines()[2]


def test_recommend_cold_start_is_popularity(trained) -> None:
    _, data, path = trained
    unknown = str(int(max(data.user_ids)) + 1000)
    out = json.loads(cli(str(path), "--user", unknown, "-k", "4", "--json").stdout)
    assert out["cold_start"] is True and "cold start" in out["note"]
    assert out["score_kind"] == "training interactions"
    counts = np.bincount(data.train.item, minlength=data.n_items)
    want = [str(data.item_ids[i]) for i in np.argsort(-counts, kind="stable")[:4]]
    assert [r["item"] for r in out["items"]] == want
    assert [r["score"] for r in out["items"]] == sorted(counts, reverse=True)[:4]
    text = cli(str(path), "--user", unknown)
    assert text.returncode == 0 and "cold start" in text.stdout
    assert len(text.stdout.strip().splitlines()) == 2 + 10


def test_recommend_path_imports_no_torch(trained) -> None:
    _, data, path = trained
    code = (
        "import sys, json\nfrom orchestrator.cli import main\n"
        f"rc = main(['recommend', {str(path)!r}, '--user', '{data.user_ids[0]}'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'ray', 'optuna') or m.split('.')[:2] in "
        "(['orchestrator', 'models'], ['orchestrator', 'data'], ['orchestrator', 'engine']))\n"
        "print(json.dumps({'rc': rc, 'heavy': heavy}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"rc": 0, "heavy": []}


def test_recommend_bad_input(trained, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, data, path = trained

    def error(*args: str) -> str:
        assert main(["recommend", *args]) == 2
        return capsys.readouterr().err

    assert "user ids are integers (e.g. '1', '2', '3')" in error(str(path), "--user", "bob")
    assert "-k 51: larger than the catalogue (50 items)" in error(
        str(path), "--user", "1", "-k", "51"
    )
    assert "expected an integer >= 1" in error(str(path), "--user", "1", "-k", "0")
    assert "no such model file" in error(str(tmp_path / "nope.onnx"), "--user", "1")
    assert "expected an exported model file" in error(str(path.with_suffix(".pt")), "--user", "1")
    lone = tmp_path / "lone" / path.name
    lone.parent.mkdir()
    shutil.copy(path, lone)
    assert f"its sidecar {lone.with_suffix('.json')} is missing" in error(str(lone), "--user", "1")
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in path.parent.glob("mf-ranking.*"):
        shutil.copy(p, copy / p.name)
    (copy / "mf-ranking.npz").write_bytes((copy / "mf-ranking.npz").read_bytes()[:-10])
    assert "content differs" in error(str(copy / "mf-ranking.onnx"), "--user", "1")


def test_ids_are_compared_in_canonical_form(trained) -> None:
    _, data, path = trained
    served = serve.load(path)
    assert served.recommend("007", k=3) == served.recommend("7", k=3)
    assert served.recommend("7", k=3)["user"] == "7"
    ids = np.asarray(["u1", "7"])
    assert serve.id_form(ids) == "string" and serve.id_form(np.asarray(["1", "-2"])) == "integer"
    assert serve.canonical_id(" u1 ", "string", ids) == "u1"
    with pytest.raises(ValueError, match="non-empty"):
        serve.canonical_id(" ", "string", ids)


def test_recommend_returns_fewer_when_user_has_most_items(trained) -> None:
    _, data, path = trained
    served = serve.load(path)
    counts = np.bincount(np.concatenate([data.train.user, data.val.user, data.test.user]))
    heavy = int(np.argmax(counts))
    left = data.n_items - len(known_items(data, heavy))
    out = served.recommend(str(data.user_ids[heavy]), k=data.n_items)
    assert len(out["items"]) == left
    assert not known_items(data, heavy) & {
        int(np.flatnonzero(data.item_ids.astype(str) == r["item"])[0]) for r in out["items"]
    }
