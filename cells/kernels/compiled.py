"""`compiled`: the fused recurrence with its per-step cell compiled by torch.compile (Inductor).

Design (measured; see docs/compiled-and-triton.md):

* torch.compile of the whole fused loop (cells/loops.py) unrolls time: one graph per sequence
  length, ~30-40 s to compile T=35 forward+backward on this 2-core machine, minutes at T~1000,
  and a recompile for every new T. Marking T dynamic does not help, because the Python loop
  over `range(T)` is specialised by Dynamo anyway.
* So the time loop stays in Python and only one *step* is compiled: the recurrent GEMM plus the
  gate pointwise work fused into one generated kernel (forward), and the pointwise derivative
  plus the GEMM that carries the gradient to h_{t-1} (backward). Step functions do not depend
  on T, are compiled with dynamic=True (batch and hidden symbolic), once per kind and process;
  Inductor's on-disk cache makes later processes cheaper still.
* K steps per call (`CHUNK`, default 5; env CELLBENCH_COMPILED_CHUNK, 1 = off): a second pair
  of compiled functions runs the step unrolled K times, so Dynamo's frame/guard/wrapper cost
  (~70 us a call) is paid once per K steps. A sequence runs its first T % K steps one per call,
  then (T - T % K) / K chunk calls; T only changes the number of calls, never the graphs.
  Hidden size 1 runs one step per call (Inductor miscomputed the GRU chunk at H = 1).
  Chunk views of xw are plain slices (rows t >= 1 never sit at storage offset 0); only the
  first unit's rows are copied into a front-padded buffer (not all of xw).
* float32 on the CPU: the recurrent GEMM inside the compiled steps is `cellbench::packed_mm`,
  a custom op (an extern call in the graph) that runs oneDNN's linear with W_hh (forward) /
  W_hh^T (backward) reordered once per layer call into oneDNN's blocked layout (~95 us vs
  ~125-170 us for aten addmm/mm per d2l-size step here; what Inductor's own weight prepacking
  does for frozen inference graphs). The loops register the packed copy (`_packed_for`); the
  op falls back to torch.mm when none is registered. CELLBENCH_COMPILED_PACKED=0 turns it off.
* Forward and backward are one `torch.autograd.Function` per layer and direction
  (`Recurrence`). Autograd through a loop of compiled steps would compute the recurrent weight
  gradient as T small GEMMs and, with `xw[t]` indexing, zero-fill a (T, B, G*H) buffer per step
  (O(T^2) memory traffic); here the backward keeps the gate gradients of all steps and forms
  dW_hh with ONE GEMM, (G*H, T*B) @ (T*B, H), like oneDNN/cuDNN do. The input projection
  (x W_ih^T + folded biases, one GEMM for all steps) stays outside the Function, so autograd
  gives dW_ih, the bias gradients and dx from it.
* Batch 1 (and unbatched input) is run as a batch of two identical rows, so that Dynamo's 0/1
  specialisation does not trigger a second compile; the extra row gets a zero upstream
  gradient and contributes exactly nothing to the weight gradients.

* Calls of fewer than SHORT_STEPS steps under no_grad / inference_mode (generation: one token
  per call, batch 1) skip all of the above (`infer_short`): one inference step per time
  step (compiled, or eager at batch 1), the input projection inside it, W^T cached per weight
  version, nothing saved.

The same `Recurrence` backward is reused by the `triton` backend, whose forward is a
persistent Triton kernel (cells/kernels/triton_gpu.py).

`compile_times()` reports the wall time of every call that triggered a compilation (the first
call per kind, dtype and device), so the compile cost is observable.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
import weakref
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import loops
from ..base import LayerWeights, RecurrentBase, State

# --------------------------------------------------------------------------------------------
# One step, forward and backward, per kind. Plain torch: compiled below, or run eagerly.
# `acts` are the activated gates saved for the backward.


def lstm_forward_step(xw_t: Tensor, h: Tensor, c: Tensor, w_t: Tensor, mm=None):
    gates = torch.addmm(xw_t, h, w_t) if mm is None else xw_t + mm(h, w_t)
    i, f, g, o = gates.chunk(4, 1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c + i * g
    h = o * torch.tanh(c)
    return h, c, torch.cat([i, f, g, o], 1)


def lstm_backward_step(
    dy_t: Tensor,
    dh: Tensor,
    dc: Tensor,
    acts: Tensor,
    c_prev: Tensor,
    c: Tensor,
    w: Tensor,
    mm=None,
):
    """Returns (d pre-activation gates, dh_{t-1}, dc_{t-1})."""
    dh = dh + dy_t
    i, f, g, o = acts.chunk(4, 1)
    tc = torch.tanh(c)
    dc = dc + dh * o * (1 - tc * tc)
    da = torch.cat(
        [
            dc * g * i * (1 - i),
            dc * c_prev * f * (1 - f),
            dc * i * (1 - g * g),
            dh * tc * o * (1 - o),
        ],
        1,
    )
    return da, (mm or torch.mm)(da, w), dc * f


def gru_forward_step(xw_t: Tensor, h: Tensor, w_t: Tensor, b_hn: Tensor, mm=None):
    hw = (mm or torch.mm)(h, w_t)
    x_r, x_z, x_n = xw_t.chunk(3, 1)
    h_r, h_z, h_n = hw.chunk(3, 1)
    h_n = h_n + b_hn
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    h = n + z * (h - n)
    return h, torch.cat([r, z, n, h_n], 1)


def gru_backward_step(dy_t: Tensor, dh: Tensor, acts: Tensor, h_prev: Tensor, w: Tensor, mm=None):
    """Returns (d xw_t, d (h W_hh^T + b_hn), dh_{t-1})."""
    dh = dh + dy_t
    r, z, n, h_n = acts.chunk(4, 1)
    dz = dh * (h_prev - n) * z * (1 - z)
    dan = dh * (1 - z) * (1 - n * n)
    dr = dan * h_n * r * (1 - r)
    dhw = torch.cat([dr, dz, dan * r], 1)
    return torch.cat([dr, dz, dan], 1), dhw, dh * z + (mm or torch.mm)(dhw, w)


def rnn_tanh_forward_step(xw_t: Tensor, h: Tensor, w_t: Tensor, mm=None):
    return torch.tanh(torch.addmm(xw_t, h, w_t) if mm is None else xw_t + mm(h, w_t))


def rnn_relu_forward_step(xw_t: Tensor, h: Tensor, w_t: Tensor, mm=None):
    return torch.relu(torch.addmm(xw_t, h, w_t) if mm is None else xw_t + mm(h, w_t))


def rnn_tanh_backward_step(dy_t: Tensor, dh: Tensor, h: Tensor, w: Tensor, mm=None):
    da = (dh + dy_t) * (1 - h * h)
    return da, (mm or torch.mm)(da, w)


def rnn_relu_backward_step(dy_t: Tensor, dh: Tensor, h: Tensor, w: Tensor, mm=None):
    da = (dh + dy_t) * (h > 0).to(h.dtype)  # torch's relu backward: gradient 0 at 0
    return da, (mm or torch.mm)(da, w)


class Steps(NamedTuple):
    forward: Callable
    backward: Callable
    # optional: K steps per call (see chunk_steps); K = 0 means one step per call only
    forward_chunk: Callable | None = None
    backward_chunk: Callable | None = None
    chunk: int = 0
    # the steps' recurrent GEMMs use packed_mm (float32 CPU): the loops register the packed weight
    packed: bool = False


EAGER_STEPS: dict[str, Steps] = {
    "lstm": Steps(lstm_forward_step, lstm_backward_step),
    "gru": Steps(gru_forward_step, gru_backward_step),
    "rnn_tanh": Steps(rnn_tanh_forward_step, rnn_tanh_backward_step),
    "rnn_relu": Steps(rnn_relu_forward_step, rnn_relu_backward_step),
}

# --------------------------------------------------------------------------------------------
# The recurrent GEMM with a pre-packed weight (float32 CPU).
#
# Per step the recurrence multiplies by the same W_hh (forward) / W_hh^T (backward). oneDNN
# with the weight reordered once into its blocked layout (what Inductor's own weight-prepack
# does for frozen inference graphs) runs the d2l-size step GEMM (32 x 256 @ 256 x 1024) in
# ~95 us vs ~125-170 us for aten addmm/mm (MKL) here. A blocked-layout tensor cannot be an
# input of a compiled graph, so the compiled steps call `packed_mm(x, b)` (= x @ b, a custom op
# taking the dense b) and the loops register the packed copy of b for the duration of one loop
# (`_packed_for`). The op looks it up by identity and version and falls back to the plain
# GEMM when there is none, so a missing registration costs speed, never correctness.

_PACKED: dict[int, tuple] = {}  # id(b) -> (b, b._version, packed weight of b^T)
_PACKED_MM = None  # the op, once defined (None: unavailable)
_PACKED_LIB = None
PACKED = os.environ.get("CELLBENCH_COMPILED_PACKED", "1") != "0"


def _packed_mm_impl(x: Tensor, b: Tensor) -> Tensor:
    entry = _PACKED.get(id(b))
    if entry is not None and entry[0] is b and entry[1] == b._version:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), entry[2], None, "none", [], "")
    return x.mm(b)


def _define_packed_mm():
    """The custom op `cellbench::packed_mm`, defined once per process; None when oneDNN's
    packed linear is not in this torch build (then the steps use torch.mm)."""
    global _PACKED_MM, _PACKED_LIB
    if _PACKED_MM is not None or not PACKED:
        return _PACKED_MM
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        torch.ops.mkldnn._linear_pointwise, torch.ops.mkldnn._reorder_linear_weight  # noqa: B018
        if not hasattr(torch.ops.cellbench, "packed_mm"):
            _PACKED_LIB = torch.library.Library("cellbench", "FRAGMENT")
            _PACKED_LIB.define("packed_mm(Tensor x, Tensor b) -> Tensor")
            _PACKED_LIB.impl("packed_mm", _packed_mm_impl, "CPU")
            torch.library.register_fake("cellbench::packed_mm", _packed_mm_fake, lib=_PACKED_LIB)
        _PACKED_MM = torch.ops.cellbench.packed_mm.default
    except (AttributeError, RuntimeError):  # pragma: no cover - depends on the torch build
        _PACKED_MM = None
    return _PACKED_MM


def _packed_mm_fake(x: Tensor, b: Tensor) -> Tensor:
    return x.new_empty((x.size(0), b.size(1)))


def _gemm_for(t: Tensor):
    """The GEMM for a step on tensors like t: packed_mm for float32 CPU, else None (torch.mm)."""
    if _PACKED_MM is not None and t.device.type == "cpu" and t.dtype == torch.float32:
        return _PACKED_MM
    return None


def with_packed_gemm(step: Callable) -> Callable:
    """step(*args, mm=...) with the GEMM chosen from args[1] (h or dh). Decided when Dynamo
    traces (dtype and device are guarded anyway)."""

    def packed_step(*args):
        return step(*args, mm=_gemm_for(args[1]))

    packed_step.__name__ = packed_step.__qualname__ = step.__name__
    return packed_step


def _packs(steps: Steps, w: Tensor) -> bool:
    return steps.packed and _gemm_for(w) is not None


class _packed_for:
    """Context: while a loop runs, `packed_mm(x, b)` uses oneDNN's packed copy of b^T.
    A no-op unless `steps.packed` and b is float32 on the CPU."""

    def __init__(self, steps: Steps, b: Tensor, batch: int):
        self.key = None
        if _packs(steps, b):
            weight = b.t().contiguous()  # (N, K): x @ b == linear(x, weight)
            self.key = id(b)
            _PACKED[self.key] = (
                b,
                b._version,
                torch.ops.mkldnn._reorder_linear_weight(weight, batch),
            )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.key is not None:
            _PACKED.pop(self.key, None)
        return False


def chunk_steps(variant: str, k: int, packed: bool = False):
    """(forward_chunk, backward_chunk): the step functions unrolled K times, so that one
    compiled call runs K steps (the per-call overhead is paid once per K steps). `packed`: the
    recurrent GEMMs go through `packed_mm` where it applies (see `_gemm_for`).

    forward_chunk(xw (K, B, G*H), state..., weights) -> stacked hs (K, B, H)[, cs, acts] plus
    the final state as separate tensors (not views: the next call sees a fresh layout).
    backward_chunk(dy (K, B, H), dstate..., saved chunk tensors, state before the chunk, w)
    -> stacked per-step gradients (K, ...) in time order and the gradient of the state before.
    """
    fwd, bwd = EAGER_STEPS[variant].forward, EAGER_STEPS[variant].backward
    if packed:
        fwd, bwd = with_packed_gemm(fwd), with_packed_gemm(bwd)
    if variant == "lstm":

        def forward_chunk(xw, h, c, w_t):
            hs, cs, acts = [], [], []
            for i in range(k):
                h, c, a = fwd(xw[i], h, c, w_t)
                hs.append(h), cs.append(c), acts.append(a)
            return torch.stack(hs), torch.stack(cs), torch.stack(acts), h, c

        def backward_chunk(dy, dh, dc, acts, cs, c_before, w):
            das = [None] * k
            for i in range(k - 1, -1, -1):
                das[i], dh, dc = bwd(dy[i], dh, dc, acts[i], cs[i - 1] if i else c_before, cs[i], w)
            return torch.stack(das), dh, dc
    elif variant == "gru":

        def forward_chunk(xw, h, w_t, b_hn):
            hs, acts = [], []
            for i in range(k):
                h, a = fwd(xw[i], h, w_t, b_hn)
                hs.append(h), acts.append(a)
            return torch.stack(hs), torch.stack(acts), h

        def backward_chunk(dy, dh, acts, hs, h_before, w):
            das, dhws = [None] * k, [None] * k
            for i in range(k - 1, -1, -1):
                das[i], dhws[i], dh = bwd(dy[i], dh, acts[i], hs[i - 1] if i else h_before, w)
            return torch.stack(das), torch.stack(dhws), dh
    else:

        def forward_chunk(xw, h, w_t):
            hs = []
            for i in range(k):
                h = fwd(xw[i], h, w_t)
                hs.append(h)
            return torch.stack(hs), h

        def backward_chunk(dy, dh, hs, w):
            das = [None] * k
            for i in range(k - 1, -1, -1):
                das[i], dh = bwd(dy[i], dh, hs[i], w)
            return torch.stack(das), dh

    return forward_chunk, backward_chunk


# --------------------------------------------------------------------------------------------
# The recurrence of one layer and direction with a hand-written, batched backward.


def _front_padded(x: Tensor) -> Tensor:
    """x (T, ...) -> a fresh (T+1, ...) buffer whose rows 1.. are x. Its row views all sit at a
    storage offset >= 2 on a contiguous base, so Dynamo sees the same layout at every step
    (a view at offset 0 would be specialised and compiled separately)."""
    out = x.new_empty((x.size(0) + 1,) + tuple(x.shape[1:]))
    out[0].zero_()
    out[1:].copy_(x)
    return out


def _rows(x: Tensor, t0: int, n: int) -> Tensor:
    """x[t0: t0 + n] for contiguous x, never at storage offset 0 (see _front_padded): rows
    t0 >= 1 already sit at offset >= 2 (a row holds >= 2 elements: batch 1 runs as 2), so only
    the first rows are copied, into a front-padded buffer, instead of all of x."""
    return x[t0 : t0 + n] if t0 else _front_padded(x[:n])[1:]


def _fresh(t: Tensor | None) -> Tensor | None:
    """A contiguous tensor that is not a view (one layout for Dynamo's guards)."""
    return None if t is None else t.clone(memory_format=torch.contiguous_format)


def run_forward(
    variant: str,
    steps: Steps,
    xw: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    w_hh: Tensor,
    b_hn: Tensor | None,
    on_first: Callable | None = None,
):
    """Python loop over steps. Returns lists (one tensor per step) hs, cs, acts (cs, acts may
    be empty)."""
    on_first = on_first or _plain
    w_t = w_hh.t().contiguous()  # a transposed view would be copied by the graph at every step
    h, c = _fresh(h0), _fresh(c0)
    padded = _front_padded(xw)
    hs: list[Tensor] = []
    cs: list[Tensor] = []
    acts: list[Tensor] = []
    with _packed_for(steps, w_t, xw.size(1)):
        for t in range(xw.size(0)):
            call = on_first if t == 0 else _plain
            xw_t = padded[t + 1]
            if variant == "lstm":
                h, c, a = call(steps.forward, xw_t, h, c, w_t)
                cs.append(c)
                acts.append(a)
            elif variant == "gru":
                h, a = call(steps.forward, xw_t, h, w_t, b_hn)
                acts.append(a)
            else:
                h = call(steps.forward, xw_t, h, w_t)
            hs.append(h)
    return hs, cs, acts


def _plain(fn, *args):
    return fn(*args)


def run_backward(
    variant: str,
    steps: Steps,
    dy: Tensor,
    dh: Tensor,
    dc: Tensor | None,
    hs,
    h0: Tensor,
    c0: Tensor | None,
    cs,
    acts,
    w_hh: Tensor,
    on_first: Callable = _plain,
):
    """Reverse loop over steps; hs, cs, acts index by step (lists or stacked tensors).

    Returns dxw, dh0, dc0, dW_hh, db_hn (dc0 and db_hn may be None)."""
    seq = dy.size(0)
    dy_padded = _front_padded(dy)
    dh, dc, h0, c0 = _fresh(dh), _fresh(dc), _fresh(h0), _fresh(c0)
    dxws: list[Tensor | None] = [None] * seq
    dhws: list[Tensor | None] = [None] * seq
    with _packed_for(steps, w_hh, dy.size(1)):
        for t in range(seq - 1, -1, -1):
            call = on_first if t == seq - 1 else _plain
            h_prev = hs[t - 1] if t else h0
            dy_t = dy_padded[t + 1]
            if variant == "lstm":
                c_prev = cs[t - 1] if t else c0
                da, dh, dc = call(steps.backward, dy_t, dh, dc, acts[t], c_prev, cs[t], w_hh)
            elif variant == "gru":
                da, dhws[t], dh = call(steps.backward, dy_t, dh, acts[t], h_prev, w_hh)
            else:
                da, dh = call(steps.backward, dy_t, dh, hs[t], w_hh)
            dxws[t] = da
    dxw = torch.stack(dxws)
    d_rec = torch.stack(dhws) if variant == "gru" else dxw  # gradient of h W_hh^T (+ b_hn)
    hidden = h0.size(1)
    h_prev_all = torch.stack([h0] + [hs[t] for t in range(seq - 1)])
    dw = d_rec.reshape(-1, d_rec.size(2)).t().mm(h_prev_all.reshape(-1, hidden))
    db_hn = d_rec[:, :, 2 * hidden :].sum((0, 1)) if variant == "gru" else None
    return dxw, dh, dc, dw, db_hn


class _Unit(NamedTuple):
    """Steps t0 .. t0+n-1 of a chunked forward, run by one call: n == 0 marks a single step
    (tensors (B, ...)), else a chunk of n steps (tensors (n, B, ...)). `h_before`, `c_before`:
    the state entering the unit (fresh tensors)."""

    t0: int
    n: int
    hs: Tensor
    cs: Tensor | None
    acts: Tensor | None
    h_before: Tensor
    c_before: Tensor | None


class Chunked(NamedTuple):
    """What a chunked forward keeps for the backward: the units in time order."""

    units: list
    y: Tensor
    h_n: Tensor
    c_n: Tensor | None

    def __len__(self) -> int:
        return self.y.size(0)


def run_forward_chunked(
    variant: str,
    steps: Steps,
    xw: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    w_hh: Tensor,
    b_hn: Tensor | None,
) -> Chunked:
    """The first T % K steps one per call, then the rest K per call (`steps.forward_chunk`).
    Remainder first: single steps then only ever see fresh state tensors, and every chunk's
    xw view sits at a storage offset >= 2 of the front-padded buffer (one layout each)."""
    k = steps.chunk
    seq = xw.size(0)
    rest = seq % k
    xw = xw.contiguous()  # (a no-op for the input projection's output)
    # W_hh^T: a transposed view would be copied by the graph at every step, except where the
    # steps' GEMM is packed_mm, which only looks up the packed copy of it
    w_t = w_hh.t() if _packs(steps, w_hh) else w_hh.t().contiguous()
    h, c = _fresh(h0), _fresh(c0)
    units: list[_Unit] = []
    step_call = _timed("forward", variant)
    chunk_call = _timed("forward_chunk", variant)
    with _packed_for(steps, w_t, xw.size(1)):
        for t in range(rest):
            h_before, c_before = h, c
            a = None
            xw_t = _rows(xw, t, 1)[0]
            if variant == "lstm":
                h, c, a = step_call(steps.forward, xw_t, h, c, w_t)
            elif variant == "gru":
                h, a = step_call(steps.forward, xw_t, h, w_t, b_hn)
            else:
                h = step_call(steps.forward, xw_t, h, w_t)
            step_call = _plain
            units.append(_Unit(t, 0, h, c if variant == "lstm" else None, a, h_before, c_before))
        for t0 in range(rest, seq, k):
            h_before, c_before = h, c
            xw_c = _rows(xw, t0, k)
            cs = acts = None
            if variant == "lstm":
                hs, cs, acts, h, c = chunk_call(steps.forward_chunk, xw_c, h, c, w_t)
            elif variant == "gru":
                hs, acts, h = chunk_call(steps.forward_chunk, xw_c, h, w_t, b_hn)
            else:
                hs, h = chunk_call(steps.forward_chunk, xw_c, h, w_t)
            chunk_call = _plain
            units.append(_Unit(t0, k, hs, cs, acts, h_before, c_before))
    y = torch.cat([u.hs if u.n else u.hs.unsqueeze(0) for u in units])
    return Chunked(units, y, h, c)


def run_backward_chunked(
    variant: str,
    steps: Steps,
    dy: Tensor,
    dh: Tensor,
    dc: Tensor | None,
    rec: Chunked,
    h0: Tensor,
    w_hh: Tensor,
):
    """Reverse of run_forward_chunked. Returns dxw, dh0, dc0, dW_hh, db_hn."""
    dy_padded = _front_padded(dy)
    dh, dc = _fresh(dh), _fresh(dc)
    dxws: list[Tensor] = []
    dhws: list[Tensor] = []
    step_call = _timed("backward", variant)
    chunk_call = _timed("backward_chunk", variant)
    with _packed_for(steps, w_hh, dy.size(1)):
        for u in reversed(rec.units):
            if u.n:
                dy_c = dy_padded[u.t0 + 1 : u.t0 + 1 + u.n]
                if variant == "lstm":
                    da, dh, dc = chunk_call(
                        steps.backward_chunk, dy_c, dh, dc, u.acts, u.cs, u.c_before, w_hh
                    )
                elif variant == "gru":
                    da, dhw, dh = chunk_call(
                        steps.backward_chunk, dy_c, dh, u.acts, u.hs, u.h_before, w_hh
                    )
                    dhws.append(dhw)
                else:
                    da, dh = chunk_call(steps.backward_chunk, dy_c, dh, u.hs, w_hh)
                chunk_call = _plain
            else:
                dy_t = dy_padded[u.t0 + 1]
                if variant == "lstm":
                    da, dh, dc = step_call(
                        steps.backward, dy_t, dh, dc, u.acts, u.c_before, u.cs, w_hh
                    )
                elif variant == "gru":
                    da, dhw, dh = step_call(steps.backward, dy_t, dh, u.acts, u.h_before, w_hh)
                    dhws.append(dhw.unsqueeze(0))
                else:
                    da, dh = step_call(steps.backward, dy_t, dh, u.hs, w_hh)
                da = da.unsqueeze(0)
                step_call = _plain
            dxws.append(da)
    dxw = torch.cat(dxws[::-1])
    d_rec = torch.cat(dhws[::-1]) if variant == "gru" else dxw  # gradient of h W_hh^T (+ b_hn)
    hidden = h0.size(1)
    h_prev_all = torch.cat([h0.unsqueeze(0), rec.y[:-1]])
    dw = d_rec.reshape(-1, d_rec.size(2)).t().mm(h_prev_all.reshape(-1, hidden))
    db_hn = d_rec[:, :, 2 * hidden :].sum((0, 1)) if variant == "gru" else None
    return dxw, dh, dc, dw, db_hn


def _no_duck_sizing():
    """While compiling, do not assume that two sizes that happen to be equal (say T + 1 and H)
    are always equal: that guess costs a recompile when they differ."""
    from torch.fx.experimental import _config

    return _config.patch(use_duck_shape=False)


def _detached(*tensors):
    return tuple(t.detach() if t is not None else None for t in tensors)


class Recurrence(torch.autograd.Function):
    """One layer, one direction. forward(variant, steps, forward_impl, xw, h0, c0, w_hh, b_hn).

    `forward_impl(xw, h0, c0, w_hh, b_hn)` returns per-step hs, cs, acts (lists or stacked
    tensors; the default is the Python loop over `steps.forward`; the triton backend passes its
    fused kernel instead). They are kept on ctx for the backward.
    """

    @staticmethod
    def forward(ctx, variant, steps, forward_impl, xw, h0, c0, w_hh, b_hn):
        xw, h0, c0, w_hh, b_hn = _detached(xw, h0, c0, w_hh, b_hn)  # no requires_grad guards
        if b_hn is not None:
            b_hn = _fresh(b_hn)
        out = forward_impl(xw, h0, c0, w_hh, b_hn)
        ctx.variant, ctx.steps = variant, steps
        ctx.save_for_backward(h0, c0, w_hh)
        if isinstance(out, Chunked):
            ctx.per_step = out
            if out.units[-1].n:  # separate outputs of the last chunk call, kept by no unit
                return out.y, out.h_n, out.c_n
            # the last step's own tensors are kept for the backward: the outputs (which autograd
            # marks requires_grad) must be other tensors, or the backward step would recompile
            return out.y, _fresh(out.h_n), _fresh(out.c_n)
        hs, cs, acts = out
        y = hs if isinstance(hs, Tensor) else torch.stack(hs)
        ctx.per_step = (hs, cs, acts)
        h_n = _fresh(hs[-1])  # not a view of another output
        c_n = _fresh(cs[-1]) if variant == "lstm" else None
        return y, h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh_n, dc_n):
        h0, c0, w_hh = ctx.saved_tensors
        per_step = ctx.per_step
        del ctx.per_step
        dy = (
            torch.zeros(
                (len(per_step[0]) if isinstance(per_step, tuple) else len(per_step),)
                + tuple(h0.shape),
                dtype=h0.dtype,
                device=h0.device,
            )
            if dy is None
            else dy
        )
        dh = torch.zeros_like(h0) if dh_n is None else dh_n
        dc = None
        if ctx.variant == "lstm":
            dc = torch.zeros_like(c0) if dc_n is None else dc_n
        if isinstance(per_step, Chunked):
            dxw, dh0, dc0, dw, db_hn = run_backward_chunked(
                ctx.variant, ctx.steps, dy, dh, dc, per_step, h0, w_hh
            )
        else:
            hs, cs, acts = per_step
            dxw, dh0, dc0, dw, db_hn = run_backward(
                ctx.variant,
                ctx.steps,
                dy,
                dh,
                dc,
                hs,
                h0,
                c0,
                cs,
                acts,
                w_hh,
                _timed("backward", ctx.variant),
            )
        need = ctx.needs_input_grad
        return (
            None,
            None,
            None,
            dxw if need[3] else None,
            dh0 if need[4] else None,
            dc0 if need[5] else None,
            dw if need[6] else None,
            db_hn if need[7] else None,
        )


def recurrent_layer(
    variant: str,
    steps: Steps,
    x: Tensor,
    state: State,
    weights: LayerWeights,
    forward_impl: Callable | None = None,
    pad_batch_one: bool = True,
) -> tuple[Tensor, State]:
    """run_layer for backends built on `Recurrence` (compiled, triton)."""
    w_ih, w_hh, b_ih, b_hh = weights
    hidden = w_hh.size(1)
    b_hn = None
    if b_ih is None or b_hh is None:
        bias = None
    elif variant == "gru":
        bias = b_ih + torch.cat([b_hh[: 2 * hidden], torch.zeros_like(b_hh[2 * hidden :])])
        b_hn = b_hh[2 * hidden :]
    else:
        bias = b_ih + b_hh
    xw = loops.project_input(x, w_ih, bias)
    h0 = state[0]
    c0 = state[1] if variant == "lstm" else None
    if variant == "gru" and b_hn is None:
        b_hn = w_hh.new_zeros(hidden)  # one graph for bias and bias=False
    padded = pad_batch_one and x.size(1) == 1
    if padded:  # see the module docstring: avoid Dynamo's size-1 specialisation
        xw, h0 = xw.expand(-1, 2, -1).contiguous(), h0.expand(2, -1).contiguous()
        c0 = c0.expand(2, -1).contiguous() if c0 is not None else None
    if forward_impl is None:
        forward_impl = _python_forward(variant, steps)
    y, h_n, c_n = Recurrence.apply(variant, steps, forward_impl, xw, h0, c0, w_hh, b_hn)
    if padded:
        y, h_n = y[:, :1], h_n[:1]
        c_n = c_n[:1] if c_n is not None else None
    return y, ((h_n, c_n) if variant == "lstm" else (h_n,))


def _python_forward(variant: str, steps: Steps) -> Callable:
    def forward_impl(xw, h0, c0, w_hh, b_hn):
        # hidden size 1: Inductor (torch 2.13, CPU) miscomputes the GRU chunk graph specialised
        # to H = 1 (wrong values, NaN), so H = 1 runs one step per call
        if steps.chunk and w_hh.size(1) > 1:
            return run_forward_chunked(variant, steps, xw, h0, c0, w_hh, b_hn)
        return run_forward(variant, steps, xw, h0, c0, w_hh, b_hn, _timed("forward", variant))

    return forward_impl


# --------------------------------------------------------------------------------------------
# Compilation: one compiled function per step kind, created lazily; compile time is logged.

_COMPILED: dict[str, Steps] = {}
_COMPILE_TIMES: dict[str, float] = {}


def _graph_count() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _timed(direction: str, variant: str) -> Callable:
    """Call wrapper for the first step of a loop, where compilation happens: compiles without
    duck sizing and logs the wall time if it compiled a graph. (The config patch stays off
    the other steps: active, it costs ~35 us per compiled call.)"""

    def call(fn, *args):
        before = _graph_count()
        start = time.perf_counter()
        with _no_duck_sizing():
            out = fn(*args)
        if _graph_count() != before:
            key = f"{variant}.{direction}[{args[0].dtype}, {args[0].device.type}]"
            _COMPILE_TIMES[key] = _COMPILE_TIMES.get(key, 0.0) + time.perf_counter() - start
        return out

    return call


def compile_times() -> dict[str, float]:
    """Seconds spent in calls that compiled, per step function ("lstm.forward[float32, cpu]": s)."""
    return dict(_COMPILE_TIMES)


CHUNK = int(os.environ.get("CELLBENCH_COMPILED_CHUNK", "5"))


def compiled_steps(variant: str) -> Steps:
    if variant not in _COMPILED:
        eager = EAGER_STEPS[variant]
        packed = _define_packed_mm() is not None
        fwd, bwd = eager.forward, eager.backward
        if packed:
            fwd, bwd = with_packed_gemm(fwd), with_packed_gemm(bwd)
        fwd_chunk = bwd_chunk = None
        if CHUNK > 1:
            fwd_chunk, bwd_chunk = (
                torch.compile(f, dynamic=True) for f in chunk_steps(variant, CHUNK, packed)
            )
        _COMPILED[variant] = Steps(
            torch.compile(fwd, dynamic=True),
            torch.compile(bwd, dynamic=True),
            fwd_chunk,
            bwd_chunk,
            CHUNK if CHUNK > 1 else 0,
            packed,
        )
    return _COMPILED[variant]


# --------------------------------------------------------------------------------------------
# Inference on short inputs: generation (one token per call, batch 1) and any call of fewer
# than SHORT_STEPS steps under no_grad / inference_mode.
#
# The training path costs more than the math there (profile of a batch-1, one-step LSTM call at
# H = 256, docs/compiled-and-triton.md): reordering W_hh into oneDNN's blocked layout (~150 us,
# paid per layer call, to save ~30 us per step at batch 32 and nothing on a matrix-vector
# product), the autograd Function and the gates it saves for a backward that never comes,
# padding batch 1 to 2 rows, the front-padded copy of xw, the chunk bookkeeping, and the
# duck-sizing config patch around each layer's first step (~35 us; every step is a first step
# when T = 1). This path runs one step per time step that takes x_t and both weights (the
# input projection inside the step) and saves nothing: eagerly at batch 1 (a matrix-vector step,
# where the fused kernel saves less than Dynamo's call costs), else compiled, with the config
# patched only on its first call per kind, dtype and device. The weights go in as contiguous W^T, cached per weight
# tensor and version: at batch 1 a GEMM against the transposed view (W stored (G*H, K)) took
# 1.4x (recurrent, K = 256) to 10x (input, K = 28) the time of one against contiguous W^T here.

SHORT_STEPS = 5  # < one K-step chunk: below this, packing and chunking cannot pay for themselves


def lstm_infer_step(
    x_t: Tensor,
    h: Tensor,
    c: Tensor,
    w_ih_t: Tensor,
    w_hh_t: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
):
    gates = torch.mm(x_t, w_ih_t) + torch.mm(h, w_hh_t)
    if b_ih is not None:
        gates = gates + (b_ih + b_hh)
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_infer_step(
    x_t: Tensor, h: Tensor, w_ih_t: Tensor, w_hh_t: Tensor, b_ih: Tensor | None, b_hh: Tensor | None
):
    xw, hw = torch.mm(x_t, w_ih_t), torch.mm(h, w_hh_t)
    if b_ih is not None:
        xw, hw = xw + b_ih, hw + b_hh
    x_r, x_z, x_n = xw.chunk(3, 1)
    h_r, h_z, h_n = hw.chunk(3, 1)
    r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return n + z * (h - n)


def _rnn_infer_step(activation: Callable) -> Callable:
    def rnn_infer_step(x_t, h, w_ih_t, w_hh_t, b_ih, b_hh):
        a = torch.mm(x_t, w_ih_t) + torch.mm(h, w_hh_t)
        return activation(a if b_ih is None else a + (b_ih + b_hh))

    return rnn_infer_step


INFER_STEPS: dict[str, Callable] = {
    "lstm": lstm_infer_step,
    "gru": gru_infer_step,
    "rnn_tanh": _rnn_infer_step(torch.tanh),
    "rnn_relu": _rnn_infer_step(torch.relu),
}
_COMPILED_INFER: dict[str, Callable] = {}
_WARM: set = set()  # (variant, dtype, device type) whose infer step has been called


def _infer_call(variant: str, fn: Callable, *args):
    """The first call per variant, dtype and device through `_timed` (no duck sizing, compile
    time logged); later calls direct, a compile they still trigger (a new dtype-independent
    specialisation, e.g. batch 1 then 3) logged all the same."""
    key = (variant, args[0].dtype, args[0].device.type)
    if key not in _WARM:
        out = _timed("infer", variant)(fn, *args)
        _WARM.add(key)
        return out
    before, start = _graph_count(), time.perf_counter()
    out = fn(*args)
    if _graph_count() != before:
        name = f"{variant}.infer[{args[0].dtype}, {args[0].device.type}]"
        _COMPILE_TIMES[name] = _COMPILE_TIMES.get(name, 0.0) + time.perf_counter() - start
    return out


def _same(t: Tensor | None) -> Tensor | None:
    return t


def _one_layout(t: Tensor | None) -> Tensor | None:
    """t itself when contiguous at storage offset 0, else a fresh copy: one layout for Dynamo's
    guards (offset 0 vs > 0 would be two graphs) without a copy in the usual case."""
    if t is None or (t.is_contiguous() and t.storage_offset() == 0):
        return t
    return t.clone(memory_format=torch.contiguous_format)


_TRANSPOSED: dict[int, tuple] = {}  # id(w) -> (weak reference to w, w._version, w^T contiguous)


def _transposed(w: Tensor) -> Tensor:
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
    if eager:
        step, call, layout = INFER_STEPS[variant], _plain, _same
    else:
        step, layout = compiled_infer_step(variant), _one_layout
        call = functools.partial(_infer_call, variant)
    w_ih, w_hh, b_ih, b_hh = weights[:4]
    w_ih, w_hh = _transposed(w_ih), _transposed(w_hh)
    b_ih, b_hh = layout(b_ih), layout(b_hh)
    h = layout(state[0])
    c = layout(state[1]) if variant == "lstm" else None
    hs = []
    for t in range(x.size(0)):
        x_t = layout(x[t])
        if variant == "lstm":
            h, c = call(step, x_t, h, c, w_ih, w_hh, b_ih, b_hh)
        else:
            h = call(step, x_t, h, w_ih, w_hh, b_ih, b_hh)
        hs.append(h)
    y = torch.stack(hs)  # a copy: the output and the final state never share memory
    return y, ((h, c) if variant == "lstm" else (h,))


def compiled_infer_step(variant: str) -> Callable:
    if variant not in _COMPILED_INFER:
        _COMPILED_INFER[variant] = torch.compile(INFER_STEPS[variant], dynamic=True)
    return _COMPILED_INFER[variant]


def variant_of(module: RecurrentBase) -> str:
    return f"rnn_{module.nonlinearity}" if module.kind == "rnn" else module.kind


def unavailable_reason() -> str | None:
    """Cheap checks only (compiling here would slow down every `cells.backends()` call)."""
    try:
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            return f"torch.compile (Dynamo) does not support this Python ({torch.__version__})"
        from torch._inductor import config as inductor_config

        cxx = inductor_config.cpp.cxx
        names = [c for c in (cxx if isinstance(cxx, (tuple, list)) else (cxx,)) if c]
        if not any(shutil.which(n) for n in names + ["g++", "clang++"]):
            return "torch.compile's Inductor needs a C++ compiler for CPU code; none found (g++/clang++)"
    except Exception as exc:  # pragma: no cover - depends on the torch build
        return f"torch.compile is not usable: {type(exc).__name__}: {exc}".splitlines()[0]
    return None


class CompiledLoop(RecurrentBase):
    """Per-step cells compiled with torch.compile, batched weight-gradient backward."""

    unavailable_reason = staticmethod(unavailable_reason)

    def run_layer(self, x: Tensor, state: State, weights: LayerWeights) -> tuple[Tensor, State]:
        variant = variant_of(self)
        if x.size(0) < SHORT_STEPS and not torch.is_grad_enabled():  # generation, mostly
            # batch 1: a matrix-vector product and a few hundred gate values; the fused kernel
            # saves less than Dynamo's call costs (measured: eager step 17-64 us, compiled 61-115)
            return infer_short(variant, x, state, weights, eager=x.size(1) == 1)
        return recurrent_layer(variant, compiled_steps(variant), x, state, weights)
