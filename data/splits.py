"""The split protocols: which rows of the prepared interactions train, validate and test.

All deterministic given the seed; nothing of test is in train or val:

- `random:a,b,c`: a seeded permutation of all rows (in source order) cut in ratios a/b/c;
- `leave-last`: per user in time order (ties: source order), test = last, val = the one
  before; users with fewer than 3 interactions stay entirely in train (counted);
- `temporal:a,b,c`: per user in time order, the first a share trains, the next b
  validates, the rest tests (Caser's 70/10/20); every user keeps >= 1 training row;
- `u1`..`u5`, `ua`, `ub` (MovieLens 100K): test = the release's `.test` file; val = a
  seeded random 10% of the `.base` file (the u-splits themselves are random splits);
- `ncf`: train and test exactly as given; val = each user's last training interaction in
  time (users with >= 2), moved out of train; test negatives = the benchmark's own;
- `kfold:F/K`: fold F of a seeded K-fold cross-validation: one seeded permutation of all
  rows (the same for every F) cut into K near-equal parts, test = part F, val = a seeded
  random 10% of the rest (as for the u-splits), so each row is in exactly one test fold.

`fold_splits` turns a sweep's `data.folds` (u1..u5, ua/ub, or a K) into the split of each
fold.
"""

from __future__ import annotations

import numpy as np

from orchestrator.data.types import Interactions, RawDataset

FIXED_SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub", "ncf")
SPLIT_HELP = "leave-last, random:0.8,0.1,0.1, temporal:0.7,0.1,0.2, u1..u5, ua, ub, ncf, kfold:1/5"
# the canonical splits whose test sets are disjoint, so they can be folds of one experiment
FOLD_FAMILIES = (("u1", "u2", "u3", "u4", "u5"), ("ua", "ub"))
FIXED_VAL_SHARE = 0.1  # of a canonical split's base file, carved out as validation
TRAIN, VAL, TEST = 0, 1, 2  # a row's part
Columns = dict[str, np.ndarray]  # the prepared columns: u, i, r, t, row, part, origin


def parse_split(split: str, raw: RawDataset | None = None) -> tuple[str, tuple[float, ...]]:
    """`(kind, ratios)` of a split spec; raises naming the spec and what was expected."""
    name, _, rest = split.partition(":")
    if name in ("random", "temporal"):
        try:
            ratios = tuple(float(x) for x in rest.split(","))
        except ValueError:
            ratios = ()
        if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6 or ratios[0] == 0:
            raise ValueError(
                f"split {split!r}: expected {name}:TRAIN,VAL,TEST with three "
                "shares >= 0 summing to 1 (train > 0), e.g. "
                f"{name}:{'0.8,0.1,0.1' if name == 'random' else '0.7,0.1,0.2'}"
            )
        return name, ratios
    if split == "leave-last":
        return split, ()
    if name == "kfold":
        fold, _, k = rest.partition("/")
        if not (fold.isdigit() and k.isdigit() and int(k) >= 2 and 1 <= int(fold) <= int(k)):
            raise ValueError(
                f"split {split!r}: expected kfold:F/K, fold F of K >= 2 folds (1 <= F <= K), "
                "e.g. kfold:1/5"
            )
        return name, (float(fold), float(k))
    if split in FIXED_SPLITS:
        if raw is not None and split not in raw.fixed_splits:
            ships = ", ".join(raw.fixed_splits) or "none"
            raise ValueError(
                f"split {split!r}: dataset {raw.name!r} does not ship it "
                f"(it ships: {ships}); the u1..ub splits come with ml-100k, "
                "ncf with ncf:PREFIX"
            )
        return ("ncf" if split == "ncf" else "fixed"), ()
    raise ValueError(f"unknown split {split!r}: expected one of {SPLIT_HELP}")


def gather(raw: RawDataset, split: str, kind: str) -> tuple[Interactions, np.ndarray, np.ndarray]:
    """All interactions to prepare, the part each came from (TRAIN/TEST of a fixed split,
    else TRAIN), and its row within that part."""
    if kind not in ("fixed", "ncf"):
        n = len(raw.interactions)
        return raw.interactions, np.zeros(n, dtype=np.int64), np.arange(n)
    base, test = raw.fixed_splits[split]()
    optional = []  # user and item are always there
    for name in ("rating", "timestamp"):
        a, b = getattr(base, name), getattr(test, name)
        if (a is None) != (b is None):
            raise ValueError(
                f"split {split!r} of {raw.name!r}: '{name}' is given for only one of base and test"
            )
        optional.append(None if a is None else np.concatenate([a, b]))
    part = np.r_[np.full(len(base), TRAIN), np.full(len(test), TEST)]
    both = Interactions(
        np.concatenate([base.user, test.user]), np.concatenate([base.item, test.item]), *optional
    )
    return both, part, np.r_[np.arange(len(base)), np.arange(len(test))]


def assign(
    t: Columns, order: np.ndarray, kind: str, ratios: tuple[float, ...], seed: int
) -> tuple[np.ndarray, dict]:
    """TRAIN/VAL/TEST per row, and what the split wants to report; `order`: the rows by
    user, then time, ties in source order (`prepare._time_order`)."""
    n = len(t["u"])
    rng = np.random.default_rng(seed)
    count = np.bincount(t["u"])  # [U]
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n) - np.repeat(np.cumsum(count) - count, count)  # [N] within user
    size = count[t["u"]]  # [N] the row's user's interaction count
    where = np.zeros(n, dtype=np.int64)
    if kind == "random":
        perm = rng.permutation(n)
        n_train, n_val = round_half_up(ratios[0] * n), round_half_up(ratios[1] * n)
        where[perm[n_train : n_train + n_val]] = VAL
        where[perm[n_train + n_val :]] = TEST
        return where, {}
    if kind == "kfold":
        fold, k = int(ratios[0]), int(ratios[1])
        part = np.array_split(rng.permutation(n), k)[fold - 1]
        where[part] = TEST
        base = np.flatnonzero(where == TRAIN)
        where[rng.permutation(base)[: round_half_up(FIXED_VAL_SHARE * len(base))]] = VAL
        return where, {"val_from": f"seeded random {FIXED_VAL_SHARE:.0%} of the other folds"}
    if kind == "leave-last":
        long = size >= 3
        where[long & (pos == size - 1)] = TEST
        where[long & (pos == size - 2)] = VAL
        return where, {"short_users_all_in_train": int((count[count > 0] < 3).sum())}
    if kind == "temporal":
        train_end = np.maximum(1, round_half_up(ratios[0] * size))
        val_end = np.maximum(train_end, round_half_up((ratios[0] + ratios[1]) * size))
        where[pos >= train_end] = VAL
        where[pos >= val_end] = TEST
        return where, {}
    where[t["part"] == TEST] = TEST
    base = np.flatnonzero(t["part"] == TRAIN)
    if kind == "fixed":  # the u-splits are random: carve val the same way
        where[rng.permutation(base)[: round_half_up(FIXED_VAL_SHARE * len(base))]] = VAL
        return where, {"val_from": f"seeded random {FIXED_VAL_SHARE:.0%} of base"}
    # ncf: each user's last training interaction in time, for users with >= 2 of them
    base = order[t["part"][order] == TRAIN]
    user = t["u"][base]
    first, last = np.r_[True, user[1:] != user[:-1]], np.r_[user[1:] != user[:-1], True]
    where[base[last & ~first]] = VAL
    return where, {"val_from": "each user's last training interaction"}


def round_half_up(x: np.ndarray | float) -> np.ndarray | int:
    """Half-up rounding (numpy's rint rounds halves to even: 2.5 -> 2)."""
    out = np.floor(np.asarray(x) + 0.5 + 1e-9).astype(np.int64)
    return int(out) if out.ndim == 0 else out


def fold_splits(folds: tuple[str, ...] | int) -> tuple[str, ...]:
    """The split of each fold of a sweep's `data.folds`: a K (>= 2) is a seeded K-fold
    (`kfold:1/K` .. `kfold:K/K`); a list names 2 or more splits of one family with disjoint
    test sets (some of u1..u5, or ua and ub, or kfold:F/K of one K), so each test rating is
    in one fold only. () for none. Raises naming the key and what was expected."""
    if isinstance(folds, int):
        if folds < 2:
            raise ValueError(f"data.folds: {folds}: expected K >= 2 folds, or a list of splits")
        return tuple(f"kfold:{f}/{folds}" for f in range(1, folds + 1))
    expected = (
        "expected K >= 2, or 2 or more distinct splits with disjoint test sets: some of "
        "u1..u5, or ua and ub (ml-100k), or kfold:F/K of one K"
    )

    def family(split: str) -> str:
        if split.startswith("kfold:"):
            try:
                return "kfold/" + str(parse_split(split)[1][1])
            except ValueError as e:
                raise ValueError(f"data.folds: {e}") from None
        for names in FOLD_FAMILIES:
            if split in names:
                return names[0]
        raise ValueError(f"data.folds: {split!r} is not a fold: {expected}")

    families = {family(s) for s in folds}
    if len(families) > 1 or len(set(folds)) != len(folds) or len(folds) == 1:
        raise ValueError(
            f"data.folds: {list(folds)} mixes protocols, repeats a split or names one: {expected}"
        )
    return tuple(folds)
