"""names: ASCII folding, de-duplication, a leak-free stratified split, packed == padded, the CLI."""

from __future__ import annotations

import collections
import random

import pytest
import torch
from tasks_cli import records, train

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
    assert (
        train(
            "names",
            out,
            kind="rnn",
            backend="native",
            model="cell,elman",
            epochs=1,
            max_train=600,
            hidden=16,
        )
        == 0
    )
    recs = records(out)
    assert [(r["kind"], r["backend"]) for r in recs] == [("rnn", "native"), ("elman", "tutorial")]
    for r in recs:
        assert 0 <= r["metrics"]["test_accuracy"] <= 1
        assert len(r["confusion"]) == 18 and all(len(row) == 18 for row in r["confusion"])
        assert sum(map(sum, r["confusion"])) == r["split"]["test"]
        assert set(r["per_class_accuracy"]) == set(r["languages"])
    assert (out / "names_curves.png").is_file()
    assert len(list(out.glob("names_confusion_*.png"))) == 2


def test_lab_draws_are_class_balanced():
    """The tutorial's sampler: a language uniformly, then one of its names: Arabic (2,000 lines)
    comes up as often as Vietnamese (73)."""
    data = names.load_names()
    languages = sorted(data)
    rng = random.Random(0)
    drawn = collections.Counter(
        languages[li] for _, li in (names.lab_draw(data, languages, rng) for _ in range(18000))
    )
    assert set(drawn) == set(languages)
    assert max(drawn.values()) < 1.15 * min(drawn.values())
    name, li = names.lab_draw(data, languages, random.Random(1))
    assert name in data[languages[li]]


def test_lab_protocol_trains_by_hand_and_measures_in_sample(tmp_path):
    """--protocol lab: SGD lr 0.005 by hand (no optimiser state, no clipping), one name per step,
    and the confusion matrix over 10,000 draws of training names."""
    out = tmp_path / "lab"
    assert (
        train(
            "names",
            out,
            protocol="lab",
            model="elman,cell",
            layers=2,
            steps=40,
            hidden=8,
            no_plots=True,
        )
        == 0
    )
    recs = records(out)
    assert [r["settings"]["variant"] for r in recs] == ["Elman", "nn.LSTM 2-layer"]
    for r in recs:
        s = r["settings"]
        assert (s["lr"], s["batch_size"], s["clip"], s["optimizer"]) == (
            0.005,
            1,
            0.0,
            "sgd-by-hand",
        )
        assert sum(map(sum, r["confusion"])) == names.LAB_CONFUSION_DRAWS
        assert r["metrics"]["sampled_accuracy"] == pytest.approx(
            sum(r["confusion"][i][i] for i in range(18)) / names.LAB_CONFUSION_DRAWS
        )
        assert "test_accuracy" not in r["metrics"] and r["split"]["test"] == 0
    # one step of the lab's loop is p -= 0.005 * grad
    model = names.NamesClassifier("elman", "tutorial", 8, model="elman", seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    x, lengths = names.encode(["Abe"])
    li = random.Random(0).randrange(18)  # the class the run's first draw picks
    loss = torch.nn.functional.cross_entropy(model(x, lengths), torch.tensor([li]))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected = [b - 0.005 * g for b, g in zip(before, grads)]
    languages = [f"L{i:02d}" for i in range(18)]
    data = {"by_language": {lang: ["Abe"] for lang in languages}, "languages": languages}
    names._train_lab(model, {"steps": 1, "lr": 0.005, "confusion_draws": 1}, data, 0, "", False)
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e)
