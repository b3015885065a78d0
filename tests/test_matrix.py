"""The one equivalence matrix (cells/matrix.py): every entry says what it catches, none repeats."""

from __future__ import annotations

import pytest

from cells.kinds import KINDS
from cells.matrix import catches, entries, low_precision_matrix, matrix


@pytest.mark.parametrize("kind", KINDS)
def test_entries_are_distinct_and_say_what_they_catch(kind):
    configs = matrix(kind)
    assert len(set(configs)) == len(configs), "two entries give the same configuration"
    assert all(entry.catches.strip() for entry in entries(kind))
    assert all(catches(config) for config in configs)
    assert all(config.kind == kind for config in configs)


@pytest.mark.parametrize("kind", KINDS)
def test_quick_is_a_subset_that_keeps_each_option(kind):
    full, quick = matrix(kind), matrix(kind, quick=True)
    assert set(quick) < set(full)
    for options in (full, quick):
        assert {c.num_layers for c in options} >= {1, 2, 3}
        assert any(c.bidirectional for c in options) and any(c.batch_first for c in options)
        assert any(not c.bias for c in options) and {c.with_hx for c in options} == {True, False}
        assert min(c.seq_len for c in options) == 1 and max(c.seq_len for c in options) >= 200
    assert any(c.batch is None for c in full)
    assert (kind == "rnn") == any(c.nonlinearity == "relu" for c in quick)


def test_low_precision_matrix():
    assert len(low_precision_matrix("gru")) == 3 and len(low_precision_matrix("gru", True)) == 2
    assert max(c.seq_len for c in low_precision_matrix("lstm", True)) >= 200


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind must be one of"):
        matrix("transformer")
    with pytest.raises(ValueError, match="got 'elman'"):
        low_precision_matrix("elman")
