"""THE equivalence matrix: the configurations every backend is checked on against torch.nn.

One list, used by the test suite (tests/test_equivalence.py, test_peers, test_compiled,
test_triton) and by `bench validate`. Each entry names the class of real bugs it catches, so a
reader can tell why it is there and a new entry has to say what it adds. The quick subset keeps
one representative of each class; `bench validate --quick` and the slower paths (the Triton
interpreter, the eager recurrence) run it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .equivalence import Config
from .kinds import KINDS


@dataclass(frozen=True)
class Entry:
    """One configuration (as changes to the base) and the bugs it is there to catch."""

    changes: dict[str, Any]
    catches: str
    quick: bool = False

    def config(self, kind: str) -> Config:
        return replace(Config(kind), **self.changes)


EVERYTHING = dict(
    num_layers=3, bidirectional=True, batch_first=True, bias=False, with_hx=False, batch=1
)
ENTRIES: tuple[Entry, ...] = (
    Entry({}, "gate order, biases, state update, final states, time shift, backward", True),
    Entry(dict(with_hx=False), "the default zero initial state", True),
    Entry(dict(seq_len=1, batch=1), "a single step (final state = output), batch of one", True),
    Entry(dict(seq_len=1, batch=1, with_hx=False), "a single step from the zero state"),
    Entry(dict(batch=1, batch_first=True), "batch of one under batch_first transposes"),
    Entry(dict(num_layers=2), "layer stacking; the input width of upper layers"),
    Entry(dict(num_layers=3, with_hx=False), "deeper stacks; per-layer default states"),
    Entry(dict(bidirectional=True), "reversal; h_n ordered layer * directions + direction"),
    Entry(
        dict(num_layers=2, bidirectional=True, batch_first=True),
        "stacking over both directions (upper input width 2H), batch_first",
        True,
    ),
    Entry(dict(bias=False), "bias-free paths (no bias parameters, no bias gradients)", True),
    Entry(
        dict(bias=False, num_layers=2, bidirectional=True, with_hx=False),
        "bias-free paths in stacked, reversed layers",
    ),
    Entry(EVERYTHING, "every option at once, batch_first"),
    Entry(dict(EVERYTHING, batch_first=False), "every option at once, time first", True),
    Entry(dict(batch=None), "unbatched 2-D input and 2-D states"),
    Entry(
        dict(batch=None, with_hx=False, bidirectional=True, num_layers=2),
        "unbatched input through stacked, reversed layers",
    ),
    Entry(dict(seq_len=200), "error that accumulates over long sequences (drift)"),
    Entry(dict(seq_len=200, num_layers=2, bidirectional=True), "drift in the reversed direction"),
    Entry(
        dict(seq_len=200, num_layers=2, bidirectional=True, batch_first=True, with_hx=False),
        "drift with every layout option",
    ),
    Entry(dict(seq_len=200, hidden_size=5, input_size=3), "drift at the smallest widths", True),
    Entry(dict(input_size=1, hidden_size=1), "widths of one: transposes that square shapes hide"),
)
# the RNN's other nonlinearity, on the entries that exercise it differently
RELU_ENTRIES: tuple[Entry, ...] = (
    Entry(dict(nonlinearity="relu"), "relu instead of tanh (forward and derivative)", True),
    Entry(
        dict(nonlinearity="relu", num_layers=2, bidirectional=True, batch_first=True),
        "relu through stacked, reversed layers",
        True,
    ),
    Entry(dict(nonlinearity="relu", num_layers=3, with_hx=False), "relu, deep, default state"),
    Entry(dict(nonlinearity="relu", seq_len=200), "relu's unbounded drift over long sequences"),
)
# checked in float32 (and float16 / bfloat16 on a GPU): the base, every layout option, and drift
LOW_PRECISION: tuple[Entry, ...] = (
    ENTRIES[0],
    Entry(
        dict(num_layers=2, bidirectional=True, batch_first=True),
        "every layout option in low precision",
    ),
    Entry(dict(seq_len=200, hidden_size=5, input_size=3), "drift in low precision", True),
)


def _known(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def entries(kind: str, quick: bool = False) -> list[Entry]:
    """The matrix's entries for a kind (the quick subset with `quick`)."""
    _known(kind)
    chosen = ENTRIES + (RELU_ENTRIES if kind == "rnn" else ())
    return [entry for entry in chosen if entry.quick or not quick]


def matrix(kind: str, quick: bool = False) -> list[Config]:
    """The float64-reference configurations for a kind: 20 (24 for the RNN); quick: 7 (9)."""
    return [entry.config(kind) for entry in entries(kind, quick)]


def low_precision_matrix(kind: str, quick: bool = False) -> list[Config]:
    """The configurations checked in float32 and the half dtypes: 3; quick: 2."""
    _known(kind)
    return [entry.config(kind) for entry in LOW_PRECISION if entry.quick or not quick]


def catches(config: Config) -> str:
    """What the entry a configuration came from catches ('' if it is not in the matrix)."""
    for entry in ENTRIES + RELU_ENTRIES + LOW_PRECISION:
        if entry.config(config.kind) == config:
            return entry.catches
    return ""
