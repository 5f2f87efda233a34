"""Steps 1-3 of `prepare`: de-duplicate repeated (user, item) pairs, keep ratings over a
threshold, the k-core; each counts what it removed, and an empty result is an error that
names the step."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from orchestrator.data.splits import TEST, TRAIN, Columns

if TYPE_CHECKING:
    from orchestrator.data.prepare import Codes

DEDUP_POLICIES = ("last", "first", "mean", "error")


def check_settings(dedup: str, user_core: int, item_core: int, eval_negatives: int) -> None:
    """The filters' settings (and the evaluation negatives') are ones `prepare` takes."""
    if dedup not in DEDUP_POLICIES:
        raise ValueError(f"dedup={dedup!r}: expected one of {', '.join(DEDUP_POLICIES)}")
    if user_core < 0 or item_core < 0 or eval_negatives < 0:
        raise ValueError(
            f"user_core={user_core}, item_core={item_core}, "
            f"eval_negatives={eval_negatives}: expected integers >= 0"
        )


def apply_filters(
    t: Columns,
    codes: Codes,
    name: str,
    split: str,
    kind: str,
    dedup: str,
    min_rating: float | None,
    user_core: int,
    item_core: int,
) -> tuple[Columns, dict[str, int]]:
    """Steps 1-3: de-duplication (per part of a fixed split: a pair in both parts is an
    error), the minimum rating, the k-core to a fixpoint; with what each removed."""
    filters: dict[str, int] = {}
    t, filters["dedup_removed"] = _dedup(t, dedup, name, codes.user_raw, codes.item_raw)
    if kind == "fixed" or kind == "ncf":
        _check_disjoint(t, split, name, codes.user_raw, codes.item_raw)
    if min_rating is not None:
        if not codes.has_ratings:
            raise ValueError(f"min_rating={min_rating}: dataset {name!r} has no ratings")
        before = t
        t = _take(t, t["r"] >= min_rating, f"min_rating={min_rating}", name)
        filters.update(_removed("min_rating", before, t))
    else:
        filters.update(_removed("min_rating", t, t))
    t, core = _k_core(t, user_core, item_core, name)
    filters.update(core)
    return t, filters


def _take(t: Columns, keep: np.ndarray, step: str, name: str) -> Columns:
    """Rows where `keep`; an empty result is an error naming the step that emptied it."""
    if not keep.any():
        raise ValueError(
            f"dataset {name!r}: no interactions left after {step} "
            f"(it removed all {len(keep)}); loosen that filter"
        )
    return {k: v[keep] for k, v in t.items()}


def _dedup(
    t: Columns, policy: str, name: str, user_raw: np.ndarray, item_raw: np.ndarray
) -> tuple[Columns, int]:
    """Resolve repeated (user, item) pairs within a part; returns (table, rows removed), the
    rows kept in source order."""
    pair = (t["part"] * (int(t["u"].max()) + 1) + t["u"]) * (int(t["i"].max()) + 1) + t["i"]
    if not (np.diff(np.sort(pair)) == 0).any():  # the usual case: one fast sort, no copy
        return t, 0
    order = np.lexsort((t["row"], t["t"], t["i"], t["u"], t["part"]))  # pairs in time order
    t = {k: v[order] for k, v in t.items()}
    same = (
        (t["u"][1:] == t["u"][:-1])
        & (t["i"][1:] == t["i"][:-1])
        & (t["part"][1:] == t["part"][:-1])
    )  # row k+1 repeats row k's pair
    n_dup = int(same.sum())
    if policy == "error":
        k = int(np.flatnonzero(same)[0])
        raise ValueError(
            f"dataset {name!r}: {n_dup} repeated (user, item) rows, e.g. user "
            f"{user_raw[t['u'][k]]} item {item_raw[t['i'][k]]}; expected each "
            "pair once (choose dedup 'last', 'first' or 'mean')"
        )
    start = np.r_[True, ~same]  # first row of each pair, in time order
    end = np.r_[~same, True]  # last row of each pair
    if policy == "mean":
        group = np.cumsum(start) - 1  # [N] pair number of each row
        mean = np.bincount(group, weights=t["r"]) / np.bincount(group)
        t["r"] = mean[group].astype(np.float32)
    keep = np.flatnonzero(start if policy == "first" else end)
    keep = keep[np.argsort(order[keep])]  # back to source order
    return {k: v[keep] for k, v in t.items()}, n_dup


def _check_disjoint(
    t: Columns, split: str, name: str, user_raw: np.ndarray, item_raw: np.ndarray
) -> None:
    """A fixed split whose base and test share a (user, item) pair would leak test."""
    width = int(t["i"].max()) + 1
    base = t["u"][t["part"] == TRAIN] * width + t["i"][t["part"] == TRAIN]
    test = t["u"][t["part"] == TEST] * width + t["i"][t["part"] == TEST]
    both = np.intersect1d(base, test)
    if len(both):
        u, i = divmod(int(both[0]), width)
        raise ValueError(
            f"split {split!r} of {name!r}: {len(both)} (user, item) pairs are in "
            f"both base and test, e.g. user {user_raw[u]} item {item_raw[i]}; "
            "a test interaction must not be trained on"
        )


def _k_core(t: Columns, user_core: int, item_core: int, name: str) -> tuple[Columns, dict]:
    """Drop users/items under their thresholds until none is (a fixpoint)."""
    before, rounds = t, 0
    while user_core > 1 or item_core > 1:
        uc, ic = np.bincount(t["u"]), np.bincount(t["i"])
        keep = (uc[t["u"]] >= user_core) & (ic[t["i"]] >= item_core)
        if keep.all():
            break
        rounds += 1
        t = _take(t, keep, f"k-core (user_core={user_core}, item_core={item_core})", name)
    return t, {**_removed("k_core", before, t), "k_core_rounds": rounds}


def _removed(step: str, before: Columns, after: Columns) -> dict[str, int]:
    """What a filter removed: rows, and users and items left with no row at all."""

    def n(t: Columns, col: str) -> int:  # distinct codes, by counting
        return int(np.count_nonzero(np.bincount(t[col])))

    return {
        f"{step}_removed": len(before["u"]) - len(after["u"]),
        f"{step}_users_removed": n(before, "u") - n(after, "u"),
        f"{step}_items_removed": n(before, "i") - n(after, "i"),
    }
