"""`NumbaLoop`, the RecurrentBase subclass of backend `numba`: its availability, its dtype and
device refusals, the general path (one `autograd_layer.LayerFunction` per layer and direction,
or the kernels directly when nothing needs a gradient), the batch-1 step path for generation,
and `warm_up`."""

from __future__ import annotations

import importlib
import time

import numpy as np
import torch
from torch import Tensor, nn

from ...base import RecurrentBase, State, plain_states, plain_tensor, traced_or_transformed
from .threads import default_blas_threads, lstm_threads

SUPPORTED_DTYPES = (torch.float32, torch.float64)


def _missing_dependency() -> str | None:
    """Why the kernels cannot be imported here, naming the missing package; None if they can."""
    needs = (
        ("numba", "numba", "the kernels are numba code"),
        ("scipy", "scipy.linalg.cython_blas", "numba's np.dot calls scipy's BLAS"),
    )
    for package, module, why in needs:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return f"needs the package '{package}' ({why}), which cannot be imported: {exc}"
    return None


_IMPORT_ERROR = _missing_dependency()
if _IMPORT_ERROR is None:
    from . import gru_rnn_kernels as K
    from . import lstm_kernels as L
    from .autograd_layer import (
        LayerFunction,
        PackedLSTM,
        as_numpy,
        bias_or_zeros,
        final_tensors,
        forward,
        pack_forward,
        state_array,
    )

    default_blas_threads()


def _check_dtype(dtype: torch.dtype, what: str) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"backend 'numba' supports float32 and float64 only; {what} is {dtype} "
            "(use .float() or .double(), or another backend)"
        )


class NumbaLoop(RecurrentBase):
    """Backend `numba`: numba kernels for the time loop, forward and backward."""

    refuses_double_backward_itself = True  # autograd_layer.LayerFunction.backward refuses it

    @staticmethod
    def unavailable_reason() -> str | None:
        return _IMPORT_ERROR

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p = next(self.parameters())
        _check_dtype(p.dtype, "the parameters' dtype")
        if p.device.type != "cpu":
            raise RuntimeError(
                f"backend 'numba' runs on the CPU only; parameters are on {p.device}"
            )
        self._fast = None  # cached numpy views of the weights for the batch-1 step path
        self._packed: dict = {}  # id(w_hh) -> PackedLSTM of the general path (LSTM)
        self._last_state = None  # (h_n, c_n, their numpy views) that the step path returned last
        self._single = self.num_layers == 1 and not self.bidirectional

    # --- the batch-1, one-step path (generation) ------------------------------------------
    def __getstate__(self):  # copy / deepcopy / pickle: the caches refer to this instance's memory
        state = self.__dict__.copy()
        state["_fast"] = state["_last_state"] = None
        state["_packed"] = {}
        return state

    def _apply(self, fn, *args, **kwargs):  # .to(), .float(), .double() ... replace the storage
        self._fast = None
        self._packed = {}
        return super()._apply(fn, *args, **kwargs)

    def register_parameter(self, name, param) -> None:  # module.weight_hh_l0 = nn.Parameter(..)
        self.__dict__["_fast"] = None
        self.__dict__["_packed"] = {}
        super().register_parameter(name, param)

    def _fast_weights(self):
        """(numpy w_ih, w_hh, b_ih, b_hh, dtype) for GRU and RNN (zero-copy views); for LSTM
        (packed weights, packed bias, thread blocks, None, dtype) from lstm_kernels.pack, in as many
        blocks as threads.lstm_threads gave at batch 1 when packed (any thread count runs
        them correctly). Rebuilt when a parameter's storage or version (an in-place update)
        changed."""
        fast = self._fast
        if fast is not None:
            for p, ptr, version in fast[1]:
                if p.data_ptr() != ptr or p._version != version:
                    break
            else:
                return fast[0]
        params = self.layer_weights(0, 0)
        w_ih, w_hh = params[0], params[1]
        if (
            w_ih.dtype not in SUPPORTED_DTYPES
            or w_ih.device.type != "cpu"
            or not all(p.is_contiguous() for p in params if p is not None)
        ):
            self._fast = None
            return None
        rows = w_ih.shape[0]
        dt = torch.empty(0, dtype=w_ih.dtype).numpy().dtype
        arrays = (
            w_ih.detach().numpy(),
            w_hh.detach().numpy(),
            bias_or_zeros(params[2], rows, dt),
            bias_or_zeros(params[3], rows, dt),
            w_ih.dtype,
        )
        if self.kind == "lstm":  # a packed copy: see lstm_kernels.step
            nth = lstm_threads(self.hidden_size, self.input_size, 1)
            wp, bp = pack_forward(arrays[:4], nth)
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
        if not (
            (batched and shape[0] == 1 and shape[1] == 1) or (len(shape) == 2 and shape[0] == 1)
        ):
            return None
        weights = self._fast_weights()
        if weights is None:
            return None
        dtype = weights[4]
        npdt = weights[0].dtype
        if (
            shape[-1] != self.input_size
            or input.dtype is not dtype
            or not input.is_cpu
            or input.requires_grad
            or not input.is_contiguous()
        ):
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
                if not plain_tensor(cs, state_shape, dtype):
                    return None
                last = self._last_state  # the state this path returned last: numpy views known
                c = last[3] if last is not None and cs is last[1] else cs.numpy().reshape(H)
            else:
                hs = hx
            if not plain_tensor(hs, state_shape, dtype):
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

    def _sequence(self, input: Tensor, hx):
        """A time-major (T, B, I) sequence through the one layer and direction, or None when
        the general path must run: `run_layer` called directly, on the same terms as `_step`
        (anything unusual goes to the general path with its checks). It skips the shared base's
        Python (checks, default states, stacking), which costs several times its warm time
        inside a loop of real calls (docs/numba.md, "The per-call path")."""
        shape = input.shape
        if len(shape) != 3 or self.batch_first or shape[2] != self.input_size:
            return None
        T, B, I = shape
        params = self.layer_weights(0, 0)
        dtype = input.dtype
        if (
            T == 0
            or B == 0
            or dtype not in SUPPORTED_DTYPES
            or any(p is not None and (p.dtype is not dtype or not p.is_cpu) for p in params)
            or not input.is_cpu
            or not input.is_contiguous()
        ):
            return None
        lstm = self.kind == "lstm"
        state_shape = (1, B, self.hidden_size)
        if hx is None:
            state: tuple = (None, None) if lstm else (None,)  # zeros, made by the layer
        else:
            given = plain_states(hx, lstm, state_shape, dtype, grad=True)
            if given is None:
                return None
            state = given
        # finals shaped (1, B, H) by the layer, copies as the base's stacking makes them
        y, (h_n, *c_n) = self.run_layer(input, state, params, lead=True)
        return y, ((h_n, c_n[0]) if lstm else h_n)

    def forward(self, input: Tensor, hx=None):
        if self._single and type(input) is Tensor and not traced_or_transformed(input):
            result = None if torch.is_grad_enabled() else self._step(input, hx)
            if result is None:
                result = self._sequence(input, hx)
            if result is not None:
                return result
        return super().forward(input, hx)

    # --- general path: the shared stacking code calls this per layer and direction ------
    def _packed_for(self, weights) -> PackedLSTM | None:
        """The packed-weight cache of this layer and direction: kept only for the module's own
        parameters (a weight cast under autocast is a new tensor each call)."""
        if self.kind != "lstm" or not isinstance(weights[1], nn.Parameter):
            return None
        packed = self._packed.get(id(weights[1]))
        if packed is None:
            packed = self._packed[id(weights[1])] = PackedLSTM()
        return packed

    def run_layer(
        self, x: Tensor, state: State, weights, *, lead: bool = False
    ) -> tuple[Tensor, State]:
        """The base's per-layer hook; `lead` (the sequence shortcut): the final states are
        shaped (1, B, H) and never share memory with y, and a None state means zeros."""
        _check_dtype(x.dtype, "the input's dtype")
        if x.device.type != "cpu" or weights[0].device.type != "cpu":
            raise RuntimeError(
                "backend 'numba' runs on the CPU only; got tensors on "
                f"{x.device} and {weights[0].device}"
            )
        relu = self.nonlinearity == "relu"
        c0 = state[1] if self.kind == "lstm" else None
        tensors = (x, state[0], c0) + tuple(weights)
        packed = self._packed_for(weights)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
            y, *finals = LayerFunction.apply(self.kind, relu, packed, lead, *tensors)
            return y, tuple(finals)
        T, B, I = x.shape
        xn = as_numpy(x).reshape(T * B, I)
        states = tuple(state_array(s, B, self.hidden_size, xn.dtype) for s in state)
        hs, finals, _ = forward(self.kind, relu, xn, states, weights, B, False, packed)
        # h_T is a view of y: a copy under `lead` (the general path's stacking copies it)
        return torch.from_numpy(hs[1:]), final_tensors(finals, lead, copy=lead)


def warm_up(kinds=("rnn", "gru", "lstm"), dtypes=(torch.float32, torch.float64)) -> dict:
    """Compile (first run) or load from numba's on-disk cache every kernel the given kinds and
    dtypes use: forward with and without saving, backward, and the batch-1 step.

    Returns {"<kind> <dtype>": seconds}. A first call in a fresh process takes this long once;
    later calls of `warm_up` return in milliseconds."""
    if _IMPORT_ERROR:
        raise RuntimeError(f"backend 'numba' is unavailable: {_IMPORT_ERROR}")
    from ...registry import create

    times = {}
    for kind in kinds:
        for dtype in dtypes:
            start = time.perf_counter()
            variants = (
                [{}] if kind != "rnn" else [{"nonlinearity": "tanh"}, {"nonlinearity": "relu"}]
            )
            for extra in variants:
                module = create(kind, "numba", 3, 4, dtype=dtype, **extra)
                x = torch.randn(2, 2, 3, dtype=dtype, requires_grad=True)
                y, state = module(x)
                y.sum().backward()
                with torch.no_grad():  # x without grad: the batch-1 step path takes it
                    module(x.detach())
                    module(x.detach()[:1, :1])
            times[f"{kind} {str(dtype).replace('torch.', '')}"] = time.perf_counter() - start
    return times
