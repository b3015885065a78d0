"""`numba`: forward and backward of every kind as numba kernels (cells.kernels.numba_kernels).

Each layer and direction is one `torch.autograd.Function` whose forward and backward each call
one @njit kernel on zero-copy numpy views of the torch tensors (`Tensor.numpy()` /
`torch.from_numpy`). The kernels split the batch over numba's threads (`numba.set_num_threads`,
`NUMBA_NUM_THREADS`); scipy's OpenBLAS, which they call, is kept at 1 thread. Without a gradient
to compute, the kernel is called directly and nothing is saved. Generation (no grad, one layer,
one direction, T == 1, B == 1) takes a fast path that skips the shared Python stacking code: see
`NumbaLoop.forward`.

CPU only; float32 and float64 (other dtypes are refused at construction and at call time).
Compiled code is cached on disk (`cache=True`); `warm_up()` compiles or loads everything.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Optional

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..base import RecurrentBase, State

try:
    import scipy.linalg.cython_blas  # noqa: F401 - the BLAS behind numba's np.dot

    from . import numba_kernels as K
    from . import numba_lstm as L
    _IMPORT_ERROR: Optional[str] = None
except ImportError as exc:  # numba or scipy missing: listed by cells.unavailable()
    K = L = None  # type: ignore[assignment]
    _IMPORT_ERROR = f"needs numba and scipy (numba's np.dot calls scipy's BLAS): {exc}"

SUPPORTED_DTYPES = (torch.float32, torch.float64)


def unavailable_reason() -> Optional[str]:
    return _IMPORT_ERROR


def _check_dtype(dtype: torch.dtype, what: str) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"backend 'numba' supports float32 and float64 only; {what} is {dtype} "
                        "(use .float() or .double(), or another backend)")


def _np(t: Tensor) -> np.ndarray:
    """Zero-copy numpy view of a CPU tensor, made C-contiguous if needed."""
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    return t.numpy()


def _bias(b: Optional[Tensor], rows: int, dtype) -> np.ndarray:
    return np.zeros(rows, dtype) if b is None else _np(b)


# --- threads: the batch is split over numba's threads -----------------------------------
MIN_ROWS = 8  # batch rows per thread below which a split does not pay (start-up, tiny GEMMs)
MIN_WGRAD_ROWS = 64  # T*B rows per thread for the weight-gradient GEMMs
MIN_UNITS = 32  # LSTM: hidden units per thread below which a split does not pay


def _threads() -> int:
    import numba
    return numba.get_num_threads()


def _unit_threads(hidden: int) -> int:
    """How many threads share an LSTM's hidden units (the LSTM kernels split units, not rows)."""
    return max(1, min(_threads(), hidden // MIN_UNITS))


def _chunks(rows: int, per_thread: int) -> int:
    """How many threads share `rows` rows: numba's thread count, capped so each has enough."""
    return max(1, min(_threads(), rows // per_thread))


# --- scratch memory reused across calls --------------------------------------------------
class Workspace:
    """Scratch arrays kept for the next call of the same shape.

    A fresh multi-megabyte numpy array comes from mmap, and its first touch costs a page fault
    per 4 KB: about 2000 faults, 4-5 ms, in each d2l-size LSTM training step (measured with
    getrusage), a third of the step. Arrays that do not leave the backend (the packed weights,
    the saved gates and cells, the backward's scratch) are taken from here and given back when
    done; the saved ones when the autograd graph that holds them is freed (`_Lease`), so a
    retained graph never sees its buffers reused. At most `keep` free arrays per shape and
    dtype are kept; `release_workspace()` frees them all."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._free: dict[tuple, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def take(self, shape: tuple, dtype) -> np.ndarray:
        key = (tuple(shape), np.dtype(dtype).str)
        with self._lock:
            free = self._free.get(key)
            if free:
                return free.pop()
        return np.empty(shape, dtype)

    def give(self, *arrays: np.ndarray) -> None:
        with self._lock:
            for a in arrays:
                free = self._free.setdefault((a.shape, a.dtype.str), [])
                if len(free) < self.keep:
                    free.append(a)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()

    def nbytes(self) -> int:
        with self._lock:
            return sum(a.nbytes for free in self._free.values() for a in free)


WORKSPACE = Workspace()


def release_workspace() -> None:
    """Free the scratch arrays the numba backend keeps for reuse."""
    WORKSPACE.clear()


class _Lease:
    """Holds workspace arrays for a saved autograd context; gives them back when it dies."""

    __slots__ = ("arrays",)

    def __init__(self, *arrays: np.ndarray) -> None:
        self.arrays = arrays

    def __del__(self) -> None:
        WORKSPACE.give(*self.arrays)


# --- per-kind drivers: numpy in, numpy out ---------------------------------------------
def _forward(kind: str, relu: bool, x2: np.ndarray, states: tuple, w: tuple, B: int, save: bool):
    """Run one layer; returns (hs (T+1, B, H), final states tuple, saved dict)."""
    w_ih, w_hh, b_ih, b_hh = w
    H = w_hh.shape[1]
    T = x2.shape[0] // B
    dt = x2.dtype
    hs = np.empty((T + 1, B, H), dt)
    if kind == "lstm":  # hidden units split over threads: cells/kernels/numba_lstm.py
        I, G = x2.shape[1], 4 * H
        nth = _unit_threads(H)
        wp, bp, z = WORKSPACE.take((G, H + I), dt), np.empty(G, dt), WORKSPACE.take((T + 1, H + I, B), dt)
        cells = WORKSPACE.take((T + 1 if save else 2, H, B), dt)
        gates = WORKSPACE.take((T if save else 1, G, B), dt)
        L.pack(w_ih, w_hh, b_ih, b_hh, nth, wp, bp)
        c_n = L.forward(x2, states[0], states[1], wp, bp, hs, z, cells, gates, save, nth)
        WORKSPACE.give(wp, z)
        if not save:
            WORKSPACE.give(cells, gates)
            return hs, (hs[T], c_n), ()
        return hs, (hs[T], c_n), (_Lease(cells, gates), nth)
    n = _chunks(B, MIN_ROWS)  # GRU and RNN split the batch
    if kind == "gru":
        acts = np.empty((T if save else 1, B, 4 * H), dt)
        K.gru_forward(x2, states[0], w_ih, w_hh, b_ih, b_hh, hs, acts, save, n)
        return hs, (hs[T],), (acts,)
    K.rnn_forward(x2, states[0], w_ih, w_hh, b_ih, b_hh, hs, relu, n)
    return hs, (hs[T],), ()


class _LayerFunction(torch.autograd.Function):
    """One layer, one direction. Inputs: x (T, B, I), h0, c0 (None unless LSTM), w_ih, w_hh,
    b_ih, b_hh (None without bias). Outputs: y (T, B, H), h_T (, c_T for LSTM)."""

    @staticmethod
    def forward(ctx, kind: str, relu: bool, x: Tensor, h0: Tensor, c0: Optional[Tensor],
                w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor]):
        T, B, I = x.shape
        rows = w_ih.shape[0]
        xn = _np(x).reshape(T * B, I)
        wn = (_np(w_ih), _np(w_hh), _bias(b_ih, rows, xn.dtype), _bias(b_hh, rows, xn.dtype))
        states = (_np(h0),) if c0 is None else (_np(h0), _np(c0))
        hs, finals, saved = _forward(kind, relu, xn, states, wn, B, True)
        y = torch.from_numpy(hs[1:])
        # the backward reads x, the weights and hs (= h0 and y) through numpy views: saving the
        # tensors makes autograd refuse a backward after any of them was changed in place
        ctx.save_for_backward(x, w_ih, w_hh, y)
        ctx.kind, ctx.relu, ctx.B, ctx.has_bias = kind, relu, B, b_ih is not None
        ctx.arrays = (xn, hs, wn[0], wn[1]) + saved
        return (y,) + tuple(torch.from_numpy(s.copy()) for s in finals)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh, dc=None):
        ctx.saved_tensors  # noqa: B018 - raises if a saved tensor was modified in place
        xn, hs, w_ih, w_hh = ctx.arrays[:4]
        kind, B = ctx.kind, ctx.B
        T, I = xn.shape[0] // B, xn.shape[1]
        H = w_hh.shape[1]
        need = ctx.needs_input_grad  # kind, relu, x, h0, c0, w_ih, w_hh, b_ih, b_hh
        need_dx, need_dh0, need_dw = need[2], need[3] or need[4], any(need[5:])
        dt = xn.dtype
        # the LSTM kernel reads dy once, through a transpose, so any strides will do: no copy
        # of y.sum()'s expanded gradient (a 0-stride view)
        dyn = np.zeros((T, B, H), dt) if dy is None else \
            dy.detach().numpy() if kind == "lstm" else _np(dy)
        dhn = np.zeros((B, H), dt) if dh is None else _np(dh)
        dc0 = None
        if kind == "lstm":  # every gradient from numba_lstm, already in torch's row order
            lease, nth = ctx.arrays[4:]
            cells, gates = lease.arrays
            dcn = np.zeros((B, H), dt) if dc is None else _np(dc)
            need_db = ctx.has_bias and (need[7] or need[8])
            G = 4 * H
            wpT, dyT = WORKSPACE.take((H, G), dt), WORKSPACE.take((T, H, B), dt)
            dg, dg_all = WORKSPACE.take((2, G, B), dt), WORKSPACE.take((G, T * B), dt)
            L.pack_hh_t(w_hh, nth, wpT)
            db_ih, dh0, dc0 = L.backward(dyn, dhn, dcn, cells, gates, wpT, need_dh0, need_db, nth,
                                         dyT, dg, dg_all)
            dw_ih, dw_hh, dx2 = L.weight_grads(dg_all, hs[:T].reshape(T * B, H), xn, w_ih,
                                               need_dw, need_dx, nth)
            WORKSPACE.give(wpT, dyT, dg, dg_all)
            db_hh = db_ih.copy()
        else:
            n = _chunks(B, MIN_ROWS)
            if kind == "gru":
                (acts,) = ctx.arrays[4:]
                dx2, dh0, dGx, dGh, db_ih, db_hh = K.gru_backward(
                    dyn, dhn, xn, hs, acts, w_ih, w_hh, need_dx, need_dh0, need_dw, n)
            else:
                dx2, dh0, dGh, db_ih = K.rnn_backward(
                    dyn, dhn, xn, hs, w_ih, w_hh, ctx.relu, need_dx, need_dh0, need_dw, n)
                dGx, db_hh = dGh, db_ih.copy()
            dw_ih = dw_hh = None
            if need_dw:  # the two GEMMs over all T*B rows, split over threads by rows
                nw = _chunks(T * B, MIN_WGRAD_ROWS)
                dw_ih = K.wgrad(dGx.reshape(T * B, -1), xn, nw)
                dw_hh = K.wgrad(dGh.reshape(T * B, -1), hs[:T].reshape(T * B, H), nw)

        def out(flag, arr):
            return torch.from_numpy(arr) if flag and arr is not None else None

        dx = out(need_dx, dx2)
        return (None, None, None if dx is None else dx.view(T, B, I), out(need[3], dh0),
                out(need[4], dc0), out(need[5], dw_ih), out(need[6], dw_hh),
                out(need[7] and ctx.has_bias, db_ih), out(need[8] and ctx.has_bias, db_hh))


class NumbaLoop(RecurrentBase):
    """Backend `numba`: numba kernels for the time loop, forward and backward."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p = next(self.parameters())
        _check_dtype(p.dtype, "the parameters' dtype")
        if p.device.type != "cpu":
            raise RuntimeError(f"backend 'numba' runs on the CPU only; parameters are on {p.device}")
        self._fast = None  # cached numpy views of the weights for the batch-1 step path
        self._last_state = None  # (h_n, c_n, their numpy views) that the step path returned last
        self._single = self.num_layers == 1 and not self.bidirectional

    # --- the batch-1, one-step path (generation) ------------------------------------------
    def __getstate__(self):  # copy / deepcopy / pickle: the caches refer to this instance's memory
        state = self.__dict__.copy()
        state["_fast"] = state["_last_state"] = None
        return state

    def _apply(self, fn, *args, **kwargs):  # .to(), .float(), .double() ... replace the storage
        self._fast = None
        return super()._apply(fn, *args, **kwargs)

    def register_parameter(self, name, param) -> None:  # module.weight_hh_l0 = nn.Parameter(..)
        self.__dict__["_fast"] = None
        super().register_parameter(name, param)

    def _fast_weights(self):
        """(numpy w_ih, w_hh, b_ih, b_hh, dtype) for GRU and RNN (zero-copy views); for LSTM
        (packed weights, packed bias, blocks, None, dtype) from numba_lstm.pack, split into as
        many blocks as numba had threads when packed (any thread count runs them correctly).
        Rebuilt when a parameter's storage or version (an in-place update) changed."""
        fast = self._fast
        if fast is not None:
            for p, ptr, version in fast[1]:
                if p.data_ptr() != ptr or p._version != version:
                    break
            else:
                return fast[0]
        params = self.layer_weights(0, 0)
        w_ih, w_hh = params[0], params[1]
        if w_ih.dtype not in SUPPORTED_DTYPES or w_ih.device.type != "cpu" or not all(
                p.is_contiguous() for p in params if p is not None):
            self._fast = None
            return None
        rows = w_ih.shape[0]
        dt = torch.empty(0, dtype=w_ih.dtype).numpy().dtype
        arrays = (w_ih.detach().numpy(), w_hh.detach().numpy(), _bias(params[2], rows, dt),
                  _bias(params[3], rows, dt), w_ih.dtype)
        if self.kind == "lstm":  # a packed copy: see numba_lstm.step
            nth = _unit_threads(self.hidden_size)
            wp = np.empty((rows, self.hidden_size + self.input_size), dt)
            bp = np.empty(rows, dt)
            L.pack(*arrays[:4], nth, wp, bp)
            arrays = (wp, bp, nth, None, w_ih.dtype)
        self._fast = (arrays, [(p, p.data_ptr(), p._version) for p in params if p is not None])
        return arrays

    def _step(self, input: Tensor, hx):
        """One step at batch 1 without autograd, or None when the general path must run.

        Same semantics as the general path: anything unusual (other shapes or dtypes, a tensor
        that requires grad, non-contiguous memory ...) returns None, and the general path runs
        with its checks and messages."""
        shape = input.shape
        batched = len(shape) == 3
        if not ((batched and shape[0] == 1 and shape[1] == 1) or (len(shape) == 2 and shape[0] == 1)):
            return None
        weights = self._fast_weights()
        if weights is None:
            return None
        dtype = weights[4]
        npdt = weights[0].dtype
        if shape[-1] != self.input_size or input.dtype is not dtype or not input.is_cpu \
                or input.requires_grad or not input.is_contiguous():
            return None
        H = self.hidden_size
        kind = self.kind
        state_shape = (1, 1, H) if batched else (1, H)
        if hx is None:
            h = c = np.zeros(H, npdt)
        else:
            if kind == "lstm":
                if type(hx) is not tuple or len(hx) != 2:
                    return None
                hs, cs = hx
                if type(cs) is not Tensor or cs.shape != state_shape or cs.dtype is not dtype \
                        or not cs.is_cpu or cs.requires_grad or not cs.is_contiguous():
                    return None
                last = self._last_state  # the state this path returned last: numpy views known
                c = last[3] if last is not None and cs is last[1] else cs.numpy().reshape(H)
            else:
                hs = hx
            if type(hs) is not Tensor or hs.shape != state_shape or hs.dtype is not dtype \
                    or not hs.is_cpu or hs.requires_grad or not hs.is_contiguous():
                return None
            last = self._last_state
            h = last[2] if last is not None and hs is last[0] else hs.numpy().reshape(H)
        x = input.numpy().reshape(shape[-1])
        # y, h_n (, c_n) in one numpy buffer: np.empty + from_numpy is the cheapest allocation
        if kind == "lstm":
            out = np.empty((3,) + state_shape, npdt)
            flat = out.reshape(3, H)
            wp, bp, nth = weights[:3]
            L.step(x, h, c, wp, bp, flat, nth)
            y, hn, cn = torch.from_numpy(out).unbind(0)
            self.__dict__["_last_state"] = (hn, cn, flat[1], flat[2])  # skips Module.__setattr__
            return y, (hn, cn)
        out = np.empty((2,) + state_shape, npdt)
        flat = out.reshape(2, H)
        w_ih, w_hh, b_ih, b_hh = weights[:4]
        if kind == "gru":
            K.gru_step(x, h, w_ih, w_hh, b_ih, b_hh, flat)
        else:
            K.rnn_step(x, h, w_ih, w_hh, b_ih, b_hh, self.nonlinearity == "relu", flat)
        y, hn = torch.from_numpy(out).unbind(0)
        self.__dict__["_last_state"] = (hn, None, flat[1], None)
        return y, hn

    def forward(self, input: Tensor, hx=None):
        if not torch.is_grad_enabled() and self._single and type(input) is Tensor:
            result = self._step(input, hx)
            if result is not None:
                return result
        return super().forward(input, hx)

    # --- general path: the shared stacking code calls this per layer and direction ------
    def run_layer(self, x: Tensor, state: State, weights) -> tuple[Tensor, State]:
        _check_dtype(x.dtype, "the input's dtype")
        if x.device.type != "cpu" or weights[0].device.type != "cpu":
            raise RuntimeError("backend 'numba' runs on the CPU only; got tensors on "
                               f"{x.device} and {weights[0].device}")
        relu = self.nonlinearity == "relu"
        c0 = state[1] if self.kind == "lstm" else None
        tensors = (x, state[0], c0) + tuple(weights)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
            y, *finals = _LayerFunction.apply(self.kind, relu, *tensors)
            return y, tuple(finals)
        T, B, I = x.shape
        rows = weights[0].shape[0]
        xn = _np(x).reshape(T * B, I)
        wn = (_np(weights[0]), _np(weights[1]), _bias(weights[2], rows, xn.dtype),
              _bias(weights[3], rows, xn.dtype))
        states = tuple(_np(s) for s in state)
        hs, finals, _ = _forward(self.kind, relu, xn, states, wn, B, False)
        return torch.from_numpy(hs[1:]), tuple(torch.from_numpy(s) for s in finals)


# --- BLAS threads ----------------------------------------------------------------------
def _openblas():
    """scipy's OpenBLAS (the BLAS numba's np.dot calls), or None if it cannot be found."""
    import ctypes
    import glob

    import scipy
    import scipy.linalg.cython_blas  # noqa: F401 - loads the library

    libs = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "*openblas*.so*"))):
        lib = ctypes.CDLL(path)
        for prefix in ("scipy_openblas_", "openblas_"):
            if hasattr(lib, prefix + "set_num_threads"):
                return lib, prefix
    return None


def set_blas_threads(n: int) -> bool:
    """Set the thread count of the BLAS behind numba's np.dot (scipy's OpenBLAS). False if the
    library was not found (another BLAS: use its own environment variable)."""
    found = _openblas()
    if found is None:
        return False
    lib, prefix = found
    getattr(lib, prefix + "set_num_threads")(int(n))
    return True


def blas_threads() -> Optional[int]:
    """The thread count of scipy's OpenBLAS, or None if it was not found."""
    found = _openblas()
    if found is None:
        return None
    lib, prefix = found
    return int(getattr(lib, prefix + "get_num_threads")())


def _default_blas_threads() -> None:
    """Set once at import: CELLS_NUMBA_BLAS_THREADS if set (0 = leave OpenBLAS alone), else 1
    thread, whatever OPENBLAS_NUM_THREADS says.

    The kernels parallelise themselves: each of numba's threads runs its own block of the batch
    (or of the T*B rows) and makes its own BLAS calls, so a multi-threaded OpenBLAS would only
    oversubscribe the cores, and its thread start-up dominates the small per-step GEMMs and the
    batch-1 matrix-vector products (docs/numba.md). The thread count to set is numba's
    (numba.set_num_threads / NUMBA_NUM_THREADS)."""
    value = os.environ.get("CELLS_NUMBA_BLAS_THREADS", "").strip() or "1"
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"CELLS_NUMBA_BLAS_THREADS must be an integer, got {value!r}") from None
    if n > 0:
        try:
            set_blas_threads(n)
        except OSError:  # pragma: no cover - an unusual BLAS: leave it alone
            pass


if _IMPORT_ERROR is None:
    _default_blas_threads()


# --- compile / load every kernel up front ------------------------------------------------
def warm_up(kinds=("rnn", "gru", "lstm"), dtypes=(torch.float32, torch.float64)) -> dict:
    """Compile (first run) or load from numba's on-disk cache every kernel the given kinds and
    dtypes use: forward with and without saving, backward, and the batch-1 step.

    Returns {"<kind> <dtype>": seconds}. A first call in a fresh process takes this long once;
    later calls of `warm_up` return in milliseconds."""
    if _IMPORT_ERROR:
        raise RuntimeError(_IMPORT_ERROR)
    from ..registry import create

    times = {}
    for kind in kinds:
        for dtype in dtypes:
            start = time.perf_counter()
            variants = [{}] if kind != "rnn" else [{"nonlinearity": "tanh"}, {"nonlinearity": "relu"}]
            for extra in variants:
                module = create(kind, "numba", 3, 4, dtype=dtype, **extra)
                x = torch.randn(2, 2, 3, dtype=dtype, requires_grad=True)
                y, state = module(x)
                y.sum().backward()
                with torch.no_grad():
                    module(x)
                    module(x[:1, :1])
            times[f"{kind} {str(dtype).replace('torch.', '')}"] = time.perf_counter() - start
    return times
