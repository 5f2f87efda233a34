"""The MovieLens download path against a real HTTP server on 127.0.0.1 serving a small zip."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from orchestrator.data import movielens
from orchestrator.data.sources import available_offline, load_source

RATINGS = "1::10::5::978300760\n1::11::3::978302109\n2::10::4::978298413\n"
MOVIES = "10::Heat (1995)::Action|Crime|Thriller\n11::Sabrina (1995)::Comedy|Romance\n"


def _zip(name: str, files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for fname, text in files.items():
            z.writestr(f"{name}/{fname}", text)
    return buf.getvalue()


ML1M_ZIP = _zip("ml-1m", {"ratings.dat": RATINGS, "movies.dat": MOVIES, "README": "fixture"})
ML1M_MD5 = hashlib.md5(ML1M_ZIP).hexdigest()


class Server:
    """Serves `routes` (path -> bytes); `truncate` paths announce more bytes than they send."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests.append(self.path)
                body = server.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                extra = 10_000 if self.path in server.truncate else 0
                self.send_header("Content-Length", str(len(body) + extra))
                self.end_headers()
                self.wfile.write(body)  # then the connection closes (HTTP/1.0)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/movielens"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    s = Server()
    monkeypatch.setenv("RECSWEEP_MOVIELENS_URL", s.url)
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _leftovers(home: Path) -> list[str]:
    return sorted(p.name for p in home.iterdir()) if home.exists() else []


def test_download_verifies_unpacks_and_caches(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(movielens.ZIP_MD5, "ml-1m", ML1M_MD5)
    server.routes["/movielens/ml-1m.zip"] = ML1M_ZIP
    home = tmp_path / "home"
    assert not available_offline("ml-1m", home)
    ds = load_source("ml-1m", data_dir=home)
    progress = capsys.readouterr().err.splitlines()  # not a terminal: plain lines, no bar
    assert progress[0].startswith("download ml-1m: ") and progress[-1].startswith(
        "download ml-1m: 100% "
    )
    assert ds.interactions.user.tolist() == [1, 1, 2]
    assert ds.items.loc[11, "title"] == "Sabrina (1995)"
    assert server.requests == ["/movielens/ml-1m.zip"]
    assert _leftovers(home) == ["ml-1m"]  # no .part, no zip, no temporary folder
    assert (home / "ml-1m" / "README").read_text() == "fixture"
    assert available_offline("ml-1m", home)
    again = load_source("ml-1m", data_dir=home)
    assert server.requests == ["/movielens/ml-1m.zip"]  # the second load made no request
    assert again.fingerprint == ds.fingerprint
    assert "content sha256 verified" in again.note  # against the manifest of the unpack
    movies = home / "ml-1m" / "movies.dat"  # a file changed since the verified unpack
    movies.write_bytes(movies.read_bytes().replace(b"Sabrina", b"Sabrinx"))
    with pytest.raises(ValueError, match=f"{movies}: not the official ml-1m"):
        load_source("ml-1m", data_dir=home)


def test_checksum_mismatch_leaves_nothing(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(movielens.ZIP_MD5, "ml-1m", "0" * 32)
    server.routes["/movielens/ml-1m.zip"] = ML1M_ZIP
    home = tmp_path / "home"
    with pytest.raises(ValueError, match="checksum mismatch") as e:
        load_source("ml-1m", data_dir=home)
    message = str(e.value)
    assert f"expected md5 {'0' * 32}, got {ML1M_MD5}" in message
    assert f"{server.url}/ml-1m.zip" in message
    assert _leftovers(home) == []
    assert not available_offline("ml-1m", home)
    with pytest.raises(ValueError, match="checksum mismatch"):  # nothing cached: fetched again
        load_source("ml-1m", data_dir=home)
    assert len(server.requests) == 2


def test_interrupted_transfer_leaves_no_half_file(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(movielens.ZIP_MD5, "ml-1m", ML1M_MD5)
    server.routes["/movielens/ml-1m.zip"] = ML1M_ZIP
    server.truncate.add("/movielens/ml-1m.zip")
    home = tmp_path / "home"
    with pytest.raises(FileNotFoundError, match="interrupted: received") as e:
        load_source("ml-1m", data_dir=home)
    assert f"{server.url}/ml-1m.zip" in str(e.value)
    assert _leftovers(home) == []
    assert not available_offline("ml-1m", home)


def test_offline_error_says_where_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nobody listens on: connection refused, no network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("RECSWEEP_MOVIELENS_URL", f"http://127.0.0.1:{port}/ml")
    home = tmp_path / "home"
    with pytest.raises(FileNotFoundError) as e:
        load_source("ml-100k", data_dir=home)
    message = str(e.value)
    assert str(home / "ml-100k" / "u.data") in message
    assert f"http://127.0.0.1:{port}/ml/ml-100k.zip" in message
    assert "--data-dir" in message and "RECSWEEP_DATA" in message
    assert f"place the unpacked ml-100k folder at {home / 'ml-100k'}" in message
    assert _leftovers(home) == []


def test_unpinned_release_uses_published_md5(server: Server, tmp_path: Path) -> None:
    assert movielens.ZIP_MD5["ml-latest-small"] is None
    data = _zip(
        "ml-latest-small",
        {
            "ratings.csv": "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n",
            "movies.csv": "movieId,title,genres\n1,Toy Story (1995),Animation\n",
        },
    )
    server.routes["/movielens/ml-latest-small.zip"] = data
    server.routes["/movielens/ml-latest-small.zip.md5"] = (
        f"MD5 (ml-latest-small.zip) = {hashlib.md5(data).hexdigest()}\n".encode()
    )
    ds = load_source("ml-latest-small", data_dir=tmp_path)
    assert ds.interactions.rating.tolist() == [4.0]
    server.routes["/movielens/ml-latest-small.zip.md5"] = b"MD5 (x) = " + b"1" * 32
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_source("ml-latest-small", data_dir=tmp_path / "other")
    assert _leftovers(tmp_path / "other") == []


def test_cached_zip_is_verified_before_unpacking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(movielens.ZIP_MD5, "ml-1m", ML1M_MD5)
    monkeypatch.setenv("RECSWEEP_MOVIELENS_URL", "http://127.0.0.1:9/unused")
    (tmp_path / "ml-1m.zip").write_bytes(ML1M_ZIP)  # left by a run stopped before unpacking
    assert load_source("ml-1m", data_dir=tmp_path).interactions.item.tolist() == [10, 11, 10]
    assert _leftovers(tmp_path) == ["ml-1m"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "ml-1m.zip").write_bytes(ML1M_ZIP[:-1] + b"x")
    with pytest.raises(ValueError, match="ml-1m.zip: checksum mismatch"):
        load_source("ml-1m", data_dir=other)
    assert _leftovers(other) == []


def test_zip_without_release_folder(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _zip("something-else", {"ratings.dat": RATINGS})
    monkeypatch.setitem(movielens.ZIP_MD5, "ml-1m", hashlib.md5(data).hexdigest())
    server.routes["/movielens/ml-1m.zip"] = data
    with pytest.raises(ValueError, match="expected ml-1m/ratings.dat inside the zip"):
        load_source("ml-1m", data_dir=tmp_path)
    assert not available_offline("ml-1m", tmp_path)
