"""`triton`: the whole recurrence of a layer in one persistent Triton kernel (forward).

Design (after FlashRNN, simplified; see docs/compiled-and-triton.md):

* The input projection of all steps, x W_ih^T + folded biases, is one cuBLAS GEMM outside the
  kernel (as in the other fused backends). The kernel gets it as xw (T, B, G*H).
* One program per tile of BLOCK_B batch rows loops over ALL time steps (persistent): per step it
  computes gates = xw_t + h_{t-1} W_hh^T with tl.dot (fp32 accumulation; IEEE fp32 products by
  default, tf32 on request), applies the cell's pointwise math in registers and writes h_t (and
  c_t and the activated gates, for the backward). h_{t-1} is re-read from the output buffer,
  which the same program wrote one step before (a block barrier separates the steps). Batch
  tiles are independent, so no grid-wide synchronisation is needed.
* When the hidden size fits one block (H <= 64 here: 4 x 64 x 64 fp32 = 64 KiB), the
  recurrent weights are loaded ONCE, before the time loop, and stay on chip (registers/SMEM)
  for all steps. Larger H streams W_hh tiles from L2 every step (1 MiB fp32 at H=256 fits L2
  easily); keeping them on chip there needs FlashRNN's split of the gate dimension across
  CTAs with a per-step grid barrier — not done here.
* Backward: a correct PyTorch backward from the saved activated gates and states (the one of
  cells.recurrence.Recurrence, its step functions run eagerly): per step one pointwise pass and one GEMM
  for dh_{t-1}; dW_hh for all steps as one GEMM at the end. Not a Triton kernel yet.

Availability: Triton importable and either CUDA available, or TRITON_INTERPRET=1 set before
Triton was imported (then the kernel runs on CPU tensors in Triton's interpreter: for tests,
slow). CELLBENCH_TRITON_TF32=1 lets tl.dot use tf32 for float32 on GPUs (faster, but outside
the float32 equivalence tolerance on long sequences).
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from ..base import LayerWeights, RecurrentBase, State
from ..recurrence import EAGER_STEPS, History, recurrent_layer, variant_of

try:
    import triton
    import triton.language as tl

    _IMPORT_ERROR: str | None = None
except Exception as exc:  # ImportError, or a broken install
    triton = tl = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}".splitlines()[0]


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def unavailable_reason() -> str | None:
    if _IMPORT_ERROR is not None:
        return f"triton is not importable ({_IMPORT_ERROR}); pip install triton (Linux x86_64)"
    if not (torch.cuda.is_available() or interpreted()):
        return (
            "triton needs a CUDA GPU (torch.cuda.is_available() is False); set "
            "TRITON_INTERPRET=1 before importing triton to run its interpreter on the CPU"
        )
    return None


_VARIANT_CODE = {"rnn_tanh": 0, "rnn_relu": 1, "gru": 2, "lstm": 3}

if triton is not None:

    @triton.jit
    def _tanh(x):
        return 2.0 * tl.sigmoid(2.0 * x) - 1.0

    @triton.jit
    def _w_tile(w_ptr, q, rh, rk, H):
        """W_hh[q*H + rh, rk] as a (BLOCK_K, BLOCK_H) tile: the slice of W_hh^T for gate q."""
        mask = (rk[:, None] < H) & (rh[None, :] < H)
        return tl.load(w_ptr + (q * H + rh[None, :]) * H + rk[:, None], mask=mask, other=0.0)

    @triton.jit
    def _streamed_dot(hk, w_ptr, q, rh, rk, H, PRECISION: tl.constexpr, ACC: tl.constexpr):
        return tl.dot(hk, _w_tile(w_ptr, q, rh, rk, H), input_precision=PRECISION, out_dtype=ACC)

    @triton.jit
    def _recurrence_fwd(
        xw_ptr,
        w_ptr,
        bhn_ptr,
        y_ptr,
        c_ptr,
        acts_ptr,
        T,
        B,
        H,
        VARIANT: tl.constexpr,
        G: tl.constexpr,
        RESIDENT: tl.constexpr,
        BLOCK_B: tl.constexpr,
        BLOCK_H: tl.constexpr,
        BLOCK_K: tl.constexpr,
        PRECISION: tl.constexpr,
        ACC: tl.constexpr,
    ):
        """y (T+1, B, H) holds h0 in row 0 and h_t in row t+1; c likewise (LSTM).
        acts (T, B, 4H): LSTM [i, f, g, o], GRU [r, z, n, W_hn h + b_hn]; unused for RNN."""
        pid = tl.program_id(0)
        rb = pid * BLOCK_B + tl.arange(0, BLOCK_B)
        bmask = rb < B
        if RESIDENT:  # the whole W_hh^T in BLOCK_K x BLOCK_H tiles, loaded once for all steps
            rh0 = tl.arange(0, BLOCK_H)
            rk0 = tl.arange(0, BLOCK_K)
            w0 = _w_tile(w_ptr, 0, rh0, rk0, H)
            if G > 1:
                w1 = _w_tile(w_ptr, 1, rh0, rk0, H)
                w2 = _w_tile(w_ptr, 2, rh0, rk0, H)
            if G > 3:
                w3 = _w_tile(w_ptr, 3, rh0, rk0, H)
        for t in range(T):
            h_prev_ptr = y_ptr + t * B * H
            for j0 in range(0, H, BLOCK_H):
                rh = j0 + tl.arange(0, BLOCK_H)
                hmask = rh < H
                m2 = bmask[:, None] & hmask[None, :]
                a0 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
                a1 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
                a2 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
                a3 = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
                for k0 in range(0, H, BLOCK_K):
                    rk = k0 + tl.arange(0, BLOCK_K)
                    hk = tl.load(
                        h_prev_ptr + rb[:, None] * H + rk[None, :],
                        mask=bmask[:, None] & (rk[None, :] < H),
                        other=0.0,
                    )
                    if RESIDENT:
                        a0 += tl.dot(hk, w0, input_precision=PRECISION, out_dtype=ACC)
                        if G > 1:
                            a1 += tl.dot(hk, w1, input_precision=PRECISION, out_dtype=ACC)
                            a2 += tl.dot(hk, w2, input_precision=PRECISION, out_dtype=ACC)
                        if G > 3:
                            a3 += tl.dot(hk, w3, input_precision=PRECISION, out_dtype=ACC)
                    else:  # streamed: gate q's tile of W_hh^T loaded at every step
                        a0 += _streamed_dot(hk, w_ptr, 0, rh, rk, H, PRECISION, ACC)
                        if G > 1:
                            a1 += _streamed_dot(hk, w_ptr, 1, rh, rk, H, PRECISION, ACC)
                            a2 += _streamed_dot(hk, w_ptr, 2, rh, rk, H, PRECISION, ACC)
                        if G > 3:
                            a3 += _streamed_dot(hk, w_ptr, 3, rh, rk, H, PRECISION, ACC)
                x_row = xw_ptr + t * B * G * H + rb[:, None] * (G * H) + rh[None, :]
                out_off = rb[:, None] * H + rh[None, :]
                acts_row = acts_ptr + t * B * 4 * H + rb[:, None] * (4 * H) + rh[None, :]
                x0 = tl.load(x_row, mask=m2, other=0.0).to(ACC)
                if VARIANT == 0:
                    h = _tanh(x0 + a0)
                elif VARIANT == 1:
                    h = tl.maximum(x0 + a0, 0.0)
                elif VARIANT == 2:
                    x1 = tl.load(x_row + H, mask=m2, other=0.0).to(ACC)
                    x2 = tl.load(x_row + 2 * H, mask=m2, other=0.0).to(ACC)
                    bhn = tl.load(bhn_ptr + rh, mask=hmask, other=0.0).to(ACC)
                    hp = tl.load(h_prev_ptr + out_off, mask=m2, other=0.0).to(ACC)
                    r = tl.sigmoid(x0 + a0)
                    z = tl.sigmoid(x1 + a1)
                    hn = a2 + bhn[None, :]
                    n = _tanh(x2 + r * hn)
                    h = n + z * (hp - n)
                    tl.store(acts_row, r.to(acts_ptr.dtype.element_ty), mask=m2)
                    tl.store(acts_row + H, z.to(acts_ptr.dtype.element_ty), mask=m2)
                    tl.store(acts_row + 2 * H, n.to(acts_ptr.dtype.element_ty), mask=m2)
                    tl.store(acts_row + 3 * H, hn.to(acts_ptr.dtype.element_ty), mask=m2)
                else:
                    x1 = tl.load(x_row + H, mask=m2, other=0.0).to(ACC)
                    x2 = tl.load(x_row + 2 * H, mask=m2, other=0.0).to(ACC)
                    x3 = tl.load(x_row + 3 * H, mask=m2, other=0.0).to(ACC)
                    cp = tl.load(c_ptr + t * B * H + out_off, mask=m2, other=0.0).to(ACC)
                    i = tl.sigmoid(x0 + a0)
                    f = tl.sigmoid(x1 + a1)
                    g = _tanh(x2 + a2)
                    o = tl.sigmoid(x3 + a3)
                    c = f * cp + i * g
                    h = o * _tanh(c)
                    tl.store(
                        c_ptr + (t + 1) * B * H + out_off, c.to(c_ptr.dtype.element_ty), mask=m2
                    )
                    tl.store(acts_row, i.to(acts_ptr.dtype.element_ty), mask=m2)
                    tl.store(acts_row + H, f.to(acts_ptr.dtype.element_ty), mask=m2)
                    tl.store(acts_row + 2 * H, g.to(acts_ptr.dtype.element_ty), mask=m2)
                    tl.store(acts_row + 3 * H, o.to(acts_ptr.dtype.element_ty), mask=m2)
                tl.store(y_ptr + (t + 1) * B * H + out_off, h.to(y_ptr.dtype.element_ty), mask=m2)
            tl.debug_barrier()  # h_t written by all threads before any reads it at step t+1


def _pow2(n: int, low: int, high: int) -> int:
    return max(low, min(high, triton.next_power_of_2(n)))


def triton_forward(
    variant: str, xw: Tensor, state0: State, w_hh: Tensor, b_hn: Tensor | None
) -> History:
    """Runs the kernel; returns hs (T,B,H), for LSTM cs (T,B,H), and acts (T,B,4H) or None."""
    if not (xw.is_cuda or interpreted()):
        raise RuntimeError(
            "backend 'triton' runs on CUDA tensors (or on the CPU only with "
            "TRITON_INTERPRET=1); move the module to a GPU"
        )
    h0 = state0[0]
    seq, batch, hidden = xw.size(0), xw.size(1), h0.size(1)
    gates = 4 if variant == "lstm" else 3 if variant == "gru" else 1
    xw = xw.contiguous()
    w_hh = w_hh.contiguous()
    y = xw.new_empty((seq + 1, batch, hidden))
    y[0] = h0
    c = None
    if variant == "lstm":
        c = xw.new_empty((seq + 1, batch, hidden))
        c[0] = state0[1]
    acts = xw.new_empty((seq, batch, 4 * hidden)) if variant in ("lstm", "gru") else None
    bhn = b_hn.contiguous() if b_hn is not None else y  # unused unless GRU
    block = _pow2(hidden, 16, 64)
    block_b = _pow2(batch, 16, 32)
    precision = (
        "tf32"
        if os.environ.get("CELLBENCH_TRITON_TF32") == "1" and xw.dtype == torch.float32
        else "ieee"
    )
    acc = tl.float64 if xw.dtype == torch.float64 else tl.float32
    grid = (triton.cdiv(batch, block_b),)
    _recurrence_fwd[grid](
        xw,
        w_hh,
        bhn,
        y,
        c if c is not None else y,
        acts if acts is not None else y,
        seq,
        batch,
        hidden,
        VARIANT=_VARIANT_CODE[variant],
        G=gates,
        RESIDENT=hidden <= block,
        BLOCK_B=block_b,
        BLOCK_H=block,
        BLOCK_K=block,
        PRECISION=precision,
        ACC=acc,
        num_warps=4,
    )
    return History((y[1:],) if c is None else (y[1:], c[1:]), acts)


class TritonLoop(RecurrentBase):
    """Persistent Triton forward kernel per layer and direction; PyTorch backward from saved gates."""

    unavailable_reason = staticmethod(unavailable_reason)

    def run_layer(self, x: Tensor, state: State, weights: LayerWeights) -> tuple[Tensor, State]:
        variant = variant_of(self)
        return recurrent_layer(
            EAGER_STEPS[variant],
            x,
            state,
            weights,
            forward_impl=functools.partial(triton_forward, variant),
            pad_batch_one=False,
        )
