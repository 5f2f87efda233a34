"""The two data shapes every layer agrees on.

`RawDataset` is what a source hands over: interactions in the user's own ids, before any
filtering or indexing. `PreparedData` is what trials train on: contiguous indices, a
train/val/test split, and the id maps needed to speak raw ids again. Both are plain
arrays, so a `PreparedData` goes into Ray's object store once and every trial reads it
without re-parsing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import pandas as pd
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)
"""What a `Split` holds: NumPy arrays as prepared, torch tensors once moved to a device."""


@dataclass
class Interactions:
    """Raw interactions, one row per event, ids as the source spells them.

    Args:
        user: raw user ids, `[N]` (int64, or object for string ids).
        item: raw item ids, `[N]`.
        rating: explicit ratings as float32 `[N]`, or None for implicit feedback.
        timestamp: seconds since the epoch as int64 `[N]`, or None when the source has none.
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray | None = None
    timestamp: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.user)


@dataclass
class RawDataset:
    """What a source loader returns.

    Args:
        name: the spec string it was loaded from (`ml-100k`, `csv:/path`, `synthetic:...`).
        interactions: every interaction of the dataset.
        items: side information indexed by raw item id (columns `title`, `genres`, where the
            source has them; `genres` is a `|`-joined string), or None.
        fixed_splits: named canonical splits shipped with the source, e.g. ml-100k's `u1`..`ub`
            or an `ncf:` benchmark's `ncf`, as a loader returning `(base, test)` raw
            interactions. Loaded lazily: only the split asked for is parsed.
        test_negatives: for `ncf:` sources, raw item ids of the fixed sampled negatives per
            test row, `[n_test, N]` aligned with the `ncf` split's test interactions.
        fingerprint: a content hash of the source files (sha256 hex), stable across machines.
        files: the files it was read from, for error messages and `data describe`.
        note: one line about where the data came from, printed by the CLI (e.g. "synthetic:
            best possible RMSE 0.50").
    """

    name: str
    interactions: Interactions
    items: pd.DataFrame | None = None
    fixed_splits: dict[str, Callable[[], tuple[Interactions, Interactions]]] = field(
        default_factory=dict
    )
    test_negatives: np.ndarray | None = None
    fingerprint: str = ""
    files: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class Split(Generic[Array]):
    """One part of a split in index space, sorted by (user, timestamp), ties in source order.
    Prepared as NumPy arrays (`Split[np.ndarray]`); `to` gives tensors (`Split[Tensor]`).

    Args:
        user: user indices in `[0, n_users)`, int64 `[N]`.
        item: item indices in `[0, n_items)`, int64 `[N]`.
        rating: float32 `[N]`; 1.0 everywhere when the source is implicit.
        timestamp: int64 `[N]`; the row's position in the source when it has no timestamps.
    """

    user: Array
    item: Array
    rating: Array
    timestamp: Array

    def __len__(self) -> int:
        return len(self.user)

    def to(self, device: str | torch.device) -> Split[torch.Tensor]:
        """The same split as torch tensors on `device` (int64 ids, float32 ratings)."""
        return Split(
            *(
                torch.as_tensor(a).to(device)
                for a in (self.user, self.item, self.rating, self.timestamp)
            )
        )


@dataclass
class PreparedData:
    """Indexed, filtered and split data: everything a trial needs, nothing it must parse.

    Args:
        name: the dataset spec.
        split_name: the split spec (`leave-last`, `u1`, `random:0.8,0.1,0.1`, ...).
        fingerprint: hash of the source content plus the preparation settings.
        user_ids: raw id of each user index, `[n_users]`.
        item_ids: raw id of each item index, `[n_items]`.
        train, val, test: the split, disjoint, no test interaction in train or val.
        val_negatives, test_negatives: fixed sampled negatives as item indices `[n_rows, N]`
            aligned with `val`/`test` rows (an `ncf:` benchmark's, or drawn once, seeded, for
            the sampled protocol); None when not prepared.
        has_ratings: whether `rating` holds explicit ratings.
        rating_range: (min, max) of the ratings, for clipping predictions.
        item_titles: title per item index, or None.
        item_genres: `|`-joined genres per item index, or None.
        stats: counts from every filter and the split sizes, for `data describe`.
        note: the source's one-line note.

    Example:
        >>> from orchestrator.data import load_source, prepare
        >>> raw = load_source("synthetic:users=60,items=80,interactions=1500,seed=1")
        >>> data = prepare(raw, split="leave-last", eval_negatives=20)
        >>> data.n_users, data.n_items, len(data.train)  # leave-last: a val and a test per user
        (60, 80, 1380)
    """

    name: str
    split_name: str
    fingerprint: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    train: Split[np.ndarray]
    val: Split[np.ndarray]
    test: Split[np.ndarray]
    has_ratings: bool
    rating_range: tuple[float, float]
    val_negatives: np.ndarray | None = None
    test_negatives: np.ndarray | None = None
    item_titles: list[str] | None = None
    item_genres: list[str] | None = None
    stats: dict = field(default_factory=dict)
    note: str = ""

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)
