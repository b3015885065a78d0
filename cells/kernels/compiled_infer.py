"""The `compiled` backend on short inputs without autograd: generation (one token per call,
batch 1) and any call of fewer than SHORT_STEPS steps under no_grad / inference_mode.

The training path costs more than the math there (profile of a batch-1, one-step LSTM call at
H = 256, docs/compiled-and-triton.md): reordering W_hh into oneDNN's blocked layout (paid per
layer call, and saving nothing on a matrix-vector product), the autograd Function and the gates
it saves for a backward that never comes, padding batch 1 to 2 rows, the front-padded copy of
xw, the chunk bookkeeping, and the duck-sizing config patch around each layer's first step
(every step is a first step when T = 1). This path runs one step per time step that takes x_t
and both weights (the input projection inside the step) and saves nothing: eagerly at batch 1
(a matrix-vector step, where the fused kernel saves less than Dynamo's call costs), else
compiled, with the config patched only on its first call per kind, dtype and device. The
weights go in as contiguous W^T, cached per weight tensor and version: at batch 1 a GEMM against
the transposed view (W stored (G*H, K)) was slower than one against contiguous W^T.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..base import LayerWeights, State
from .compiled_support import graph_count, log_compile, timed

SHORT_STEPS = 5  # < one K-step chunk: below this, packing and chunking cannot pay for themselves


def _gates(x_t: Tensor, h: Tensor, w_ih_t: Tensor, w_hh_t: Tensor, bias: Tensor | None) -> Tensor:
    # addmm: the bias and the recurrent product added by the GEMMs, not as separate ops; the
    # second in place (one allocation fewer, which at batch 1 costs about what an op does)
    a = torch.mm(x_t, w_ih_t) if bias is None else torch.addmm(bias, x_t, w_ih_t)
    return a.addmm_(h, w_hh_t)


def lstm_infer_step(
    x_t: Tensor, state: State, w_ih_t: Tensor, w_hh_t: Tensor, b_ih: Tensor | None, b_hh: Tensor
) -> State:
    h, c = state
    i, f, g, o = _gates(x_t, h, w_ih_t, w_hh_t, None if b_ih is None else b_ih + b_hh).chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_infer_step(
    x_t: Tensor, state: State, w_ih_t: Tensor, w_hh_t: Tensor, b_ih: Tensor | None, b_hh: Tensor
) -> State:
    h = state[0]
    if b_ih is None:
        xw, hw = torch.mm(x_t, w_ih_t), torch.mm(h, w_hh_t)
    else:
        xw, hw = torch.addmm(b_ih, x_t, w_ih_t), torch.addmm(b_hh, h, w_hh_t)
    x_r, x_z, x_n = xw.chunk(3, 1)
    h_r, h_z, h_n = hw.chunk(3, 1)
    r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (n + z * (h - n),)


def gru_packed_weights(
    w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The weights of `gru_batch1_step`: wx (1, I, 4H), wh (1, H, 4H) and a (4H,) bias whose
    column blocks are [r z from x and h | n from x | n from h]. wx's last block and wh's third
    are zero, so that both products land in one buffer: r and z come out summed, the two parts
    of n apart (r multiplies only the recurrent one)."""
    hidden = w_hh.size(1)
    gates = 2 * hidden
    wx = w_ih.new_zeros(1, w_ih.size(1), 4 * hidden)
    wh = w_hh.new_zeros(1, hidden, 4 * hidden)
    wx[0, :, : 3 * hidden] = w_ih.t()
    wh[0, :, :gates] = w_hh[:gates].t()
    wh[0, :, 3 * hidden :] = w_hh[gates:].t()
    if b_ih is None or b_hh is None:
        return wx, wh, None
    return wx, wh, torch.cat((b_ih[:gates] + b_hh[:gates], b_ih[gates:], b_hh[gates:]))


def gru_batch1_step(x_t: Tensor, h: Tensor, wx: Tensor, wh: Tensor, bias: Tensor | None) -> Tensor:
    """torch.nn's GRU step on `gru_packed_weights`, x_t (1, B, I) and h (1, B, H) as torch.nn
    holds them (no views to take or undo): 8 tensor ops where gru_infer_step takes 14. At
    batch 1 an op's dispatch and allocation cost a good part of what its matrix-vector product
    does (docs/compiled-and-triton.md)."""
    hidden = h.size(2)
    g = torch.bmm(x_t, wx) if bias is None else torch.baddbmm(bias, x_t, wx)
    g.baddbmm_(h, wh)
    rz, n_x, n_h = g.split((2 * hidden, hidden, hidden), 2)
    r, z = rz.sigmoid_().chunk(2, 2)
    n = n_x.addcmul_(r, n_h).tanh_()
    return torch.lerp(n, h, z)  # n + z * (h - n)


def rnn_tanh_infer_step(
    x_t: Tensor, state: State, w_ih_t: Tensor, w_hh_t: Tensor, b_ih: Tensor | None, b_hh: Tensor
) -> State:
    bias = None if b_ih is None else b_ih + b_hh
    return (torch.tanh(_gates(x_t, state[0], w_ih_t, w_hh_t, bias)),)


def rnn_relu_infer_step(
    x_t: Tensor, state: State, w_ih_t: Tensor, w_hh_t: Tensor, b_ih: Tensor | None, b_hh: Tensor
) -> State:
    bias = None if b_ih is None else b_ih + b_hh
    return (torch.relu(_gates(x_t, state[0], w_ih_t, w_hh_t, bias)),)


INFER_STEPS: dict[str, Callable[..., State]] = {
    "lstm": lstm_infer_step,
    "gru": gru_infer_step,
    "rnn_tanh": rnn_tanh_infer_step,
    "rnn_relu": rnn_relu_infer_step,
}
_COMPILED_INFER: dict[str, Callable[..., State]] = {}
_WARM: set[tuple[str, torch.dtype, str]] = set()  # (variant, dtype, device type) called before


def compiled_infer_step(variant: str) -> Callable[..., State]:
    if variant not in _COMPILED_INFER:
        _COMPILED_INFER[variant] = torch.compile(INFER_STEPS[variant], dynamic=True)
    return _COMPILED_INFER[variant]


def _infer_call(variant: str, fn: Callable, *args: Any) -> State:
    """The first call per variant, dtype and device through `timed` (no duck sizing, compile
    time logged); later calls direct, a compile they still trigger (a new dtype-independent
    specialisation, e.g. batch 1 then 3) logged all the same."""
    key = (variant, args[0].dtype, args[0].device.type)
    if key not in _WARM:
        out = timed("infer", variant)(fn, *args)
        _WARM.add(key)
        return out
    before, start = graph_count(), time.perf_counter()
    out = fn(*args)
    log_compile(f"{variant}.infer", args, before, start)
    return out


def _one_layout(t: Tensor) -> Tensor:
    """t itself when contiguous at storage offset 0, else a fresh copy: one layout for Dynamo's
    guards (offset 0 vs > 0 would be two graphs) without a copy in the usual case."""
    if t.is_contiguous() and t.storage_offset() == 0:
        return t
    return t.clone(memory_format=torch.contiguous_format)


# (what, id of the first tensor) -> (the tensors, their versions, what was derived from them)
_DERIVED: dict[tuple[str, int], tuple[tuple[weakref.ref[Tensor], ...], tuple[int, ...], Any]] = {}


def _derived(what: str, build: Callable[..., Any], *tensors: Tensor) -> Any:
    """build(*tensors), made once per set of tensors and their versions (an in-place update,
    such as an optimizer step, makes a new one); dropped when the first tensor is freed."""
    key = (what, id(tensors[0]))
    versions = tuple(t._version for t in tensors)
    entry = _DERIVED.get(key)
    if (
        entry is not None
        and len(entry[0]) == len(tensors)
        and all(ref() is t for ref, t in zip(entry[0], tensors))
        and entry[1] == versions
    ):
        return entry[2]
    with torch.no_grad():
        value = build(*(t.detach() for t in tensors))
    if entry is None or entry[0][0]() is not tensors[0]:
        weakref.finalize(tensors[0], _DERIVED.pop, key, None)
    _DERIVED[key] = (tuple(weakref.ref(t) for t in tensors), versions, value)
    return value


def transposed(w: Tensor) -> Tensor:
    """w.t().contiguous(), made once per weight tensor and version."""
    return _derived("transposed", lambda t: t.t().contiguous(), w)


def gru_packed(
    w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """gru_packed_weights, made once per set of weights and their versions."""
    if b_ih is None or b_hh is None:
        return _derived("gru", lambda ih, hh: gru_packed_weights(ih, hh, None, None), w_ih, w_hh)
    return _derived("gru biased", gru_packed_weights, w_ih, w_hh, b_ih, b_hh)


def gru_batch1(x: Tensor, h0: Tensor, weights: LayerWeights) -> tuple[Tensor, Tensor]:
    """A GRU layer without autograd, step by step on `gru_packed` weights: x (T, B, I) and h0
    (1, B, H), as torch.nn takes them; returns y (T, B, H) and h_n (1, B, H), not sharing
    memory. Meant for generation (B = 1, T = 1)."""
    w_ih, w_hh, b_ih, b_hh = weights[:4]
    assert w_ih is not None and w_hh is not None
    wx, wh, bias = gru_packed(w_ih, w_hh, b_ih, b_hh)
    h, hs = h0, []
    for t in range(x.size(0)):
        h = gru_batch1_step(x[t : t + 1], h, wx, wh, bias)
        hs.append(h)
    return torch.cat(hs), h  # cat copies, also of one step


def infer_short(
    variant: str, x: Tensor, state: State, weights: LayerWeights, eager: bool = False
) -> tuple[Tensor, State]:
    """run_layer without autograd for a few steps: one inference step per time step, compiled,
    or run eagerly (`eager`: no Dynamo call, no layout normalisation)."""
    w_ih, w_hh, b_ih, b_hh = weights[:4]
    assert w_ih is not None and w_hh is not None
    if eager and variant == "gru":
        y, h_n = gru_batch1(x, state[0].unsqueeze(0), weights)
        return y, (h_n[0],)
    w_ih_t, w_hh_t = transposed(w_ih), transposed(w_hh)
    hs = []
    if eager:
        step = INFER_STEPS[variant]
        for t in range(x.size(0)):
            state = step(x[t], state, w_ih_t, w_hh_t, b_ih, b_hh)
            hs.append(state[0])
    else:
        compiled = compiled_infer_step(variant)
        if b_ih is not None and b_hh is not None:
            b_ih, b_hh = _one_layout(b_ih), _one_layout(b_hh)
        state = tuple(_one_layout(s) for s in state)
        for t in range(x.size(0)):
            state = _infer_call(
                variant, compiled, _one_layout(x[t]), state, w_ih_t, w_hh_t, b_ih, b_hh
            )
            hs.append(state[0])
    return torch.stack(hs), state  # stack copies: the output and the state never share memory
