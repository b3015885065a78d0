"""bench.data: lookup order, checksums, the shipped copies, atomic downloads from a local HTTP
server (the Time Machine, the names zip, the poems' JSON), messages."""

from __future__ import annotations

import fnmatch
import hashlib
import http.server
import io
import lzma
import os
import shutil
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from bench import data as bdata

FIXTURES = Path(__file__).parent / "fixtures"
DATA = Path(os.environ["CELLBENCH_DATA"]) if os.environ.get("CELLBENCH_DATA") else None
SHIPPED = bdata.EMBEDDED_DIR  # the real Time Machine and names files, always here


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No $CELLBENCH_DATA, an empty cache, downloads allowed only where a test says so."""
    monkeypatch.delenv(bdata.ENV_DATA, raising=False)
    monkeypatch.delenv(bdata.ENV_OFFLINE, raising=False)
    monkeypatch.delenv(bdata.ENV_D2L_URL, raising=False)
    monkeypatch.delenv(bdata.ENV_NAMES_URL, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv(bdata.ENV_CACHE, str(cache))
    # as if the package had been installed without its data: lookup goes on to cache/download
    monkeypatch.setattr(bdata, "EMBEDDED_DIR", tmp_path / "no-package-data")
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


def test_poems_offline_is_not_found_and_names_the_sample(isolated, monkeypatch):
    monkeypatch.setenv(bdata.ENV_OFFLINE, "1")
    with pytest.raises(
        bdata.DataNotFound, match=r"poems_tang.txt .*downloads are off.*--corpus sample"
    ):
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


def test_download_real_time_machine(isolated, server):
    base, root = server
    shutil.copy(SHIPPED / "timemachine.txt", root / "timemachine.txt")
    path = bdata.locate("timemachine.txt", url=base)
    assert bdata.file_digest(path, "sha1") == "090b5e7e70c295757f55df93cb0a180b9691891a"


def test_corrupted_cache_file_is_an_error(isolated):
    isolated.mkdir(parents=True)
    (isolated / "timemachine.txt").write_text("truncated")
    with pytest.raises(bdata.DataError, match=r"corrupted, truncated.*Delete it.*downloaded again"):
        bdata.locate("timemachine.txt", download=False)


def test_lookup_order(isolated, tmp_path, monkeypatch):
    env_dir, cache = tmp_path / "env", isolated
    for d in (env_dir, cache):
        d.mkdir(parents=True)
        shutil.copy(SHIPPED / "timemachine.txt", d / "timemachine.txt")
    explicit = tmp_path / "explicit.txt"
    shutil.copy(SHIPPED / "timemachine.txt", explicit)
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


def test_names_zip_download_verifies_each_file(isolated, server):
    base, root = server
    files = {
        f"data/names/{p.name}": p.read_bytes() for p in sorted((SHIPPED / "names").glob("*.txt"))
    }
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


def test_names_checksums_match_the_data():
    for name, digest in bdata.NAMES_SHA256.items():
        assert hashlib.sha256((SHIPPED / "names" / name).read_bytes()).hexdigest() == digest


def test_atomic_write_cleans_up_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(bdata.os, "replace", boom)
    with pytest.raises(OSError):
        bdata._write_atomic(target, b"payload")
    assert _leftovers(tmp_path) == []


# --- the copies shipped in the package ---------------------------------------------------------


def test_shipped_copies_are_found_without_data_dir_or_network(tmp_path, monkeypatch):
    monkeypatch.delenv(bdata.ENV_DATA, raising=False)
    monkeypatch.setenv(bdata.ENV_CACHE, str(tmp_path / "empty-cache"))
    monkeypatch.setenv(bdata.ENV_D2L_URL, "http://127.0.0.1:9/")  # any download would fail
    monkeypatch.setenv(bdata.ENV_NAMES_URL, "http://127.0.0.1:9/data.zip")
    tm = bdata.find("timemachine.txt")
    assert tm == bdata.Found(bdata.EMBEDDED_DIR / "timemachine.txt", "embedded")
    assert bdata.file_digest(tm.path, "sha1") == bdata.TIME_MACHINE.files[0].digest
    names = bdata.find("names")
    assert names.source == "embedded" and len(list(names.path.glob("*.txt"))) == 18
    sample = bdata.find("poems_sample")
    assert sample.source == "embedded"
    lines = bdata.read_text("poems_sample").splitlines()
    assert len(lines) == 3000 and all(len(line.split(":")) == 2 for line in lines)
    assert not (tmp_path / "empty-cache").exists()


def test_explicit_and_env_copies_come_first_and_are_local(tmp_path, monkeypatch):
    shutil.copy(bdata.EMBEDDED_DIR / "timemachine.txt", tmp_path / "timemachine.txt")
    monkeypatch.setenv(bdata.ENV_DATA, str(tmp_path))
    assert bdata.find("timemachine.txt") == bdata.Found(tmp_path / "timemachine.txt", "local")
    monkeypatch.delenv(bdata.ENV_DATA)
    assert bdata.find("timemachine.txt", tmp_path).source == "local"


def test_corrupted_shipped_copy_is_an_error_not_a_download(tmp_path, monkeypatch):
    package = tmp_path / "datasets"
    shutil.copytree(bdata.EMBEDDED_DIR, package)
    monkeypatch.setattr(bdata, "EMBEDDED_DIR", package)
    monkeypatch.delenv(bdata.ENV_DATA, raising=False)
    with (package / "names" / "Korean.txt").open("a", encoding="utf-8") as f:
        f.write("Kim\n")
    with pytest.raises(bdata.DataError, match=r"Korean.txt has SHA256 .*expected cd54221c"):
        bdata.find("names")
    (package / "poems_tang_sample.txt.xz").write_bytes(lzma.compress(b"title:content\n"))
    with pytest.raises(
        bdata.DataError, match=r"poems_tang_sample.txt.xz has SHA256 .*expected e3447fba"
    ):
        bdata.find("poems_sample")


def test_package_data_globs_cover_every_shipped_file():
    """pyproject.toml's [tool.setuptools.package-data] must install every file in bench/datasets."""
    if sys.version_info < (3, 11):
        pytest.skip("tomllib is Python 3.11+")
    import tomllib

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    globs = config["tool"]["setuptools"]["package-data"]["bench"]
    shipped = [
        p.relative_to(root / "bench").as_posix()
        for p in (root / "bench" / "datasets").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    assert len(shipped) >= 21  # the book, 18 names files, the poems sample, the README
    missing = [f for f in shipped if not any(fnmatch.fnmatchcase(f, g) for g in globs)]
    assert missing == []


# --- the poems: chinese-poetry's JSON, converted, verified after conversion --------------------

POETRY = FIXTURES / "chinese_poetry"


def test_conversion_reproduces_the_first_lines_of_poems_tang():
    from bench.tasks.poems_corpus import convert

    expected = (POETRY / "poems_tang_head.txt").read_text(encoding="utf-8").splitlines()
    assert convert((POETRY / "poet.tang.0.json").read_bytes()) == expected


def test_conversion_refuses_malformed_json():
    from bench.tasks.poems_corpus import convert

    with pytest.raises(bdata.DataError, match="x.json is not valid UTF-8 JSON"):
        convert(b'[{"title": "t", "paragraphs": ["a"', "x.json")
    with pytest.raises(bdata.DataError, match=r"x.json poem 0: expected 'paragraphs' as a list"):
        convert(b'[{"title": "t", "paragraphs": "abc"}]', "x.json")
    with pytest.raises(bdata.DataError, match="expected a JSON list of poems, got dict"):
        convert(b'{"title": "t"}', "x.json")


@pytest.fixture
def poetry_server(isolated, server, monkeypatch):
    """Two small JSON files on the local server; the corpus checksum is the expected conversion's."""
    base, root = server
    names = ("poet.tang.0.json", "poet.tang.1000.json")
    for name in names:
        shutil.copy(POETRY / name, root / name)
    from bench.tasks.poems_corpus import corpus_bytes

    expected = corpus_bytes((n, (POETRY / n).read_bytes()) for n in names)
    monkeypatch.setattr(bdata, "POEMS_JSON_FILES", names)
    monkeypatch.setattr(bdata.POEMS.files[0], "digest", hashlib.sha256(expected).hexdigest())
    return base, root, expected


def test_poems_download_converts_and_verifies(isolated, poetry_server, monkeypatch):
    base, _, expected = poetry_server
    monkeypatch.setenv(bdata.ENV_POEMS_URL, base)
    found = bdata.find("poems_tang.txt")
    assert found == bdata.Found(isolated / "poems_tang.txt", "downloaded")
    assert found.path.read_bytes() == expected
    text = found.path.read_text(encoding="utf-8")
    assert text.splitlines()[0].startswith("帝京篇十首 一:秦川雄帝宅，函谷壯皇居。")
    assert text.splitlines()[-1] == "a title with a colon:白日依山盡，黃河入海流。"
    assert _leftovers(isolated) == ["poems_tang.txt"]
    monkeypatch.setenv(bdata.ENV_POEMS_URL, "http://127.0.0.1:9/")  # now served by the cache
    assert bdata.find("poems_tang.txt") == bdata.Found(found.path, "local")


def test_poems_download_corrupted_json_leaves_nothing(isolated, poetry_server):
    base, root, _ = poetry_server
    (root / "poet.tang.1000.json").write_bytes((POETRY / "poet.tang.1000.json").read_bytes()[:40])
    with pytest.raises(
        bdata.DataError, match=r"poet.tang.1000.json is not valid UTF-8 JSON.*nothing was kept"
    ):
        bdata.find("poems_tang.txt", url=base)
    assert _leftovers(isolated) == []


def test_poems_download_with_changed_content_fails_the_checksum(isolated, poetry_server):
    base, root, _ = poetry_server
    text = (POETRY / "poet.tang.1000.json").read_text(encoding="utf-8").replace("白日", "黑日")
    (root / "poet.tang.1000.json").write_text(text, encoding="utf-8")
    with pytest.raises(bdata.DataError, match=r"converted from .* has SHA256 .*nothing was kept"):
        bdata.find("poems_tang.txt", url=base)
    assert _leftovers(isolated) == []


def test_poems_download_missing_file_leaves_nothing(isolated, poetry_server):
    base, root, _ = poetry_server
    (root / "poet.tang.1000.json").unlink()
    with pytest.raises(
        bdata.DataError, match=r"cannot download .*poet.tang.1000.json.*nothing was kept"
    ):
        bdata.find("poems_tang.txt", url=base)
    assert _leftovers(isolated) == []


@pytest.mark.skipif(
    DATA is None or not (DATA / "poems_tang.txt").is_file(),
    reason="poems_tang.txt not found in $CELLBENCH_DATA",
)
def test_shipped_poems_sample_is_drawn_from_the_corpus():
    import random

    lines = (DATA / "poems_tang.txt").read_text(encoding="utf-8").splitlines()
    idx = sorted(random.Random(0).sample(range(len(lines)), 3000))
    assert bdata.read_text("poems_sample").splitlines() == [lines[i] for i in idx]
    assert bdata.file_digest(DATA / "poems_tang.txt", "sha256") == bdata.POEMS.files[0].digest
