"""Training data: found locally or downloaded, always checksummed.

Lookup order for every resource (see docs/tasks.md):

1. an explicit path (`--data PATH`): the file itself, or a directory holding it;
2. the directory named by `$CELLBENCH_DATA`;
3. the copy shipped inside the package (`bench/datasets/`: the Time Machine and the names files;
   the poems ship only as a sample, a resource of its own);
4. the user cache directory (`$CELLBENCH_CACHE`, else `$XDG_CACHE_HOME/cellbench`, else
   `~/.cache/cellbench`);
5. a download from the canonical source into that cache, verified before it is kept.

`find` also says which of these served the file: `local` (1, 2, 4), `embedded` (3) or
`downloaded` (5); the tasks record it as `data_source`.

Downloads are written to a temporary file (or directory) beside the target and moved in place
with `os.replace`, so an interrupted or corrupted download never leaves a half file behind.
A file that is found but has the wrong checksum is an error that says what to do.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data_catalog import (
    ALIASES,
    D2L_DATA_URL,
    NAMES,
    NAMES_SHA256,
    NAMES_ZIP_URL,
    POEMS,
    POEMS_BASE_URL,
    POEMS_COMMIT,
    POEMS_JSON_FILES,
    POEMS_SAMPLE,
    RESOURCES,
    TIME_MACHINE,
    DataError,
    DataNotFound,
    FileSpec,
    Resource,
    resource,
)

# the catalog's names are re-exported: the tasks and the tests use them as bench.data's
__all__ = [
    "ALIASES",
    "D2L_DATA_URL",
    "NAMES",
    "NAMES_SHA256",
    "NAMES_ZIP_URL",
    "POEMS",
    "POEMS_BASE_URL",
    "POEMS_COMMIT",
    "POEMS_JSON_FILES",
    "POEMS_SAMPLE",
    "RESOURCES",
    "SOURCES",
    "TIME_MACHINE",
    "DataError",
    "DataNotFound",
    "FileSpec",
    "Found",
    "Resource",
    "fetch",
    "find",
    "locate",
    "read_text",
    "resource",
    "text_of",
    "verify",
]

ENV_DATA = "CELLBENCH_DATA"
ENV_CACHE = "CELLBENCH_CACHE"
ENV_D2L_URL = "CELLBENCH_D2L_URL"  # overrides d2l's DATA_URL (a base URL, ending in '/')
ENV_NAMES_URL = "CELLBENCH_NAMES_URL"  # overrides the PyTorch tutorial's data.zip URL
ENV_OFFLINE = "CELLBENCH_OFFLINE"  # "1": never download
ENV_POEMS_URL = "CELLBENCH_POEMS_URL"  # overrides the chinese-poetry base URL (ending in '/')

EMBEDDED_DIR = Path(__file__).resolve().parent / "datasets"
SOURCES = ("local", "embedded", "downloaded")


def cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cellbench"


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_digest(path: str | os.PathLike, algorithm: str) -> str:
    """file_digest, of the decompressed content for a `.xz` file."""
    if str(path).endswith(".xz"):
        with lzma.open(path, "rb") as f:
            return hashlib.new(algorithm, f.read()).hexdigest()
    return file_digest(path, algorithm)


def _how_to_provide(r: Resource) -> str:
    target = r.name + ("/ (the 18 names/*.txt files)" if r is NAMES else "")
    s = (
        f"Provide {target} in one of these ways: pass --data PATH (the file, or a directory "
        f"holding it); or put it in the directory named by ${ENV_DATA}; or put it in the cache "
        f"directory {cache_dir()} (set ${ENV_CACHE} to move it)"
    )
    if r.downloadable:
        s += f"; or allow the download from {r.source}"
    if r.notes:
        s += f". Note: {r.notes}"
    return s + "."


def _root_of(r: Resource, path: Path) -> Path | None:
    """The data directory in which `path` provides resource r, or None."""
    if r is NAMES:
        if path.is_dir() and path.name == "names" and (path / "Arabic.txt").exists():
            return path.parent
        if path.is_dir() and (path / "names").is_dir():
            return path
        return None
    if path.is_file():
        return path  # an explicit file: verified by content, any name
    if path.is_dir() and (path / r.name).is_file():
        return path
    return None


def _files_at(r: Resource, root: Path) -> list[tuple[FileSpec, Path]]:
    if root.is_file():
        return [(r.files[0], root)]
    return [(spec, root / spec.name) for spec in r.files]


def verify(r: Resource, root: Path) -> None:
    """Raise DataError unless every file of r under root exists with the right checksum."""
    for spec, path in _files_at(r, root):
        if not path.is_file():
            raise DataError(f"{path} is missing (part of {r.what}). {_how_to_provide(r)}")
        got = content_digest(path, spec.algorithm)
        if got != spec.digest:
            raise DataError(
                f"{path} has {spec.algorithm.upper()} {got}, expected {spec.digest}: the file is "
                f"corrupted, truncated or a different version of {r.what}. Delete it"
                + (" (it will be downloaded again)" if r.downloadable else "")
                + f" or replace it with the right copy. {_how_to_provide(r)}"
            )


@dataclass(frozen=True)
class Found:
    """Where a resource was found: its verified path, and which copy (one of SOURCES)."""

    path: Path
    source: str


def find(
    name: str,
    data: str | os.PathLike | None = None,
    *,
    download: bool | None = None,
    url: str | None = None,
    timeout: float = 30.0,
) -> Found:
    """The verified path of resource `name` (a file, or for 'names' the names/ directory) and
    its source: `local`, `embedded` or `downloaded`.

    `data` is an explicit file or directory; `url` overrides the download URL (for 'timemachine',
    a base URL to which the file name is appended, like d2l's DATA_URL; for 'names', the zip; for
    'poems_tang.txt', the base URL of the JSON files).
    """
    r = resource(name)
    if data is not None:
        p = Path(data).expanduser()
        if not p.exists():
            raise DataError(
                f"--data {p}: no such file or directory (expected {r.what}). " + _how_to_provide(r)
            )
        root = _root_of(r, p)
        if root is None:
            raise DataError(
                f"--data {p}: does not hold {r.name} (expected {r.what}). " + _how_to_provide(r)
            )
        verify(r, root)
        return Found(_result(r, root), "local")
    env = os.environ.get(ENV_DATA)
    if env:
        root = _root_of(r, Path(env).expanduser())
        if root is not None and root.is_dir():
            verify(r, root)
            return Found(_result(r, root), "local")
    if r.embedded and _root_of(r, EMBEDDED_DIR) is not None:
        verify(r, EMBEDDED_DIR)  # a corrupted package is an error, not a reason to download
        return Found(_result(r, EMBEDDED_DIR), "embedded")
    cache = cache_dir()
    root = _root_of(r, cache)
    if root is not None and root.is_dir():
        verify(r, root)
        return Found(_result(r, root), "local")
    if download is None:
        download = os.environ.get(ENV_OFFLINE, "") not in ("1", "true", "yes")
    where = f"not found in ${ENV_DATA} ({env or 'unset'}) nor in the cache {cache}"
    if not r.downloadable:
        raise DataNotFound(
            f"{r.name} {where}, and {r.what} cannot be downloaded. " + _how_to_provide(r)
        )
    if not download:
        raise DataNotFound(
            f"{r.name} {where}, and downloads are off (${ENV_OFFLINE}). " + _how_to_provide(r)
        )
    fetch(r, cache, url=url, timeout=timeout)
    return Found(_result(r, cache), "downloaded")


def locate(name: str, data: str | os.PathLike | None = None, **lookup: Any) -> Path:
    """find(name, data, **lookup).path: the verified path of resource `name`."""
    return find(name, data, **lookup).path


def _result(r: Resource, root: Path) -> Path:
    if root.is_file():
        return root
    return root / ("names" if r is NAMES else r.name)


def _download_bytes(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"cannot download {url}: {reason}") from exc


def fetch(
    r: Resource | str, dest: str | os.PathLike, *, url: str | None = None, timeout: float = 30.0
) -> Path:
    """Download resource r into directory dest, verify it, and move it in place atomically."""
    r = resource(r) if isinstance(r, str) else r
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if r is TIME_MACHINE:
        base = url or os.environ.get(ENV_D2L_URL) or D2L_DATA_URL
        src = base + r.name if base.endswith("/") else base + "/" + r.name
        try:
            payload = _download_bytes(src, timeout)
        except DataError as exc:
            raise DataError(f"{exc}. {_how_to_provide(r)}") from exc
        return _store_verified(r, payload, dest, f"downloaded {src}", "the download is")
    if r is NAMES:
        src = url or os.environ.get(ENV_NAMES_URL) or NAMES_ZIP_URL
        try:
            payload = _download_bytes(src, timeout)
        except DataError as exc:
            raise DataError(f"{exc}. {_how_to_provide(r)}") from exc
        tmp = Path(tempfile.mkdtemp(prefix=".names.", dir=dest))
        try:
            try:
                archive = zipfile.ZipFile(io.BytesIO(payload))
            except zipfile.BadZipFile as exc:
                raise DataError(
                    f"downloaded {src} is not a valid zip archive ({exc}); nothing was "
                    f"kept. Retry, or {_how_to_provide(r)}"
                ) from exc
            members = {
                Path(m).name: m
                for m in archive.namelist()
                if Path(m).parent.name == "names" and m.endswith(".txt")
            }
            for name, digest in NAMES_SHA256.items():
                if name not in members:
                    raise DataError(
                        f"downloaded {src} has no names/{name}; nothing was kept. "
                        + _how_to_provide(r)
                    )
                content = archive.read(members[name])
                got = hashlib.sha256(content).hexdigest()
                if got != digest:
                    raise DataError(
                        f"names/{name} in {src} has SHA-256 {got}, expected {digest}: "
                        f"corrupted or a different version; nothing was kept. " + _how_to_provide(r)
                    )
                (tmp / name).write_bytes(content)
            target = dest / "names"
            if target.exists() and not target.is_dir():
                target.unlink()
            try:
                os.replace(tmp, target)
            except OSError:
                if not target.is_dir():  # not a concurrent download that finished first
                    raise
                verify(r, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return dest / "names"
    if r is POEMS:
        from bench.tasks.poems_corpus import download_corpus

        base = url or os.environ.get(ENV_POEMS_URL) or POEMS_BASE_URL
        payload = download_corpus(base, POEMS_JSON_FILES, timeout)
        return _store_verified(r, payload, dest, f"the corpus converted from {base}", "a file is")
    raise DataError(f"{r.name} cannot be downloaded. " + _how_to_provide(r))


def _store_verified(r: Resource, payload: bytes, dest: Path, what: str, culprit: str) -> Path:
    """Write a single-file resource's bytes to dest only if they match its checksum."""
    spec = r.files[0]
    got = hashlib.new(spec.algorithm, payload).hexdigest()
    if got != spec.digest:
        raise DataError(
            f"{what} has {spec.algorithm.upper()} {got}, expected {spec.digest}: "
            f"{culprit} corrupted or the source changed; nothing was kept. "
            f"Retry, or: {_how_to_provide(r)}"
        )
    _write_atomic(dest / r.name, payload)
    return dest / r.name


def _write_atomic(path: Path, payload: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_text(name: str, data: str | os.PathLike | None = None) -> str:
    """The verified text of a single-file resource ('timemachine.txt', 'poems_tang.txt' or the
    'poems_sample')."""
    return text_of(locate(name, data))


def text_of(path: str | os.PathLike) -> str:
    """The UTF-8 text of a file, decompressed when it is a `.xz`."""
    if str(path).endswith(".xz"):
        with lzma.open(path, "rb") as f:
            return f.read().decode("utf-8")
    return Path(path).read_text(encoding="utf-8")
