"""ONNX export: every registered model exports, both graphs reproduce PyTorch, failures leave
no file looking valid, and `export_run` turns a sweep's checkpoints into verified exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
import yaml

import orchestrator.models  # noqa: F401 - registers every model
from orchestrator import export, parity, publish, results, serve
from orchestrator.cli import main
from orchestrator.config import DataConfig, SweepConfig, TrainConfig, to_dict
from orchestrator.data import load_dataset
from orchestrator.data.types import PreparedData
from orchestrator.engine.runtime import seed_everything
from orchestrator.engine.train import fit
from orchestrator.models.base import DataSpec, Recommender
from orchestrator.models.registry import create_model, list_models, save_model
from orchestrator.records import ScoredRun, Study, StudyResult

DATA_CFG = DataConfig(dataset="synthetic:users=60,items=50,interactions=1500", eval_negatives=0)


def train_briefly(
    name: str, data: PreparedData, task: str | None = None, **hp: object
) -> Recommender:
    """A model after one short epoch of the shared loop (baselines are just fitted)."""
    seed_everything(0)
    model = create_model(name, DataSpec.from_data(data), task, **{"epochs": 1, **hp})
    fit(model, data, TrainConfig(device="cpu", amp=False, patience=1, ks=(10,)))
    return model.eval()


@pytest.fixture(scope="module")
def data() -> PreparedData:
    return load_dataset(DATA_CFG)


@pytest.fixture(scope="module")
def exported(data: PreparedData, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each registered model (its first task), trained briefly and exported once."""
    out = tmp_path_factory.mktemp("exports")
    cache: dict[str, tuple[Recommender, dict, Path]] = {}

    def get(name: str) -> tuple[Recommender, dict, Path]:
        if name not in cache:
            model = train_briefly(name, data)
            path = out / f"{name}.onnx"
            meta = export.export_model(
                model, data, path, metrics={"val/x": 0.5}, extra_meta={"note": "test"}
            )
            cache[name] = (model, meta, path)
        return cache[name]

    return get  # type: ignore[return-value]


def test_registry_has_models() -> None:
    assert "mf" in list_models()


@pytest.mark.parametrize("name", list_models())
def test_export_and_parity(name: str, exported, data: PreparedData) -> None:
    model, meta, path = exported(name)
    stem = path.with_suffix("")
    for suffix in (".onnx", ".topk.onnx", ".json", ".npz"):
        assert stem.with_name(stem.name + suffix).exists(), suffix
    assert not list(path.parent.glob(".*"))  # no working folder left
    side = json.loads(path.with_suffix(".json").read_text())
    assert side == json.loads(json.dumps(meta))
    assert side["model"] == name and side["task"] == model.task and side["opset"] >= 18
    assert side["hparams"] == model.hparams() and side["metrics"] == {"val/x": 0.5}
    assert side["data"]["fingerprint"] == data.fingerprint
    assert side["parity"]["max_abs_diff"] <= 1e-4 and side["parity"]["topk_max_abs_diff"] <= 1e-4
    assert side["forward"]["outputs"] == [{"name": "score", "dtype": "float32", "shape": ["batch"]}]
    assert [i["name"] for i in side["topk"]["outputs"]] == ["items", "scores"]
    assert side["topk"]["outputs"][0]["shape"] == ["batch", "k"]
    proto = onnx.load(path)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["recsweep.model"] == name and props["recsweep.graph"] == "forward"
    assert props["recsweep.arrays"] == path.with_suffix(".npz").name  # the id maps live there
    assert int(props["recsweep.n_items"]) == data.n_items
    assert not [k for k in props if k.endswith("_ids")]  # not copied into the graph
    assert np.load(path.with_suffix(".npz"))["item_ids"].tolist() == [str(i) for i in data.item_ids]
    assert int(props["recsweep.opset"]) == max(
        o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")
    )

    # The pairwise graph on every test row (not just the rows the export checked).
    arrays = dict(np.load(path.with_suffix(".npz")))
    user, item = data.test.user, data.test.item
    feeds = {"user": user, "item": item}
    if model.seq_len:
        feeds["seq"] = serve.last_items(
            arrays["known_ptr"], arrays["known_items"], user, model.seq_len, data.n_items
        )
    names = [i["name"] for i in side["forward"]["inputs"]]
    (got,) = ort.InferenceSession(str(path)).run(None, {n: feeds[n] for n in names})
    with torch.no_grad():
        want = model(**{n: torch.from_numpy(feeds[n]) for n in names}).numpy()
    assert got.shape == (len(user),)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list_models())
def test_topk_graph_agrees_with_pytorch_ranking(name: str, exported, data: PreparedData) -> None:
    """A correct top-K: the scores are PyTorch's for those items, in order, nothing excluded
    is returned, and no item left out scores higher than the last one returned."""
    model, _, path = exported(name)
    arrays = dict(np.load(path.with_suffix(".npz")))
    users = np.arange(data.n_users)
    exclude = serve.known_mask(arrays["known_ptr"], arrays["known_items"], users, data.n_items)
    k = 7
    feeds = {"user": users, "exclude": exclude, "k": np.array(k)}
    seq = None
    if model.seq_len:
        feeds["seq"] = serve.last_items(
            arrays["known_ptr"], arrays["known_items"], users, model.seq_len, data.n_items
        )
        seq = torch.from_numpy(feeds["seq"])
    items, scores = ort.InferenceSession(str(path.with_name(f"{name}.topk.onnx"))).run(
        ["items", "scores"], feeds
    )
    with torch.no_grad():
        full = model.score_all(torch.from_numpy(users), seq).float().numpy()  # [U, n_items]
    assert items.shape == scores.shape == (data.n_users, k)
    for u in users:
        unseen = np.flatnonzero(~exclude[u])
        n = min(k, len(unseen))
        top, top_scores = items[u, :n], scores[u, :n]
        assert not exclude[u, top].any()
        np.testing.assert_allclose(top_scores, full[u, top], atol=1e-4, rtol=0)
        assert np.all(np.diff(top_scores) <= 1e-6)
        rest = np.setdiff1d(unseen, top)
        if len(rest):
            assert full[u, rest].max() <= top_scores[-1] + 1e-5
        assert np.all(np.isneginf(scores[u, n:]))


@pytest.mark.parametrize("name", list_models())
def test_served_recommendation_matches_pytorch(name: str, exported, data: PreparedData) -> None:
    """serve.recommend (the `recommend` command's path) ranks like the PyTorch model, with
    the user's items excluded and, for sequence models, their last L items as input."""
    model, _, path = exported(name)
    served = serve.load(path)
    arrays = served.arrays
    for index in (0, 7, data.n_users - 1):
        raw = str(data.user_ids[index])
        out = served.recommend(raw, k=5)
        assert out["cold_start"] is False and out["user"] == raw
        known = set(
            arrays["known_items"][
                arrays["known_ptr"][index] : arrays["known_ptr"][index + 1]
            ].tolist()
        )
        got = [int(np.flatnonzero(arrays["item_ids"] == r["item"])[0]) for r in out["items"]]
        assert not known & set(got)
        seq = None
        if model.seq_len:
            seq = torch.from_numpy(
                serve.last_items(
                    arrays["known_ptr"],
                    arrays["known_items"],
                    np.array([index]),
                    model.seq_len,
                    data.n_items,
                )
            )
        with torch.no_grad():
            full = model.score_all(torch.tensor([index]), seq)[0].float().numpy()
        full[list(known)] = -np.inf
        np.testing.assert_allclose([r["score"] for r in out["items"]], full[got], atol=1e-4)
        assert min(r["score"] for r in out["items"]) >= np.sort(full)[-5] - 1e-5


class ToySeq(Recommender):
    """A minimal sequence model (not registered): the score of an item is its dot product
    with the user's vector plus the mean of the last 3 items' vectors (padding included)."""

    name, tasks = "toyseq", ("sequential",)

    def __init__(self, spec: DataSpec) -> None:
        super().__init__(spec, "sequential", None)
        torch.manual_seed(0)
        self.user_emb = torch.nn.Embedding(spec.n_users, 4)
        self.item_emb = torch.nn.Embedding(spec.n_items + 1, 4)  # + the padding index

    @property
    def seq_len(self) -> int:
        return 3

    def hparams(self) -> dict:
        return {"dim": 4}

    def _query(self, user: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        return self.user_emb(user) + self.item_emb(seq).mean(1)  # [B, D]

    def forward(self, user: torch.Tensor, seq: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return (self._query(user, seq) * self.item_emb(item)).sum(-1)  # [B]

    def score_all(self, user: torch.Tensor, seq: torch.Tensor | None = None) -> torch.Tensor:
        return self._query(user, seq) @ self.item_emb.weight[:-1].T  # [B, n_items]


def test_sequence_model_exports_and_serves_its_recent_items(
    data: PreparedData, tmp_path: Path
) -> None:
    model = ToySeq(DataSpec.from_data(data)).eval()
    side = export.export_model(model, data, tmp_path / "toyseq.onnx")
    assert [i["name"] for i in side["forward"]["inputs"]] == ["user", "seq", "item"]
    assert side["topk"]["inputs"][1] == {"name": "seq", "dtype": "int64", "shape": ["batch", 3]}
    assert side["seq_len"] == 3 and side["parity"]["topk_max_abs_diff"] <= 1e-4
    served = serve.load(tmp_path / "toyseq.onnx")
    parts = (data.train, data.val, data.test)
    for index in (0, 11):
        when = np.concatenate([s.timestamp[s.user == index] for s in parts])
        items = np.concatenate([s.item[s.user == index] for s in parts])
        recent = items[np.argsort(when, kind="stable")][-3:]  # the user's last 3 items
        with torch.no_grad():
            full = model.score_all(torch.tensor([index]), torch.from_numpy(recent)[None])[0].numpy()
        full[items] = -np.inf
        out = served.recommend(str(data.user_ids[index]), k=4)
        got = [int(np.flatnonzero(served.item_ids == r["item"])[0]) for r in out["items"]]
        np.testing.assert_allclose(
            [r["score"] for r in out["items"]], np.sort(full)[::-1][:4], atol=1e-4
        )
        np.testing.assert_allclose([r["score"] for r in out["items"]], full[got], atol=1e-4)


def test_check_topk_order_up_to_ties() -> None:
    ref = np.array([[3.0, 2.0, 2.0 + 1e-7, 1.0, -np.inf]], dtype=np.float32)  # 4 excluded
    order = np.array([[0, 2, 1, 3]])
    assert parity.check_topk(ref, order, ref[0, order]) == 0.0  # 1 and 2 tie: either order
    near = np.array([[3.0, 2.0, 2.0 - 5e-5, 1.0, -np.inf]], dtype=np.float32)
    swapped = np.array([[0, 2, 1, 3]])  # scores within ATOL, but 5e-5 apart: not a tie
    with pytest.raises(parity.ParityError, match="position 1: onnxruntime item 2"):
        parity.check_topk(near, swapped, near[0, swapped])
    with pytest.raises(parity.ParityError, match="differ"):
        parity.check_topk(ref, np.array([[0, 2, 3, 1]]), ref[0, [0, 2, 3, 1]][None])
    with pytest.raises(parity.ParityError, match="differ"):
        parity.check_topk(ref, order, ref[0, order] + 1e-3)
    everything = np.array([[0, 2, 1, 3, 4]])  # k = n: the excluded item comes last at -inf
    assert parity.check_topk(ref, everything, ref[0, everything]) == 0.0
    unmasked = np.array([[3.0, 2.0, 2.0, 1.0, 0.5]], dtype=np.float32)
    with pytest.raises(parity.ParityError, match="excluded"):
        parity.check_topk(ref, everything, unmasked)


def test_failed_check_keeps_previous_export(
    exported, data: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, first = exported("mf")
    for p in first.parent.glob("mf.*"):  # a valid earlier export at the target path
        (tmp_path / p.name).write_bytes(p.read_bytes())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["mf.json", "mf.npz", "mf.onnx", "mf.topk.onnx"]
    monkeypatch.setattr(parity, "ATOL", -1.0)  # no graph can pass: the check must fail
    with pytest.raises(export.ExportError, match="differ from PyTorch"):
        export.export_model(train_briefly("mf", data, dim=4), data, tmp_path / "mf.onnx")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing left


def test_large_weights_go_to_external_data(
    data: PreparedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the limit lowered to 1 KiB: the same path a > 1 GiB table takes, on a small model
    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 1024)
    model = train_briefly("mf", data, dim=16)  # tables of more than 1 KiB each
    meta = export.export_model(model, data, tmp_path / "mf.onnx")
    for part in ("forward", "topk"):
        extern = tmp_path / meta[part]["data"]["file"]
        assert extern.name == meta[part]["file"] + ".data"
        assert meta[part]["data"]["bytes"] >= (data.n_users + data.n_items) * 16 * 4
        proto = onnx.load(tmp_path / meta[part]["file"], load_external_data=False)
        assert all(
            t.data_location == onnx.TensorProto.EXTERNAL
            for t in proto.graph.initializer
            if np.prod(t.dims) * 4 >= 1024
        )
    assert meta["parity"]["max_abs_diff"] < parity.ATOL  # onnxruntime read the weights
    user = str(data.user_ids[0])
    assert serve.load(tmp_path / "mf.onnx").recommend(user, k=3)["items"]
    copy = tmp_path / "copy"  # a copy with truncated weights is refused
    copy.mkdir()
    for p in tmp_path.glob("mf.*"):
        (copy / p.name).write_bytes(
            p.read_bytes()[:-4] if p.name == "mf.topk.onnx.data" else p.read_bytes()
        )
    with pytest.raises(ValueError, match="mf.topk.onnx.data: content differs"):
        serve.load(copy / "mf.json")
    # the same, with the sidecar's record of the weights file removed: still refused
    side = json.loads((copy / "mf.json").read_text())
    for part in ("forward", "topk"):
        side[part].pop("data")
    (copy / "mf.json").write_text(json.dumps(side))
    with pytest.raises(ValueError, match=r"mf\.onnx: its weights are in mf\.onnx\.data, which"):
        serve.load(copy / "mf.json")


def test_model_for_other_data_is_refused(data: PreparedData, tmp_path: Path) -> None:
    model = create_model("mf", DataSpec(data.n_users, data.n_items + 1))
    with pytest.raises(export.ExportError, match="not the data it was trained on"):
        export.export_model(model, data, tmp_path / "mf.onnx")
    assert not list(tmp_path.iterdir())


def make_run(tmp_path: Path, data: PreparedData, model: Recommender) -> Path:
    """A run directory as the sweep leaves it: sweep.yaml, checkpoints, results table."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "sweep.yaml").write_text(yaml.safe_dump(to_dict(SweepConfig(name="run", data=DATA_CFG))))
    meta = {"data_fingerprint": data.fingerprint, "study": "mf", "metric": "val/rmse"}
    save_model(model, run / "checkpoints" / "mf.pt", **meta)
    save_model(model, run / "checkpoints" / "mf-seed1.pt", **meta)  # seed re-run: skipped
    mf = StudyResult(
        Study("mf", "mf", "rating", "val/rmse", "min"),
        main_metric="test/rmse",
        runs=[ScoredRun(0, {"val/rmse": 1.1, "test/rmse": 1.2}, np.ones(3))],
    )
    pop = StudyResult(
        Study("pop", "pop", "ranking", "val/ndcg@10", "max", baseline=True), status="not run"
    )
    results.write(run, results.build([mf, pop]))
    return run


def test_export_run_writes_models_and_table_column(
    exported, data: PreparedData, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model, _, _ = exported("mf")
    run = make_run(tmp_path, data, model)
    assert publish.export_run(run) == {"mf": "ok"}
    side = json.loads((run / "models" / "mf.json").read_text())
    assert side["metrics"] == {"test/rmse": 1.2, "val/rmse": 1.1}
    assert side["extra"]["checkpoint"].endswith("mf.pt")
    assert not (run / "models" / "mf-seed1.onnx").exists()
    table = pd.read_parquet(run / "results.parquet")
    exports = table.set_index("study")["export"]
    assert exports["mf"] == "ok" and pd.isna(exports["pop"])
    assert "| export |" in (run / "results.md").read_text()

    # A broken checkpoint fails loudly (the CLI exits 1), the valid export stays in place.
    good = (run / "models" / "mf.onnx").read_bytes()
    (run / "checkpoints" / "mf.pt").write_bytes(b"not a checkpoint")
    statuses = publish.export_run(run, "mf")
    assert statuses["mf"].startswith("failed:") and "not a recsweep checkpoint" in statuses["mf"]
    assert (run / "models" / "mf.onnx").read_bytes() == good
    assert (
        pd.read_parquet(run / "results.parquet")
        .set_index("study")["export"]["mf"]
        .startswith("failed")
    )
    assert main(["export", str(run)]) == 1
    out, err = capsys.readouterr()
    assert "mf: failed" in out and "FAILED" in err and "export failed for mf" in err


def test_checkpoint_weights_not_matching_model(
    exported, data: PreparedData, tmp_path: Path
) -> None:
    model, _, _ = exported("mf")
    run = make_run(tmp_path, data, model)
    payload = torch.load(run / "checkpoints" / "mf.pt", weights_only=False)
    payload["hparams"]["dim"] = model.params.dim + 1  # the weights no longer fit the model
    torch.save(payload, run / "checkpoints" / "mf.pt")
    status = publish.export_run(run)["mf"]
    assert status.startswith("failed:") and "weights do not match model 'mf'" in status
    assert not (run / "models").exists() or not list((run / "models").iterdir())


def test_checkpoint_from_other_data(exported, data: PreparedData, tmp_path: Path) -> None:
    model, _, _ = exported("mf")
    run = make_run(tmp_path, data, model)
    save_model(model, run / "checkpoints" / "mf.pt", data_fingerprint="0" * 64)
    assert "data changed" in publish.export_run(run)["mf"]


def test_run_without_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ValueError, match="no checkpoints .*nothing to export"):
        publish.export_run(tmp_path)
    assert main(["export", str(tmp_path)]) == 2
    assert "nothing to export" in capsys.readouterr().err


def test_unknown_study(exported, data: PreparedData, tmp_path: Path) -> None:
    run = make_run(tmp_path, data, exported("mf")[0])
    with pytest.raises(ValueError, match="--study 'nope'.*studies with one: mf"):
        publish.export_run(run, "nope")


def test_autorec_graph_carries_item_codes_not_a_rating_matrix(exported, data: PreparedData) -> None:
    from onnx import numpy_helper

    model, _, path = exported("autorec")
    shapes = []
    for graph in (onnx.load(path), onnx.load(path.with_suffix(".topk.onnx"))):
        shapes += [tuple(t.dims) for t in graph.graph.initializer]
        shapes += [
            numpy_helper.to_array(a.t).shape
            for node in graph.graph.node
            if node.op_type == "Constant"
            for a in node.attribute
            if a.name == "value"
        ]
    both = {data.n_items, data.n_users}
    assert (data.n_items, model.params.dim) in shapes  # the precomputed item codes
    assert not [s for s in shapes if both <= set(s)], shapes  # no [items x users] tensor
