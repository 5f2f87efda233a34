"""The user's own files: `csv:PATH` and `parquet:PATH` (the NCF authors' `ncf:PREFIX` is `ncf`).

Also home of the small file helpers the rest of the project shares: the one atomic writer
every output goes through, content hashing, and a fast numeric-table reader that, when the
fast path fails, finds the first bad line for the error.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import uuid
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pv

from orchestrator.data.types import Interactions, RawDataset

COLUMN_KEYS = ("user", "item", "rating", "timestamp")
_INT_RE = r"0|-?[1-9][0-9]*"  # an integer spelled canonically: "007" stays a string id
INT64_MIN, INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
MAX_RATING = 1e6  # beyond any rating scale


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write `path` all or nothing, like git's ref updates: into a new file beside it (same
    folder, so the rename cannot cross file systems), flushed and fsynced, then renamed over
    `path`. A reader sees the old file or the new one, never half of one; after a failure or
    a kill the old file is intact (a leftover `.<name>.*.part` is only a temporary).

    Example:
        >>> frame = pd.DataFrame({"study": ["mf"], "test/rmse": [0.91]})
        >>> with atomic_write("runs/x/results.csv") as f:
        ...     frame.to_csv(f, index=False)
        >>> print(Path("runs/x/results.csv").read_text(), end="")
        study,test/rmse
        mf,0.91
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
    encoding, newline = (None, None) if "b" in mode else ("utf-8", "")
    try:
        with open(temp, mode.replace("w", "x"), encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """`atomic_write` of a UTF-8 text file."""
    with atomic_write(path) as f:
        f.write(text)


def hash_file(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (hashing bytes, not parsed rows, keeps this fast)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(paths: list[Path]) -> str:
    """Content hash of a source: the file's sha256 for one file, else a hash of the hashes.

    Names are left out on purpose, so the same data in another folder has the same
    fingerprint.
    """
    return combine_digests([hash_file(p) for p in paths])


def combine_digests(digests: list[str]) -> str:
    """One digest for several files: the digest itself for one, else a hash of the list."""
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def read_table(
    path: Path,
    sep: str,
    names: tuple[str, ...],
    kinds: str,
    encoding: str = "utf-8",
    header: tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """Read a numeric table fast; on bad input, raise naming the first bad line.

    Args:
        path: the file.
        sep: the field separator (one character, or a string such as ml-1m's "::", which
            is turned into tabs for pandas' fast C parser).
        names: column names, one per field.
        kinds: one letter per column, `i` for int64 and `f` for float32 (finite).
        encoding: the file's text encoding.
        header: the exact first line's fields, when the file has a header line.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    dtypes = {n: ("int64" if k == "i" else "float32") for n, k in zip(names, kinds, strict=True)}
    source = (
        BytesIO(path.read_bytes().replace(sep.encode(encoding), b"\t")) if len(sep) > 1 else path
    )
    if header is not None:
        with open(path, encoding=encoding) as f:
            first = f.readline().rstrip("\r\n").split(sep)
        if tuple(first) != header:
            raise ValueError(
                f"{path}, line 1: expected the header {sep.join(header)}, got {sep.join(first)!r}"
            )
    try:
        df = pd.read_csv(
            source,
            sep="\t" if len(sep) > 1 else sep,
            header=None,
            names=list(names),
            dtype=dtypes,
            encoding=encoding,
            engine="c",
            skip_blank_lines=False,
            skiprows=0 if header is None else 1,
        )
    except (ValueError, OverflowError, pd.errors.ParserError) as e:
        _raise_first_bad_line(path, sep, names, kinds, encoding, e, header is not None)
    if df.isna().any().any():  # a short row: pandas pads it with NaN
        _raise_first_bad_line(path, sep, names, kinds, encoding, None, header is not None)
    floats = [n for n, k in zip(names, kinds, strict=True) if k == "f"]
    if floats and not np.isfinite(df[floats].to_numpy()).all():  # "inf", "nan"
        _raise_first_bad_line(path, sep, names, kinds, encoding, None, header is not None)
    return df


def read_ratings(path: Path, sep: str, header: tuple[str, ...] | None = None) -> Interactions:
    """A `user item rating timestamp` table (MovieLens', NCF's) as `Interactions`, through
    `read_table`."""
    df = read_table(path, sep, COLUMN_KEYS, "iifi", header=header)
    return Interactions(
        df["user"].to_numpy(np.int64),
        df["item"].to_numpy(np.int64),
        df["rating"].to_numpy(np.float32),
        df["timestamp"].to_numpy(np.int64),
    )


def _raise_first_bad_line(
    path: Path,
    sep: str,
    names: tuple[str, ...],
    kinds: str,
    encoding: str,
    cause: Exception | None,
    header: bool,
) -> None:
    """Slow path, only on error: scan the file for the first line that does not parse."""
    expected = (
        f"{len(names)} {sep!r}-separated fields ({' '.join(names)}: integers within "
        "int64, finite numbers)"
    )
    with open(path, encoding=encoding) as f:
        for lineno, line in enumerate(f, 1):
            if header and lineno == 1:
                continue
            fields = line.rstrip("\r\n").split(sep)
            ok = len(fields) == len(names)
            for field, kind in zip(fields, kinds, strict=False):
                try:
                    value = int(field) if kind == "i" else float(field)
                    ok = ok and (
                        INT64_MIN <= value <= INT64_MAX if kind == "i" else math.isfinite(value)
                    )
                except ValueError:
                    ok = False
            if not ok:
                raise ValueError(f"{path}, line {lineno}: expected {expected}, got {line!r}")
    raise ValueError(f"{path}: expected {expected} on every line ({cause})")


# --- csv: and parquet: -----------------------------------------------------------------------


def parse_file_spec(spec: str) -> tuple[str, Path, dict[str, str], str]:
    """Split `csv:PATH?user=uid&item=iid&sep=;` into (kind, path, column mapping, sep).

    Keys: `user`, `item`, `rating`, `timestamp` (the column holding each; `none` ignores a
    rating/timestamp column) and, for CSV only, `sep` (default `,`). The path ends at the last
    `?`.
    """
    kind, _, rest = spec.partition(":")
    path_text, _, query = rest.rpartition("?") if "?" in rest else (rest, "", "")
    if not path_text:
        raise ValueError(f"dataset spec {spec!r}: expected {kind}:PATH[?user=COL&item=COL&...]")
    columns = {k: k for k in COLUMN_KEYS}
    sep = ","
    allowed = COLUMN_KEYS + (("sep",) if kind == "csv" else ())
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if key not in allowed or not eq or not value:
            raise ValueError(
                f"dataset spec {spec!r}: bad option {part!r}; expected KEY=VALUE "
                f"with KEY one of {', '.join(allowed)}"
            )
        if key == "sep":
            sep = "\t" if value in ("tab", "\\t") else value
        else:
            columns[key] = value
    for key in ("user", "item"):
        if columns[key] == "none":
            raise ValueError(f"dataset spec {spec!r}: the {key} column is required")
    return kind, Path(path_text).expanduser(), columns, sep


def load_table(spec: str) -> RawDataset:
    """Load `csv:PATH[?...]` or `parquet:PATH[?...]` (see `parse_file_spec` for the options).

    A header is required. Missing `user`/`item` values, a non-numeric or missing rating and an
    unparsable timestamp raise ValueError naming the file, the line (CSV, 1-based with the
    header as line 1) or row (Parquet, 0-based) and the value. Ids stay as given: integer
    columns become int64, anything else stays a string. Timestamps are integer seconds or ISO
    datetimes (naive ones read as UTC), returned as int64 seconds.
    """
    kind, path, columns, sep = parse_file_spec(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (dataset spec {spec!r})")
    wanted = {k: c for k, c in columns.items() if c != "none"}
    if kind == "csv":
        df = _read_csv(path, sep, (wanted["user"], wanted["item"]))
        where = "line {}"
        offset = 2  # row 0 is line 2: the header is line 1
    else:
        df = pd.read_parquet(path)
        where = "row {}"
        offset = 0
    found = [str(c) for c in df.columns]
    _check_unique(found, path)
    # rating/timestamp under their default names are optional; anything named explicitly isn't
    required = [k for k in COLUMN_KEYS if k in wanted and (k in ("user", "item") or wanted[k] != k)]
    missing = [wanted[k] for k in required if wanted[k] not in df.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; found {found}; expected "
            f"{[wanted[k] for k in required]} (map yours with "
            f"{kind}:PATH?user=COL&item=COL&rating=COL&timestamp=COL)"
        )

    def at(i: int) -> str:
        return where.format(i + offset)

    def bad_value(key: str, col: str) -> BadValue:
        return lambda i, v: ValueError(f"{path}, {at(i)}: bad {key} {v!r} in column {col!r}")

    out: dict[str, np.ndarray | None] = {}
    for key in COLUMN_KEYS:
        col = wanted.get(key)
        if col is None or col not in df.columns:
            out[key] = None
            continue
        s = df[col]
        bad = np.flatnonzero(s.isna().to_numpy())
        if len(bad):
            raise ValueError(f"{path}, {at(bad[0])}: missing {key} (column {col!r})")
        convert = {"user": _ids, "item": _ids, "rating": _ratings, "timestamp": _seconds}[key]
        out[key] = convert(s, bad_value(key, col))
    if len(df) == 0:
        raise ValueError(f"{path}: no rows")
    notes = [f"{kind}: {path}"]
    notes.append(
        f"ratings from {wanted['rating']!r}"
        if out["rating"] is not None
        else "no rating column: implicit feedback"
    )
    if out["timestamp"] is None:
        notes.append("no timestamp column")
    user, item = out["user"], out["item"]
    assert user is not None and item is not None  # required: a missing one raised above
    return RawDataset(
        name=spec,
        interactions=Interactions(user, item, out["rating"], out["timestamp"]),
        fingerprint=fingerprint([path]),
        files=[str(path)],
        note="; ".join(notes),
    )


def _read_csv(path: Path, sep: str, id_columns: tuple[str, str]) -> pd.DataFrame:
    """A CSV with a header through pyarrow's multithreaded reader (25M rows in seconds): the
    id columns as Arrow text (so "007" stays itself, and no Python string per row), numbers
    and ISO datetimes inferred, empty fields missing. On a malformed row, pandas' parser
    reads the file again to name the line (pyarrow's message gives no line number)."""
    text = pd.ArrowDtype(pa.string())
    try:
        table = pv.read_csv(
            path,
            parse_options=pv.ParseOptions(delimiter=sep, ignore_empty_lines=False),
            convert_options=pv.ConvertOptions(
                column_types={c: pa.string() for c in id_columns},
                null_values=[""],
                strings_can_be_null=True,
            ),
        )
    except pa.ArrowInvalid as e:
        try:
            pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=False)
        except (pd.errors.ParserError, ValueError) as found:  # "Expected 4 fields in line 7"
            raise ValueError(f"{path}: malformed CSV: {' '.join(str(found).split())}") from None
        raise ValueError(f"{path}: malformed CSV: {' '.join(str(e).split())}") from None
    _check_unique(table.column_names, path)
    return pd.DataFrame(
        {
            name: column.to_pandas(
                types_mapper={pa.string(): text}.get if name in id_columns else None
            )
            for name, column in zip(table.column_names, table.columns, strict=True)
        }
    )


def _check_unique(names: list[str], path: Path) -> None:
    """A header naming a column twice would have one of them silently win."""
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise ValueError(f"{path}: column(s) {repeated} appear more than once in the header")


BadValue = Callable[[int, object], ValueError]


def _ids(s: pd.Series, bad: BadValue) -> np.ndarray:
    """int64 when every id is a canonical integer, else the ids as given (strings); an
    integer id beyond int64 is an error (it cannot be kept as a number, and a column of
    numbers read as text would silently mix two kinds of id)."""
    if pd.api.types.is_integer_dtype(s.dtype):
        return s.to_numpy(dtype=np.int64)
    text = s if isinstance(s.dtype, pd.ArrowDtype) else s.astype(str)
    padded = np.flatnonzero((text.str.strip() != text).to_numpy(dtype=bool))
    if len(padded):  # ' 1' and '1' would be two users: an error, in every reader
        raise bad(int(padded[0]), f"{text.iloc[padded[0]]!r} (surrounding whitespace)")
    if text.str.fullmatch(_INT_RE).all():
        long = np.flatnonzero(text.str.len().to_numpy() >= 19)  # only these can overflow
        for i in long:
            if not INT64_MIN <= int(text.iloc[i]) <= INT64_MAX:
                raise bad(int(i), f"{text.iloc[i]} (beyond int64)")
        return text.astype("int64[pyarrow]" if text is s else np.int64).to_numpy(np.int64)
    return text.to_numpy(dtype=object)


def _ratings(s: pd.Series, bad: BadValue) -> np.ndarray:
    """float32 ratings; text that is no number, inf, nan and values beyond +-MAX_RATING
    (no rating scale reaches them: a unit or a parsing slip) are errors."""
    values = s if pd.api.types.is_numeric_dtype(s.dtype) else pd.to_numeric(s, errors="coerce")
    out = values.to_numpy(dtype=np.float64, na_value=np.nan)
    wrong = np.flatnonzero(~np.isfinite(out))
    if len(wrong):
        raise bad(int(wrong[0]), s.iloc[wrong[0]])
    huge = np.flatnonzero(np.abs(out) > MAX_RATING)
    if len(huge):
        raise bad(int(huge[0]), f"{s.iloc[huge[0]]} (beyond +-{MAX_RATING:g})")
    return out.astype(np.float32)


def _seconds(s: pd.Series, bad: BadValue) -> np.ndarray:
    """Integer seconds as given, or ISO datetimes converted to seconds since the epoch."""
    if pd.api.types.is_integer_dtype(s.dtype):
        return s.to_numpy(dtype=np.int64)
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        dt = s if s.dt.tz is not None else s.dt.tz_localize("UTC")
    else:
        text = s.astype(str)
        is_int = text.str.fullmatch(_INT_RE).to_numpy(dtype=bool)
        if is_int.all():
            return text.astype(np.int64).to_numpy()
        if is_int.any():  # a column of seconds with a stray value: that value is the error
            raise bad(int(np.flatnonzero(~is_int)[0]), s.iloc[np.flatnonzero(~is_int)[0]])
        dt = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
        wrong = np.flatnonzero(dt.isna().to_numpy())
        if len(wrong):
            raise bad(int(wrong[0]), s.iloc[wrong[0]])
    # integer division by a Timedelta works whatever resolution pandas picked
    return ((dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
