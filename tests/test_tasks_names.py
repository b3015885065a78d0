"""names: ASCII folding, de-duplication, a leak-free stratified split, packed == padded, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from bench.cli import main as bench_main
from bench.tasks import names

pytestmark = pytest.mark.usefixtures("one_thread")


def test_unicode_to_ascii_as_the_tutorial():
    assert names.unicode_to_ascii("Ślusàrski") == "Slusarski"
    assert names.unicode_to_ascii("Nuñez O'Neal") == "Nunez O'Neal"
    assert names.N_LETTERS == 57


def test_split_has_no_leakage_and_keeps_every_language():
    data = {"A": ["x", "y", "z", "w", "x", "x"], "B": ["x", "p", "q", "r"], "C": ["s", "t"]}
    train, test, langs = names.split_names(data, 0.5, seed=0)
    assert langs == ["A", "B", "C"]
    assert not {n for n, _ in train} & {n for n, _ in test}
    assert len(train) + len(test) == len(set((n, lang) for lang, ns in data.items() for n in ns))
    assert {lang for _, lang in test} == {0, 1, 2}


def test_real_split():
    data = names.load_names()
    assert sum(len(v) for v in data.values()) == 20074 and len(data) == 18
    assert len(set(data["Arabic"])) == 108
    train, test, langs = names.split_names(data, 0.2, seed=0)
    assert not {n for n, _ in train} & {n for n, _ in test}
    assert len({lang for _, lang in test}) == 18
    pairs = train + test
    assert len(pairs) == len(set(pairs))
    fraction = len(test) / len(pairs)
    assert 0.15 < fraction < 0.25


def test_every_backend_gets_the_same_packed_input_and_padded_agrees():
    torch.manual_seed(0)
    batch = ["Abe", "Nakamura", "O'Neal", "Li"]
    x, lengths = names.encode(batch)
    a = names.NamesClassifier("gru", "native", 16, 2, seed=1)
    packed = names.NamesClassifier("gru", "fused", 16, 2, seed=1)
    b = names.NamesClassifier("gru", "fused", 16, 2, seed=1, pack=False)
    assert a.pack and packed.pack and not b.pack  # fused declares packed input: same computation
    torch.testing.assert_close(a(x, lengths), packed(x, lengths), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a(x, lengths), b(x, lengths), rtol=1e-5, atol=1e-6)
    # the padded result does not depend on what the padding is
    longer, _ = names.encode(batch + ["Abcdefghijklmnopqrstuvwxyz"])
    torch.testing.assert_close(
        b(x, lengths), b(longer, torch.tensor([3, 8, 6, 2, 26]))[:4], rtol=1e-5, atol=1e-6
    )


def test_elman_masks_padding():
    m = names.NamesClassifier("lstm", "native", 8, model="elman", seed=0)
    x, lengths = names.encode(["Ab", "Abcdef"])
    single, l1 = names.encode(["Ab"])
    torch.testing.assert_close(m(x, lengths)[0], m(single, l1)[0])
    with pytest.raises(ValueError, match="does not declare PackedSequence input"):
        names.NamesClassifier("lstm", "ort", 8, pack=True)


def test_cli_short_run(tmp_path):
    out = tmp_path / "n"
    rc = bench_main(
        [
            "train",
            "names",
            "--kind",
            "rnn",
            "--backend",
            "native",
            "--model",
            "cell,elman",
            "--epochs",
            "1",
            "--max-train",
            "600",
            "--hidden",
            "16",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    recs = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["backend"]) for r in recs] == [("rnn", "native"), ("elman", "tutorial")]
    for r in recs:
        assert 0 <= r["metrics"]["test_accuracy"] <= 1
        assert len(r["confusion"]) == 18 and all(len(row) == 18 for row in r["confusion"])
        assert sum(map(sum, r["confusion"])) == r["split"]["test"]
        assert set(r["per_class_accuracy"]) == set(r["languages"])
    assert (out / "names_curves.png").is_file()
    assert len(list(out.glob("names_confusion_*.png"))) == 2
