"""anbn: strings, the avoidable-error count, capacity, the CLI."""

from __future__ import annotations

import pytest
import torch
from tasks_cli import records, train

from bench.tasks import anbn

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sequence_and_batch():
    assert anbn.sequence(2) == [3, 0, 0, 1, 1, 2]
    x, y = anbn.make_batch([1, 2])
    assert x.shape == y.shape == (5, 2)
    assert x[:, 1].tolist() == [3, 0, 0, 1, 1] and y[:, 1].tolist() == [0, 0, 1, 1, 2]
    assert y[3:, 0].tolist() == [anbn.PAD, anbn.PAD]


class Oracle(torch.nn.Module):
    """A perfect counter, except that it always guesses 0 inside the 0-block (so it misses the
    first 1, which is not counted), and fails for n > limit."""

    def __init__(self, limit=1000):
        super().__init__()
        self.limit = limit

    def forward(self, x):
        T, B = x.shape
        out = torch.zeros(T, B, 4)
        for b in range(B):
            seq = x[:, b].tolist()
            n = seq.count(0)
            for t in range(T):
                ones = seq[1 : t + 1].count(1)
                if seq[t] in (3, 0):
                    nxt = 0
                elif ones < n:
                    nxt = 1
                else:
                    nxt = 2
                if n > self.limit and seq[t] == 1:
                    nxt = 2
                out[t, b, nxt] = 1
        return out


class Override(Oracle):
    """The perfect counter, except that after reading `symbol` it always predicts `guess`."""

    def __init__(self, symbol, guess):
        super().__init__()
        self.symbol, self.guess = symbol, guess

    def forward(self, x):
        out = super().forward(x)
        out[x == self.symbol] = torch.nn.functional.one_hot(torch.tensor(self.guess), 4).float()
        return out


def test_avoidable_errors_skip_the_first_one():
    errors = anbn.avoidable_errors(Oracle(), 12)
    assert errors == [0] * 12
    assert anbn.capacity(errors) == 12
    errors = anbn.avoidable_errors(Oracle(limit=5), 12)
    assert errors[:5] == [0] * 5 and all(e > 0 for e in errors[5:])
    assert anbn.capacity(errors) == 5
    assert anbn.capacity([0, 0, 1, 0]) == 2 and anbn.capacity([1, 0]) == 0


def test_strict_reading_ignores_the_zeros_and_the_lab_reading_does_not():
    """While the zeros are read either symbol may follow: guessing 1 there is no strict error,
    but the lab's reading counts it (except at the second symbol, which the lab forgives)."""
    assert anbn.prediction_errors(Oracle(), 6) == ([0] * 6, [0] * 6)
    strict, lab = anbn.prediction_errors(Override(symbol=0, guess=1), 6)
    assert strict == [0] * 6 and anbn.capacity(strict) == 6
    # n zeros: the targets 0 at t = 1..n-1 are missed; t = 1 is forgiven by the lab
    assert lab == [0, 0, 1, 2, 3, 4] and anbn.capacity(lab) == 2
    # the symbol after the start marker: counted by the lab, not required by the strict reading
    assert anbn.prediction_errors(Override(symbol=3, guess=1), 4) == ([0] * 4, [1] * 4)
    # never predicting the end: both readings fail every n
    strict, lab = anbn.prediction_errors(Override(symbol=1, guess=1), 4)
    assert strict == lab == [1] * 4 and anbn.capacity(strict) == anbn.capacity(lab) == 0


def test_cli_runs_seeds_and_summarizes(tmp_path, capsys):
    out = tmp_path / "a"
    assert (
        train("anbn", out, kind="lstm", backend="native,fused", seeds="0,1", steps=30, n_eval=20)
        == 0
    )
    recs = records(out)
    assert len(recs) == 4
    for r in recs:
        assert r["task"] == "anbn" and len(r["errors"]) == len(r["errors_lab"]) == 20
        assert r["metrics"]["capacity"] == anbn.capacity(r["errors"])
        assert r["metrics"]["capacity_lab"] == anbn.capacity(r["errors_lab"])
        assert len(r["curves"]["capacity_lab"]) == len(r["curves"]["step"])
    by = {(r["backend"], r["seed"]): r for r in recs}
    # same seed, same init and data: native and fused agree
    assert by[("native", 0)]["metrics"]["final_loss"] == pytest.approx(
        by[("fused", 0)]["metrics"]["final_loss"], rel=1e-4
    )
    assert "capacity over 2 seeds" in capsys.readouterr().out
    assert (out / "anbn_capacity.png").is_file()


def test_lab_protocol_is_the_labs_net_and_loop(tmp_path):
    """--protocol lab: Embedding(4, 2), Linear(2, 3), one string per update from 2,000 fixed
    strings, the lab's update counts per kind (RNN 100,000, LSTM 40,000) unless --steps says."""
    s = {"protocol": "lab", "steps": None, "batch_size": 1}
    stream = anbn.batches(s, "rnn", seed=0)
    first = [next(stream) for _ in range(anbn.LAB_STRINGS + 1)]
    assert all(x.shape[1] == 1 for x, _ in first)
    assert torch.equal(first[0][0], first[-1][0])  # the 2,000 strings cycle
    assert len(list(anbn.batches({**s, "steps": 7}, "lstm", 0))) == 7
    assert anbn.LAB_UPDATES["rnn"] == 100000 and anbn.LAB_UPDATES["lstm"] == 40000
    out = tmp_path / "lab"
    assert (
        train("anbn", out, protocol="lab", kind="rnn", seeds="3", steps=20, n_eval=5, no_plots=True)
        == 0
    )
    (r,) = records(out)
    assert r["protocol"] == "lab" and r["settings"]["variant"] == "RNN hidden 2"
    assert (r["settings"]["embed"], r["settings"]["batch_size"]) == (2, 1)
    assert r["metrics"]["steps"] == 20 and r["timings"]["symbols"] > 20
    net = anbn.AnBnNet("rnn", "native", 2, embed=2, outputs=3)
    assert net.head.out_features == 3 and net.embedding.weight.shape == (4, 2)
