"""Traditional -> simplified Chinese, for the poetry task.

The Tang poems corpus (chinese-poetry) is in traditional characters; the poetry lab trained on a
simplified `poems.txt` and generated from simplified begin characters (红, not 紅). Converting
with OpenCC's `t2s` configuration puts the corpus in the lab's script. OpenCC converts by phrase
before character (乾坤 stays, 乾燥 -> 干燥), which a per-character table cannot do.

Public API: `to_simplified(text)`, `REQUIREMENT`.
"""

from __future__ import annotations

import functools
from typing import Any

# The official OpenCC binding: maintained, binary wheels for Linux, macOS and Windows, so no
# compiler is needed. Its import name is `opencc`; the older pure-Python port
# `opencc-python-reimplemented` uses the same import name and the same OpenCC("t2s") call.
REQUIREMENT = "opencc>=1.4.2"


@functools.cache
def _converter() -> Any:
    try:
        import opencc
    except ImportError as exc:
        raise ImportError(
            "converting traditional to simplified Chinese needs OpenCC's Python package; "
            f"install it with: pip install '{REQUIREMENT}' (import failed: {exc})"
        ) from exc
    return opencc.OpenCC("t2s")


def to_simplified(text: str) -> str:
    """`text` with traditional Chinese characters and phrases replaced by simplified ones.

    Everything else (simplified characters, punctuation, Latin letters, digits, newlines) is
    returned unchanged. Raises ImportError naming the package when OpenCC is not installed."""
    if not isinstance(text, str):
        raise TypeError(f"to_simplified expects a str, got {type(text).__name__}")
    if not text:
        return text
    result = _converter().convert(text)
    if not isinstance(result, str):
        raise TypeError(f"OpenCC's convert returned {type(result).__name__}, expected str")
    return result
