"""Source loaders: the real ml-100k, a fixture of every other format, and each bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator.data import movielens
from orchestrator.data.files import fingerprint, hash_file
from orchestrator.data.sources import available_offline, data_home, load_source
from orchestrator.data.types import RawDataset

# --- the real MovieLens 100K -----------------------------------------------------------------


def test_ml100k_real(ml100k_dir: Path) -> None:
    ds = load_source("ml-100k", data_dir=ml100k_dir.parent)  # its speed: bench/data_bench.py
    i = ds.interactions
    assert len(i) == 100_000
    assert len(np.unique(i.user)) == 943 and len(np.unique(i.item)) == 1682
    assert i.user.dtype == np.int64 and i.item.dtype == np.int64
    assert i.rating.dtype == np.float32 and set(np.unique(i.rating)) == {1, 2, 3, 4, 5}
    assert i.timestamp.dtype == np.int64 and i.timestamp.min() > 8e8  # 1997-1998
    assert len(ds.items) == 1682 and list(ds.items.columns) == ["title", "genres"]
    assert ds.items.loc[1, "title"] == "Toy Story (1995)"
    assert ds.items.loc[1, "genres"] == "Animation|Children's|Comedy"
    assert ds.items.loc[2, "genres"] == "Action|Adventure|Thriller"
    # the fingerprint covers every file read: ratings, titles, genres and the canonical splits
    assert ds.fingerprint == fingerprint(
        [ml100k_dir / f for f in movielens.CONTENT_SHA256["ml-100k"]]
    )
    assert len(ds.files) == 17 and "content sha256 verified" in ds.note


def test_ml100k_pinned_content_checksum_matches_local_copy(ml100k_dir: Path) -> None:
    for name, digest in movielens.CONTENT_SHA256["ml-100k"].items():
        assert hash_file(ml100k_dir / name) == digest, name


@pytest.mark.parametrize(
    "split, sizes",
    [
        ("u1", (80_000, 20_000)),
        ("u5", (80_000, 20_000)),
        ("ua", (90_570, 9_430)),
        ("ub", (90_570, 9_430)),
    ],
)
def test_ml100k_fixed_splits(ml100k_dir: Path, split: str, sizes: tuple[int, int]) -> None:
    ds = load_source("ml-100k", data_dir=ml100k_dir.parent)
    assert sorted(ds.fixed_splits) == ["u1", "u2", "u3", "u4", "u5", "ua", "ub"]
    base, test = ds.fixed_splits[split]()
    assert (len(base), len(test)) == sizes
    pairs = set(zip(base.user.tolist(), base.item.tolist(), strict=True))
    assert not pairs & set(zip(test.user.tolist(), test.item.tolist(), strict=True))


def _copy_100k(src: Path, dst: Path) -> Path:
    folder = dst / "ml-100k"
    folder.mkdir(parents=True)
    for name in movielens.CONTENT_SHA256["ml-100k"]:
        shutil.copy(src / name, folder / name)
    return folder


def test_ml100k_content_mismatch_is_refused(ml100k_dir: Path, tmp_path: Path) -> None:
    folder = _copy_100k(ml100k_dir, tmp_path)
    data = (folder / "u.data").read_bytes()
    (folder / "u.data").write_bytes(data.replace(b"196\t242\t3\t", b"196\t242\t4\t", 1))
    with pytest.raises(ValueError, match="not the official ml-100k") as e:
        load_source("ml-100k", data_dir=tmp_path)
    assert str(folder / "u.data") in str(e.value)
    assert movielens.CONTENT_SHA256["ml-100k"]["u.data"] in str(e.value)


@pytest.mark.parametrize("name", ["u.item", "u1.test"])
def test_ml100k_any_modified_file_is_refused(ml100k_dir: Path, tmp_path: Path, name: str) -> None:
    folder = _copy_100k(ml100k_dir, tmp_path)
    (folder / name).write_bytes((folder / name).read_bytes()[:-40])  # truncated
    with pytest.raises(ValueError, match=f"{folder / name}: not the official ml-100k"):
        load_source("ml-100k", data_dir=tmp_path)


def test_ml100k_missing_split_file_names_it(ml100k_dir: Path, tmp_path: Path) -> None:
    folder = _copy_100k(ml100k_dir, tmp_path)
    (folder / "u1.base").unlink()
    with pytest.raises(FileNotFoundError, match=f"{folder / 'u1.base'}: no such file"):
        load_source("ml-100k", data_dir=tmp_path)


# --- the other MovieLens formats -------------------------------------------------------------


def test_ml1m_dat(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text(
        "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
    )
    (folder / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "3::Café: A Story (1999)::Comedy\n".encode("latin-1")
    )
    ds = load_source("ml-1m", data_dir=tmp_path)
    i = ds.interactions
    assert i.user.tolist() == [1, 1, 2] and i.item.tolist() == [1193, 661, 1193]
    assert i.rating.tolist() == [5, 3, 4] and i.timestamp.tolist()[0] == 978300760
    assert ds.items.loc[661, "genres"] == "Animation|Children's|Musical"
    assert ds.items.loc[3, "title"] == "Café: A Story (1999)"
    assert ds.fingerprint == fingerprint([folder / "ratings.dat", folder / "movies.dat"])
    assert "unverified" in ds.note  # unpacked by hand: nothing to compare with
    assert ds.fixed_splits == {}


def test_ml1m_malformed_ratings_names_file(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::1193::5::978300760\n1::661::three::978302109\n")
    (folder / "movies.dat").write_text("1193::A (1975)::Drama\n")
    with pytest.raises(ValueError, match="ratings.dat, line 2: expected 4 '::'-separated"):
        load_source("ml-1m", data_dir=tmp_path)


@pytest.mark.parametrize("name", ["ml-latest-small", "ml-20m", "ml-25m"])
def test_movielens_csv_releases(tmp_path: Path, name: str) -> None:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n7,3,0.5,1\n"
    )
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n"
        '3,"American President, The (1995)",Comedy|Drama|Romance\n'
        "9,Nothing (2018),(no genres listed)\n"
    )
    ds = load_source(name, data_dir=tmp_path)
    assert ds.name == name
    assert ds.interactions.rating.tolist() == [4.0, 4.5, 0.5]
    assert ds.interactions.user.tolist() == [1, 1, 7]
    assert ds.items.loc[3, "title"] == "American President, The (1995)"
    assert ds.items.loc[9, "genres"] == "(no genres listed)"
    assert available_offline(name, tmp_path)


def test_movielens_csv_wrong_header(tmp_path: Path) -> None:
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_text("user,movie,rating,timestamp\n1,1,4.0,9\n")
    (folder / "movies.csv").write_text("movieId,title,genres\n1,A,Drama\n")
    with pytest.raises(ValueError, match="ratings.csv, line 1: expected the header userId,movieId"):
        load_source("ml-latest-small", data_dir=tmp_path)


# --- csv: and parquet: -----------------------------------------------------------------------


def test_csv_defaults(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating,timestamp\n1,10,4,100\n2,10,3.5,200\n")
    ds = load_source(f"csv:{path}")
    i = ds.interactions
    assert i.user.dtype == np.int64 and i.user.tolist() == [1, 2]
    assert i.rating.dtype == np.float32 and i.rating.tolist() == [4.0, 3.5]
    assert i.timestamp.tolist() == [100, 200]
    assert ds.fingerprint == hash_file(path) and ds.files == [str(path)]


def test_csv_mapping_string_ids_iso_times(tmp_path: Path) -> None:
    path = tmp_path / "plays.csv"
    path.write_text(
        "uid;song;stars;ts;extra\nalice;007;5;2024-01-01T00:00:10;x\n"
        "bob;12;1;2024-01-01 00:01:00+01:00;y\n"
    )
    ds = load_source(f"csv:{path}?user=uid&item=song&rating=stars&timestamp=ts&sep=;")
    i = ds.interactions
    assert i.user.tolist() == ["alice", "bob"]
    assert i.item.tolist() == ["007", "12"]  # "007" is not an integer as spelled: kept as given
    assert i.timestamp.dtype == np.int64
    assert i.timestamp.tolist() == [1704067210, 1704067260 - 3600]
    assert i.rating.tolist() == [5.0, 1.0]


def test_csv_implicit_without_rating_or_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "clicks.tsv"
    path.write_text("user\titem\trating\n1\t2\tgood\n")
    ds = load_source(f"csv:{path}?rating=none&sep=tab")
    assert ds.interactions.rating is None and ds.interactions.timestamp is None
    assert "implicit" in ds.note


@pytest.mark.parametrize(
    "content, spec_tail, pattern",
    [
        ("uid,item\n1,2\n", "", r"missing column\(s\) \['user'\]; found \['uid', 'item'\]"),
        ("user,item\n1,2\n", "?rating=stars", r"missing column\(s\) \['stars'\]"),
        ("user,item,rating\n1,2,4\n3,4,5\n5,6,five\n", "", r"line 4: bad rating 'five'"),
        ("user,item,rating\n1,2,4\n3,4,\n", "", r"line 3: missing rating"),
        ("user,item,rating\n1,2,4\n,4,3\n", "", r"line 3: missing user"),
        ("user,item,rating\n1,2,4\n\n3,4,5\n", "", r"line 3: missing user"),
        ("user,item,rating\n1,2,4\n3,4,5,6,7\n", "", r"malformed CSV"),
        ("user,item,timestamp\n1,2,yesterday\n", "", r"line 2: bad timestamp 'yesterday'"),
        ("user,item\n", "", r"no rows"),
    ],
)
def test_csv_bad_input(tmp_path: Path, content: str, spec_tail: str, pattern: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=pattern) as e:
        load_source(f"csv:{path}{spec_tail}")
    assert str(path) in str(e.value)


def test_csv_bad_spec_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad option 'usr=a'; expected KEY=VALUE with KEY one of"):
        load_source(f"csv:{tmp_path}/x.csv?usr=a")
    with pytest.raises(FileNotFoundError, match="x.csv: no such file"):
        load_source(f"csv:{tmp_path}/x.csv")


def test_parquet_mapping_and_datetimes(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    pd.DataFrame(
        {
            "u": ["a", "b", "a"],
            "i": [5, 6, 7],
            "r": [1.0, 2.0, 3.0],
            "when": pd.to_datetime(
                ["1970-01-01 00:00:01", "1970-01-02 00:00:00", "2000-01-01 00:00:00"]
            ),
        }
    ).to_parquet(path)
    ds = load_source(f"parquet:{path}?user=u&item=i&rating=r&timestamp=when")
    i = ds.interactions
    assert i.user.tolist() == ["a", "b", "a"] and i.item.dtype == np.int64
    assert i.timestamp.tolist() == [1, 86400, 946684800]
    assert available_offline(f"parquet:{path}") and not available_offline(f"parquet:{path}x")


def test_parquet_bad_rating_names_row(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    pd.DataFrame({"user": [1, 2], "item": [3, 4], "rating": ["4", "n/a"]}).to_parquet(path)
    with pytest.raises(ValueError, match=r"r.parquet, row 1: bad rating 'n/a'"):
        load_source(f"parquet:{path}")
    with pytest.raises(ValueError, match="bad option 'sep=;'"):
        load_source(f"parquet:{path}?sep=;")


# --- ncf: ------------------------------------------------------------------------------------


def _write_ncf(prefix: Path, negative_lines: list[str] | None = None) -> None:
    prefix.with_name(prefix.name + ".train.rating").write_text(
        "0\t0\t5\t10\n0\t1\t3\t11\n1\t1\t4\t12\n1\t2\t2\t13\n"
    )
    prefix.with_name(prefix.name + ".test.rating").write_text("0\t2\t4\t20\n1\t3\t5\t21\n")
    lines = negative_lines or ["(0,2)\t3\t4", "(1,3)\t0\t4"]
    prefix.with_name(prefix.name + ".test.negative").write_text("\n".join(lines) + "\n")


def test_ncf(tmp_path: Path) -> None:
    prefix = tmp_path / "ml-1m"
    _write_ncf(prefix)
    ds = load_source(f"ncf:{prefix}")
    assert len(ds.interactions) == 6
    train, test = ds.fixed_splits["ncf"]()
    assert train.item.tolist() == [0, 1, 1, 2] and test.item.tolist() == [2, 3]
    assert test.timestamp.tolist() == [20, 21] and test.rating.tolist() == [4, 5]
    assert ds.test_negatives.tolist() == [[3, 4], [0, 4]]
    assert len(ds.files) == 3 and available_offline(f"ncf:{prefix}")


def test_ncf_as_the_authors_published_it(tmp_path: Path) -> None:
    # line 2 lists its own test item (3) among its negatives, and one negative fewer
    prefix = tmp_path / "ml-1m"
    _write_ncf(prefix, ["(0,2)\t3\t4", "(1,3)\t3"])
    ds = load_source(f"ncf:{prefix}")
    assert ds.test_negatives.tolist() == [[3, 4], [3, -1]]


@pytest.mark.parametrize(
    "lines, pattern",
    [
        (["(0,2)\t3\t4", "(1,2)\t0\t4"], r"line 2: \(1,2\) does not match; expected \(1,3\)"),
        (["(0,2)\t3\t1", "(1,3)\t0\t4"], r"line 1: negative item 1 is a training item of user 0"),
        (["(0,2)\t3\t4", "(1,3)\t0\t0"], r"line 2: negative item 0 is listed more than once"),
        (["(0,2)\t3\t4", "(1,3)"], r"line 2: expected '\(user,item\)' then tab-separated"),
        (["(0,2)\t3\t4"], r"1 lines, expected one per test row \(2\)"),
        (["0,2\t3\t4", "(1,3)\t0\t4"], r"line 1: expected '\(user,item\)'"),
    ],
)
def test_ncf_bad_negatives(tmp_path: Path, lines: list[str], pattern: str) -> None:
    prefix = tmp_path / "bench"
    _write_ncf(prefix, lines)
    with pytest.raises(ValueError, match=pattern) as e:
        load_source(f"ncf:{prefix}")
    assert "bench.test.negative" in str(e.value)


def test_ncf_missing_file_and_malformed_row(tmp_path: Path) -> None:
    prefix = tmp_path / "bench"
    _write_ncf(prefix)
    prefix.with_name("bench.test.rating").write_text("0\t2\t4\t20\n1\tx\t5\t21\n")
    with pytest.raises(ValueError, match=r"bench.test.rating, line 2: expected 4 '\\t'-sep"):
        load_source(f"ncf:{prefix}")
    prefix.with_name("bench.test.negative").unlink()
    with pytest.raises(FileNotFoundError, match="bench.test.negative: no such file"):
        load_source(f"ncf:{prefix}")
    assert not available_offline(f"ncf:{prefix}")


# --- dispatch and the data directory ---------------------------------------------------------


def test_unknown_spec_lists_known_forms() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'ml-10k'") as e:
        load_source("ml-10k")
    for form in ("ml-100k", "ml-25m", "csv:PATH", "parquet:PATH", "ncf:PREFIX", "synthetic"):
        assert form in str(e.value)
    with pytest.raises(ValueError, match="unknown dataset"):
        available_offline("tsv:x")


def test_data_home_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSWEEP_DATA", str(tmp_path / "env"))
    assert data_home(tmp_path / "arg") == tmp_path / "arg"
    assert data_home() == tmp_path / "env"
    monkeypatch.delenv("RECSWEEP_DATA")
    assert data_home() == Path.home() / ".cache" / "recsweep"


def test_available_offline(
    ml100k_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert available_offline("ml-100k", ml100k_dir.parent)
    assert not available_offline("ml-100k", tmp_path)
    monkeypatch.setenv("RECSWEEP_DATA", str(ml100k_dir.parent))
    assert available_offline("ml-100k")
    assert available_offline("synthetic")


def test_synthetic_dispatch() -> None:
    ds = load_source("synthetic")
    assert isinstance(ds, RawDataset) and len(ds.interactions) > 0
