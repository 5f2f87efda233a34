"""Torch-side data helpers for training and evaluation: negatives, sequence windows, CSR.

Everything here runs on the device of its inputs and is vectorized over users and samples
(the only loops are "resample the few collisions" rounds, whose count shrinks
geometrically).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from orchestrator.data.types import Array, Split


class NegativeSampler:
    """Exact negative sampling: items a user never interacted with in `positives`.

    Uniform draws with replacement (training) need no rejection: a user's free items are
    numbered 0..free-1 in item order, and the r-th is `r + #{j: p_j - j <= r}` over the
    user's sorted positives p_j, one `torch.searchsorted` in an array as long as
    `positives` (so the cost of a draw does not grow with the user's density, where
    redrawing collisions took more rounds the more items a user had). Every other draw
    (popularity mode, or distinct items per row: the sampled evaluation protocol) is drawn
    for every (user, slot) at once and the collisions redrawn until none is left: the key
    `user * n_items + item` is tested in a packed bitmap of all (user, item) pairs when it
    is small (ml-1m: 2.8 MB), else by `torch.searchsorted` in the sorted keys. Both are
    exact, not approximate.

    Args:
        positives: the interactions to exclude (torch tensors, e.g. `data.train.to(device)`).
        n_items: number of items.
        mode: 'uniform' over the user's non-positives, or 'popularity': proportional to the
            item's count in `positives` (items never seen there are never drawn).
        generator: torch generator on the same device, for reproducible draws.
        n_users: number of users (default: largest user index in `positives` + 1).

    Example:
        >>> train = data.train.to("cpu")
        >>> sampler = NegativeSampler(train, data.n_items)
        >>> neg = sampler.sample(train.user[:8], 4)  # [B, 4], never a training positive
        >>> neg.shape
        torch.Size([8, 4])
        >>> keys = train.user[:8, None] * data.n_items + neg  # [B, 4] as user * n_items + item
        >>> bool(torch.isin(keys, train.user * data.n_items + train.item).any())
        False
    """

    BITMAP_MAX_BITS = 2**31
    """Largest n_users * n_items held as a bitmap (256 MB); beyond, binary search."""

    def __init__(
        self,
        positives: Split[Array],
        n_items: int,
        mode: str = "uniform",
        generator: torch.Generator | None = None,
        n_users: int | None = None,
    ) -> None:
        if mode not in ("uniform", "popularity"):
            raise ValueError(f"negative sampling mode {mode!r}: expected 'uniform' or 'popularity'")
        user, item = torch.as_tensor(positives.user), torch.as_tensor(positives.item)
        self.n_items, self.mode, self.generator = n_items, mode, generator
        self.device = user.device
        self.keys = torch.unique(user * n_items + item)  # [P] sorted, duplicates removed
        n_users = n_users if n_users is not None else int(user.max()) + 1 if len(user) else 0
        # Distinct positives per user: the guard against users with nothing left to sample.
        self.degree = torch.bincount(self.keys // n_items, minlength=n_users)  # [U]
        self.weight = torch.bincount(item, minlength=n_items).double()  # [I] popularity
        # Inverse-CDF draws (a binary search in a small table) beat torch.multinomial here;
        # float64 keeps items seen once in 20M rows drawable.
        self.cdf = torch.cumsum(self.weight, 0) / self.weight.sum().clamp(min=1)  # [I]
        # Popularity mode can only draw items seen in `positives`; count them once.
        self.n_drawable = n_items if mode == "uniform" else int((self.weight > 0).sum())

    @functools.cached_property
    def first(self) -> Tensor:
        """`[U]` each user's first row in `keys`."""
        return torch.cumsum(self.degree, 0) - self.degree

    @functools.cached_property
    def ranks(self) -> Tensor:
        """`[P]` each key less its rank within its user, `user * n_items + p_j - j`: still
        sorted, and the count of a user's entries <= `user * n_items + r` is the number of
        positives below the user's r-th free item (built on the first uniform draw)."""
        rank = (
            torch.arange(len(self.keys), device=self.device) - self.first[self.keys // self.n_items]
        )  # [P]
        return self.keys - rank

    @functools.cached_property
    def bitmap(self) -> Tensor | None:
        """The keys as a packed bitmap of all (user, item) pairs, or None when that would
        exceed `BITMAP_MAX_BITS` (built on the first rejection draw)."""
        n_bits = len(self.degree) * self.n_items
        if n_bits > self.BITMAP_MAX_BITS:
            return None
        # Keys are distinct, so summing their bits into int64 words is a bitwise OR
        # (bit 63 wraps to the sign bit, which is still the right bit).
        words = torch.zeros((n_bits + 63) // 64, dtype=torch.long, device=self.device)
        return words.index_add_(0, self.keys >> 6, 1 << (self.keys & 63))

    def sample(self, users: Tensor, n: int, distinct: bool = False) -> Tensor:
        """`n` negatives per user, `[B] -> [B, n]`.

        Args:
            users: user indices, `[B]`, on the sampler's device.
            n: negatives per user.
            distinct: also forbid repeats within a row (the sampled evaluation protocol).
        """
        users = torch.as_tensor(users, device=self.device)
        if len(users) == 0 or n == 0:
            return torch.empty(len(users), n, dtype=torch.long, device=self.device)
        if bool(((users < 0) | (users >= len(self.degree))).any()):
            raise ValueError(
                f"user indices must be in [0, n_users={len(self.degree)}) "
                "(pass n_users for users without positives)"
            )
        free = self.n_drawable - self.degree[users]  # [B] items each user can still be given
        need = n if distinct else 1
        if bool((free < need).any()):
            short = int(users[free < need][0])
            raise ValueError(
                f"user index {short} has only {int(free[users == short][0])} items "
                f"it never interacted with ({self.mode} mode), needs {need}: "
                "lower the number of negatives or filter such users out"
            )
        if self.mode == "uniform" and not distinct:
            return self._free_items(users, free, n)
        neg = self._draw((len(users), n))  # [B, n]
        bad = self._collisions(users, neg, distinct)  # [B, n]
        rows = torch.arange(len(users), device=self.device)  # [B]
        while True:  # each round redraws and re-checks only the rows that had a collision
            hit = bad.any(dim=1)  # [R]
            rows, bad = rows[hit], bad[hit]  # [R'], [R', n]
            if len(rows) == 0:
                return neg
            redo = neg[rows]  # [R', n]
            redo[bad] = self._draw((int(bad.sum()),))
            neg[rows] = redo
            bad = self._collisions(users[rows], redo, distinct)

    def _free_items(self, users: Tensor, free: Tensor, n: int) -> Tensor:
        """`n` uniform draws among each user's free items, with replacement: `[B, n]`."""
        u = torch.rand(
            (len(users), n), generator=self.generator, device=self.device, dtype=torch.float64
        )
        r = (u * free[:, None]).long().clamp(max=(free - 1)[:, None])  # [B, n] in [0, free)
        below = torch.searchsorted(self.ranks, users[:, None] * self.n_items + r, right=True)
        return r + below - self.first[users, None]  # [B, n] skip the positives below r

    def _draw(self, shape: tuple[int, ...]) -> Tensor:
        if self.mode == "uniform":
            return torch.randint(self.n_items, shape, generator=self.generator, device=self.device)
        u = torch.rand(shape, generator=self.generator, device=self.device, dtype=torch.float64)
        # right=True: the first item whose cdf exceeds u, so zero-weight items never come up
        return torch.searchsorted(self.cdf, u, right=True).clamp(max=self.n_items - 1)

    def _collisions(self, users: Tensor, neg: Tensor, distinct: bool) -> Tensor:
        """Mask of draws that are positives (or, with `distinct`, repeats within the row)."""
        key = users[:, None] * self.n_items + neg  # [B, n]
        if self.bitmap is not None:
            hit = (self.bitmap[key >> 6] >> (key & 63) & 1).bool()  # [B, n]
        elif len(self.keys):
            pos = torch.searchsorted(self.keys, key).clamp(max=len(self.keys) - 1)  # [B, n]
            hit = self.keys[pos] == key
        else:
            hit = torch.zeros_like(neg, dtype=torch.bool)
        if distinct and neg.shape[1] > 1:
            value, order = neg.sort(dim=1)  # [B, n]
            repeat = torch.zeros_like(hit)
            repeat[:, 1:] = value[:, 1:] == value[:, :-1]  # all but the first of each run
            hit |= torch.zeros_like(hit).scatter_(1, order, repeat)
        return hit


def _time_order(split: Split[Array]) -> tuple[Tensor, Tensor]:
    """(user, item) sorted by user, then timestamp, stable (so concatenations are fine)."""
    user, item, ts = (torch.as_tensor(a) for a in (split.user, split.item, split.timestamp))
    order = torch.sort(ts, stable=True).indices
    order = order[torch.sort(user[order], stable=True).indices]
    return user[order], item[order]


def sequence_windows(train: Split[Array], L: int, T: int, pad: int) -> dict[str, Tensor]:
    """Caser's training windows: (user, L previous items, T next items) at every position.

    A window is made for each position t of a user's time-ordered sequence with at least one
    item before it and T items from t on; the L previous items are left-padded with `pad`.
    This materialises `[W, L + T]` items; `window_starts` + `gather_windows` build the same
    windows a batch at a time from O(interactions) indices.

    Args:
        train: the training split (torch tensors).
        L: history length.
        T: number of target items.
        pad: the padding index (`n_items`).

    Returns:
        `user [W]`, `seq [W, L]`, `target [W, T]`.
    """
    user, at, item, pos = window_starts(train, T)
    seq, target = gather_windows(item, pos, at, L, T, pad)
    return {"user": user, "seq": seq, "target": target}


def window_starts(train: Split[Array], T: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Where Caser's windows start: `user [W]` and `at [W]` (the row of each window's first
    target), with the time-ordered `item [N]` and each row's position in its user's
    sequence `pos [N]` that `gather_windows` reads."""
    user, item = _time_order(train)
    if len(user) == 0:
        empty = torch.empty(0, dtype=torch.long, device=user.device)
        return empty, empty, item, empty
    count = torch.bincount(user)  # [U]
    start = torch.cumsum(count, 0) - count  # [U] each user's first row
    pos, count = torch.arange(len(user), device=user.device) - start[user], count[user]  # [N]
    at = torch.nonzero((pos >= 1) & (pos + T <= count)).squeeze(1)  # [W] target start rows
    return user[at], at, item, pos


def gather_windows(
    item: Tensor, pos: Tensor, at: Tensor, L: int, T: int, pad: int
) -> tuple[Tensor, Tensor]:
    """The windows starting at rows `at` `[B]`: `seq [B, L]` (left-padded) and
    `target [B, T]`."""
    back = torch.arange(-L, 0, device=item.device)  # [L]
    hist = at[:, None] + back  # [B, L] rows of the previous items
    seq = torch.where(pos[at, None] + back >= 0, item[hist.clamp(min=0)], pad)  # [B, L]
    target = item[at[:, None] + torch.arange(T, device=item.device)]  # [B, T]
    return seq, target


def last_items(split: Split[Array], n_users: int, L: int, pad: int) -> Tensor:
    """Each user's last `L` items in time order, left-padded with `pad`: `[n_users, L]`.

    The split need not be sorted (the order is rebuilt from the timestamps): for the test
    evaluation, pass train and val concatenated field by field with `torch.cat`.
    """
    user, item = _time_order(split)
    device = user.device
    back = torch.arange(-L, 0, device=device)  # [L]
    if len(user) == 0:
        return torch.full((n_users, L), pad, dtype=torch.long, device=device)
    if int(user.max()) >= n_users:
        raise ValueError(f"last_items: user index {int(user.max())} >= n_users={n_users}")
    count = torch.bincount(user, minlength=n_users)  # [U]
    end = torch.cumsum(count, 0)  # [U]
    rows = (end[:, None] + back).clamp(min=0)  # [U, L]
    return torch.where(back >= -count[:, None], item[rows.clamp(max=len(item) - 1)], pad)


def csr_entries(indptr: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The entries of the given CSR rows, flattened without a Python loop over rows.

    Returns (row position in `rows` [E], position within that row [E], index of the entry
    in the CSR's value arrays [E], entries per row [b]).
    """
    start = indptr[rows]  # [b]
    count = indptr[rows + 1] - start  # [b]
    n_entries = int(count.sum())
    pos = torch.repeat_interleave(
        torch.arange(len(rows), device=rows.device), count, output_size=n_entries
    )  # [E]
    within = torch.arange(n_entries, device=rows.device) - (count.cumsum(0) - count)[pos]  # [E]
    return pos, within, start[pos] + within, count


def user_item_csr(split: Split[Array], n_users: int) -> tuple[Tensor, Tensor]:
    """The distinct items of each user as CSR: `indptr [n_users + 1]`, `indices [nnz]`.

    `indices[indptr[u]:indptr[u + 1]]` are user u's items, sorted ascending (e.g. to mask
    training items out of full-ranking scores).
    """
    user, item = torch.as_tensor(split.user), torch.as_tensor(split.item)
    width = int(item.max()) + 1 if len(item) else 1
    keys = torch.unique(user * width + item)  # [nnz] sorted by (user, item)
    count = torch.bincount(keys // width, minlength=n_users)  # [U]
    indptr = torch.zeros(n_users + 1, dtype=torch.long, device=user.device)
    indptr[1:] = torch.cumsum(count, 0)
    return indptr, keys % width
