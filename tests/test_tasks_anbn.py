"""anbn: strings, the avoidable-error count, capacity, the CLI."""
from __future__ import annotations

import json

import pytest
import torch

from bench.cli import main as bench_main
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
                ones = seq[1: t + 1].count(1)
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


def test_avoidable_errors_skip_the_first_one():
    errors = anbn.avoidable_errors(Oracle(), 12)
    assert errors == [0] * 12
    assert anbn.capacity(errors) == 12
    errors = anbn.avoidable_errors(Oracle(limit=5), 12)
    assert errors[:5] == [0] * 5 and all(e > 0 for e in errors[5:])
    assert anbn.capacity(errors) == 5
    assert anbn.capacity([0, 0, 1, 0]) == 2 and anbn.capacity([1, 0]) == 0


def test_cli_runs_seeds_and_summarizes(tmp_path, capsys):
    out = tmp_path / "a"
    rc = bench_main(["train", "anbn", "--kind", "lstm", "--backend", "native,fused", "--seeds", "0,1",
                     "--steps", "30", "--n-eval", "20", "--out", str(out)])
    assert rc == 0
    recs = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(recs) == 4
    for r in recs:
        assert r["task"] == "anbn" and len(r["errors"]) == 20
        assert r["metrics"]["capacity"] == anbn.capacity(r["errors"])
    by = {(r["backend"], r["seed"]): r for r in recs}
    # same seed, same init and data: native and fused agree
    assert by[("native", 0)]["metrics"]["final_loss"] == \
        pytest.approx(by[("fused", 0)]["metrics"]["final_loss"], rel=1e-4)
    assert "capacity over 2 seeds" in capsys.readouterr().out
    assert (out / "anbn_capacity.png").is_file()
