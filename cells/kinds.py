"""What a cell kind is: its gates, its state, and its FLOP count.

The equations are exactly torch.nn's (see the torch.nn.RNN / GRU / LSTM docs):

* rnn:  h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu
* gru:  rows r, z, n;  r = σ(W_ir x + b_ir + W_hr h + b_hr),  z likewise,
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) * n + z * h
* lstm: rows i, f, g, o;  c' = f * c + i * g,  h' = o * tanh(c')
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS: tuple[str, ...] = ("rnn", "gru", "lstm")
NONLINEARITIES: tuple[str, ...] = ("tanh", "relu")


@dataclass(frozen=True)
class KindSpec:
    name: str
    gates: int  # rows of weight_ih / weight_hh, in units of hidden_size
    states: int  # 1 for (h,), 2 for (h, c)
    gate_names: tuple[str, ...]
    torch_class: str  # name of the torch.nn class this kind mirrors


SPECS: dict[str, KindSpec] = {
    "rnn": KindSpec("rnn", 1, 1, ("h",), "RNN"),
    "gru": KindSpec("gru", 3, 1, ("r", "z", "n"), "GRU"),
    "lstm": KindSpec("lstm", 4, 2, ("i", "f", "g", "o"), "LSTM"),
}


def spec(kind: str) -> KindSpec:
    """The spec of `kind`, or a ValueError naming the valid kinds."""
    try:
        return SPECS[kind]
    except KeyError:
        raise ValueError(
            f"unknown cell kind {kind!r}; expected one of {', '.join(KINDS)}"
        ) from None


def forward_flops(
    kind: str,
    input_size: int,
    hidden_size: int,
    batch: int,
    seq_len: int,
    num_layers: int = 1,
    bidirectional: bool = False,
) -> int:
    """Matrix-multiply FLOPs of one forward pass (2 per multiply-add).

    Convention: the input projection is included, pointwise work is not. Per step, layer and
    direction: 2 * G * B * H * (I + H), where I is the layer's input width (H * D above layer 0).
    """
    g = spec(kind).gates
    d = 2 if bidirectional else 1
    total = 0
    for layer in range(num_layers):
        width = input_size if layer == 0 else hidden_size * d
        total += d * 2 * g * batch * hidden_size * (width + hidden_size) * seq_len
    return total
