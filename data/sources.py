"""Dataset specs -> `RawDataset`: the one entry point every layer uses to load data.

Spec forms (the same on the command line and in YAML):

- `ml-100k`, `ml-1m`, `ml-20m`, `ml-25m`, `ml-latest-small`: GroupLens MovieLens releases,
  looked up in `data_home()/NAME/`, else downloaded once, checksum-verified and cached there.
- `csv:PATH` and `parquet:PATH`, optionally followed by `?KEY=VALUE&KEY=VALUE...` where KEY is
  `user`, `item`, `rating` or `timestamp` (the column holding it; default: a column of that
  very name; `rating`/`timestamp` are optional, `rating=none` ignores one) or, for CSV, `sep`
  (default `,`; `sep=tab` for tabs). Example:
  `csv:~/logs/plays.csv?user=uid&item=song&rating=none&timestamp=ts&sep=;`.
- `ncf:PREFIX`: the NCF authors' pre-split PREFIX.train.rating / .test.rating / .test.negative.
- `synthetic` or `synthetic:k=v,...`: the embedded generator (`data.synthetic`).
"""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.data.files import load_table, parse_file_spec
from orchestrator.data.movielens import FILES, is_local, load_movielens
from orchestrator.data.ncf import load_ncf
from orchestrator.data.types import RawDataset

MOVIELENS = tuple(FILES)
KNOWN_FORMS = (
    *MOVIELENS,
    "csv:PATH[?user=COL&item=COL&rating=COL&timestamp=COL&sep=C]",
    "parquet:PATH[?user=COL&item=COL&rating=COL&timestamp=COL]",
    "ncf:PREFIX",
    "synthetic[:k=v,...]",
)


def data_home(data_dir: str | Path | None = None) -> Path:
    """Where datasets are looked up and cached: `data_dir`, else $RECSWEEP_DATA, else
    ~/.cache/recsweep."""
    chosen = data_dir or os.environ.get("RECSWEEP_DATA") or Path.home() / ".cache" / "recsweep"
    return Path(chosen).expanduser()


def load_source(spec: str, data_dir: str | Path | None = None) -> RawDataset:
    """Load the dataset named by `spec` (see the module docstring for the forms).

    Args:
        spec: the dataset spec, e.g. `ml-100k` or `csv:ratings.csv?user=uid&item=iid`.
        data_dir: where MovieLens releases are looked up and cached (see `data_home`).

    Raises:
        ValueError: an unknown spec (the message lists the known forms) or malformed data.
        FileNotFoundError: a missing file, or a MovieLens release neither on disk nor
            downloadable (the message says where it looked and how to point at a copy).
    """
    kind = _kind(spec)
    if kind == "movielens":
        return load_movielens(spec, data_home(data_dir))
    if kind in ("csv", "parquet"):
        return load_table(spec)
    if kind == "ncf":
        return load_ncf(spec)
    from orchestrator.data.synthetic import load_synthetic  # lazy: only synthetic runs need it

    return load_synthetic(spec)


def available_offline(spec: str, data_dir: str | Path | None = None) -> bool:
    """Whether `spec` can be loaded without the network (decides the default dataset)."""
    kind = _kind(spec)
    if kind == "movielens":
        return is_local(spec, data_home(data_dir))
    if kind in ("csv", "parquet"):
        return parse_file_spec(spec)[1].is_file()
    if kind == "ncf":
        prefix = str(Path(spec.partition(":")[2]).expanduser())
        return all(
            Path(prefix + s).is_file() for s in (".train.rating", ".test.rating", ".test.negative")
        )
    return True  # synthetic is generated


def _kind(spec: str) -> str:
    if spec in MOVIELENS:
        return "movielens"
    head = spec.partition(":")[0]
    if head in ("csv", "parquet", "ncf") and ":" in spec:
        return head
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return "synthetic"
    raise ValueError(f"unknown dataset {spec!r}; expected one of: {', '.join(KNOWN_FORMS)}")
