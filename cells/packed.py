"""PackedSequence input for RecurrentBase: unpack, run each layer once per distinct length on
the shrinking sorted batch, reverse each sequence within its own length for the reverse
direction, and pack the output again in the caller's order."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .capabilities import backends_with
from .checks import check_packed, zeros_state

if TYPE_CHECKING:
    from .base import LayerWeights, RecurrentBase, State


def forward_packed(module: RecurrentBase, input: PackedSequence, hx: Any) -> tuple[Any, Any]:
    """torch.nn's forward contract for PackedSequence input."""
    if not module.caps().packed:
        raise TypeError(
            f"backend {module._name()!r} does not accept PackedSequence input; backends "
            f"that do: {', '.join(backends_with('packed', module.kind))}"
        )
    data, batch_sizes, sorted_indices, unsorted_indices = input
    check_packed(module, data, int(batch_sizes[0]), hx)
    padded, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))  # sorted order
    if hx is None:
        states = zeros_state(module, padded.size(1), padded)
    else:
        states = tuple(hx) if isinstance(hx, (tuple, list)) else (hx,)
        if sorted_indices is not None:  # hx is in the caller's order, as torch.nn takes it
            states = tuple(s.index_select(1, sorted_indices) for s in states)
    output, finals = module._run(padded, states, lengths.tolist())
    out = PackedSequence(
        pack_padded_sequence(output, lengths).data,
        batch_sizes,
        sorted_indices,
        unsorted_indices,
    )
    if unsorted_indices is not None:
        finals = tuple(s.index_select(1, unsorted_indices) for s in finals)
    return out, (finals if len(finals) == 2 else finals[0])


def run_ragged(
    run_layer: Callable[[Tensor, State, LayerWeights], tuple[Tensor, State]],
    x: Tensor,
    state: State,
    weights: LayerWeights,
    lengths: list[int],
) -> tuple[Tensor, State]:
    """run_layer over sequences sorted by length, one call per distinct length: the batch
    shrinks as sequences end (as torch.nn does), so each final state is exact, c included."""
    batch = x.size(1)
    pieces: list[Tensor] = []  # outputs per segment
    done: list[State] = []  # finished states, last-finishing first
    start, active = 0, batch
    for end in sorted(set(lengths)):
        y, final = run_layer(
            x[start:end, :active].contiguous(), tuple(s[:active] for s in state), weights
        )
        pieces.append(nn.functional.pad(y, (0, 0, 0, batch - active)))
        still = sum(1 for n in lengths if n > end)
        done.append(tuple(f[still:active] for f in final))
        state, start, active = final, end, still
    return torch.cat(pieces), tuple(
        torch.cat([d[i] for d in reversed(done)]) for i in range(len(state))
    )


def reverse_within(x: Tensor, lengths: list[int]) -> Tensor:
    """Reverse each column of time-major x within its own length; padding stays in place."""
    steps = torch.arange(x.size(0), device=x.device).unsqueeze(1)
    n = torch.tensor(lengths, device=x.device).unsqueeze(0)
    index = torch.where(steps < n, n - 1 - steps, steps)
    return x.gather(0, index.unsqueeze(2).expand_as(x))
