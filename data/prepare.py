"""From a `RawDataset` to `PreparedData`: filter, index, split, fix evaluation negatives.

Order of operations (each step counts what it removed, in `stats["filters"]`; steps 1-3 are
`filters`'):

1. de-duplicate repeated (user, item) pairs with the stated policy (first the user's
   opinion is settled, then it is thresholded);
2. `min_rating`: keep only ratings >= the threshold (implicit positives);
3. k-core: drop users with < `user_core` and items with < `item_core` interactions,
   repeated until nothing changes (dropping an item can push a user under the bar);
4. index the surviving raw ids to contiguous indices (sorted raw ids, so the maps are
   `np.unique`'s and `index_of` is a binary search);
5. split (`data/splits.py`: random, leave-last, temporal, the u-splits, ncf);
6. sampled-protocol negatives: `eval_negatives` distinct items per val/test row, drawn once
   (seeded) uniformly from the items the user never interacted with in any split.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from orchestrator.data.filters import apply_filters, check_settings
from orchestrator.data.sampling import NegativeSampler
from orchestrator.data.splits import TEST, TRAIN, VAL, Columns, assign, gather, parse_split
from orchestrator.data.types import PreparedData, RawDataset, Split


def prepare(
    raw: RawDataset,
    split: str = "leave-last",
    *,
    min_rating: float | None = None,
    user_core: int = 0,
    item_core: int = 0,
    dedup: str = "last",
    seed: int = 0,
    eval_negatives: int = 99,
    rating_range: tuple[float, ...] | None = None,
) -> PreparedData:
    """Filter, index and split a raw dataset (see the module docstring for each step).

    Args:
        raw: what a source returned.
        split: split spec: `leave-last`, `random:0.8,0.1,0.1`, `temporal:0.7,0.1,0.2`,
            `u1`..`u5`, `ua`, `ub`, `ncf` (the last ones only where the source ships them).
        min_rating: keep only ratings >= this (None keeps all).
        user_core, item_core: k-core thresholds (0 disables).
        dedup: repeated (user, item): keep the 'last' or 'first' in time, the 'mean' rating
            (at the last one's time), or 'error'.
        seed: seed of the random splits and of the evaluation negatives.
        eval_negatives: negatives per val/test row for the sampled protocol (0: none).
        rating_range: the rating scale (lo, hi): a rating outside it is an error, and
            rating predictions are clipped to it (None: to the ratings' own min and max).

    Example:
        >>> from orchestrator.data import load_source
        >>> data = prepare(load_source("ml-100k"), "leave-last", min_rating=4, user_core=5)
        >>> data.n_users, len(data.train), data.stats["filters"]["min_rating_removed"]
        (938, 53485, 44625)
    """
    kind, ratios = parse_split(split, raw)
    check_settings(dedup, user_core, item_core, eval_negatives)
    t, codes = _columns(raw, split, kind)
    if rating_range is not None:
        _check_range(t, codes, raw.name, rating_range)
    t, filters = apply_filters(
        t, codes, raw.name, split, kind, dedup, min_rating, user_core, item_core
    )
    user_ids, item_ids, neg_codes = _index(t, codes)
    splits, test_rows, split_stats = _split(t, kind, ratios, seed)
    # ncf: the benchmark's own test negatives, in the order of the test rows
    own = None if neg_codes is None else neg_codes[t["origin"][test_rows]]
    val_neg, test_neg = _eval_negatives(t, splits, own, len(item_ids), eval_negatives, seed)
    chosen = {
        "min_rating": min_rating,
        "user_core": user_core,
        "item_core": item_core,
        "dedup": dedup,
        "seed": seed,
        "eval_negatives": eval_negatives,
        **({"rating_range": list(rating_range)} if rating_range is not None else {}),
    }
    stats = _stats(t, codes, user_ids, item_ids, split, splits, split_stats, filters, chosen)
    titles, genres, missing = _side_info(raw, item_ids)
    if missing:
        stats["items_without_side_info"] = missing
    if test_neg is not None and neg_codes is not None:
        stats["test_negatives"] = _negative_counts(test_neg, splits[TEST].item)
    settings = {"source": raw.fingerprint, "split": split, **chosen}
    return PreparedData(
        name=raw.name,
        split_name=split,
        fingerprint=hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(),
        user_ids=user_ids,
        item_ids=item_ids,
        train=splits[TRAIN],
        val=splits[VAL],
        test=splits[TEST],
        has_ratings=codes.has_ratings,
        rating_range=_scale(t, codes, rating_range),
        val_negatives=val_neg,
        test_negatives=test_neg,
        item_titles=titles,
        item_genres=genres,
        stats=stats,
        note=raw.note,
    )


@dataclass
class Codes:
    """The raw ids behind the columns' codes, and the benchmark's own test negatives."""

    n_raw: int
    has_ratings: bool
    has_time: bool
    user_raw: np.ndarray
    item_raw: np.ndarray
    neg_codes: np.ndarray | None  # ncf: [n_test file rows, N] item codes, -1 padded


def _check_range(t: Columns, codes: Codes, name: str, scale: tuple[float, ...]) -> None:
    """Every rating lies on the declared scale; the first one that does not is named."""
    if len(scale) != 2 or not (math.isfinite(scale[0]) and scale[0] < scale[1] < math.inf):
        raise ValueError(f"data.rating_range={list(scale)}: expected [lo, hi], lo < hi")
    if not codes.has_ratings:
        raise ValueError(f"data.rating_range: dataset {name!r} has no ratings to check")
    outside = np.flatnonzero((t["r"] < scale[0]) | (t["r"] > scale[1]))
    if len(outside):
        at = outside[0]
        raise ValueError(
            f"data.rating_range [{scale[0]:g}, {scale[1]:g}]: {len(outside):,} of "
            f"{len(t['r']):,} ratings of {name!r} lie outside it, the first: user "
            f"{codes.user_raw[t['u'][at]]}, item {codes.item_raw[t['i'][at]]}, rating "
            f"{float(t['r'][at]):g} (interaction {int(t['row'][at]) + 1} of the source)"
        )


def _columns(raw: RawDataset, split: str, kind: str) -> tuple[Columns, Codes]:
    """The interactions as coded columns (users and items numbered in order of first
    appearance, the fixed negatives' items among them)."""
    inter, part, origin = gather(raw, split, kind)
    n_raw = len(inter)
    if n_raw == 0:
        raise ValueError(f"dataset {raw.name!r} has no interactions")
    has_ratings, has_time = inter.rating is not None, inter.timestamp is not None
    if kind == "temporal" and not has_time:
        raise ValueError(
            f"split {split!r}: dataset {raw.name!r} has no timestamps, so there "
            "is no time order to split by; use leave-last (source order) or "
            "random:0.8,0.1,0.1"
        )
    user_raw, u = _codes(inter.user)
    neg_raw = raw.test_negatives if kind == "ncf" else None  # [n_test, N], -1 padded
    neg_used = None if neg_raw is None else neg_raw >= 0
    all_items = inter.item if neg_raw is None else np.concatenate([inter.item, neg_raw[neg_used]])
    item_raw, i = _codes(all_items)
    neg_codes = None
    if neg_raw is not None:
        neg_codes = np.full(neg_raw.shape, -1, dtype=np.int64)
        neg_codes[neg_used] = i[n_raw:]
    t: Columns = {
        "u": u.astype(np.int64),
        "i": i[:n_raw].astype(np.int64),
        "r": (
            inter.rating.astype(np.float32)
            if inter.rating is not None
            else np.ones(n_raw, dtype=np.float32)
        ),
        "t": (
            inter.timestamp.astype(np.int64)
            if inter.timestamp is not None
            else np.arange(n_raw, dtype=np.int64)
        ),
        "row": np.arange(n_raw),
        "part": part,
        "origin": origin,
    }
    return t, Codes(n_raw, has_ratings, has_time, user_raw, item_raw, neg_codes)


def _index(t: Columns, codes: Codes) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Step 4, in place: number the users that survived, and the items that survived plus
    the fixed negatives' items. Returns the raw user and item ids by index, and the fixed
    negatives' item indices by row of the benchmark's test file (-1 padded)."""
    kept_negs = None if codes.neg_codes is None else codes.neg_codes[t["origin"][t["part"] == TEST]]
    used_users, t["u"] = _codes(t["u"])
    used_items, item_code = _codes(
        t["i"] if kept_negs is None else np.r_[t["i"], kept_negs[kept_negs >= 0]]
    )
    t["i"] = item_code[: len(t["u"])]
    neg_index = None
    if codes.neg_codes is not None:
        neg_index = np.where(codes.neg_codes >= 0, np.searchsorted(used_items, codes.neg_codes), -1)
    return codes.user_raw[used_users], codes.item_raw[used_items], neg_index


def _split(
    t: Columns, kind: str, ratios: tuple[float, ...], seed: int
) -> tuple[dict[int, Split], np.ndarray, dict[str, Any]]:
    """Step 5: each split's rows, by user, then time, ties in source order; the test rows'
    places in the columns; the split's own statistics."""
    order = _time_order(t)
    where, split_stats = assign(t, order, kind, ratios, seed)
    splits, rows = {}, {}
    for s in (TRAIN, VAL, TEST):
        rows[s] = order[where[order] == s]
        splits[s] = Split(t["u"][rows[s]], t["i"][rows[s]], t["r"][rows[s]], t["t"][rows[s]])
    return splits, rows[TEST], split_stats


def _eval_negatives(
    t: Columns,
    splits: dict[int, Split],
    own: np.ndarray | None,
    n_items: int,
    eval_negatives: int,
    seed: int,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Step 6: the sampled protocol's negatives of the val and test rows: `eval_negatives`
    items each user never interacted with, seeded; for the test rows, a benchmark's `own`
    where it ships them (ncf)."""
    val_neg, test_neg = None, own
    if eval_negatives:
        gen = torch.Generator().manual_seed(seed)
        everything = Split(t["u"], t["i"], t["r"], t["t"]).to("cpu")
        sampler = NegativeSampler(everything, n_items, generator=gen, n_users=int(t["u"].max()) + 1)
        try:
            val_neg = sampler.sample(
                torch.as_tensor(splits[VAL].user), eval_negatives, distinct=True
            ).numpy()
            if test_neg is None:
                test_neg = sampler.sample(
                    torch.as_tensor(splits[TEST].user), eval_negatives, distinct=True
                ).numpy()
        except ValueError as e:
            raise ValueError(f"eval_negatives={eval_negatives}: {e}") from None
    return val_neg, test_neg


def _negative_counts(negatives: np.ndarray, targets: np.ndarray) -> dict[str, int]:
    """What a benchmark's own negatives hold beyond the plain case: rows listing fewer than
    the most, and rows listing their own test item (scored once: the repeat is removed)."""
    listed = (negatives >= 0).sum(1)  # [n_test]
    repeats = (negatives == targets[:, None]).sum(1)  # [n_test]
    return {
        "max_per_row": int(listed.max(initial=0)),
        "rows_with_fewer": int((listed < listed.max(initial=0)).sum()),
        "rows_listing_the_test_item": int((repeats > 0).sum()),
        "repeats_removed": int(repeats.sum()),
    }


def describe(data: PreparedData) -> dict:
    """A JSON-able summary: users, items, interactions, density, ratings (histogram),
    time_span, split (sizes), filters (counts), settings, fingerprint, note."""
    return {"dataset": data.name, **data.stats, "fingerprint": data.fingerprint, "note": data.note}


def index_of(ids: np.ndarray, raw_ids: object, what: str = "item") -> np.ndarray:
    """Indices of raw ids in a prepared id map (`data.user_ids` or `data.item_ids`).

    Args:
        ids: the sorted raw ids of a `PreparedData` (`user_ids` or `item_ids`).
        raw_ids: one raw id or an array of them; strings are converted for integer ids,
            so ids typed on a command line work.
        what: 'user' or 'item', for the error message.

    Example:
        >>> index_of(data.item_ids, [50, 18])  # raw ids -> item indices
        array([49, 17])
        >>> index_of(data.item_ids, "50")  # an id typed on a command line
        array([49])
    """
    raw = np.atleast_1d(np.asarray(raw_ids))
    if ids.dtype.kind in "iu" and raw.dtype.kind not in "iu":
        try:
            raw = raw.astype(np.int64)
        except ValueError:
            raise ValueError(
                f"{what} ids {raw[:5].tolist()}: expected integers, like the dataset's {what} ids"
            ) from None
    elif ids.dtype == object:
        raw = raw.astype(str).astype(object)
    pos = np.searchsorted(ids, raw).clip(max=max(len(ids) - 1, 0))
    found = ids[pos] == raw if len(ids) else np.zeros(len(raw), dtype=bool)
    if not found.all():
        missing = raw[~found][:5].tolist()
        raise ValueError(
            f"unknown {what} id(s) {missing}: not among the {len(ids)} {what}s of the prepared data"
        )
    return pos


# --- steps -----------------------------------------------------------------------------------


def _codes(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`np.unique(ids, return_inverse=True)`, by counting when the ids are small integers
    (every MovieLens release): O(N) rather than a sort, seconds less at 25M rows."""
    if ids.dtype.kind in "iu" and len(ids) and 0 <= ids.min() and ids.max() < 4 * len(ids):
        present = np.bincount(ids) > 0
        return np.flatnonzero(present).astype(ids.dtype), (np.cumsum(present) - 1)[ids]
    uniq, inverse = np.unique(ids, return_inverse=True)
    return uniq, inverse.astype(np.int64)


def _time_order(t: Columns) -> np.ndarray:
    """Rows by user, then time, ties in source order: `np.lexsort((row, t, u))` of a table
    in source order, as one stable sort of a (user, time) code where that fits in int64
    (faster than lexsort)."""
    lo, span = int(t["t"].min()), int(t["t"].max()) - int(t["t"].min()) + 1
    if int(t["u"].max(initial=0)) + 1 > np.iinfo(np.int64).max // span:
        return np.lexsort((t["row"], t["t"], t["u"]))
    return np.argsort(t["u"] * span + (t["t"] - lo), kind="stable")  # t is in source order


def _scale(t: Columns, codes: Codes, declared: tuple[float, ...] | None) -> tuple[float, float]:
    """The rating scale predictions are clipped to: the declared one, else the ratings' own
    min and max ((0, 1) for interactions without ratings)."""
    if declared is not None:
        return float(declared[0]), float(declared[1])
    if codes.has_ratings:
        return float(t["r"].min()), float(t["r"].max())
    return 0.0, 1.0


def _stats(
    t: Columns,
    codes: Codes,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    split: str,
    splits: dict[int, Split],
    split_stats: dict[str, Any],
    filters: dict[str, int],
    chosen: dict[str, Any],
) -> dict[str, Any]:
    """What `describe` shows of the prepared data: its sizes, ratings, time span, split,
    what each filter removed and the settings."""
    return {
        "raw_interactions": codes.n_raw,
        "users": len(user_ids),
        "items": len(item_ids),
        "interactions": len(t["u"]),
        "density": float(f"{len(t['u']) / (len(user_ids) * len(item_ids)):.4g}"),
        "ratings": _histogram(t["r"]) if codes.has_ratings else None,
        "time_span": _time_span(t["t"]) if codes.has_time else None,
        "split": {
            "name": split,
            "train": len(splits[TRAIN]),
            "val": len(splits[VAL]),
            "test": len(splits[TEST]),
            **split_stats,
        },
        "filters": filters,
        "settings": chosen,
    }


def _histogram(r: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(r, return_counts=True)
    if len(values) <= 20:
        return {f"{v:g}": int(c) for v, c in zip(values, counts, strict=True)}
    counts, edges = np.histogram(r, bins=10)
    return {
        f"[{a:g}, {b:g})": int(c) for a, b, c in zip(edges[:-1], edges[1:], counts, strict=True)
    }


def _time_span(ts: np.ndarray) -> dict:
    def day(s: int) -> str:
        return datetime.fromtimestamp(int(s), tz=timezone.utc).strftime("%Y-%m-%d")

    lo, hi = int(ts.min()), int(ts.max())
    return {"first": day(lo), "last": day(hi), "days": round((hi - lo) / 86400, 1)}


def _side_info(
    raw: RawDataset, item_ids: np.ndarray
) -> tuple[list[str] | None, list[str] | None, int]:
    """Titles and genres per item index; items the side table lacks get their raw id as
    title and no genre (counted, not hidden)."""
    if raw.items is None:
        return None, None, 0
    side = raw.items.reindex(item_ids)
    missing = int(side.isna().all(axis=1).sum()) if len(side.columns) else len(item_ids)
    titles = genres = None
    if "title" in side:
        titles = [
            str(x) if isinstance(x, str) else str(i)
            for x, i in zip(side["title"], item_ids, strict=True)
        ]
    if "genres" in side:
        genres = [x if isinstance(x, str) else "" for x in side["genres"]]
    return titles, genres, missing
