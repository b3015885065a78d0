"""One layer, one direction of backend `numba`: numpy drivers around the kernels, and the
`torch.autograd.Function` whose forward and backward each call them on zero-copy numpy views
of the torch tensors (`Tensor.numpy()` / `torch.from_numpy`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ...base import double_backward_refusal
from . import gru_rnn_kernels as K
from . import lstm_gemm as LG
from . import lstm_kernels as L
from . import onednn
from .gemm import wgrad
from .threads import batch_threads, lstm_threads, threads_for, wgrad_threads
from .workspace import WORKSPACE, Lease


def as_numpy(t: Tensor) -> np.ndarray:
    """Zero-copy numpy view of a CPU tensor, made C-contiguous if needed."""
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    return t.numpy()


def bias_or_zeros(b: Tensor | None, rows: int, dtype) -> np.ndarray:
    return np.zeros(rows, dtype) if b is None else as_numpy(b)


def numpy_weights(weights: tuple, dtype) -> tuple[np.ndarray, ...]:
    """A layer's (w_ih, w_hh, b_ih, b_hh) tensors as numpy views, a missing bias as zeros."""
    w_ih, w_hh, b_ih, b_hh = weights[:4]
    rows = w_ih.shape[0]
    return (
        as_numpy(w_ih),
        as_numpy(w_hh),
        bias_or_zeros(b_ih, rows, dtype),
        bias_or_zeros(b_hh, rows, dtype),
    )


def state_array(t: Tensor | None, batch: int, hidden: int, dtype) -> np.ndarray:
    """A layer's initial state as a numpy view, None (the default state) as zeros."""
    return np.zeros((batch, hidden), dtype) if t is None else as_numpy(t)


def final_tensors(finals: tuple, lead: bool, copy: bool) -> tuple[Tensor, ...]:
    """The final states as tensors: (B, H), or (1, B, H) when `lead` (the module's h_n of a
    single layer and direction, so no torch op is needed to shape it); copied when `copy`."""
    if lead:
        finals = tuple(f.reshape((1,) + f.shape) for f in finals)
    return tuple(torch.from_numpy(f.copy() if copy else f) for f in finals)


def gate_rows(kind: str, hidden: int) -> int:
    return {"lstm": 4, "gru": 3, "rnn": 1}[kind] * hidden


class PackedLSTM:
    """One LSTM layer's packed weights, kept across calls: the forward's `wp`, `bp` and the
    backward's `wpT` (lstm_kernels.py), rebuilt when a parameter's storage or version changed
    (an optimizer step, an in-place edit, `.to()`) or the thread split did. Packing costs a
    pass over the weights per call (0.4 ms of a 4 ms training step at batch 8, H = 256).

    The caller owns one per layer and direction and passes the module's own parameters, whose
    identity, storage and version are tracked; `None` instead packs per call."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.wp: np.ndarray | None = None
        self.bp: np.ndarray | None = None
        self.wpT: np.ndarray | None = None

    @staticmethod
    def _key(tensors: tuple, nth: int) -> tuple:
        return (nth,) + tuple(
            None if t is None else (id(t), t.data_ptr(), t._version, t.shape, t.dtype)
            for t in tensors
        )

    def forward_weights(self, tensors: tuple, nth: int, dtype):
        key = self._key(tensors, nth)
        if key != self.key:
            self.key, self.wpT = key, None
            self.wp, self.bp = pack_forward(numpy_weights(tensors, dtype), nth)
        return self.wp, self.bp

    def backward_weight(self, tensors: tuple, nth: int) -> np.ndarray:
        if self._key(tensors, nth) != self.key:  # the parameters changed since: do not keep
            return pack_backward(as_numpy(tensors[1]), nth)
        if self.wpT is None:
            self.wpT = pack_backward(as_numpy(tensors[1]), nth)
        return self.wpT


def pack_forward(arrays: tuple, nth: int) -> tuple[np.ndarray, np.ndarray]:
    w_ih, w_hh, b_ih, b_hh = arrays
    G, I = w_ih.shape
    wp = np.empty((G, LG.padded_k(w_hh.shape[1] + I)), w_ih.dtype)
    bp = np.empty(G, w_ih.dtype)
    L.pack(w_ih, w_hh, b_ih, b_hh, nth, wp, bp)
    return wp, bp


def pack_backward(w_hh: np.ndarray, nth: int) -> np.ndarray:
    """W_hh.T (H, Gs) in packed row order, Gs = lstm_gemm.padded_rows(G), zeros beyond G."""
    wpT = np.zeros((w_hh.shape[1], LG.padded_rows(w_hh.shape[0], w_hh.itemsize)), w_hh.dtype)
    L.pack_hh_t(w_hh, nth, wpT)  # nth: the forward's unit blocks
    return wpT


def forward(
    kind: str,
    relu: bool,
    x2: np.ndarray,
    states: tuple,
    weights: tuple,
    B: int,
    save: bool,
    packed: PackedLSTM | None = None,
):
    """Run one layer; returns (hs (T+1, B, H), final states tuple, saved tuple). `weights`: the
    layer's tensors (w_ih, w_hh, b_ih, b_hh), made numpy views only where used (an LSTM whose
    packed weights `packed` holds, the caller's cache if it keeps one, never needs them)."""
    H = weights[1].shape[1]
    I = x2.shape[1]
    T = x2.shape[0] // B
    dt = x2.dtype
    hs = np.empty((T + 1, B, H), dt)
    if kind == "lstm":  # hidden units split over threads (lstm_kernels.py)
        G = 4 * H
        nth = lstm_threads(H, I, B)
        if packed is None:
            wp, bp = pack_forward(numpy_weights(weights, dt), nth)
        else:
            wp, bp = packed.forward_weights(weights, nth, dt)
        z = WORKSPACE.take((T + 1, LG.padded_k(H + I), B), dt)
        cells = WORKSPACE.take((T + 1 if save else 2, H, B), dt)
        gates = WORKSPACE.take((T if save else 1, G, B), dt)
        br_ok = onednn.AVAILABLE and dt == np.float32
        c_n = L.forward(
            x2, states[0], states[1], wp, bp, hs, z, cells, gates, save, nth, onednn.BRGEMM, br_ok
        )
        WORKSPACE.give(z)
        if not save:
            WORKSPACE.give(cells, gates)
            return hs, (hs[T], c_n), ()
        return hs, (hs[T], c_n), (Lease(cells, gates), nth)
    n = batch_threads(gate_rows(kind, H), H, I, T, B)  # GRU and RNN split the batch
    w_ih, w_hh, b_ih, b_hh = numpy_weights(weights, dt)
    if kind == "gru":
        acts = np.empty((T if save else 1, B, 4 * H), dt)
        K.gru_forward(x2, states[0], w_ih, w_hh, b_ih, b_hh, hs, acts, save, n)
        return hs, (hs[T],), (acts,)
    K.rnn_forward(x2, states[0], w_ih, w_hh, b_ih, b_hh, hs, relu, n)
    return hs, (hs[T],), ()


class LayerFunction(torch.autograd.Function):
    """One layer, one direction. Inputs: kind, relu, packed (a PackedLSTM or None), lead,
    x (T, B, I), h0, c0 (None: zeros; c0 None unless LSTM), w_ih, w_hh, b_ih, b_hh (None
    without bias). Outputs: y (T, B, H), h_T (, c_T for LSTM), each (B, H), or (1, B, H) when
    `lead`."""

    @staticmethod
    def forward(
        ctx,
        kind: str,
        relu: bool,
        packed: PackedLSTM | None,
        lead: bool,
        x: Tensor,
        h0: Tensor | None,
        c0: Tensor | None,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
    ):
        T, B, I = x.shape
        xn = as_numpy(x).reshape(T * B, I)
        H = w_hh.shape[1]
        states: tuple[np.ndarray, ...] = (state_array(h0, B, H, xn.dtype),)
        if kind == "lstm":
            states += (state_array(c0, B, H, xn.dtype),)
        tensors = (w_ih, w_hh, b_ih, b_hh)
        hs, finals, saved = forward(kind, relu, xn, states, tensors, B, True, packed)
        y = torch.from_numpy(hs[1:])
        # the backward reads x, the weights and hs (= h0 and y) through numpy views: saving the
        # tensors makes autograd refuse a backward after any of them was changed in place
        ctx.save_for_backward(x, w_ih, w_hh, y)
        ctx.set_materialize_grads(False)  # unused outputs' gradients stay None: no zero tensors
        ctx.kind, ctx.relu, ctx.B, ctx.has_bias = kind, relu, B, b_ih is not None
        ctx.packed, ctx.tensors = packed, tensors
        ctx.arrays = (xn, hs) + saved
        return (y,) + final_tensors(finals, lead, copy=True)

    @staticmethod
    def backward(ctx, dy, dh, dc=None):
        if torch.is_grad_enabled():  # create_graph=True: this backward is not differentiable
            raise double_backward_refusal("numba")
        # unpacking raises if a saved tensor was modified in place
        _, w_ih_t, w_hh_t, _ = ctx.saved_tensors
        xn, hs = ctx.arrays[:2]
        kind, B = ctx.kind, ctx.B
        T, I = xn.shape[0] // B, xn.shape[1]
        H = w_hh_t.shape[1]
        # (kind, relu,) packed, lead, x, h0, c0, w_ih, w_hh, b_ih, b_hh
        need = ctx.needs_input_grad[2:]
        need_dx, need_dh0, need_dw = need[2], need[3] or need[4], any(need[5:])
        dt = xn.dtype
        # C-contiguous for every kind: one compiled specialisation, where passing any strides
        # (y.sum()'s 0-stride gradient, a transposed one) would compile the LSTM backward once
        # per layout, about 15 s each. The copy costs microseconds against milliseconds.
        dyn = np.zeros((T, B, H), dt) if dy is None else as_numpy(dy)
        # (1, B, H) under `lead`
        dhn = np.zeros((B, H), dt) if dh is None else as_numpy(dh).reshape(B, H)
        dc0 = None
        if kind == "lstm":  # every gradient from lstm_kernels.py, already in torch's row order
            lease, nth = ctx.arrays[2:]
            cells, gates = lease.arrays
            dcn = np.zeros((B, H), dt) if dc is None else as_numpy(dc).reshape(B, H)
            need_db = ctx.has_bias and (need[7] or need[8])
            G = 4 * H
            if ctx.packed is None:
                wpT = pack_backward(as_numpy(w_hh_t), nth)
            else:
                wpT = ctx.packed.backward_weight(ctx.tensors, nth)
            dg = WORKSPACE.take((2, LG.padded_rows(G, dt.itemsize), B), dt)
            dgT = WORKSPACE.take((2, B, G), dt)
            dg_all = WORKSPACE.take((G, T * B), dt)
            br_ok = onednn.AVAILABLE and dt == np.float32
            db_ih, dh0, dc0 = L.backward(
                dyn,
                dhn,
                dcn,
                cells,
                gates,
                wpT,
                need_dh0,
                need_db and not need_dw,  # else from the weight-gradient GEMM, below
                nth,
                dg,
                dgT,
                dg_all,
                onednn.BRGEMM,
                br_ok,
            )
            nw = threads_for(G * T * B * (H + I), G)  # one join; the G rows are split
            dw_ih, dw_hh, db, dx2 = LG.weight_grads(
                dg_all,
                hs[:T].reshape(T * B, H),
                xn,
                as_numpy(w_ih_t),
                need_dw,
                need_dx,
                need_db,
                nw,
            )
            if need_db and need_dw:  # else from L.backward, above
                db_ih = db
            WORKSPACE.give(dg, dgT, dg_all)
            db_hh = db_ih.copy()
        else:
            n = batch_threads(gate_rows(kind, H), H, I, T, B)
            w_ih, w_hh = as_numpy(w_ih_t), as_numpy(w_hh_t)
            if kind == "gru":
                (acts,) = ctx.arrays[2:]
                dx2, dh0, dGx, dGh, db_ih, db_hh = K.gru_backward(
                    dyn, dhn, xn, hs, acts, w_ih, w_hh, need_dx, need_dh0, need_dw, n
                )
            else:
                dx2, dh0, dGh, db_ih = K.rnn_backward(
                    dyn, dhn, xn, hs, w_ih, w_hh, ctx.relu, need_dx, need_dh0, need_dw, n
                )
                dGx, db_hh = dGh, db_ih.copy()
            dw_ih = dw_hh = None
            if need_dw:  # the two GEMMs over all T*B rows, the reduction split over threads
                G = gate_rows(kind, H)
                dw_ih = wgrad(dGx.reshape(T * B, -1), xn, wgrad_threads(G, I, T * B))
                dw_hh = wgrad(
                    dGh.reshape(T * B, -1), hs[:T].reshape(T * B, H), wgrad_threads(G, H, T * B)
                )

        def out(flag, arr):
            return torch.from_numpy(arr) if flag and arr is not None else None

        dx = out(need_dx, dx2)
        return (
            None,
            None,
            None,
            None,
            None if dx is None else dx.view(T, B, I),
            out(need[3], dh0),
            out(need[4], dc0),
            out(need[5], dw_ih),
            out(need[6], dw_hh),
            out(need[7] and ctx.has_bias, db_ih),
            out(need[8] and ctx.has_bias, db_hh),
        )
