"""The NCF authors' pre-split files (He et al., 2017): `ncf:PREFIX` names PREFIX.train.rating,
PREFIX.test.rating and PREFIX.test.negative, kept exactly as given and checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.data.files import fingerprint, read_ratings
from orchestrator.data.types import Interactions, RawDataset


def load_ncf(spec: str) -> RawDataset:
    """Load `ncf:PREFIX`: PREFIX.train.rating, PREFIX.test.rating and PREFIX.test.negative.

    The NCF authors' format (He et al., 2017): tab-separated `user item rating timestamp` with
    0-based ids, and one `(user,item)\\tneg1\\tneg2...` line per test row. Kept exactly as
    given; the negatives are checked: each line's (user,item) must be the test row on the same
    line, and no negative may be the test item or one of the user's training items.
    """
    prefix = spec.partition(":")[2]
    if not prefix:
        raise ValueError(f"dataset spec {spec!r}: expected ncf:PREFIX")
    prefix = str(Path(prefix).expanduser())
    paths = [Path(prefix + s) for s in (".train.rating", ".test.rating", ".test.negative")]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(
                f"{p}: no such file (ncf:PREFIX needs {paths[0].name}, "
                f"{paths[1].name} and {paths[2].name})"
            )
    train, test = (read_ratings(p, "\t") for p in paths[:2])
    negatives = _read_negatives(paths[2], test, train)
    both = Interactions(
        *(
            np.concatenate([a, b])
            for a, b in zip(
                (train.user, train.item, train.rating, train.timestamp),
                (test.user, test.item, test.rating, test.timestamp),
                strict=True,
            )
        )
    )
    return RawDataset(
        name=spec,
        interactions=both,
        fixed_splits={"ncf": lambda: (train, test)},
        test_negatives=negatives,
        fingerprint=fingerprint(paths),
        files=[str(p) for p in paths],
        note=f"ncf: {prefix} ({len(train)} train, {len(test)} test rows, "
        f"up to {negatives.shape[1]} fixed negatives each)",
    )


def _read_negatives(path: Path, test: Interactions, train: Interactions) -> np.ndarray:
    """Parse and check PREFIX.test.negative; returns item ids `[n_test, N]`, -1 padded."""
    rows: list[list[int]] = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            try:
                head = fields[0]
                if not (head.startswith("(") and head.endswith(")")):
                    raise ValueError
                u, i = (int(x) for x in head[1:-1].split(","))
                negs = [int(x) for x in fields[1:]]
                if not negs or min(negs) < 0:
                    raise ValueError
            except (ValueError, IndexError):
                raise ValueError(
                    f"{path}, line {lineno}: expected '(user,item)' then "
                    f"tab-separated negative item ids (>= 0), got {line!r}"
                ) from None
            k = lineno - 1
            if k >= len(test) or (u, i) != (test.user[k], test.item[k]):
                want = (
                    f"({test.user[k]},{test.item[k]}), the test row on line {lineno} of the "
                    f"test.rating file"
                    if k < len(test)
                    else f"no line: the test.rating file has only {len(test)} rows"
                )
                raise ValueError(
                    f"{path}, line {lineno}: ({u},{i}) does not match; expected {want}"
                )
            if len(set(negs)) != len(negs):
                twice = next(n for n in negs if negs.count(n) > 1)
                raise ValueError(
                    f"{path}, line {lineno}: negative item {twice} is listed more than once"
                )
            rows.append(negs)
    if len(rows) != len(test):
        raise ValueError(f"{path}: {len(rows)} lines, expected one per test row ({len(test)})")
    width = max(map(len, rows), default=0)
    neg = np.full((len(test), width), -1, dtype=np.int64)  # [n_test, N]
    for k, negs in enumerate(rows):
        neg[k, : len(negs)] = negs
    # a pair as one int64 code so membership is one vectorized isin
    top = int(max(train.item.max(initial=0), test.item.max(initial=0), neg.max(initial=0))) + 1
    train_codes = train.user * top + train.item  # [n_train]
    in_train = (neg >= 0) & np.isin(test.user[:, None] * top + neg, train_codes)  # [n_test, N]
    bad = np.argwhere(in_train)
    if len(bad):
        k, j = bad[0]
        raise ValueError(
            f"{path}, line {k + 1}: negative item {neg[k, j]} is a training item "
            f"of user {test.user[k]}; negatives must be items the user never "
            "rated in training"
        )
    return neg
