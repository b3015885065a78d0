"""The recurrence of one layer and direction with a hand-written, batched backward.

Shared by the backends that write their own backward (`compiled`, `triton`). Each kind is one
pair of plain-torch step functions with one signature, the state a tuple ((h,) or (h, c)):

    forward(xw_t, state, w_t, b_hn, mm=None) -> (state_t, acts_t)
    backward(dy_t, dstate, acts_t, state_prev, state_t, w, mm=None) -> (da, drec, dstate_prev)

`acts` are what the backward needs besides the states (the activated gates; None for RNN).
`da` is the gradient of the projected input xw_t; `drec` that of h W_hh^T (+ b_hn), or None
where it equals `da` (all kinds but GRU, whose r multiplies W_hn h + b_hn). `mm` replaces the
recurrent GEMM (the compiled backend's pre-packed weight); None is torch.mm.

Why a hand-written backward: autograd through a loop of steps computes dW_hh as T small GEMMs
and, with `xw[t]` indexing, zero-fills a (T, B, G*H) buffer per step (O(T^2) memory traffic).
`Recurrence` keeps the gate gradients of all steps and forms dW_hh with ONE GEMM,
(G*H, T*B) @ (T*B, H), as oneDNN and cuDNN do. The input projection (one GEMM for all steps,
biases folded in) stays outside it, so autograd gives dW_ih, the bias gradients and dx.

The loops here run one step per call; how the steps are called (compiled, timed, with a packed
weight) is up to the `Steps` a backend passes. A backend may run its own forward (the compiled
backend's K steps per call, the triton kernel): it returns what the backward needs as a `Saved`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import loops
from .base import LayerWeights, State

Gemm = Callable[[Tensor, Tensor], Tensor] | None


def _pre(xw_t: Tensor, h: Tensor, w_t: Tensor, mm: Gemm) -> Tensor:
    """xw_t + h @ w_t: one addmm, or the backend's GEMM."""
    return torch.addmm(xw_t, h, w_t) if mm is None else xw_t + mm(h, w_t)


def lstm_forward(xw_t: Tensor, state: State, w_t: Tensor, b_hn: Tensor | None, mm: Gemm = None):
    h, c = state
    i, f, g, o = _pre(xw_t, h, w_t, mm).chunk(4, 1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c + i * g
    return (o * torch.tanh(c), c), torch.cat([i, f, g, o], 1)


def lstm_backward(
    dy_t: Tensor, dstate: State, acts: Tensor, prev: State, cur: State, w: Tensor, mm: Gemm = None
):
    dh, dc = dstate
    dh = dh + dy_t
    i, f, g, o = acts.chunk(4, 1)
    tc = torch.tanh(cur[1])
    dc = dc + dh * o * (1 - tc * tc)
    da = torch.cat(
        [
            dc * g * i * (1 - i),
            dc * prev[1] * f * (1 - f),
            dc * i * (1 - g * g),
            dh * tc * o * (1 - o),
        ],
        1,
    )
    return da, None, ((mm or torch.mm)(da, w), dc * f)


def gru_forward(xw_t: Tensor, state: State, w_t: Tensor, b_hn: Tensor, mm: Gemm = None):
    h = state[0]
    x_r, x_z, x_n = xw_t.chunk(3, 1)
    h_r, h_z, h_n = (mm or torch.mm)(h, w_t).chunk(3, 1)
    h_n = h_n + b_hn
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (n + z * (h - n),), torch.cat([r, z, n, h_n], 1)


def gru_backward(
    dy_t: Tensor, dstate: State, acts: Tensor, prev: State, cur: State, w: Tensor, mm: Gemm = None
):
    dh = dstate[0] + dy_t
    r, z, n, h_n = acts.chunk(4, 1)
    dz = dh * (prev[0] - n) * z * (1 - z)
    dan = dh * (1 - z) * (1 - n * n)
    dr = dan * h_n * r * (1 - r)
    drec = torch.cat([dr, dz, dan * r], 1)
    return torch.cat([dr, dz, dan], 1), drec, (dh * z + (mm or torch.mm)(drec, w),)


def rnn_tanh_forward(xw_t: Tensor, state: State, w_t: Tensor, b_hn: None, mm: Gemm = None):
    return (torch.tanh(_pre(xw_t, state[0], w_t, mm)),), None


def rnn_relu_forward(xw_t: Tensor, state: State, w_t: Tensor, b_hn: None, mm: Gemm = None):
    return (torch.relu(_pre(xw_t, state[0], w_t, mm)),), None


def rnn_tanh_backward(
    dy_t: Tensor, dstate: State, acts: None, prev: State, cur: State, w: Tensor, mm: Gemm = None
):
    h = cur[0]
    da = (dstate[0] + dy_t) * (1 - h * h)
    return da, None, ((mm or torch.mm)(da, w),)


def rnn_relu_backward(
    dy_t: Tensor, dstate: State, acts: None, prev: State, cur: State, w: Tensor, mm: Gemm = None
):
    da = (dstate[0] + dy_t) * (cur[0] > 0).to(dy_t.dtype)  # torch's relu backward: 0 at 0
    return da, None, ((mm or torch.mm)(da, w),)


def plain(fn: Callable, *args: Any) -> Any:
    """fn(*args): the call wrapper of every call but a loop's first."""
    return fn(*args)


def _untimed(direction: str, variant: str) -> Callable:
    return plain


class Steps(NamedTuple):
    """How one kind's recurrence is run: its step functions and the backend's hooks."""

    variant: str  # 'lstm', 'gru', 'rnn_tanh' or 'rnn_relu'
    forward: Callable
    backward: Callable
    # first_call(direction, variant): the wrapper for a loop's first call, where a backend
    # compiles (it may time it); later calls are plain
    first_call: Callable[[str, str], Callable] = _untimed
    # packed_for(b, batch): a context during which the steps' `mm` finds a packed copy of b
    # (None: b is not packed, the steps use torch.mm)
    packed_for: Callable[[Tensor, int], AbstractContextManager[Any] | None] | None = None

    def packing(self, b: Tensor, batch: int) -> AbstractContextManager[Any] | None:
        return None if self.packed_for is None else self.packed_for(b, batch)


EAGER_STEPS: dict[str, Steps] = {
    "lstm": Steps("lstm", lstm_forward, lstm_backward),
    "gru": Steps("gru", gru_forward, gru_backward),
    "rnn_tanh": Steps("rnn_tanh", rnn_tanh_forward, rnn_tanh_backward),
    "rnn_relu": Steps("rnn_relu", rnn_relu_forward, rnn_relu_backward),
}


Grads = tuple[Tensor, State, Tensor, Tensor | None]  # dxw, d state0, dW_hh, db_hn (GRU)


class Saved(Protocol):
    """What a forward returns to `Recurrence`: its outputs, and the backward that uses it."""

    def outputs(self) -> tuple[Tensor, ...]:
        """(y (T, B, H), *final state), none of them a view of another or of a kept tensor."""
        ...

    def backward(
        self, steps: Steps, dy: Tensor, dstate: State, state0: State, w_hh: Tensor
    ) -> Grads: ...


PerStep = Sequence[Tensor] | Tensor  # indexed by step: a list, or a (T, ...) tensor


class History(NamedTuple):
    """What a step-by-step forward keeps for the backward, one entry per step: each state
    component as a list or a stacked (T, B, H) tensor, and the acts (None for RNN)."""

    states: tuple[PerStep, ...]
    acts: PerStep | None

    def state(self, t: int) -> State:
        return tuple(s[t] for s in self.states)

    def outputs(self) -> tuple[Tensor, ...]:
        hs = self.states[0]
        y = hs if isinstance(hs, Tensor) else torch.stack(list(hs))
        return (y, *(fresh(s[-1]) for s in self.states))

    def backward(
        self, steps: Steps, dy: Tensor, dstate: State, state0: State, w_hh: Tensor
    ) -> Grads:
        return run_backward(steps, dy, dstate, self, state0, w_hh)


def front_padded(x: Tensor) -> Tensor:
    """x (T, ...) -> a fresh (T+1, ...) buffer whose rows 1.. are x. Its row views all sit at a
    storage offset >= 2 on a contiguous base, so Dynamo sees the same layout at every step
    (a view at offset 0 would be specialised and compiled separately)."""
    out = x.new_empty((x.size(0) + 1,) + tuple(x.shape[1:]))
    out[0].zero_()
    out[1:].copy_(x)
    return out


def fresh(t: Tensor) -> Tensor:
    """A contiguous tensor that is not a view (one layout for Dynamo's guards)."""
    return t.clone(memory_format=torch.contiguous_format)


def recurrent_grads(d_rec: Tensor, h_prev: Tensor, gru: bool) -> tuple[Tensor, Tensor | None]:
    """dW_hh for all steps as one GEMM, and GRU's db_hn. d_rec (T, B, G*H), h_prev (T, B, H)."""
    hidden = h_prev.size(2)
    dw = d_rec.reshape(-1, d_rec.size(2)).t().mm(h_prev.reshape(-1, hidden))
    return dw, (d_rec[:, :, 2 * hidden :].sum((0, 1)) if gru else None)


def run_forward(
    steps: Steps, xw: Tensor, state0: State, w_hh: Tensor, b_hn: Tensor | None
) -> History:
    """One step per call."""
    w_t = w_hh.t().contiguous()  # a transposed view would be copied by the graph at every step
    state = tuple(fresh(s) for s in state0)
    padded = front_padded(xw)
    states: list[State] = []
    acts: list[Tensor] = []
    call = steps.first_call("forward", steps.variant)
    with steps.packing(w_t, xw.size(1)) or nullcontext():
        for t in range(xw.size(0)):
            state, a = call(steps.forward, padded[t + 1], state, w_t, b_hn)
            call = plain
            states.append(state)
            if a is not None:
                acts.append(a)
    return History(tuple(list(s) for s in zip(*states)), acts or None)


def run_backward(
    steps: Steps,
    dy: Tensor,
    dstate: State,
    saved: History,
    state0: State,
    w_hh: Tensor,
) -> Grads:
    """Reverse of run_forward (or of any forward that returns a History)."""
    seq = dy.size(0)
    dy_padded = front_padded(dy)
    dstate, state0 = tuple(fresh(d) for d in dstate), tuple(fresh(s) for s in state0)
    das: list[Tensor] = [dy] * seq  # placeholders, all overwritten
    drecs: list[Tensor | None] = [None] * seq
    call = steps.first_call("backward", steps.variant)
    with steps.packing(w_hh, dy.size(1)) or nullcontext():
        for t in range(seq - 1, -1, -1):
            prev = saved.state(t - 1) if t else state0
            acts = None if saved.acts is None else saved.acts[t]
            das[t], drecs[t], dstate = call(
                steps.backward, dy_padded[t + 1], dstate, acts, prev, saved.state(t), w_hh
            )
            call = plain
    dxw = torch.stack(das)
    d_rec = dxw if drecs[0] is None else torch.stack(drecs)  # type: ignore[arg-type]
    hs = saved.states[0]
    h_prev = torch.stack([state0[0]] + [hs[t] for t in range(seq - 1)])
    return (dxw, dstate, *recurrent_grads(d_rec, h_prev, steps.variant == "gru"))


ForwardImpl = Callable[[Tensor, State, Tensor, Tensor | None], Saved]


class Recurrence(torch.autograd.Function):
    """One layer, one direction: forward(steps, forward_impl, xw, w_hh, b_hn, *state0) ->
    (y, *final_state).

    `forward_impl(xw, state0, w_hh, b_hn)` runs the forward and returns a `Saved`, kept on ctx
    for the backward: by default run_forward (a History); the compiled backend runs K steps per
    call, the triton backend its fused kernel.
    """

    @staticmethod
    def forward(ctx, steps, forward_impl, xw, w_hh, b_hn, *state0):
        # detached: no requires_grad guards in the compiled steps
        xw, w_hh = xw.detach(), w_hh.detach()
        b_hn = None if b_hn is None else fresh(b_hn.detach())
        state0 = tuple(s.detach() for s in state0)
        saved = forward_impl(xw, state0, w_hh, b_hn)
        ctx.steps, ctx.saved, ctx.seq = steps, saved, xw.size(0)
        ctx.save_for_backward(w_hh, *state0)
        return saved.outputs()

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, *dfinal):
        w_hh, *state0 = ctx.saved_tensors
        saved = ctx.saved
        del ctx.saved
        if dy is None:
            dy = state0[0].new_zeros((ctx.seq,) + tuple(state0[0].shape))
        dstate = tuple(torch.zeros_like(s) if d is None else d for d, s in zip(dfinal, state0))
        dxw, dstate0, dw, db_hn = saved.backward(ctx.steps, dy, dstate, tuple(state0), w_hh)
        need = ctx.needs_input_grad
        return (
            None,
            None,
            dxw if need[2] else None,
            dw if need[3] else None,
            db_hn if need[4] else None,
            *(d if n else None for d, n in zip(dstate0, need[5:])),
        )


def folded_bias(
    variant: str, b_ih: Tensor | None, b_hh: Tensor | None
) -> tuple[Tensor | None, Tensor | None]:
    """(bias folded into the input projection, GRU's b_hn kept out of it or None)."""
    if b_ih is None or b_hh is None:
        return None, None
    if variant != "gru":
        return b_ih + b_hh, None
    hidden = b_hh.size(0) // 3
    rz = torch.cat([b_hh[: 2 * hidden], torch.zeros_like(b_hh[2 * hidden :])])
    return b_ih + rz, b_hh[2 * hidden :]


def recurrent_layer(
    steps: Steps,
    x: Tensor,
    state: State,
    weights: LayerWeights,
    forward_impl: ForwardImpl | None = None,
    pad_batch_one: bool = True,
) -> tuple[Tensor, State]:
    """run_layer for backends built on `Recurrence` (compiled, triton)."""
    w_ih, w_hh, b_ih, b_hh = weights[:4]
    assert w_ih is not None and w_hh is not None
    bias, b_hn = folded_bias(steps.variant, b_ih, b_hh)
    xw = loops.project_input(x, w_ih, bias)
    if steps.variant == "gru" and b_hn is None:
        b_hn = w_hh.new_zeros(w_hh.size(1))  # one graph for bias and bias=False
    # batch 1 runs as two identical rows, so that Dynamo's 0/1 specialisation does not compile
    # a second graph; the extra row gets a zero upstream gradient and adds nothing to dW
    padded = pad_batch_one and x.size(1) == 1
    if padded:
        xw = xw.expand(-1, 2, -1).contiguous()
        state = tuple(s.expand(2, -1).contiguous() for s in state)
    if forward_impl is None:
        forward_impl = functools.partial(run_forward, steps)
    y, *final = Recurrence.apply(steps, forward_impl, xw, w_hh, b_hn, *state)
    if padded:
        y, final = y[:, :1], [s[:1] for s in final]
    return y, tuple(final)


def variant_of(module: Any) -> str:
    """'lstm', 'gru', 'rnn_tanh' or 'rnn_relu' for a RecurrentBase module."""
    return f"rnn_{module.nonlinearity}" if module.kind == "rnn" else module.kind
