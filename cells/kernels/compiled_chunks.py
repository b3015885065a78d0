"""K steps per compiled call, for the `compiled` backend.

Dynamo's frame, guard and wrapper cost (~70 us a call) is paid once per K steps when one
compiled function runs the step unrolled K times. A sequence runs its first T % K steps one per
call, then (T - T % K) / K chunk calls: T only changes the number of calls, never the graphs.
Remainder first: single steps then only ever see fresh state tensors, and every chunk's xw
view sits at a storage offset >= 2 (one layout for Dynamo's guards, see `rows`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch import Tensor

from ..base import State
from ..recurrence import Grads, Steps, fresh, front_padded, plain, recurrent_grads


class ChunkSteps(NamedTuple):
    """forward(xw (K, B, G*H), state, w_t, b_hn) -> (stacked states, stacked acts or None,
    final state: separate tensors, not views, so the next call sees a fresh layout).
    backward(dy (K, B, H), dstate, acts, states, state before the chunk, w) -> (stacked da,
    stacked drec or None, gradient of the state before), all in time order."""

    forward: Callable
    backward: Callable
    k: int


def chunk_steps(forward: Callable, backward: Callable, k: int) -> tuple[Callable, Callable]:
    """The step functions (recurrence.py's signature) unrolled K times."""

    def forward_chunk(xw: Tensor, state: State, w_t: Tensor, b_hn: Tensor | None):
        states, acts = [], []
        for i in range(k):
            state, a = forward(xw[i], state, w_t, b_hn)
            states.append(state)
            acts.append(a)
        stacked = tuple(torch.stack(list(s)) for s in zip(*states))
        return stacked, (None if acts[0] is None else torch.stack(acts)), state

    def backward_chunk(dy: Tensor, dstate: State, acts, states: State, before: State, w: Tensor):
        das, drecs = [], []
        for i in range(k - 1, -1, -1):
            prev = tuple(s[i - 1] for s in states) if i else before
            cur = tuple(s[i] for s in states)
            da, drec, dstate = backward(
                dy[i], dstate, None if acts is None else acts[i], prev, cur, w
            )
            das.append(da)
            drecs.append(drec)
        das.reverse()
        drecs.reverse()
        return torch.stack(das), (None if drecs[0] is None else torch.stack(drecs)), dstate

    return forward_chunk, backward_chunk


def rows(x: Tensor, t0: int, n: int) -> Tensor:
    """x[t0: t0 + n] for contiguous x, never at storage offset 0 (see front_padded): rows
    t0 >= 1 already sit at offset >= 2 (a row holds >= 2 elements: batch 1 runs as 2), so only
    the first rows are copied, into a front-padded buffer, instead of all of x."""
    return x[t0 : t0 + n] if t0 else front_padded(x[:n])[1:]


class Unit(NamedTuple):
    """Steps t0 .. t0+n-1, run by one call: n == 0 marks a single step (tensors (B, ...)), else
    a chunk of n steps (tensors (n, B, ...)). `before`: the state entering the unit."""

    t0: int
    n: int
    states: State
    acts: Tensor | None
    before: State


class Chunked(NamedTuple):
    """What a chunked forward keeps for the backward (a recurrence.Saved)."""

    chunks: ChunkSteps
    units: list[Unit]  # in time order
    y: Tensor
    final: State

    def outputs(self) -> tuple[Tensor, ...]:
        if self.units[-1].n:  # separate outputs of the last chunk call, kept by no unit
            return (self.y, *self.final)
        # the last step's own tensors are kept for the backward: the outputs (which autograd
        # marks requires_grad) must be other tensors, or the backward step would recompile
        return (self.y, *(fresh(s) for s in self.final))

    def backward(
        self, steps: Steps, dy: Tensor, dstate: State, state0: State, w_hh: Tensor
    ) -> Grads:
        return run_backward_chunked(steps, self, dy, dstate, state0, w_hh)


def run_forward_chunked(
    steps: Steps,
    chunks: ChunkSteps,
    xw: Tensor,
    state0: State,
    w_hh: Tensor,
    b_hn: Tensor | None,
) -> Chunked:
    """The first T % K steps one per call, then the rest K per call."""
    k, seq = chunks.k, xw.size(0)
    xw = xw.contiguous()  # (a no-op for the input projection's output)
    # W_hh^T: a transposed view would be copied by the graph at every step, except where the
    # steps' GEMM is a packed one, which only looks up the packed copy of it
    w_t = w_hh.t()
    packing = steps.packing(w_t, xw.size(1))
    if packing is None:
        w_t = w_t.contiguous()
    state = tuple(fresh(s) for s in state0)
    units: list[Unit] = []
    step_call = steps.first_call("forward", steps.variant)
    chunk_call = steps.first_call("forward_chunk", steps.variant)
    with packing or nullcontext():
        for t in range(seq % k):
            before = state
            state, a = step_call(steps.forward, rows(xw, t, 1)[0], state, w_t, b_hn)
            step_call = plain
            units.append(Unit(t, 0, state, a, before))
        for t0 in range(seq % k, seq, k):
            before = state
            states, acts, state = chunk_call(chunks.forward, rows(xw, t0, k), state, w_t, b_hn)
            chunk_call = plain
            units.append(Unit(t0, k, states, acts, before))
    y = torch.cat([u.states[0] if u.n else u.states[0].unsqueeze(0) for u in units])
    return Chunked(chunks, units, y, state)


def run_backward_chunked(
    steps: Steps, saved: Chunked, dy: Tensor, dstate: State, state0: State, w_hh: Tensor
) -> Grads:
    """Reverse of run_forward_chunked."""
    dy_padded = front_padded(dy)
    dstate = tuple(fresh(d) for d in dstate)
    das: list[Tensor] = []
    drecs: list[Tensor | None] = []
    step_call = steps.first_call("backward", steps.variant)
    chunk_call = steps.first_call("backward_chunk", steps.variant)
    with steps.packing(w_hh, dy.size(1)) or nullcontext():
        for u in reversed(saved.units):
            if u.n:
                dy_c = dy_padded[u.t0 + 1 : u.t0 + 1 + u.n]
                da, drec, dstate = chunk_call(
                    saved.chunks.backward, dy_c, dstate, u.acts, u.states, u.before, w_hh
                )
                chunk_call = plain
            else:
                da, drec, dstate = step_call(
                    steps.backward, dy_padded[u.t0 + 1], dstate, u.acts, u.before, u.states, w_hh
                )
                da, drec = da.unsqueeze(0), None if drec is None else drec.unsqueeze(0)
                step_call = plain
            das.append(da)
            drecs.append(drec)
    dxw = torch.cat(das[::-1])
    d_rec = dxw if drecs[0] is None else torch.cat([d for d in drecs[::-1] if d is not None])
    h_prev = torch.cat([state0[0].unsqueeze(0), saved.y[:-1]])
    return (dxw, dstate, *recurrent_grads(d_rec, h_prev, steps.variant == "gru"))
