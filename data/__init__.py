"""The data layer: sources -> `RawDataset` -> `prepare` -> `PreparedData`.

This folder is the top-level `data/`; it imports as `orchestrator.data` (through the link
`orchestrator/data`), never as `data`, so a user's own `data/` folder shadows nothing.

Example:
    >>> from orchestrator.data import load_dataset
    >>> from orchestrator.config import DataConfig
    >>> data = load_dataset(DataConfig(dataset="ml-100k", split="leave-last"))
    >>> describe(data)["users"]
    943
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from orchestrator.data.prepare import describe, index_of, prepare
from orchestrator.data.sources import available_offline, load_source
from orchestrator.data.splits import parse_split
from orchestrator.data.types import Interactions, PreparedData, RawDataset, Split

if TYPE_CHECKING:
    from orchestrator.config import DataConfig

__all__ = [
    "Interactions",
    "PreparedData",
    "RawDataset",
    "Split",
    "available_offline",
    "describe",
    "index_of",
    "load_dataset",
    "load_datasets",
    "load_source",
    "prepare",
]


def load_dataset(cfg: DataConfig) -> PreparedData:
    """Load and prepare the dataset a `DataConfig` names, on its `split`.

    `dataset: default` is ml-100k when it can be had offline (in `data_dir`), else the
    synthetic generator; which one, and why, is said in one line on stderr.
    """
    return load_datasets(cfg, (cfg.split,))[0]


def load_datasets(cfg: DataConfig, splits: Sequence[str]) -> list[PreparedData]:
    """The dataset a `DataConfig` names, read once and prepared on each of `splits` (the
    folds of a sweep)."""
    spec = cfg.dataset
    if spec == "default":
        if available_offline("ml-100k", cfg.data_dir):
            spec = "ml-100k"
            print("data: default dataset -> ml-100k (found offline)", file=sys.stderr)
        else:
            spec = "synthetic"
            print(
                "data: default dataset -> synthetic (ml-100k is not in the data dir; "
                "pass --dataset ml-100k to download it, or --data-dir to point at a copy)",
                file=sys.stderr,
            )
    raw = load_source(spec, cfg.data_dir)
    for split in splits if len(splits) > 1 else ():  # a fold the dataset lacks, before work
        try:
            parse_split(split, raw)
        except ValueError as e:
            raise ValueError(f"data.folds: {e}") from None
    return [
        prepare(
            raw,
            split,
            min_rating=cfg.min_rating,
            user_core=cfg.user_core,
            item_core=cfg.item_core,
            dedup=cfg.dedup,
            seed=cfg.seed,
            eval_negatives=cfg.eval_negatives,
            rating_range=cfg.rating_range,
        )
        for split in splits
    ]
