"""bench.tasks.simplified: traditional -> simplified Chinese through OpenCC."""

from __future__ import annotations

import sys

import pytest

from bench import data as bdata
from bench.tasks import simplified
from bench.tasks.simplified import REQUIREMENT, to_simplified


@pytest.mark.parametrize(
    "traditional, simple",
    [("風", "风"), ("門", "门"), ("書", "书"), ("國", "国"), ("長", "长"), ("紅", "红")],
)
def test_known_character_pairs(traditional: str, simple: str) -> None:
    assert to_simplified(traditional) == simple


def test_a_line_of_poetry() -> None:
    # The first poem of the corpus, traditional in, simplified out.
    assert to_simplified("秦川雄帝宅，函谷壯皇居。綺殿千尋起，離宮百雉餘。") == (
        "秦川雄帝宅，函谷壮皇居。绮殿千寻起，离宫百雉余。"
    )


def test_phrases_before_characters() -> None:
    # 乾 is simplified to 干 in 乾燥 but kept in 乾坤: a per-character table gets one of them wrong.
    assert to_simplified("乾燥") == "干燥"
    assert to_simplified("乾坤") == "乾坤"


@pytest.mark.parametrize(
    "text",
    [
        "，。、；：？！「」『』（）《》…—",
        "风门书国长红日山夜湖海月",
        "G日出天中E",
        "title:content 123 ABC\n",
        "",
    ],
)
def test_punctuation_and_simplified_text_unchanged(text: str) -> None:
    assert to_simplified(text) == text


def test_not_a_string_is_refused() -> None:
    with pytest.raises(TypeError, match="expects a str, got bytes"):
        to_simplified("風".encode())  # type: ignore[arg-type]


def test_missing_library_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    simplified._converter.cache_clear()
    monkeypatch.setitem(sys.modules, "opencc", None)  # makes `import opencc` raise ImportError
    try:
        with pytest.raises(ImportError, match=f"pip install '{REQUIREMENT}'"):
            to_simplified("風")
    finally:
        simplified._converter.cache_clear()


def test_shipped_sample_keeps_lines_and_length() -> None:
    text = bdata.read_text("poems_sample")
    out = to_simplified(text)
    assert out.splitlines() == [to_simplified(line) for line in text.splitlines()]
    assert len(out) == len(text)  # t2s maps the poems character for character
    assert out != text
    assert not set("風門書國長紅") & set(out)
