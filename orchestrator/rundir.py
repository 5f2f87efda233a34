"""A sweep's run directory read back: the one loader of what a sweep wrote.

The stages of a sweep hand each other objects in memory (`records.py`); what runs later on a
run directory (`export`, `report`, `results`, the summary `sweep --json` prints) reads it
through a `RunDir`: each file once, when first asked for, with an error that names the file
and what was expected. The sweep's own report gets a RunDir that holds the prepared data and
the tested models the sweep has in memory, so nothing is loaded twice.

    sweep.yaml        config       the resolved SweepConfig
    results.parquet   table        one row per study and baseline (`results.build`)
    trials.parquet    trials       one row per trial (`TrialRecord.row`)
    history.parquet   history      per-epoch metrics (None: a run from before them)
    test_units.npz    units        each study's main test metric per unit
    checkpoints/      checkpoints  study -> its chosen trial's `<study>.pt` (seed re-runs
                                   left out; `models.registry.load_model` reads one)
    sweep.yaml data:  data         the prepared data, rebuilt (same fingerprint)

The writers are `sweep.start_run_directory` (sweep.yaml) and `results.write*` (the tables).
Nothing heavy at import: `results` and the summary read tables only.

Example:
    >>> run = RunDir("runs/dev")  # a sweep's run directory
    >>> list(run.results["study"]), len(run.trials), run.config.name
    (['mf-ranking'], 3, 'dev')
    >>> run.checkpoints  # this one kept no model
    {}
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import yaml

from orchestrator.config import SweepConfig, from_dict

if TYPE_CHECKING:  # at run time the data is loaded on first use, the models never
    from orchestrator.data.types import PreparedData
    from orchestrator.models.base import Recommender

CONFIG, RESULTS, TRIALS, HISTORY, UNITS = (
    "sweep.yaml",
    "results.parquet",
    "trials.parquet",
    "history.parquet",
    "test_units.npz",
)
SEED_CHECKPOINT = re.compile(r".+-seed\d+")  # a seed re-run's checkpoint, not a study's


def read_config(run_dir: str | Path, complete: bool = False) -> SweepConfig:
    """The config a sweep wrote to `run_dir/sweep.yaml`; `complete` also requires every
    field (what `--resume` needs). Raises a FileNotFoundError or a ValueError naming it."""
    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; {run_dir} is not a sweep run directory")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise ValueError("empty, or not a mapping")
        return from_dict(SweepConfig, loaded, complete=complete)
    except (ValueError, TypeError, yaml.YAMLError) as e:
        what = "the whole config" if complete else "a config"
        raise ValueError(
            f"{path} is not {what} a sweep wrote ({str(e).splitlines()[0]}); "
            "it may be truncated or edited"
        ) from None


class RunDir:
    """A sweep's run directory, each file read on first use.

    Args:
        path: the run directory.
        data: the prepared data, when the caller holds it (the sweep); else rebuilt from
            the config on first use.
        models: study -> the tested model the caller holds (the sweep); the rest come from
            `checkpoints`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        data: PreparedData | None = None,
        models: dict[str, Recommender] | None = None,
    ) -> None:
        self.path = Path(path)
        self._data = data
        self.models = dict(models or {})

    def require(self, *names: str) -> None:
        """Raise a FileNotFoundError naming which of `names` the directory lacks (before
        work that needs them all)."""
        if not self.path.is_dir():
            raise FileNotFoundError(
                f"{self.path}: no such directory; expected a sweep run directory"
            )
        lacking = [name for name in names if not (self.path / name).exists()]
        if lacking:
            raise FileNotFoundError(
                f"{self.path}: not a sweep run directory: no "
                f"{', '.join(lacking)} (a finished sweep writes "
                f"{', '.join(names)})"
            )

    def _file(self, name: str, what: str) -> Path:
        path = self.path / name
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no {what}; is {self.path} a finished sweep's run directory?"
            )
        return path

    @functools.cached_property
    def config(self) -> SweepConfig:
        return read_config(self.path)

    @functools.cached_property
    def results(self) -> pd.DataFrame:
        return pd.read_parquet(self._file(RESULTS, "results table"))

    @functools.cached_property
    def trials(self) -> pd.DataFrame:
        return pd.read_parquet(self._file(TRIALS, "trials"))

    @functools.cached_property
    def history(self) -> pd.DataFrame | None:
        path = self.path / HISTORY
        return pd.read_parquet(path) if path.exists() else None

    @functools.cached_property
    def units(self) -> dict[str, np.ndarray]:
        with np.load(self._file(UNITS, "per-unit test values")) as arrays:
            return {name: arrays[name] for name in arrays.files}

    @functools.cached_property
    def checkpoints(self) -> dict[str, Path]:
        folder = self.path / "checkpoints"
        return {
            p.stem: p for p in sorted(folder.glob("*.pt")) if not SEED_CHECKPOINT.fullmatch(p.stem)
        }

    @property
    def holds_data(self) -> bool:
        """Whether the prepared data is in memory already (else `data` prepares it)."""
        return self._data is not None

    @property
    def data(self) -> PreparedData:
        """The prepared data: the caller's, or rebuilt from the config."""
        if self._data is None:
            from orchestrator.data import load_dataset

            self._data = load_dataset(self.config.data)
        return self._data
