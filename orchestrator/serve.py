"""Recommendations from an exported model with onnxruntime alone: no torch on this path.

An export (`orchestrator/export.py`) leaves four files side by side:

    <study>.onnx       the model's pairwise `forward`: (user, item[, seq]) -> score
    <study>.topk.onnx  the serving graph: (user[, seq], exclude, k) -> items, scores (top-K)
    <study>.json       the sidecar: model, task, hyperparameters, metrics, signatures, hashes
    <study>.npz        the arrays: raw ids, titles, popularity, each user's items in time order

and, for a graph with more than 1 GiB of weights, `<graph file>.data` beside it (ONNX
external data, named inside the graph, its sha256 in the sidecar).

This module reads them with numpy, json and onnxruntime only (it must not import torch,
`models`, `data` or `orchestrator.engine.train`, not even indirectly), so a serving process stays
small and starts fast. `recommend` answers one user: the top-K items the user does not
already have, or, for a user the model never saw, the most popular items ("cold start").

Example:
    >>> served = load("runs/sweep/models/mf.onnx")
    >>> served.recommend("42", k=5)["items"][0]
    {'rank': 1, 'item': '...', 'score': ..., 'title': 'Item ...'}
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

FORMAT = "recsweep-onnx/1"
SUFFIXES = (".topk.onnx", ".onnx", ".json", ".npz")
INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits: "٥" is no user 5


def stem_of(path: str | Path) -> Path:
    """`runs/x/models/mf.onnx` (or `.topk.onnx`, `.json`, `.npz`) -> `runs/x/models/mf`."""
    path = Path(path)
    for suffix in SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.with_name(path.name[: -len(suffix)])
    raise ValueError(f"{path}: expected an exported model file (<study>.onnx or <study>.topk.onnx)")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def id_form(ids: np.ndarray) -> str:
    """ "integer" when every raw id is written as an integer (MovieLens), else "string"."""
    return "integer" if all(INTEGER.fullmatch(s) for s in ids.tolist()) else "string"


def canonical_id(raw: str, form: str, examples: np.ndarray) -> str:
    """The raw id as the export spells it: integers lose leading zeros and signs ('007' -> '7').

    Raises a ValueError when the id cannot be of the model's form (a word for integer ids).
    """
    raw = raw.strip()
    if form == "integer":
        if not INTEGER.fullmatch(raw):
            shown = ", ".join(repr(s) for s in examples[:3].tolist())
            raise ValueError(f"--user {raw!r}: this model's user ids are integers (e.g. {shown})")
        return str(int(raw))
    if not raw:
        raise ValueError("--user '': expected a non-empty user id")
    return raw


def last_items(
    ptr: np.ndarray, items: np.ndarray, users: np.ndarray, length: int, pad: int
) -> np.ndarray:
    """Each user's last `length` items in time order, left-padded with `pad`: `[B, L]` int64.

    `items[ptr[u]:ptr[u + 1]]` are user u's items in time order (the npz's CSR).
    """
    out = np.full((len(users), length), pad, dtype=np.int64)  # [B, L]
    for row, u in enumerate(users.tolist()):
        recent = items[max(ptr[u], ptr[u + 1] - length) : ptr[u + 1]]
        if len(recent):
            out[row, length - len(recent) :] = recent
    return out


def known_mask(ptr: np.ndarray, items: np.ndarray, users: np.ndarray, n_items: int) -> np.ndarray:
    """`[B, n_items]` bool: True where the user already has the item (excluded from top-K)."""
    mask = np.zeros((len(users), n_items), dtype=bool)  # [B, n_items]
    for row, u in enumerate(users.tolist()):
        mask[row, items[ptr[u] : ptr[u + 1]]] = True
    return mask


def session(path: Path) -> ort.InferenceSession:
    """A CPU session tuned for one request at a time (one thread: no pool hand-offs)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def read_sidecar(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(stem, sidecar dict) of an exported model; clear errors for a missing or foreign file."""
    stem = stem_of(path)
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such model file")
    side = stem.with_name(stem.name + ".json")
    if not side.exists():
        raise FileNotFoundError(
            f"{path}: its sidecar {side} is missing (the export writes "
            f"<study>.json beside <study>.onnx; re-run `python -m "
            f"orchestrator export RUN_DIR`)"
        )
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{side}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{side}: not a recsweep export sidecar (expected format {FORMAT!r})")
    return stem, meta


@dataclass
class Served:
    """An exported model ready to answer: the top-K session and the npz arrays.

    Args:
        meta: the sidecar.
        session: onnxruntime session of the top-K graph.
        arrays: the npz arrays (`user_ids`, `item_ids`, `popularity`, `known_ptr`,
            `known_items`, optionally `item_titles`).

    Example:
        >>> served = load("runs/sweep/models/mf.onnx")
        >>> served.recommend("7", k=3)["cold_start"], served.recommend("9999", k=3)["cold_start"]
        (False, True)
    """

    meta: dict[str, Any]
    session: ort.InferenceSession
    arrays: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        a = self.arrays
        self.user_ids, self.item_ids = a["user_ids"], a["item_ids"]
        self.titles = a.get("item_titles")
        self.user_index = {u: i for i, u in enumerate(self.user_ids.tolist())}
        self.n_items = len(self.item_ids)
        self.seq_len = int(self.meta["seq_len"])
        self.user_form = self.meta["data"]["user_id_form"]
        # The cold-start answer never changes: rank the catalogue by popularity once.
        self.popular = np.argsort(-a["popularity"], kind="stable")

    def recommend(self, user: str, k: int = 10) -> dict[str, Any]:
        """Top-`k` items for one raw user id, excluding the items the user already has.

        Returns a JSON-able dict: `model`, `user`, `cold_start`, `k`, `items` (each with
        `rank`, `item` (raw id), `score`, and `title` where the data has titles), `score_kind`
        (what the scores are) and `note`.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"-k {k!r}: expected an integer >= 1")
        if k > self.n_items:
            raise ValueError(f"-k {k}: larger than the catalogue ({self.n_items} items)")
        raw = canonical_id(str(user), self.user_form, self.user_ids)
        index = self.user_index.get(raw)
        out: dict[str, Any] = {"model": self.meta["study"], "user": raw, "k": k}
        if index is None:
            top = self.popular[:k]
            scores = self.arrays["popularity"][top].astype(np.float64)
            out.update(
                cold_start=True,
                score_kind="training interactions",
                note=f"user {raw!r} is not known to the model: cold start, the {k} "
                "most popular items",
            )
        else:
            top, scores = self._top(index, k)
            out.update(
                cold_start=False,
                score_kind=self.meta["score"],
                note=f"{len(top)} of {self.n_items} items; the "
                f"{self._n_known(index)} items the user has are excluded",
            )
        out["items"] = [
            self._item(rank, i, s)
            for rank, (i, s) in enumerate(zip(top.tolist(), scores.tolist(), strict=True), 1)
        ]
        return out

    def _n_known(self, index: int) -> int:
        ptr = self.arrays["known_ptr"]
        return int(len(np.unique(self.arrays["known_items"][ptr[index] : ptr[index + 1]])))

    def _top(self, index: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        a, users = self.arrays, np.array([index], dtype=np.int64)
        feeds = {
            "user": users,
            "exclude": known_mask(a["known_ptr"], a["known_items"], users, self.n_items),
            "k": np.array(k, dtype=np.int64),
        }
        if self.seq_len > 0:
            feeds["seq"] = last_items(
                a["known_ptr"], a["known_items"], users, self.seq_len, self.n_items
            )
        items, scores = self.session.run(["items", "scores"], feeds)  # [1, k], [1, k]
        keep = np.isfinite(scores[0])  # excluded items come back at -inf when k > unseen
        return items[0][keep], scores[0][keep].astype(np.float64)

    def _item(self, rank: int, index: int, score: float) -> dict[str, Any]:
        row = {"rank": rank, "item": str(self.item_ids[index]), "score": round(score, 6)}
        if self.titles is not None:
            row["title"] = str(self.titles[index])
        return row


_CACHE: dict[tuple[str, int], Served] = {}


def load(path: str | Path, verify: bool = True) -> Served:
    """Load (once per process and sidecar version) the export that `path` belongs to.

    Args:
        path: `<study>.onnx`, `<study>.topk.onnx` or `<study>.json`.
        verify: check the graph's and the arrays' sha256 against the sidecar, so a file
            replaced or truncated after the export is refused instead of served.
    """
    stem, meta = read_sidecar(path)
    side = stem.with_name(stem.name + ".json")
    key = (str(side.resolve()), side.stat().st_mtime_ns)
    if key in _CACHE:
        return _CACHE[key]
    files = {}
    # both graphs, their external weights when they have them, and the arrays
    try:
        entries = [(part, meta[part]) for part in ("forward", "topk", "arrays")]
        entries += [
            (f"{part}_data", meta[part]["data"])
            for part in ("forward", "topk")
            if "data" in meta[part]
        ]
    except (KeyError, TypeError):
        raise ValueError(
            f"{side}: names no forward graph, top-K graph and arrays (an "
            "incomplete sidecar): export again"
        ) from None
    for part, entry in entries:
        files[part] = side.with_name(entry["file"])
        if not files[part].exists():
            raise FileNotFoundError(f"{side}: names {files[part]}, which is missing")
        if verify and sha256(files[part]) != entry["sha256"]:
            raise ValueError(
                f"{files[part]}: content differs from what {side} recorded "
                "(sha256); the export is incomplete or was modified: export again"
            )
    if verify:
        for part in ("forward", "topk"):
            _check_external_data(files[part], meta[part].get("data"), side)
    with np.load(files["arrays"], allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    topk = session(files["topk"])
    _check_agreement(side, meta, arrays, topk.get_modelmeta().custom_metadata_map)
    served = Served(meta, topk, arrays)
    _CACHE[key] = served
    return served


def _check_external_data(graph: Path, recorded: dict | None, side: Path) -> None:
    """A graph whose weights live in another file must have that file named (and so
    hashed) in the sidecar: else a replaced weights file would be served."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    proto = onnx.load(str(graph), load_external_data=False)
    used = {
        entry.value
        for t in proto.graph.initializer
        if uses_external_data(t)
        for entry in t.external_data
        if entry.key == "location"
    }
    named = {recorded["file"]} if recorded else set()
    if used - named:
        raise ValueError(
            f"{graph}: its weights are in {', '.join(sorted(used - named))}, which {side} "
            "does not name (nor hash): export again"
        )


def _check_agreement(
    side: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray], graph: dict[str, str]
) -> None:
    """The sidecar, the id maps and the graph describe one model: users, items, sequence
    length (files from two exports mixed in one folder would answer with wrong items)."""
    try:
        n_users, n_items = int(meta["data"]["n_users"]), int(meta["data"]["n_items"])
        found = {
            "users in the id map": (len(arrays["user_ids"]), n_users),
            "items in the id map": (len(arrays["item_ids"]), n_items),
            "item popularities": (len(arrays["popularity"]), n_items),
            "user history offsets": (len(arrays["known_ptr"]), n_users + 1),
            "users in the graph": (int(graph.get("recsweep.n_users", -1)), n_users),
            "items in the graph": (int(graph.get("recsweep.n_items", -1)), n_items),
            "sequence length in the graph": (
                int(graph.get("recsweep.seq_len", -1)),
                int(meta["seq_len"]),
            ),
        }
        known = arrays["known_items"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{side}: the export is incomplete ({e} missing or malformed): export again"
        ) from None
    wrong = [
        f"{what}: {got}, the sidecar says {want}"
        for what, (got, want) in found.items()
        if got != want
    ]
    if len(known) and not 0 <= known.min() <= known.max() < n_items:
        wrong.append(f"user histories name items outside 0..{n_items - 1}")
    if wrong:
        raise ValueError(
            f"{side}: the sidecar, id maps and graph disagree ({'; '.join(wrong)}"
            "): files of different exports are mixed; export again"
        )


def recommend(path: str | Path, user: str, k: int = 10) -> dict[str, Any]:
    """`load(path).recommend(user, k)`: the top-K of one raw user id (see `Served`)."""
    return load(path).recommend(user, k)


def render(result: dict[str, Any]) -> str:
    """The human-readable table of a `recommend` result."""
    head = "interactions" if result["cold_start"] else "score"
    lines = [
        printable(f"{result['model']}: user {result['user']}: {result['note']}"),
        f"{'rank':>4}  {'item':<10} {head:>12}  title",
    ]
    for row in result["items"]:
        lines.append(
            f"{row['rank']:>4}  {printable(row['item']):<10} {row['score']:>12.4f}  "
            f"{printable(row.get('title', ''))}".rstrip()
        )
    return "\n".join(lines)


CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0 and C1 controls: ESC starts terminal codes


def printable(text: str) -> str:
    """`text` with terminal control characters replaced by '?': a title from a data file
    must not move the cursor, recolour or retitle the terminal it is printed on."""
    return CONTROL.sub("?", text)
