"""bench.data: lookup order, checksums, atomic downloads from a local HTTP server, messages."""
from __future__ import annotations

import hashlib
import http.server
import io
import os
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from bench import data as bdata

FIXTURES = Path(__file__).parent / "fixtures"
DATA = Path(os.environ["CELLBENCH_DATA"]) if os.environ.get("CELLBENCH_DATA") else None
HAVE_TM = DATA is not None and (DATA / "timemachine.txt").is_file()
HAVE_NAMES = DATA is not None and (DATA / "names" / "Arabic.txt").is_file()
needs_tm = pytest.mark.skipif(not HAVE_TM, reason="timemachine.txt not found in $CELLBENCH_DATA")
needs_names = pytest.mark.skipif(not HAVE_NAMES, reason="names/*.txt not found in $CELLBENCH_DATA")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No $CELLBENCH_DATA, an empty cache, downloads allowed only where a test says so."""
    monkeypatch.delenv(bdata.ENV_DATA, raising=False)
    monkeypatch.delenv(bdata.ENV_OFFLINE, raising=False)
    monkeypatch.delenv(bdata.ENV_D2L_URL, raising=False)
    monkeypatch.delenv(bdata.ENV_NAMES_URL, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv(bdata.ENV_CACHE, str(cache))
    return cache


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 (ephemeral port) serving tmp_path/www; yields (base_url, root)."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", root
    finally:
        httpd.shutdown()
        httpd.server_close()


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_unknown_resource():
    with pytest.raises(bdata.DataError, match="expected one of"):
        bdata.locate("wikipedia")


def test_missing_explicit_path_says_what_was_expected(isolated, tmp_path):
    with pytest.raises(bdata.DataError, match=r"no such file.*Time Machine.*CELLBENCH_DATA"):
        bdata.locate("timemachine.txt", tmp_path / "nope")
    with pytest.raises(bdata.DataError, match="does not hold timemachine.txt"):
        bdata.locate("timemachine.txt", tmp_path)


def test_wrong_hash_explicit_file(isolated):
    with pytest.raises(bdata.DataError, match=r"SHA1 .*expected 090b5e7e.*Delete it"):
        bdata.locate("timemachine.txt", FIXTURES / "timemachine_corrupt.txt")


def test_offline_without_file_says_how_to_provide(isolated, monkeypatch):
    monkeypatch.setenv(bdata.ENV_OFFLINE, "1")
    with pytest.raises(bdata.DataError) as info:
        bdata.locate("timemachine.txt")
    msg = str(info.value)
    for needle in ("timemachine.txt", "--data", "CELLBENCH_DATA", str(isolated)):
        assert needle in msg


def test_poems_cannot_be_downloaded(isolated):
    with pytest.raises(bdata.DataError, match=r"cannot be downloaded.*poems_tang.txt.*CELLBENCH_DATA"):
        bdata.locate("poems_tang.txt")


def test_no_network_error_is_clear(isolated):
    # a closed port on localhost: connection refused, quickly
    with pytest.raises(bdata.DataError, match=r"cannot download .*Provide timemachine.txt"):
        bdata.locate("timemachine.txt", url="http://127.0.0.1:9/", timeout=5)
    assert not any(p.suffix == ".part" for p in isolated.rglob("*"))


def test_download_corrupted_file_leaves_nothing(isolated, server):
    base, root = server
    shutil.copy(FIXTURES / "timemachine_corrupt.txt", root / "timemachine.txt")
    with pytest.raises(bdata.DataError, match=r"downloaded .* has SHA1 .*nothing was kept"):
        bdata.locate("timemachine.txt", url=base)
    assert _leftovers(isolated) == []


def test_download_good_file_via_env_url(isolated, server, monkeypatch):
    """A good file (checksum patched to the fixture's, so this runs without the real data)."""
    base, root = server
    shutil.copy(FIXTURES / "timemachine_corrupt.txt", root / "timemachine.txt")
    digest = bdata.file_digest(FIXTURES / "timemachine_corrupt.txt", "sha1")
    monkeypatch.setattr(bdata.TIME_MACHINE.files[0], "digest", digest)
    monkeypatch.setenv(bdata.ENV_D2L_URL, base)
    path = bdata.locate("timemachine.txt")
    assert path == isolated / "timemachine.txt"
    assert _leftovers(isolated) == ["timemachine.txt"]
    # the cache is used next time, with the server gone from the lookup
    monkeypatch.setenv(bdata.ENV_D2L_URL, "http://127.0.0.1:9/")
    assert bdata.locate("timemachine.txt") == path


@needs_tm
def test_download_real_time_machine(isolated, server):
    base, root = server
    shutil.copy(DATA / "timemachine.txt", root / "timemachine.txt")
    path = bdata.locate("timemachine.txt", url=base)
    assert bdata.file_digest(path, "sha1") == "090b5e7e70c295757f55df93cb0a180b9691891a"


def test_corrupted_cache_file_is_an_error(isolated):
    isolated.mkdir(parents=True)
    (isolated / "timemachine.txt").write_text("truncated")
    with pytest.raises(bdata.DataError, match=r"corrupted, truncated.*Delete it.*downloaded again"):
        bdata.locate("timemachine.txt", download=False)


@needs_tm
def test_lookup_order(isolated, tmp_path, monkeypatch):
    env_dir, cache = tmp_path / "env", isolated
    for d in (env_dir, cache):
        d.mkdir(parents=True)
        shutil.copy(DATA / "timemachine.txt", d / "timemachine.txt")
    explicit = tmp_path / "explicit.txt"
    shutil.copy(DATA / "timemachine.txt", explicit)
    monkeypatch.setenv(bdata.ENV_DATA, str(env_dir))
    assert bdata.locate("timemachine.txt", explicit) == explicit
    assert bdata.locate("timemachine.txt", explicit.parent / "env") == env_dir / "timemachine.txt"
    assert bdata.locate("timemachine.txt") == env_dir / "timemachine.txt"
    monkeypatch.delenv(bdata.ENV_DATA)
    assert bdata.locate("timemachine.txt", download=False) == cache / "timemachine.txt"


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, content in files.items():
            z.writestr(name, content)
    return buf.getvalue()


@needs_names
def test_names_zip_download_verifies_each_file(isolated, server):
    base, root = server
    files = {f"data/names/{p.name}": p.read_bytes() for p in sorted((DATA / "names").glob("*.txt"))}
    files["data/eng-fra.txt"] = b"ignored"
    (root / "data.zip").write_bytes(_zip(files))
    path = bdata.locate("names", url=base + "data.zip")
    assert path == isolated / "names"
    assert sorted(p.name for p in path.iterdir()) == sorted(bdata.NAMES_SHA256)
    assert _leftovers(isolated) == ["names"]


def test_names_zip_corrupted_leaves_nothing(isolated, server):
    base, root = server
    (root / "data.zip").write_bytes(_zip({"data/names/Arabic.txt": b"Khoury\nNahas\n"}))
    with pytest.raises(bdata.DataError, match=r"names/Arabic.txt .* SHA-256 .*nothing was kept"):
        bdata.locate("names", url=base + "data.zip")
    assert _leftovers(isolated) == []
    (root / "data.zip").write_bytes(b"this is not a zip")
    with pytest.raises(bdata.DataError, match="not a valid zip"):
        bdata.locate("names", url=base + "data.zip")
    assert _leftovers(isolated) == []


@needs_names
def test_names_checksums_match_the_data():
    for name, digest in bdata.NAMES_SHA256.items():
        assert hashlib.sha256((DATA / "names" / name).read_bytes()).hexdigest() == digest


def test_atomic_write_cleans_up_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(bdata.os, "replace", boom)
    with pytest.raises(OSError):
        bdata._write_atomic(target, b"payload")
    assert _leftovers(tmp_path) == []
