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

The writers are `sweep.start_run_directory` (sweep.yaml) and `results.write*` (the tables);
a running sweep holds its directory through `claimed` (the `.claim` file). Nothing heavy at
import: `results` and the summary read tables only.

Example:
    >>> run = RunDir("runs/dev")  # a sweep's run directory
    >>> list(run.results["study"]), len(run.trials), run.config.name
    (['mf-ranking'], 3, 'dev')
    >>> run.checkpoints  # this one kept no model
    {}
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from orchestrator.config import SweepConfig, from_dict

if TYPE_CHECKING:  # at run time the data is loaded on first use, the models never
    from orchestrator.data.types import PreparedData
    from orchestrator.models.base import Recommender

CONFIG, RESULTS, TRIALS, HISTORY, UNITS, BY_FOLD = (
    "sweep.yaml",
    "results.parquet",
    "trials.parquet",
    "history.parquet",
    "test_units.npz",
    "results_by_fold.parquet",  # a sweep over folds: one row per tested row and fold
)
# a re-run's checkpoint (another seed, another fold), not a study's
SEED_CHECKPOINT = re.compile(r".+-seed\d+")
CLAIM = ".claim"  # the host and process of the sweep running in the directory
RUN_NAME = re.compile(r"[A-Za-z0-9._-]+")


def check_run_name(name: str) -> None:
    """A run name is one folder name: the run directory is `<storage>/<name>`, never
    outside `storage` nor nested in it."""
    if not RUN_NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            f"name: {name!r}: a run name is one folder name of letters, digits, '-', '_' "
            "and '.' (not '.' or '..')"
        )


@contextlib.contextmanager
def claimed(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for this process while the block runs: its `.claim` file names the
    host and process, and appears whole or not at all (a hard link to a written file fails
    if the claim exists). A claim whose process is alive (or on another host) is an error
    naming it; one whose process is gone on this host (a killed sweep) is taken over."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CLAIM
    mine = {"host": socket.gethostname(), "pid": os.getpid()}
    mine_file = path.with_name(f"{CLAIM}.{os.getpid()}")
    mine_file.write_text(json.dumps(mine))
    try:
        while True:
            try:
                os.link(mine_file, path)
                break
            except FileExistsError:
                holder = _holder(path)
                if holder is not None and not _gone(holder):
                    raise ValueError(
                        f"{run_dir}: a sweep is running in it (process {holder['pid']} on "
                        f"{holder['host']}, {path}); wait for it, or choose another --name"
                    ) from None
                stale = path.with_name(f"{CLAIM}.stale-{os.getpid()}")
                with contextlib.suppress(FileNotFoundError):  # one taker wins the rename
                    os.rename(path, stale)
                    stale.unlink()
    finally:
        mine_file.unlink()
    try:
        yield
    finally:
        if _holder(path) == mine:
            path.unlink()


def _holder(path: Path) -> dict[str, Any] | None:
    """Who holds a claim; None: a broken claim (a claim is linked into place whole)."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(holder, dict) and isinstance(holder.get("pid"), int)
    return holder if ok else None


def _gone(holder: dict[str, Any]) -> bool:
    """Whether a claim's process has ended (known only on this host)."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class NotThisRun(ValueError):
    """A file of the run directory contradicts another (edited, or copied from elsewhere)."""


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
        return read_config(self.path, complete=True)  # a truncated one must not read as defaults

    @functools.cached_property
    def results(self) -> pd.DataFrame:
        return self._table(RESULTS, "results table", ("table", "study", "model", "status"))

    @functools.cached_property
    def trials(self) -> pd.DataFrame:
        return self._table(TRIALS, "trials", ("study", "trial_id", "end", "best"))

    def _table(self, name: str, what: str, columns: tuple[str, ...]) -> pd.DataFrame:
        path = self._file(name, what)
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable {what} ({e})") from None
        lacking = [c for c in columns if c not in frame.columns]
        if lacking:
            raise ValueError(f"{path}: not a {what}: no column(s) {lacking}")
        return frame

    @functools.cached_property
    def history(self) -> pd.DataFrame | None:
        path = self.path / HISTORY
        return pd.read_parquet(path) if path.exists() else None

    @functools.cached_property
    def by_fold(self) -> pd.DataFrame | None:
        """A sweep over folds: one row per tested row and fold (None: a sweep on one split)."""
        if not (self.path / BY_FOLD).exists():
            return None
        return self._table(BY_FOLD, "table by fold", ("table", "study", "fold"))

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

            data = load_dataset(self.config.data)
            recorded = self.path / "data.json"
            if recorded.exists():
                was = json.loads(recorded.read_text()).get("fingerprint")
                if was and was != data.fingerprint:
                    raise NotThisRun(
                        f"{recorded}: the sweep ran on data {was[:12]}, but {CONFIG}'s data "
                        f"now prepares {data.fingerprint[:12]} (the config or the data "
                        "changed since)"
                    )
            self._data = data
        return self._data
