"""An exported graph is checked against the model it came from before it is published:
onnxruntime against PyTorch on real rows of the data (scores within `ATOL`; top-K identical
wherever scores are not tied within `TIE`), at the batch sizes serving uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestrator.data.types import PreparedData
from orchestrator.models.base import Recommender
from orchestrator.serve import known_mask, last_items, session

PARITY_ROWS = 256
ATOL = 1e-4
"""Largest |onnxruntime - PyTorch| allowed on any float32 score."""
TIE = 1e-5
"""Scores closer than this count as tied: their order may differ between runtimes."""


class ParityError(ValueError):
    """onnxruntime and PyTorch disagree (or there is nothing to compare on)."""


def _rows(data: PreparedData) -> tuple[np.ndarray, np.ndarray]:
    """Up to PARITY_ROWS real (user, item) rows, spread over the first non-empty split."""
    split = next((s for s in (data.val, data.test, data.train) if len(s)), None)
    if split is None:
        raise ParityError(f"dataset {data.name!r} has no interactions to check the export on")
    at = np.unique(np.linspace(0, len(split) - 1, min(PARITY_ROWS, len(split))).astype(int))
    return split.user[at].astype(np.int64), split.item[at].astype(np.int64)


def check_topk(reference: np.ndarray, items: np.ndarray, scores: np.ndarray) -> float:
    """Compare a top-K answer `[B, k]` with full reference scores `[B, n]` (excluded at -inf).

    Positions whose reference score is within TIE of a neighbour's may hold either item;
    every other position must hold exactly the reference's item. Returns the largest score
    difference; raises an ParityError on any mismatch.
    """
    order = np.argsort(-reference, axis=1, kind="stable")  # [B, n]
    ranked = np.take_along_axis(reference, order, 1)  # [B, n] descending
    k = items.shape[1]
    finite = np.isfinite(ranked[:, :k])  # [B, k] positions that hold a real candidate
    if not np.array_equal(finite, np.isfinite(scores)):
        raise ParityError(
            "top-K: onnxruntime returned excluded items (finite scores where "
            "PyTorch has -inf) or missed candidates"
        )
    with np.errstate(invalid="ignore"):
        diff = float(np.abs(np.where(finite, scores - ranked[:, :k], 0.0)).max(initial=0.0))
        gap = np.abs(np.diff(ranked, axis=1)) <= TIE  # [B, n - 1]: j ties with j + 1
    tied = np.zeros_like(finite)  # [B, k]
    tied[:, 1:] |= gap[:, : k - 1]  # ties with the previous position
    tied[:, : gap.shape[1]] |= gap[:, :k]  # ties with the next position
    wrong = finite & ~tied & (items != order[:, :k])
    if diff > ATOL:
        raise ParityError(f"top-K: scores differ from PyTorch by {diff:.3g} > {ATOL}")
    if wrong.any():
        b, j = map(int, np.argwhere(wrong)[0])
        raise ParityError(
            f"top-K: user row {b} position {j}: onnxruntime item "
            f"{int(items[b, j])}, PyTorch item {int(order[b, j])}"
        )
    return diff


@torch.no_grad()
def check_parity(
    model: Recommender,
    data: PreparedData,
    arrays: dict[str, np.ndarray],
    names: list[str],
    pairs: Path,
    topk: Path,
    k: int,
) -> dict[str, Any]:
    """Both graphs under onnxruntime vs the model under PyTorch on real rows of `data`:
    the forward graph `pairs` (inputs `names`) and the top-K graph `topk`, on the serving
    arrays (`export.serving_arrays`). Returns the parity numbers the sidecar records."""
    user, item = _rows(data)
    n_items, L = data.n_items, model.seq_len
    ptr, known = arrays["known_ptr"], arrays["known_items"]
    values = {"user": user, "item": item}
    if L > 0:
        values["seq"] = last_items(ptr, known, user, L, n_items)  # [N, L] as served
    expected = model(**{n: torch.from_numpy(values[n]) for n in names}).float().numpy()
    (got,) = session(pairs).run(["score"], {n: values[n] for n in names})  # [N]
    diff = float(np.abs(got - expected).max())
    if not np.isfinite(got).all() or not diff <= ATOL:
        raise ParityError(
            f"forward: onnxruntime scores differ from PyTorch by {diff:.3g} "
            f"> {ATOL} on {len(user)} rows of {data.name}"
        )

    users = np.unique(user)  # [U]
    exclude = known_mask(ptr, known, users, n_items)  # [U, n_items]
    k = min(k, n_items)
    feeds = {"user": users, "exclude": exclude, "k": np.array(k, dtype=np.int64)}
    seq = None
    if L > 0:
        feeds["seq"] = last_items(ptr, known, users, L, n_items)
        seq = torch.from_numpy(feeds["seq"])
    scores = model.score_all(torch.from_numpy(users), seq).float()  # [U, n_items]
    reference = scores.masked_fill(torch.from_numpy(exclude), float("-inf")).numpy()
    serving = session(topk)
    top_items, top_scores = serving.run(["items", "scores"], feeds)  # [U, k] each
    top_diff = check_topk(reference, top_items, top_scores)
    # Serving asks for one user at a time: the dynamic batch axis must hold at 1 too.
    one = serving.run(
        ["items", "scores"], {**{n: v[:1] for n, v in feeds.items() if n != "k"}, "k": feeds["k"]}
    )
    check_topk(reference[:1], one[0], one[1])
    return {
        "rows": len(user),
        "max_abs_diff": diff,
        "users": len(users),
        "k": k,
        "topk_max_abs_diff": top_diff,
        "atol": ATOL,
        "tie": TIE,
    }
