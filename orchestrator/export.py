"""The one place that writes ONNX: checkpoints -> verified graphs + sidecar, never retraining.

For a trained model `export_model` writes, into one folder:

    <study>.onnx       the model's inference `forward`: named inputs as in its signature
                       (`user`, `item`, and `seq` for sequence models), output `score` [batch]
    <study>.topk.onnx  the serving graph: `user` [batch] (+ `seq` [batch, L]), `exclude`
                       [batch, n_items] bool (items never to return: the user's own), `k`
                       (int64 scalar) -> `items` [batch, k] int64, `scores` [batch, k] float32
    <study>.npz        arrays the sidecar refers to (numpy loads them without torch): raw user
                       and item ids as strings, titles, training popularity (the cold-start
                       fallback), and each user's items in time order as CSR `known_ptr` /
                       `known_items` (the exclusion list and, for Caser, the recent sequence)
    <study>.json       the sidecar: model, version, task, hyperparameters, metrics, dataset
                       fingerprint, opset, signatures, parity numbers, sha256 of the others

Arrays go to the npz only, not the JSON nor the graphs' `metadata_props`, because ml-25m's
id maps and histories are tens of MB: JSON stays readable, the npz loads in milliseconds,
and a graph's metadata stays small (it names its sidecar, which names the npz and its
sha256).

Every graph is checked before it is published: `onnx.checker`, then onnxruntime against
PyTorch on real rows of the data (scores within 1e-4; top-K identical wherever scores are
not tied). Files are written into a hidden folder beside the target and renamed into place
only after the checks pass (the sidecar last), so a failed export leaves any previous valid
one untouched. A graph with more than `EXTERNAL_DATA_BYTES` of weights keeps them in
`<file>.data` beside it (ONNX external data; the sidecar records its sha256).

Example:
    >>> export_model(model, data, Path("out/mf.onnx"), metrics={"val/ndcg@10": 0.11})["parity"]
    {'rows': 60, 'max_abs_diff': ..., 'users': 60, 'k': 10, 'topk_max_abs_diff': ..., ...}
"""

from __future__ import annotations

import copy
import inspect
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from orchestrator import internals
from orchestrator.data.types import PreparedData
from orchestrator.models.base import Recommender
from orchestrator.parity import ParityError, check_parity
from orchestrator.provenance import git_state, version, versions
from orchestrator.serve import FORMAT, id_form, sha256

OPSET = 18
EXTERNAL_DATA_BYTES = 1 << 30  # weights above this leave the graph (protobuf stops at 2 GiB)

internals.quiet_onnx_registration()


def _ignore_exporter_warnings() -> None:
    """Two warnings of the exporter that say nothing to a user: one Dim shared by several
    inputs makes it say it keeps one axis name (we rename the axes ourselves), and torch's
    own pytree code trips its LeafSpec deprecation.

    Set for the process at import, and again inside a `warnings.catch_warnings()` around each
    export. The first alone is dropped when the import happens inside someone's
    `catch_warnings` (pytest's collection). The second alone is undone mid-export when another
    thread leaves its own `catch_warnings`: the sweep's UMAP compile does, and the warnings
    reached 2 of 3 smoke runs' output."""
    warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
    warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)


_ignore_exporter_warnings()


class ExportError(ValueError):
    """An export that could not be written or did not reproduce PyTorch."""


class _Ranking(nn.Module):
    """The top-K graphs' common part: the model, and the top `k` of scores with the excluded
    items at -inf. (`TopK` and `SeqTopK` take different inputs, so neither extends the other.)"""

    def __init__(self, model: Recommender) -> None:
        super().__init__()
        self.model = model

    @staticmethod
    def _top(scores: Tensor, exclude: Tensor, k: int) -> tuple[Tensor, Tensor]:
        scores = scores.float().masked_fill(exclude, float("-inf"))  # [B, n_items]
        top = torch.topk(scores, k, dim=1)  # [B, k]
        return top.indices, top.values


class TopK(_Ranking):
    """Serving graph: every item's score, the excluded ones at -inf, then the top `k`.

    Args:
        model: a trained model (its `score_all` is the scoring).

    Example:
        >>> user = torch.tensor([0, 1])
        >>> exclude = torch.zeros(2, data.n_items, dtype=torch.bool)  # [B, n_items]
        >>> items, scores = TopK(model)(user, exclude, 10)
        >>> items.shape, scores.shape
        (torch.Size([2, 10]), torch.Size([2, 10]))
    """

    def forward(self, user: Tensor, exclude: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return self._top(self.model.score_all(user), exclude, k)


class SeqTopK(_Ranking):
    """`TopK` for sequence models: scores come from the user and their last L items."""

    def forward(self, user: Tensor, seq: Tensor, exclude: Tensor, k: int) -> tuple[Tensor, Tensor]:
        return self._top(self.model.score_all(user, seq), exclude, k)  # seq: [B, L]


def serving_arrays(data: PreparedData) -> dict[str, np.ndarray]:
    """The npz content: raw ids, titles, popularity and each user's items in time order."""
    parts = [data.train, data.val, data.test]
    user = np.concatenate([p.user for p in parts]).astype(np.int64)
    item = np.concatenate([p.item for p in parts]).astype(np.int64)
    when = np.concatenate([p.timestamp for p in parts]).astype(np.int64)
    order = np.lexsort((when, user))  # by user, then time (stable: split order breaks ties)
    counts = np.bincount(user, minlength=data.n_users)
    arrays = {
        "user_ids": np.asarray([str(u) for u in data.user_ids]),
        "item_ids": np.asarray([str(i) for i in data.item_ids]),
        "popularity": np.bincount(data.train.item, minlength=data.n_items).astype(np.int64),
        "known_ptr": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "known_items": item[order].astype(np.int32 if data.n_items < 2**31 else np.int64),
    }
    if data.item_titles is not None:
        arrays["item_titles"] = np.asarray([str(t) for t in data.item_titles])
    return arrays


def _pair_inputs(model: Recommender) -> list[str]:
    """The pairwise graph's inputs: `forward`'s parameter names (user, item, seq)."""
    names = list(inspect.signature(model.forward).parameters)
    unknown = [n for n in names if n not in ("user", "item", "seq")]
    if unknown or "user" not in names or "item" not in names:
        raise ExportError(
            f"model {model.name!r}: forward{tuple(names)} must take user, item "
            "(and seq for sequence models) to be exported"
        )
    if ("seq" in names) != (model.seq_len > 0):
        raise ExportError(
            f"model {model.name!r}: forward takes seq exactly when seq_len > 0 "
            f"(seq_len={model.seq_len}, forward{tuple(names)})"
        )
    return names


def _export(
    module: nn.Module,
    args: tuple,
    names: list[str],
    outputs: list[str],
    dynamic: dict[str, Any],
    rename: dict[tuple[str, int], str],
) -> onnx.ModelProto:
    """One graph with the dynamo exporter; symbolic dims renamed to readable ones."""
    internals.cache_torchlib_ops()
    with warnings.catch_warnings():
        _ignore_exporter_warnings()
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=OPSET,
            input_names=names,
            output_names=outputs,
            dynamic_shapes=dynamic,
            verbose=False,
            external_data=False,
        )
    assert program is not None  # None only from the legacy (dynamo=False) exporter
    proto = program.model_proto
    graph = proto.graph
    ends = {v.name: v for v in [*graph.input, *graph.output]}
    mapping = {}
    for (value, axis), new in rename.items():
        dim = ends[value].type.tensor_type.shape.dim[axis]
        if dim.dim_param:
            mapping[dim.dim_param] = new
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in mapping:
                dim.dim_param = mapping[dim.dim_param]
    return proto


def _save(proto: onnx.ModelProto, path: Path) -> dict[str, Any]:
    """Write one graph; returns its sidecar entry (file, sha256, and any external data).

    A graph whose weights exceed `EXTERNAL_DATA_BYTES` keeps them in `<file>.data` beside it
    (ONNX's external-data format, which onnxruntime reads by that relative name): a protobuf
    message cannot pass 2 GiB, and an ml-25m-sized table of 10M users x 64 floats does.
    """
    weights = sum(len(t.raw_data) for t in proto.graph.initializer)
    entry: dict[str, Any] = {"file": path.name}
    if weights > EXTERNAL_DATA_BYTES:
        data = path.with_name(path.name + ".data")
        # tensors under 1 KiB (axes, shapes) stay inline, where shape inference reads them
        onnx.save_model(
            proto,
            path,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
        if data.exists():  # not when every tensor is that small (only a lowered limit)
            entry["data"] = {"file": data.name, "sha256": sha256(data), "bytes": weights}
    else:
        onnx.save_model(proto, path)
    entry["sha256"] = sha256(path)
    return entry


def signature(proto: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """Names, dtypes and shapes (symbolic dims by name) of a graph's inputs and outputs."""

    def describe(value: onnx.ValueInfoProto) -> dict[str, Any]:
        t = value.type.tensor_type
        return {
            "name": value.name,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
            "shape": [d.dim_param or d.dim_value for d in t.shape.dim],
        }

    return {
        "inputs": [describe(v) for v in proto.graph.input],
        "outputs": [describe(v) for v in proto.graph.output],
    }


def _tag(
    proto: onnx.ModelProto, meta: dict[str, Any], graph: str, arrays: dict[str, np.ndarray]
) -> None:
    """Record the metadata in the ONNX file itself (`metadata_props`); the id maps stay in the
    npz (`recsweep.arrays` names it), so the graph does not grow with the catalogue."""
    props = {
        "recsweep.graph": graph,
        "recsweep.format": FORMAT,
        "recsweep.sidecar": f"{meta['study']}.json",
        "recsweep.arrays": f"{meta['study']}.npz",
        "recsweep.n_users": str(len(arrays["user_ids"])),
        "recsweep.n_items": str(len(arrays["item_ids"])),
    }
    for key in ("model", "study", "task", "version", "opset", "seq_len", "score"):
        props[f"recsweep.{key}"] = str(meta[key])
    for key in ("hparams", "metrics", "data"):
        props[f"recsweep.{key}"] = json.dumps(meta[key], sort_keys=True)
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"recsweep {meta['model']} ({meta['task']}), {graph} graph"


def _study_of(out_path: Path, model: Recommender, data: PreparedData) -> str:
    """The study `out_path` names (`<study>.onnx`), once the model is known to fit the data."""
    if not out_path.name.endswith(".onnx") or out_path.name.endswith(".topk.onnx"):
        raise ExportError(f"{out_path}: expected a path <study>.onnx")
    study = out_path.name[: -len(".onnx")]
    if (model.spec.n_users, model.spec.n_items) != (data.n_users, data.n_items):
        raise ExportError(
            f"{study}: the model was built for {model.spec.n_users} users and "
            f"{model.spec.n_items} items, the data has {data.n_users} and "
            f"{data.n_items}: not the data it was trained on"
        )
    if data.n_items < 2 or data.n_users < 1:
        raise ExportError(f"{study}: dataset {data.name!r} is too small to export on")
    return study


def _sidecar(
    model: Recommender,
    data: PreparedData,
    study: str,
    arrays: dict[str, np.ndarray],
    metrics: dict[str, Any] | None,
) -> dict[str, Any]:
    """The sidecar's fields known before the graphs are written: the model, its versions,
    its metrics and its data."""
    return {
        "format": FORMAT,
        "study": study,
        "model": model.name,
        "task": model.task,
        "version": version("recsweep") or "unknown",
        "torch": torch.__version__,
        "opset": OPSET,
        "environment": {**versions(), "git": git_state()},
        "exporter": "torch.onnx dynamo",
        "seq_len": model.seq_len,
        "score": "predicted rating" if model.task == "rating" else "ranking score",
        "hparams": model.hparams(),
        "metrics": dict(metrics or {}),
        "data": {
            "name": data.name,
            "split": data.split_name,
            "fingerprint": data.fingerprint,
            "n_users": data.n_users,
            "n_items": data.n_items,
            "user_id_form": id_form(arrays["user_ids"]),
            "item_id_form": id_form(arrays["item_ids"]),
        },
    }


def export_model(
    model: Recommender,
    data: PreparedData,
    out_path: str | Path,
    *,
    metrics: dict[str, Any] | None = None,
    extra_meta: dict[str, Any] | None = None,
    k: int = 10,
) -> dict[str, Any]:
    """Export a trained model to `out_path` (`<study>.onnx`) and its siblings, verified.

    Args:
        model: the trained model (not modified: a CPU float32 copy is exported).
        data: the data it was trained on (id maps, titles, histories, parity rows).
        out_path: the forward graph's path; its stem names the study and the other files.
        metrics: validation/test metrics to record (`val/...`, `test/...`).
        extra_meta: anything JSON-able to record under `extra` (checkpoint, trial path, ...).
        k: the K of the top-K parity check (the graph itself takes any k at run time).

    Returns:
        The sidecar dict, as written to `<study>.json`.

    Raises:
        ExportError: the model does not match the data, the exporter failed, or the
            exported graphs do not reproduce PyTorch; no file is left in place then.
    """
    out_path = Path(out_path)
    study = _study_of(out_path, model, data)
    model = copy.deepcopy(model).cpu().float().eval()
    arrays = serving_arrays(data)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    names = {
        "forward": f"{study}.onnx",
        "topk": f"{study}.topk.onnx",
        "arrays": f"{study}.npz",
        "sidecar": f"{study}.json",
    }
    meta = _sidecar(model, data, study, arrays, metrics)
    # every file is written under its final name into a hidden folder beside the target
    # (an external-data file is named inside its graph), checked there, then renamed into
    # place with the sidecar last; a failure leaves any previous export untouched
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{study}.") as work:
        temp = {part: Path(work, name) for part, name in names.items()}
        written = []
        try:
            graphs = _export_graphs(model, data)
            for part, proto in graphs.items():
                _tag(proto, meta, part, arrays)
                meta[part] = _save(proto, temp[part])
                onnx.checker.check_model(str(temp[part]), full_check=True)
                meta[part].update(signature(proto))
                written += (
                    [temp[part].with_name(meta[part]["data"]["file"])]
                    if "data" in meta[part]
                    else []
                )
            with open(temp["arrays"], "wb") as f:
                np.savez(f, allow_pickle=True, **arrays)  # the default, named: no key can be it
            meta["arrays"] = {
                "file": names["arrays"],
                "sha256": sha256(temp["arrays"]),
                "keys": sorted(arrays),
            }
            meta["parity"] = check_parity(
                model, data, arrays, _pair_inputs(model), temp["forward"], temp["topk"], k
            )
            meta["extra"] = json.loads(json.dumps(extra_meta or {}, default=str))
            temp["sidecar"].write_text(json.dumps(meta, indent=2) + "\n")
        except Exception as e:
            if isinstance(e, (ExportError, ParityError)):
                raise ExportError(f"{out_path}: {e}") from None
            raise ExportError(
                f"{out_path}: export of {model.name!r} failed: "
                f"{type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}"
            ) from e
        for path in [*written, *(temp[p] for p in ("forward", "topk", "arrays", "sidecar"))]:
            path.replace(out_path.parent / path.name)
    return meta


def _export_graphs(model: Recommender, data: PreparedData) -> dict[str, onnx.ModelProto]:
    """The pairwise `forward` graph and the top-K graph of `model`, as ONNX protos."""
    batch = torch.export.Dim("batch")
    L, n = model.seq_len, 3  # 3 example rows: not 0 or 1, so the batch axis stays symbolic
    user = torch.arange(n) % data.n_users  # [B]
    item = torch.arange(n) % data.n_items  # [B]
    seq = torch.full((n, max(L, 1)), data.n_items, dtype=torch.long)  # [B, L] all padding
    seq[:, -1] = item  # one real item per row, so the padding path and a real item both run
    values = {"user": user, "item": item, "seq": seq}
    names = _pair_inputs(model)
    forward = _export(
        model,
        tuple(values[x] for x in names),
        names,
        ["score"],
        {x: {0: batch} for x in names},
        {("user", 0): "batch"},
    )
    exclude = torch.zeros(n, data.n_items, dtype=torch.bool)  # [B, n_items]
    k = 2  # any example value > 1; the dimension is exported as the symbolic input `k`
    if L > 0:
        wrapper: nn.Module = SeqTopK(model)
        args: tuple = (user, seq, exclude, k)
        inputs = ["user", "seq", "exclude", "k"]
    else:
        wrapper, args, inputs = TopK(model), (user, exclude, k), ["user", "exclude", "k"]
    dynamic = {x: ({0: batch} if x != "k" else torch.export.Dim.DYNAMIC) for x in inputs}
    topk = _export(
        wrapper.eval(),
        args,
        inputs,
        ["items", "scores"],
        dynamic,
        {("user", 0): "batch", ("items", 1): "k"},
    )
    return {"forward": forward, "topk": topk}
