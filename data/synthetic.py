"""An embedded, seeded generator of MovieLens-like data whose best possible RMSE is known.

The generative story, chosen so every model family has something real to learn:

- items belong to latent genres; item factors cluster around their genre's centre, user
  factors are free: the true score is `mu + b_u + b_i + p_u . q_i` (rank `rank`);
- item popularity follows a Zipf law and user activity a Pareto law (skewed, like MovieLens);
- which items a user rates is drawn without replacement with weight
  `popularity x exp(preference)` (Gumbel top-k), so ranking models have signal;
- each user's history is ordered in time as a walk through genre blocks in a fixed cyclic
  order (genre g, then the next genre the user likes, ...) with a few strays, so the next
  item is predictable from the last few: a sequence model (Caser) has signal beyond the
  user's overall taste;
- the observed rating is `clip(round(true + N(0, noise^2)), 1, 5)`. The best any model can
  do is predict `E[rating | true]`; its RMSE, `sqrt(mean Var[rating | true])`, is computed
  exactly from the normal CDF and printed in the dataset's note.

Example:
    >>> raw = load_synthetic("synthetic:users=100,items=200,interactions=3000,seed=1")
    >>> raw.note
    'synthetic: best possible RMSE ~0.55 ...'
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from orchestrator.data.types import Interactions, RawDataset

T0 = 1_577_836_800  # 2020-01-01 UTC: the synthetic log starts here
STAY_IN_ORDER = 0.85  # share of a user's items placed inside their genre block (rest stray)
OVERSAMPLE = 2  # popularity candidates drawn per rating of a light user


@dataclass(frozen=True)
class SyntheticParams:
    """The spec's keys (`synthetic:users=943,items=1682,...`); defaults are ml-100k's size.

    Args:
        users: number of users.
        items: number of items.
        interactions: total (user, item) ratings; each user rates an item at most once.
        rank: dimension of the latent user/item factors.
        genres: number of latent genres (item clusters, and the blocks of the sequences);
            default 18, or `items` when fewer.
        noise: standard deviation of the Gaussian noise added to the true score.
        seed: seed of every random draw.
    """

    users: int = 943
    items: int = 1682
    interactions: int = 100_000
    rank: int = 8
    genres: int = 18
    noise: float = 0.5
    seed: int = 0


@dataclass
class Synthetic:
    """A generated dataset plus the truth behind it (for tests and benchmarks).

    Args:
        raw: the dataset, as any source would return it.
        expected: `E[rating | true score]` per interaction, `[N]`: the Bayes predictor.
        best_rmse: `sqrt(mean Var[rating | true score])`, the RMSE of `expected`.
    """

    raw: RawDataset
    expected: np.ndarray
    best_rmse: float


def parse_spec(spec: str) -> SyntheticParams:
    """`synthetic` or `synthetic:k=v,...` -> params; unknown keys and bad values raise."""
    name, _, rest = spec.partition(":")
    if name != "synthetic":
        raise ValueError(f"dataset spec {spec!r}: expected 'synthetic' or 'synthetic:k=v,...'")
    fields = {f.name: f for f in dataclasses.fields(SyntheticParams)}
    counts: dict[str, int] = {}  # every key but noise, the one float
    noise = SyntheticParams.noise
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq:
            raise ValueError(f"dataset spec {spec!r}: expected key=value, got {part!r}")
        if key not in fields:
            raise ValueError(
                f"dataset spec {spec!r}: unknown key {key!r}; allowed: {', '.join(fields)}"
            )
        try:
            if key == "noise":
                noise = float(value)
            else:
                counts[key] = int(value)
        except ValueError:
            raise ValueError(
                f"dataset spec {spec!r}: {key}={value!r} is not "
                f"{'a number' if key == 'noise' else 'an integer'}"
            ) from None
    if "genres" not in counts:  # the default must not exceed a small catalogue
        counts["genres"] = min(SyntheticParams.genres, counts.get("items", SyntheticParams.items))
    p = SyntheticParams(**counts, noise=noise)
    checks = [
        (p.users >= 1, "users >= 1"),
        (p.items >= 2, "items >= 2"),
        (p.rank >= 1, "rank >= 1"),
        (1 <= p.genres <= p.items, "1 <= genres <= items"),
        (p.noise >= 0, "noise >= 0"),
        (p.users <= p.interactions <= p.users * p.items, "users <= interactions <= users * items"),
    ]
    for ok, expected in checks:
        if not ok:
            raise ValueError(f"dataset spec {spec!r}: expected {expected} ({p})")
    return p


def load_synthetic(spec: str) -> RawDataset:
    """Generate the dataset named by `spec` (`synthetic[:k=v,...]`, keys of SyntheticParams)."""
    return generate(parse_spec(spec)).raw


def generate(p: SyntheticParams) -> Synthetic:
    """Generate a dataset (vectorized numpy; ml-100k size in well under a second)."""
    rng = np.random.default_rng(p.seed)
    U, n_items, r = p.users, p.items, p.rank

    # Latent structure: item factors near their genre's centre, so genres are real clusters.
    genre = rng.integers(p.genres, size=n_items)  # [I]
    centre = rng.normal(size=(p.genres, r))  # [G, r]
    scale = 0.84 / r**0.25  # makes std(p_u . q_i) ~ 0.7 whatever the rank
    Q = (0.8 * centre[genre] + 0.6 * rng.normal(size=(n_items, r))) * scale  # [I, r]
    P = rng.normal(size=(U, r)) * scale  # [U, r]
    pop_rank = rng.permutation(n_items)  # [I], 0 = the most popular item
    log_pop = _log_popularity(pop_rank)  # [I]
    # Popular items are rated a little higher, as in MovieLens.
    b_i = 0.3 * (log_pop - log_pop.mean()) / log_pop.std() + rng.normal(0, 0.35, n_items)
    b_u = rng.normal(0, 0.4, U)
    mu = 2.9  # selection favours liked items, so observed ratings average ~3.5

    counts = _activity(rng, U, n_items, p.interactions)  # [U]
    user, item = _choose_items(rng, P, Q, pop_rank, counts)  # [N], [N], sorted by user

    # Time order: genre blocks visited in cyclic order from a random start genre per user;
    # the block key's fraction orders items inside a block; strays go anywhere.
    start = rng.integers(p.genres, size=U)  # [U]
    block = (genre[item] - start[user]) % p.genres  # [N]
    key = block + rng.random(len(user))
    stray = rng.random(len(user)) > STAY_IN_ORDER
    key[stray] = rng.random(int(stray.sum())) * p.genres
    order = np.argsort(user * float(p.genres) + key)  # by user, then key in [0, genres)
    user, item = user[order], item[order]
    gaps = 1 + rng.exponential(6 * 3600, len(user)).astype(np.int64)  # seconds between events
    first = np.r_[0, np.flatnonzero(np.diff(user)) + 1]  # each user's first row
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(elapsed[first] - gaps[first], counts)  # restart the clock per user
    user_start = T0 + rng.integers(365 * 86400, size=U)
    timestamp = user_start[user] + elapsed  # [N], strictly increasing per user

    true = mu + b_u[user] + b_i[item] + _dot_rows(P, Q, user, item)  # [N]
    rating = np.clip(np.rint(true + rng.normal(0, p.noise, len(user))), 1, 5)
    expected, var = _rounded_moments(true, p.noise)
    best = float(np.sqrt(var.mean()))

    items = pd.DataFrame(
        {
            "title": [f"Item {i}" for i in range(1, n_items + 1)],
            "genres": [f"Genre {g}" for g in genre],
        },
        index=pd.Index(np.arange(1, n_items + 1), name="item"),
    )
    canonical = ",".join(f"{k}={v}" for k, v in dataclasses.asdict(p).items())
    raw = RawDataset(
        name=f"synthetic:{canonical}",
        interactions=Interactions(
            user=user + 1, item=item + 1, rating=rating.astype(np.float32), timestamp=timestamp
        ),
        items=items,
        fingerprint=hashlib.sha256(f"synthetic-v2|{canonical}".encode()).hexdigest(),
        note=f"synthetic: best possible RMSE ~{best:.2f} (rank-{r} true scores + "
        f"N(0, {p.noise:g}^2) noise, rounded to 1..5; {p.genres} latent genres)",
    )
    return Synthetic(raw=raw, expected=expected, best_rmse=best)


def _activity(rng: np.random.Generator, users: int, items: int, total: int) -> np.ndarray:
    """Ratings per user: a floor of min(5, total // users), the rest Pareto-distributed.

    No user rates more than ~45% of the items (MovieLens' most active: 44%) unless the total
    demands it, so every user keeps items to sample negatives from.
    """
    floor = min(5, total // users, items)
    cap = max(-(-total // users), int(0.45 * items))
    counts = np.full(users, floor, dtype=np.int64)
    weight = rng.pareto(1.4, users) + 1.0  # [U], heavy-tailed like MovieLens users
    left = total - counts.sum()
    while left > 0:  # water-filling: users at the item cap drop out (few rounds at most)
        room = cap - counts
        w = np.where(room > 0, weight, 0.0)
        share = np.minimum(np.floor(left * w / w.sum()).astype(np.int64), room)
        if share.sum() == 0:  # the remainder is smaller than one per user: largest weights
            top = np.argsort(-w, kind="stable")[:left]
            share = np.zeros_like(counts)
            share[top] = 1
        counts += share
        left -= int(share.sum())
    return counts


def _log_popularity(pop_rank: np.ndarray) -> np.ndarray:
    """Log weight of each item from its popularity rank r: log(log((r + 2) / (r + 1))), a
    Zipf(1) law (~1 / (r + 1.5)) whose inverse CDF is closed-form (see `_choose_items`)."""
    return np.log(np.log1p(1.0 / (1.0 + pop_rank)))


def _choose_items(
    rng: np.random.Generator, P: np.ndarray, Q: np.ndarray, pop_rank: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's `counts[u]` distinct items, weight popularity x exp(1.5 preference).

    Exact Gumbel top-k scans the whole catalogue per user (users x items), so only heavy
    users take it (`counts[u] >= items / 8`: at most 8 item scores per rating they make).
    Every other user draws `OVERSAMPLE x counts[u]` candidates from the popularity law and keeps the
    `counts[u]` distinct ones with the largest preference + Gumbel keys: popularity enters
    through the proposal, preference through the keys, and the cost is O(ratings). The rare
    light user with too few distinct candidates takes the exact path.
    """
    n_items = len(Q)
    heavy = counts * 8 >= n_items
    by_rank = np.argsort(pop_rank)  # [I], the item of each popularity rank
    P32, Q32 = P.astype(np.float32), Q.astype(np.float32)  # candidate keys need no more
    picked, short = [], []
    light = np.flatnonzero(~heavy)
    ends = np.cumsum(OVERSAMPLE * counts[light])  # candidates up to each light user
    bounds = np.searchsorted(ends, np.arange(1 << 22, ends[-1] if len(ends) else 0, 1 << 22))
    for chunk in filter(len, np.split(light, bounds)):  # ~4M candidates per chunk
        local = np.repeat(np.arange(len(chunk)), OVERSAMPLE * counts[chunk])  # [m], sorted
        # the weights' CDF up to rank r is log(r + 2) / log(I + 1): invert it
        r = np.ceil((n_items + 1.0) ** rng.random(len(local))) - 2
        item = by_rank[np.clip(r, 0, n_items - 1).astype(np.int64)]
        key = 1.5 * _dot_rows(P32, Q32, chunk[local], item) + rng.gumbel(size=len(local))
        # distinct (user, item) pairs, each with its best key (sorting ints is fast)
        pair = local * n_items + item
        order = np.argsort(pair, kind="stable")
        pair = pair[order]
        first = np.flatnonzero(np.r_[True, np.diff(pair) != 0])
        key = np.maximum.reduceat(key[order], first)
        local, item = pair[first] // n_items, pair[first] % n_items
        # each user's distinct candidates by key, best first: keys lie well inside
        # (-32, 32), so `local * 64 - key` orders by user, then by key descending
        order = np.argsort(local * 64.0 - np.clip(key, -31, 31), kind="stable")
        local, item = local[order], item[order]
        have = np.bincount(local, minlength=len(chunk))  # distinct candidates per user
        rank = np.arange(len(local)) - np.repeat(np.cumsum(have) - have, have)
        enough = have >= counts[chunk]
        keep = (rank < counts[chunk][local]) & enough[local]
        picked.append((chunk[local[keep]], item[keep]))
        short.append(chunk[~enough])
    exact = np.sort(np.concatenate([np.flatnonzero(heavy), *short]))
    picked.append(_exact_top_k(rng, P, Q, _log_popularity(pop_rank), exact, counts))
    user = np.concatenate([u for u, _ in picked])
    item = np.concatenate([i for _, i in picked])
    order = np.argsort(user, kind="stable")
    return user[order], item[order]


def _exact_top_k(
    rng: np.random.Generator,
    P: np.ndarray,
    Q: np.ndarray,
    log_pop: np.ndarray,
    users: np.ndarray,
    counts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Gumbel top-k over the whole catalogue for `users`: sampling without replacement."""
    n_items = len(Q)
    chunk = max(1, 4_000_000 // n_items)  # bounds memory to ~32 MB per chunk of users
    picked_users, picked_items = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for lo in range(0, len(users), chunk):
        block = users[lo : lo + chunk]
        logits = (log_pop + 1.5 * (P[block] @ Q.T)).astype(np.float32)  # [c, I]
        keys = logits - np.log(-np.log(rng.random(logits.shape, dtype=np.float32) + 1e-12))
        ranked = np.argsort(-keys, axis=1)  # [c, I]
        take = np.arange(n_items) < counts[block, None]  # [c, I]
        picked_items.append(ranked[take])
        picked_users.append(np.repeat(block, counts[block]))
    return np.concatenate(picked_users), np.concatenate(picked_items)


def _dot_rows(P: np.ndarray, Q: np.ndarray, user: np.ndarray, item: np.ndarray) -> np.ndarray:
    """`P[user[n]] . Q[item[n]]` for every n, `[N]`, in blocks of 1M rows (bounded memory)."""
    out = np.empty(len(user), dtype=P.dtype)
    for lo in range(0, len(user), 1 << 20):
        s = slice(lo, lo + (1 << 20))
        out[s] = np.einsum("nr,nr->n", P[user[s]], Q[item[s]])
    return out


def _rounded_moments(true: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of clip(round(true + N(0, noise^2)), 1, 5), per element."""
    if noise == 0:
        rating = np.clip(np.rint(true), 1, 5)
        return rating, np.zeros_like(true)
    edges = np.array([1.5, 2.5, 3.5, 4.5])  # rating k is taken between edges k-1 and k
    z = (edges[None, :] - true[:, None]) / noise  # [N, 4]
    cdf = torch.special.ndtr(torch.from_numpy(z)).numpy()  # torch, not scipy: a dependency
    # with c_j = P(rating <= j): E[R] = 1 + sum_j P(R > j) = 5 - sum_j c_j, and
    # E[R^2] = 1 + sum_j (2j + 1) P(R > j) = 25 - sum_j (2j + 1) c_j (j = 1..4)
    mean = 5.0 - cdf.sum(axis=1)
    return mean, 25.0 - cdf @ np.array([3.0, 5.0, 7.0, 9.0]) - mean**2
