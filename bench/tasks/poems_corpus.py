"""The Tang poems corpus from chinese-poetry's JSON: download and conversion to poems_tang.txt.

chinese-poetry/chinese-poetry (MIT) keeps the Complete Tang Poems as `全唐诗/poet.tang.N.json`
(N = 0, 1000, ..., 57000), each a list of poems `{"author", "title", "paragraphs": [...], ...}`.
poems_tang.txt has one line per poem, in file order: the title with every ':' removed, a ':',
then the paragraphs joined with nothing between them. The JSON files' own hashes are not
published, so bench.data verifies the converted corpus against the known SHA-256 instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from bench import data as bdata


def poem_line(poem: Any, where: str = "poem") -> str:
    """One poem (a dict from the JSON) as a 'title:content' line, without the newline."""
    if not isinstance(poem, dict):
        raise bdata.DataError(
            f"{where}: expected an object with 'title' and 'paragraphs', got {type(poem).__name__}"
        )
    title, paragraphs = poem.get("title"), poem.get("paragraphs")
    if not isinstance(title, str):
        raise bdata.DataError(f"{where}: expected a string 'title', got {title!r}")
    if not isinstance(paragraphs, list) or not all(isinstance(p, str) for p in paragraphs):
        raise bdata.DataError(
            f"{where}: expected 'paragraphs' as a list of strings, got {paragraphs!r}"
        )
    return title.replace(":", "") + ":" + "".join(paragraphs)


def convert(payload: bytes, name: str = "poet.tang.json") -> list[str]:
    """The 'title:content' lines of one JSON file's poems, in order."""
    try:
        poems = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bdata.DataError(
            f"{name} is not valid UTF-8 JSON ({exc}); the download is corrupted or truncated"
        ) from exc
    if not isinstance(poems, list):
        raise bdata.DataError(f"{name}: expected a JSON list of poems, got {type(poems).__name__}")
    return [poem_line(p, f"{name} poem {i}") for i, p in enumerate(poems)]


def corpus_bytes(files: Iterable[tuple[str, bytes]]) -> bytes:
    """poems_tang.txt's bytes from (name, JSON payload) pairs in file order."""
    return "".join(
        line + "\n" for name, payload in files for line in convert(payload, name)
    ).encode("utf-8")


def download_corpus(base_url: str, names: Sequence[str], timeout: float = 30.0) -> bytes:
    """Fetch every JSON file under base_url and return the converted corpus (unverified: the
    caller checks its SHA-256 before anything is written)."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    pairs = []
    for name in names:
        src = base + name
        try:
            pairs.append((src, bdata._download_bytes(src, timeout)))
        except bdata.DataError as exc:
            raise bdata.DataError(
                f"{exc}; nothing was kept. {bdata._how_to_provide(bdata.POEMS)}"
            ) from exc
    try:
        return corpus_bytes(pairs)
    except bdata.DataError as exc:
        raise bdata.DataError(
            f"{exc}; nothing was kept. Retry, or: {bdata._how_to_provide(bdata.POEMS)}"
        ) from exc
