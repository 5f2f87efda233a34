"""MovieLens from the official GroupLens releases: find on disk, else download once, verified.

Lookup for a release NAME (`ml-100k`, `ml-1m`, `ml-20m`, `ml-25m`, `ml-latest-small`):
`<data_home>/NAME/` (the unpacked folder), else a verified `<data_home>/NAME.zip`, else
`<RECSWEEP_MOVIELENS_URL or GroupLens>/NAME.zip`. A download goes to `NAME.zip.part` and is
renamed to `NAME.zip` only once its md5 matches; it is unpacked into a temporary folder inside
data_home and renamed into place, so an interrupted or corrupt download never leaves anything
that later loads as data.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd

from data.files import hash_file, read_table
from data.types import Interactions, RawDataset

DEFAULT_URL = "https://files.grouplens.org/datasets/movielens"

# md5 of each release zip as GroupLens publishes it next to the zip (NAME.zip.md5). Verified
# against several independent projects that pin the same values (e.g. the ml-1m/ml-20m/ml-25m
# entries in MLPerf's NCF `verify_dataset.sh`, quoting `curl .../ml-1m.zip.md5`). ml-latest-small
# is a moving release with no stable checksum: None means "fetch NAME.zip.md5 from the same
# server and verify against it" (catches truncation and corruption, not a hostile server).
# Module-level so tests can pin the checksum of a small zip they serve.
ZIP_MD5: dict[str, str | None] = {
    "ml-100k": "0e33842e24a9c977be4e0107933c0723",
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
    "ml-20m": "cd245b17a1ae2cc31bb14903e1204af3",
    "ml-25m": "6b51fb2759a8657d3bfcbfc42b592ada",
    "ml-latest-small": None,
}

# sha256 of the ratings file of releases whose content we can pin: computed from the official
# ml-100k release's u.data (../shared/data/ml-100k). Checked on every load, so a folder found on
# disk is known to be the real release; it is also the dataset's fingerprint.
CONTENT_SHA256: dict[str, str] = {
    "ml-100k": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
}

# (ratings file, items file) inside each release folder
FILES: dict[str, tuple[str, str]] = {
    "ml-100k": ("u.data", "u.item"),
    "ml-1m": ("ratings.dat", "movies.dat"),
    "ml-20m": ("ratings.csv", "movies.csv"),
    "ml-25m": ("ratings.csv", "movies.csv"),
    "ml-latest-small": ("ratings.csv", "movies.csv"),
}
ML100K_SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
RATING_COLUMNS = ("user", "item", "rating", "timestamp")


def release_url(name: str) -> str:
    """Where NAME.zip is downloaded from ($RECSWEEP_MOVIELENS_URL overrides the GroupLens base)."""
    return f"{os.environ.get('RECSWEEP_MOVIELENS_URL', DEFAULT_URL).rstrip('/')}/{name}.zip"


def is_local(name: str, home: Path) -> bool:
    """Whether release NAME can be loaded without the network (unpacked folder or cached zip)."""
    return (home / name / FILES[name][0]).is_file() or (home / f"{name}.zip").is_file()


def load_movielens(name: str, home: Path) -> RawDataset:
    """Load release NAME from `home`, downloading and caching it there when absent.

    Args:
        name: one of `FILES`' keys.
        home: the data directory (see `data.sources.data_home`).
    """
    folder = ensure_release(name, home)
    ratings_name, items_name = FILES[name]
    ratings_path, items_path = folder / ratings_name, folder / items_name
    digest = hash_file(ratings_path)
    pinned = CONTENT_SHA256.get(name)
    if pinned and digest != pinned:
        raise ValueError(
            f"{ratings_path}: not the official {name} release (sha256 expected {pinned}, got "
            f"{digest}). Remove {folder} to download it again, or load your own file with "
            f"csv:PATH.")
    if name == "ml-100k":
        interactions = _read_100k(ratings_path)
        items = _read_100k_items(items_path, folder / "u.genre")
        splits = {s: _split_loader(folder, s) for s in ML100K_SPLITS}
    elif name == "ml-1m":
        interactions = _read_dat_ratings(ratings_path)
        items = _read_dat_movies(items_path)
        splits = {}
    else:
        interactions = _read_csv_ratings(ratings_path)
        items = _read_csv_movies(items_path)
        splits = {}
    return RawDataset(
        name=name,
        interactions=interactions,
        items=items,
        fixed_splits=splits,
        fingerprint=digest,
        files=[str(ratings_path), str(items_path)],
        note=f"{name}: GroupLens MovieLens release from {folder}"
             + (" (content sha256 verified)" if pinned else ""),
    )


# --- parsing ---------------------------------------------------------------------------------

def _to_interactions(df: pd.DataFrame) -> Interactions:
    return Interactions(df["user"].to_numpy(np.int64), df["item"].to_numpy(np.int64),
                        df["rating"].to_numpy(np.float32), df["timestamp"].to_numpy(np.int64))


def _read_100k(path: Path) -> Interactions:
    return _to_interactions(read_table(path, "\t", RATING_COLUMNS, "iifi"))


def _split_loader(folder: Path, split: str) -> Callable[[], tuple[Interactions, Interactions]]:
    def load() -> tuple[Interactions, Interactions]:
        return _read_100k(folder / f"{split}.base"), _read_100k(folder / f"{split}.test")
    return load


def _read_100k_items(path: Path, genre_path: Path) -> pd.DataFrame:
    """u.item: id|title|release date|video date|IMDb URL|19 genre flags, latin-1."""
    if not genre_path.is_file():
        raise FileNotFoundError(f"{genre_path}: no such file (ml-100k's genre names)")
    genre_lines = genre_path.read_text(encoding="latin-1").splitlines()
    genres = [g.split("|")[0] for g in genre_lines if g.strip()]  # "Action|1", in index order
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (ml-100k's movie titles and genres)")
    names = ["item", "title", "release", "video", "url"] + genres
    try:
        df = pd.read_csv(path, sep="|", header=None, names=names, encoding="latin-1",
                         dtype={"item": "int64", "title": str, **{g: "int8" for g in genres}})
    except (ValueError, pd.errors.ParserError) as e:
        raise ValueError(f"{path}: expected {len(names)} '|'-separated fields per line "
                         f"(id, title, dates, URL and {len(genres)} genre flags): {e}") from None
    flags = df[genres].to_numpy(bool)  # [n_items, 19]
    joined = ["|".join(g for g, on in zip(genres, row, strict=True) if on) for row in flags]
    return pd.DataFrame({"title": df["title"].to_numpy(), "genres": joined},
                        index=pd.Index(df["item"].to_numpy(np.int64), name="item"))


def _read_dat(path: Path) -> BytesIO:
    """'::'-separated latin-1 text as tab-separated bytes, so pandas' fast C parser reads it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return BytesIO(path.read_bytes().replace(b"::", b"\t"))


def _read_dat_ratings(path: Path) -> Interactions:
    try:
        df = pd.read_csv(_read_dat(path), sep="\t", header=None, names=list(RATING_COLUMNS),
                         dtype={"user": "int64", "item": "int64", "rating": "float32",
                                "timestamp": "int64"}, engine="c")
    except (ValueError, pd.errors.ParserError) as e:
        raise ValueError(f"{path}: expected UserID::MovieID::Rating::Timestamp integers on "
                         f"every line: {e}") from None
    return _to_interactions(df)


def _read_dat_movies(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(_read_dat(path), sep="\t", header=None, names=["item", "title", "genres"],
                         dtype={"item": "int64", "title": str, "genres": str},
                         encoding="latin-1", keep_default_na=False, quoting=3)
    except (ValueError, pd.errors.ParserError) as e:
        raise ValueError(f"{path}: expected MovieID::Title::Genres on every line: {e}") from None
    return df.set_index("item")[["title", "genres"]]


def _read_csv_ratings(path: Path) -> Interactions:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    header = ["userId", "movieId", "rating", "timestamp"]
    try:
        df = pd.read_csv(path, dtype={"userId": "int64", "movieId": "int64",
                                      "rating": "float32", "timestamp": "int64"})
        df = df[header].set_axis(list(RATING_COLUMNS), axis=1)
    except (ValueError, KeyError, pd.errors.ParserError) as e:
        raise ValueError(f"{path}: expected header {','.join(header)} and numbers below it: "
                         f"{e}") from None
    return _to_interactions(df)


def _read_csv_movies(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    df = pd.read_csv(path, dtype={"movieId": "int64", "title": str, "genres": str},
                     keep_default_na=False)
    if list(df.columns[:3]) != ["movieId", "title", "genres"]:
        raise ValueError(f"{path}: expected header movieId,title,genres, found "
                         f"{list(df.columns)}")
    return df.rename(columns={"movieId": "item"}).set_index("item")[["title", "genres"]]


# --- finding, downloading and unpacking ------------------------------------------------------

def ensure_release(name: str, home: Path) -> Path:
    """The unpacked release folder `home/name`, downloading and unpacking it when absent."""
    folder = home / name
    if (folder / FILES[name][0]).is_file():
        return folder
    url = release_url(name)
    zip_path = home / f"{name}.zip"
    try:
        if not zip_path.is_file():
            _download(name, url, zip_path)
        _unpack(name, zip_path, folder)
    except (http.client.HTTPException, OSError) as e:  # URLError is an OSError
        raise FileNotFoundError(
            f"MovieLens {name} is not on disk and could not be downloaded.\n"
            f"  looked for: {folder / FILES[name][0]}\n"
            f"  download failed: {url} ({e})\n"
            f"  to use a local copy: place the unpacked {name} folder at {folder}, or pass "
            f"--data-dir DIR / set RECSWEEP_DATA=DIR where DIR/{name}/ holds it") from e
    return folder


def _download(name: str, url: str, zip_path: Path) -> None:
    """Fetch url to zip_path.part; rename to zip_path only when complete and md5-verified."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    part = zip_path.with_name(zip_path.name + ".part")
    md5 = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as out:
            length = resp.headers.get("Content-Length")
            received = 0
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                md5.update(chunk)
                received += len(chunk)
        if length is not None and received != int(length):
            raise OSError(f"interrupted: received {received} of {length} bytes; "
                          f"nothing was kept")
        expected = ZIP_MD5[name] or _published_md5(url)
        got = md5.hexdigest()
        if got != expected:
            raise ValueError(f"checksum mismatch for {url}: expected md5 {expected}, got {got}. "
                             f"The download was discarded and nothing was written to "
                             f"{zip_path.parent / name}; try again, or place the unpacked "
                             f"release there yourself.")
        os.replace(part, zip_path)
    except http.client.IncompleteRead as e:
        raise OSError(f"interrupted: received {len(e.partial)} more bytes, then the connection "
                      f"closed; nothing was kept") from e
    finally:
        part.unlink(missing_ok=True)


def _published_md5(url: str) -> str:
    """The md5 GroupLens publishes at URL.md5 ("MD5 (name.zip) = hex" or "hex  name.zip")."""
    with urllib.request.urlopen(url + ".md5", timeout=60) as resp:
        text = resp.read(4096).decode("ascii", "replace")
    found = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if not found:
        raise ValueError(f"{url}.md5: expected an md5 hex digest, got {text[:200]!r}")
    return found.group(0).lower()


def _unpack(name: str, zip_path: Path, folder: Path) -> None:
    """Unpack into a temporary folder inside home, then rename NAME/ into place atomically.

    A zip that proves unusable (bad checksum, not a zip, wrong layout) is removed, so the next
    load downloads afresh instead of tripping over it again.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-unpack-", dir=zip_path.parent))
    try:
        expected = ZIP_MD5[name]
        if expected:  # a zip found on disk is re-checked before use
            got = hash_file(zip_path, "md5")
            if got != expected:
                raise ValueError(f"{zip_path}: checksum mismatch (expected md5 {expected}, "
                                 f"got {got}); removed it, load again to download a fresh copy")
        try:
            with zipfile.ZipFile(zip_path) as z:
                z.extractall(tmp)  # extractall drops absolute and '..' member paths
        except zipfile.BadZipFile as e:
            raise ValueError(f"{zip_path}: not a valid zip ({e}); removed it") from e
        unpacked = tmp / name
        if not (unpacked / FILES[name][0]).is_file():
            raise ValueError(f"{zip_path}: expected {name}/{FILES[name][0]} inside the zip; "
                             f"removed it")
        try:
            os.rename(unpacked, folder)
        except OSError:
            if not (folder / FILES[name][0]).is_file():  # not a concurrent loader winning
                raise
        zip_path.unlink()  # the folder is the cache; the zip would only double the disk use
    except ValueError:
        zip_path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
