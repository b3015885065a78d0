"""bench.tasks.lab_numbers: the labs' figures, checked against the lab reports they cite."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.tasks import lab_numbers as L
from bench.tasks.common import INITS, OPTIMIZERS

LABS = Path(__file__).resolve().parents[2] / "shared" / "labs"
needs_labs = pytest.mark.skipif(
    not LABS.is_dir(), reason=f"the lab reports are not at {LABS} (shared/labs beside the checkout)"
)


def report(lab: str) -> str:
    return (LABS / L.REPORTS[lab][0]).read_text(encoding="utf-8")


def printed_forms(f: L.LabFigure) -> list[str]:
    """Ways the report may print this figure's value."""
    if f.metric == "wrong symbols (Diff)":
        return [f"Diff:{f.printed}"]
    if f.unit == "fraction":
        return [f"{f.value * 100:g}%"] if f.value is not None else []
    low, _, high = f.printed.lstrip(">=").partition("-")
    return [f"{low}至{high}"] if high else [low]


@needs_labs
@pytest.mark.parametrize("lab", sorted(L.REPORTS))
def test_every_value_is_printed_in_its_report(lab: str) -> None:
    text = report(lab)
    figures = [f for f in L.FIGURES if f.lab == lab]
    assert figures
    for f in figures:
        assert f.source.startswith(L.REPORTS[lab][0] + ", ")
        for form in printed_forms(f):
            assert form in text, f"{f.label} of {f.variant}: {form!r} not in {L.REPORTS[lab][0]}"


@needs_labs
def test_logged_curve_points_match_the_log_lines() -> None:
    """Each epoch's perplexity from lab 001's logs, in the log's own line format."""
    text = report("001")
    points = [f for f in L.FIGURES if f.lab == "001" and f.metric == L.TRAIN_PPL]
    for f in points:
        if f.source.endswith(" log"):
            lines = (
                f"epoch {f.epoch}, perplexity {f.printed}",
                f"Epoch {f.epoch}: perplexity {f.printed}",
            )
            assert any(line in text for line in lines), f"{f.variant} epoch {f.epoch}"


def test_curves() -> None:
    assert L.curve("001", "2-layer GRU lr 2") == [
        (50, 8.40), (100, 3.77), (150, 1.13), (200, 1.04), (250, 1.03),
        (300, 1.03), (350, 1.03), (400, 1.03), (450, 1.02), (500, 1.02),
    ]  # fmt: skip
    lstm = L.curve("001", "scratch LSTM")
    assert [e for e, _ in lstm] == list(range(50, 501, 50))
    assert lstm[0] == (50, 14.5) and lstm[-1] == (500, 1.2)
    rnn = L.curve("001", "concise RNN")  # the log's epochs 1..25, then the final epoch
    assert [e for e, _ in rnn] == [*range(1, 26), 500]
    assert rnn[0] == (1, 22.0) and rnn[-1] == (500, 1.3)
    assert L.curve("000", "concise LSTM") == [(500, 1.1)]
    assert L.curve("004", "2-layer LSTM hidden 128", "train loss") == [(59, 6.0)]
    assert L.curve("001", "no such variant") == []


def test_for_task_and_its_error() -> None:
    for task in L.TASKS:
        figures = L.for_task(task)
        assert figures and all(f.task == task for f in figures)
    assert sum(len(L.for_task(t)) for t in L.TASKS) == len(L.FIGURES)
    with pytest.raises(ValueError, match="unknown task 'lm'; expected one of charlm, names"):
        L.for_task("lm")


def test_key_figures() -> None:
    def one(lab: str, variant: str, metric: str) -> L.LabFigure:
        (f,) = [f for f in L.FIGURES if (f.lab, f.variant, f.metric) == (lab, variant, metric)]
        return f

    poems = one("004", "2-layer LSTM hidden 128", "train loss")
    assert (poems.value, poems.high, poems.text, poems.label) == (
        6.0, 6.3, "6.0-6.3", "train loss at epoch 59",
    )  # fmt: skip
    acc = one("002", "nn.LSTM 2-layer", "in-sample balanced accuracy")
    assert (acc.value, acc.approx, acc.text, acc.unit) == (0.87, True, "about 0.87", "fraction")
    assert one("002", "own LSTM", "in-sample balanced accuracy").text == "not given"
    rnn = one("003", "RNN hidden 2", "capacity (lab reading)")
    assert (rnn.value, rnn.text) == (14, "about 14")
    lstm = one("003", "LSTM hidden 2", "capacity (lab reading)")
    assert (lstm.value, lstm.text) == (19, ">=19")
    assert one("003", "RNN hidden 2", "validation loss").value == 0.24
    diff = [f for f in L.for_task("anbn") if f.variant == "RNN hidden 2" and f.n is not None]
    assert [(f.n, f.value) for f in diff][3:6] == [(14, 2), (15, 3), (16, 2)]
    assert diff[4].label == "wrong symbols (Diff) at n=15"
    tps = one("000", "concise LSTM", "tokens/s")
    assert (tps.value, tps.unit, tps.epoch) == (298764.3, "tokens/s", None)
    assert "not named" in tps.note and "@" not in tps.note


def test_every_variant_has_settings_and_known_names() -> None:
    variants = {(f.lab, f.variant) for f in L.FIGURES if f.variant != "preprocessing"}
    assert variants == {(s.lab, s.variant) for s in L.SETTINGS}
    for s in L.SETTINGS:
        assert s.task == L.REPORTS[s.lab][1]
        assert s.optimizer is None or s.optimizer in OPTIMIZERS
        assert s.init is None or s.init in INITS or " " in s.init  # a name, or a description
        assert "@" not in s.note


def test_settings_lookup() -> None:
    gru = L.settings("001", "2-layer GRU lr 2")
    assert (gru.hidden, gru.layers, gru.lr, gru.epochs, gru.batch, gru.num_steps, gru.clip) == (
        256, 2, 2.0, 500, 32, 35, 1.0,
    )  # fmt: skip
    assert L.settings("000", "scratch LSTM").init == "normal"
    assert L.settings("000", "concise LSTM larger hidden").hidden is None
    poems = L.settings("004", "2-layer LSTM hidden 128")
    assert (poems.optimizer, poems.lr, poems.batch, poems.epochs) == ("rmsprop", 0.01, 100, None)
    anbn = L.settings("003", "LSTM hidden 2")
    assert (anbn.hidden, anbn.optimizer, anbn.lr, anbn.epochs) == (2, "adam", 0.001, 20)
    with pytest.raises(ValueError, match=re.escape("lab '002' has: 'Elman', 'nn.LSTM 2-layer'")):
        L.settings("002", "GRU")


def test_malformed_tables_are_refused() -> None:
    with pytest.raises(ValueError, match="expected 8 fields"):
        L._rows("000|concise LSTM|train perplexity|epoch 500|1.1", 8)
    with pytest.raises(ValueError, match="expected 8 fields"):
        L._rows("999|v|m||1||s|", 8)  # not a lab id
    with pytest.raises(ValueError, match="2 values for 3 epochs"):
        L._figures(["001", "v", "m", "epochs 1-3", "1.0 2.0", "", "s", ""])
    with pytest.raises(ValueError, match="expected 'epoch N', 'n N'"):
        L._figures(["001", "v", "m", "step 3", "1.0", "", "s", ""])
