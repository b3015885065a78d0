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
    # addmm: the bias and the recurrent product added by the GEMMs, not as separate ops
    a = torch.mm(x_t, w_ih_t) if bias is None else torch.addmm(bias, x_t, w_ih_t)
    return torch.addmm(a, h, w_hh_t)


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


_TRANSPOSED: dict[int, tuple[weakref.ref[Tensor], int, Tensor]] = {}  # id(w) -> (w, version, w^T)


def transposed(w: Tensor) -> Tensor:
    """w.t().contiguous(), made once per weight tensor and version (an in-place update, such
    as an optimizer step, makes a new one); dropped when w is freed."""
    entry = _TRANSPOSED.get(id(w))
    if entry is not None and entry[0]() is w and entry[1] == w._version:
        return entry[2]
    w_t = w.detach().t().contiguous()
    if entry is None or entry[0]() is not w:
        weakref.finalize(w, _TRANSPOSED.pop, id(w), None)
    _TRANSPOSED[id(w)] = (weakref.ref(w), w._version, w_t)
    return w_t


def infer_short(
    variant: str, x: Tensor, state: State, weights: LayerWeights, eager: bool = False
) -> tuple[Tensor, State]:
    """run_layer without autograd for a few steps: one inference step per time step, compiled,
    or run eagerly (`eager`: no Dynamo call, no layout normalisation)."""
    w_ih, w_hh, b_ih, b_hh = weights[:4]
    assert w_ih is not None and w_hh is not None
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
