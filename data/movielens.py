"""MovieLens from the official GroupLens releases: find on disk, else download once, verified.

Lookup for a release NAME (`ml-100k`, `ml-1m`, `ml-20m`, `ml-25m`, `ml-latest-small`):
`<data_home>/NAME/` (the unpacked folder), else a verified `<data_home>/NAME.zip`, else
`<RECSWEEP_MOVIELENS_URL or GroupLens>/NAME.zip`. A download goes to `NAME.zip.part` and is
renamed to `NAME.zip` only once its md5 matches; it is unpacked into a temporary folder inside
data_home and renamed into place, so an interrupted or corrupt download never leaves anything
that later loads as data.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.data.files import combine_digests, hash_file, read_ratings
from orchestrator.data.types import Interactions, RawDataset

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

# sha256 of every file read from a release whose content we can pin: computed from the
# official ml-100k release (../shared/data/ml-100k). Checked on every load, so a folder found on
# disk is known to be the real release. Other releases are checked against the manifest written
# when they were unpacked from their verified zip (MANIFEST); a folder unpacked by hand has no
# checksum to compare with, and its note says so.
CONTENT_SHA256: dict[str, dict[str, str]] = {
    "ml-100k": {
        "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
        "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
        "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
        "u1.base": "ce253ec86c448b44fb3ba9a30d12dcfc2e9210cbde71efada3730c22e9ac212a",
        "u1.test": "18c6014a4b2c7324f250a63f8904a7b16b2b19f911129e346141507b0cbac950",
        "u2.base": "6c06f0b5df4b256da1a994f3ac66edc8da4d3f09bc9282df6b14d893366d703e",
        "u2.test": "4de658d1e04ed9104629509a2e2528fce833ac8e048280183f1df167632038c3",
        "u3.base": "afdc155c291c6edc41c0407e39d7462eb98d341e064f0b0a12175b80b3c4af5d",
        "u3.test": "0f548b51c78327de4c156461d3e430b7e5579fe2b5681586a59416e48fd35f6d",
        "u4.base": "219f0f4d40dfe9c5141d425f53fa91ee23ed275f14e280bbf1b50117afb064ca",
        "u4.test": "7c02ad0a1e7ab1083c8b9d4b627203a051dd7b5eab46d99fa44de33470de8db9",
        "u5.base": "a9574e59ce961eec2121627760b6e9b0974ce1637b3fe69ac32cb14a4bfab485",
        "u5.test": "351cc52e0d15b6c721466276fc24671d40936899e3d01fadeaf312915b8c5634",
        "ua.base": "67b5bcdb380c29f85d56a012ecd88612ae020f30a6730d117a334ee8203b91f2",
        "ua.test": "d0497e202417720f57a184ec8c66be2d1afa4ff41bb53787c57b28d6bf79bc42",
        "ub.base": "237254d253b6ad7de84f919d041055428646254f34ed8f562703c899430cd881",
        "ub.test": "d54a72d05730d5892062734b2bec73e976f9b713d18c828a18b968d6cce442da",
    },
}
MANIFEST = ".recsweep-sha256.json"  # {file: sha256} of a release this module unpacked

# (ratings file, items file) inside each release folder
FILES: dict[str, tuple[str, str]] = {
    "ml-100k": ("u.data", "u.item"),
    "ml-1m": ("ratings.dat", "movies.dat"),
    "ml-20m": ("ratings.csv", "movies.csv"),
    "ml-25m": ("ratings.csv", "movies.csv"),
    "ml-latest-small": ("ratings.csv", "movies.csv"),
}
ML100K_SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")


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
    read = [ratings_path, items_path]
    if name == "ml-100k":
        read += [folder / "u.genre"] + [
            folder / f"{s}.{part}" for s in ML100K_SPLITS for part in ("base", "test")
        ]
    digests, checked = _verify(name, folder, read)
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
        fingerprint=combine_digests(list(digests.values())),
        files=[str(p) for p in read],
        note=f"{name}: GroupLens MovieLens release from {folder} ("
        + (
            "content sha256 verified"
            if checked
            else "unverified: unpacked by hand, no checksum to compare with"
        )
        + ")",
    )


def _verify(name: str, folder: Path, paths: list[Path]) -> tuple[dict[str, str], bool]:
    """sha256 of each file read, checked against the pinned content or the unpack manifest;
    returns ({file name: sha256}, whether there was anything to check against)."""
    expected = CONTENT_SHA256.get(name)
    manifest = folder / MANIFEST
    if expected is None and manifest.is_file():
        try:
            expected = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            raise ValueError(
                f"{manifest}: not valid JSON; remove {folder} to unpack the release again"
            ) from None
    digests = {}
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (part of the {name} release)")
        digests[path.name] = hash_file(path)
        if expected is not None and expected.get(path.name) != digests[path.name]:
            raise ValueError(
                f"{path}: not the official {name} release (sha256 expected "
                f"{expected.get(path.name)}, got {digests[path.name]}). Remove {folder} to "
                "download it again, or load your own file with csv:PATH."
            )
    return digests, expected is not None


# --- parsing ---------------------------------------------------------------------------------


def _read_100k(path: Path) -> Interactions:
    return read_ratings(path, "\t")


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
        df = pd.read_csv(
            path,
            sep="|",
            header=None,
            names=names,
            encoding="latin-1",
            dtype={"item": "int64", "title": str, **{g: "int8" for g in genres}},
        )
    except (ValueError, pd.errors.ParserError) as e:
        raise ValueError(
            f"{path}: expected {len(names)} '|'-separated fields per line "
            f"(id, title, dates, URL and {len(genres)} genre flags): {e}"
        ) from None
    flags = df[genres].to_numpy(bool)  # [n_items, 19]
    joined = ["|".join(g for g, on in zip(genres, row, strict=True) if on) for row in flags]
    return pd.DataFrame(
        {"title": df["title"].to_numpy(), "genres": joined},
        index=pd.Index(df["item"].to_numpy(np.int64), name="item"),
    )


def _read_dat(path: Path) -> BytesIO:
    """'::'-separated latin-1 text as tab-separated bytes, so pandas' fast C parser reads it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return BytesIO(path.read_bytes().replace(b"::", b"\t"))


def _read_dat_ratings(path: Path) -> Interactions:
    return read_ratings(path, "::")


def _read_dat_movies(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(
            _read_dat(path),
            sep="\t",
            header=None,
            names=["item", "title", "genres"],
            dtype={"item": "int64", "title": str, "genres": str},
            encoding="latin-1",
            keep_default_na=False,
            quoting=3,
        )
    except (ValueError, pd.errors.ParserError) as e:
        raise ValueError(f"{path}: expected MovieID::Title::Genres on every line: {e}") from None
    return df.set_index("item")[["title", "genres"]]


def _read_csv_ratings(path: Path) -> Interactions:
    return read_ratings(path, ",", header=("userId", "movieId", "rating", "timestamp"))


def _read_csv_movies(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    df = pd.read_csv(
        path, dtype={"movieId": "int64", "title": str, "genres": str}, keep_default_na=False
    )
    if list(df.columns[:3]) != ["movieId", "title", "genres"]:
        raise ValueError(f"{path}: expected header movieId,title,genres, found {list(df.columns)}")
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
            f"--data-dir DIR / set RECSWEEP_DATA=DIR where DIR/{name}/ holds it"
        ) from e
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
            with _progress(f"download {name}", int(length) if length else None) as advance:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    md5.update(chunk)
                    received += len(chunk)
                    advance(len(chunk))
        if length is not None and received != int(length):
            raise OSError(f"interrupted: received {received} of {length} bytes; nothing was kept")
        expected = ZIP_MD5[name] or _published_md5(url)
        got = md5.hexdigest()
        if got != expected:
            raise ValueError(
                f"checksum mismatch for {url}: expected md5 {expected}, got {got}. "
                f"The download was discarded and nothing was written to "
                f"{zip_path.parent / name}; try again, or place the unpacked "
                f"release there yourself."
            )
        os.replace(part, zip_path)
    except http.client.IncompleteRead as e:
        raise OSError(
            f"interrupted: received {len(e.partial)} more bytes, then the connection "
            f"closed; nothing was kept"
        ) from e
    finally:
        part.unlink(missing_ok=True)


@contextlib.contextmanager
def _progress(what: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """Yields `advance(n_bytes)`: a tqdm bar on a terminal; on a log (not a terminal), a
    plain line at the start and at each quarter of a known size."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(total=total, desc=what, unit="B", unit_scale=True, file=sys.stderr) as bar:
            yield bar.update
        return
    size = f"{total / 1e6:.1f} MB" if total else "size unknown"
    print(f"{what}: {size}", file=sys.stderr, flush=True)
    done, quarters = 0, 0

    def advance(n: int) -> None:
        nonlocal done, quarters
        done += n
        while total and quarters < 4 and done >= total * (quarters + 1) / 4:
            quarters += 1
            print(f"{what}: {25 * quarters}% ({done / 1e6:.1f} MB)", file=sys.stderr, flush=True)

    yield advance


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
                raise ValueError(
                    f"{zip_path}: checksum mismatch (expected md5 {expected}, "
                    f"got {got}); removed it, load again to download a fresh copy"
                )
        try:
            with zipfile.ZipFile(zip_path) as z:
                z.extractall(tmp)  # extractall drops absolute and '..' member paths
        except zipfile.BadZipFile as e:
            raise ValueError(f"{zip_path}: not a valid zip ({e}); removed it") from e
        unpacked = tmp / name
        if not (unpacked / FILES[name][0]).is_file():
            raise ValueError(
                f"{zip_path}: expected {name}/{FILES[name][0]} inside the zip; removed it"
            )
        # the zip was verified: record its files' sha256, checked on every later load
        (unpacked / MANIFEST).write_text(
            json.dumps(
                {p.name: hash_file(p) for p in sorted(unpacked.iterdir()) if p.is_file()}, indent=1
            )
        )
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
