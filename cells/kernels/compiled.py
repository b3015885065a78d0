"""`compiled`: the fused recurrence with its per-step cell compiled by torch.compile (Inductor).

Design (docs/compiled-and-triton.md has the measurements):

* torch.compile of the whole fused loop (cells/loops.py) unrolls time: one graph per sequence
  length, tens of seconds to compile T=35 forward+backward on a 2-core machine, minutes at
  T~1000, and a recompile for every new T. Marking T dynamic does not help: Dynamo
  specialises the Python loop over `range(T)` anyway.
* So the time loop stays in Python and only one *step* is compiled: the recurrent GEMM plus the
  gate pointwise work fused into one generated kernel (forward), and the pointwise derivative
  plus the GEMM that carries the gradient to h_{t-1} (backward). The steps are those of
  cells/recurrence.py, whose autograd Function `Recurrence` gives the batched backward; they
  do not depend on T and are compiled with dynamic=True (batch and hidden symbolic), once per
  kind and process; Inductor's on-disk cache makes later processes cheaper still.
* K steps per call (`CHUNK`, default 5; env CELLBENCH_COMPILED_CHUNK, 1 = off): a second pair
  of compiled functions runs the step unrolled K times (compiled_chunks.py). Hidden size 1
  runs one step per call (Inductor miscomputed the GRU chunk graph at H = 1).
* float32 on the CPU: the recurrent GEMM inside the compiled steps is `cellbench::packed_mm`,
  oneDNN's linear with the weight reordered once per layer call (compiled_support.py).
* Batch 1 (and unbatched input) runs as a batch of two identical rows (recurrent_layer), so
  that Dynamo's 0/1 specialisation does not trigger a second compile.
* Calls of fewer than SHORT_STEPS steps under no_grad / inference_mode (generation) skip all of
  the above: compiled_infer.py.

`compile_times()` reports the wall time of every call that triggered a compilation (the first
call per kind, dtype and device), so the compile cost is observable.
"""

from __future__ import annotations

import functools
import os
import shutil

import torch
from torch import Tensor

from ..base import (
    LayerWeights,
    RecurrentBase,
    State,
    plain_states,
    plain_tensor,
    traced_or_transformed,
)
from ..capabilities import capabilities_of
from ..recurrence import (
    EAGER_STEPS,
    ForwardImpl,
    Steps,
    recurrent_layer,
    run_forward,
    variant_of,
)
from . import compiled_infer
from .compiled_chunks import ChunkSteps, chunk_steps, run_forward_chunked
from .compiled_infer import SHORT_STEPS
from .compiled_support import compile_times, define_packed_mm, packed_for, timed, with_packed_gemm

__all__ = ["CHUNK", "SHORT_STEPS", "CompiledLoop", "compile_times", "compiled_steps"]

CHUNK = int(os.environ.get("CELLBENCH_COMPILED_CHUNK", "5"))

_COMPILED: dict[str, tuple[Steps, ChunkSteps | None]] = {}


def compiled_steps(variant: str) -> tuple[Steps, ChunkSteps | None]:
    """The compiled step functions of one kind (and their K-step chunks, None when CHUNK <= 1),
    created once per process; compilation itself happens on the first call."""
    if variant not in _COMPILED:
        eager = EAGER_STEPS[variant]
        packed = define_packed_mm() is not None
        fwd, bwd = eager.forward, eager.backward
        if packed:
            fwd, bwd = with_packed_gemm(fwd), with_packed_gemm(bwd)
        chunks = None
        if CHUNK > 1:
            fwd_chunk, bwd_chunk = chunk_steps(fwd, bwd, CHUNK)
            chunks = ChunkSteps(
                torch.compile(fwd_chunk, dynamic=True),
                torch.compile(bwd_chunk, dynamic=True),
                CHUNK,
            )
        steps = Steps(
            variant,
            torch.compile(fwd, dynamic=True),
            torch.compile(bwd, dynamic=True),
            first_call=timed,
            packed_for=packed_for if packed else None,
        )
        _COMPILED[variant] = (steps, chunks)
    return _COMPILED[variant]


def forward_impl(steps: Steps, chunks: ChunkSteps | None) -> ForwardImpl:
    """K steps per call where there are chunk functions; one per call at hidden size 1, where
    Inductor (torch 2.13, CPU) miscomputed the GRU chunk graph specialised to H = 1."""

    def run(xw: Tensor, state0: State, w_hh: Tensor, b_hn: Tensor | None):
        if chunks is not None and w_hh.size(1) > 1:
            return run_forward_chunked(steps, chunks, xw, state0, w_hh, b_hn)
        return run_forward(steps, xw, state0, w_hh, b_hn)

    return run


@functools.cache
def _forward_impl(variant: str) -> ForwardImpl:
    return forward_impl(*compiled_steps(variant))


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

    def forward(self, input: Tensor, hx=None):
        if (
            not torch.is_grad_enabled()
            and type(input) is Tensor
            and not traced_or_transformed(input)
        ):
            result = self._short(input, hx)
            if result is not None:
                return result
        return super().forward(input, hx)

    def _short(self, input: Tensor, hx) -> tuple[Tensor, Tensor | State] | None:
        """A no-grad call of fewer than SHORT_STEPS steps (a generated token, mostly) of one
        layer and direction, time-major, contiguous, in the parameters' dtype and device, hx
        None or well-formed: what run_layer would run (compiled_infer.infer_short), without the
        shared base's Python around it, which at batch 1 costs more than the step
        (docs/compiled-and-triton.md, "Per-call overhead of a generation step"). None for
        anything else: the general path runs, with its checks and messages."""
        shape = input.shape
        if (
            len(shape) != 3
            or self.num_layers != 1
            or self.bidirectional
            or self.proj_size
            or self.batch_first
            or not 0 < shape[0] < SHORT_STEPS
            or shape[1] == 0
            or shape[2] != self.input_size
        ):
            return None
        weights = self.layer_weights(0, 0)
        w = weights[0]
        assert w is not None
        dtype, device = w.dtype, w.device
        if (
            dtype not in capabilities_of(type(self)).dtypes
            or not plain_tensor(input, shape, dtype, device=device)
            or any(t is not None and (t.dtype is not dtype or t.device != device) for t in weights)
        ):
            return None
        lstm = self.kind == "lstm"
        state_shape = (1, shape[1], self.hidden_size)
        if self.kind == "gru" and shape[1] == 1:  # generation: x and hx as they come
            if hx is None:
                hx = torch.zeros(state_shape, dtype=dtype, device=device)
            elif not plain_tensor(hx, state_shape, dtype, device=device):
                return None
            return compiled_infer.gru_batch1(input, hx, weights)
        if hx is None:
            state = tuple(
                torch.zeros(state_shape[1:], dtype=dtype, device=device) for _ in range(1 + lstm)
            )
        else:
            given = plain_states(hx, lstm, state_shape, dtype, device=device)
            if given is None:
                return None
            state = given
        y, finals = compiled_infer.infer_short(
            variant_of(self), input, state, weights, eager=shape[1] == 1
        )
        # the final states are the last step's own tensors (y is a stacked copy), as fresh as
        # the base's stacked ones
        h_n, *c_n = (f.unsqueeze(0) for f in finals)
        return y, ((h_n, c_n[0]) if lstm else h_n)

    def run_layer(self, x: Tensor, state: State, weights: LayerWeights) -> tuple[Tensor, State]:
        variant = variant_of(self)
        if x.size(0) < SHORT_STEPS and not torch.is_grad_enabled():  # generation, mostly
            # batch 1: a matrix-vector product and a few hundred gate values; the fused kernel
            # saves less than Dynamo's call costs (measured: eager step 17-64 us, compiled 61-115)
            return compiled_infer.infer_short(variant, x, state, weights, eager=x.size(1) == 1)
        steps = compiled_steps(variant)[0]
        return recurrent_layer(steps, x, state, weights, forward_impl=_forward_impl(variant))
