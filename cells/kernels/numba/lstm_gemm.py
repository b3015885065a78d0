"""The GEMMs of the LSTM kernels (lstm_kernels.py): which GEMM a step uses and the calls, and
the weight gradients after the backward's loop.

A step's product is small (at the d2l size a thread's forward step is (512 x 284) @ (284 x 32))
and there are T of them in sequence, so each library's small-N speed decides: oneDNN's brgemm
from the torch build (onednn.py; float32) from batch BR_MIN_COLUMNS up, OpenBLAS in row blocks
below it for the forward, and for the backward's dh product gemm.dot_nt up to NT_MAX_COLUMNS
(but brgemm at a multiple of the vector width) while a thread's block of W_hh fits in its
core's L2. The thresholds depend on the CPU's vector width (AVX-512 or AVX2). The measurements
behind the thresholds are in docs/numba.md, "Where the time goes". The weight gradients are two
large products: torch's own GEMM (MKL) where torch is built with MKL and the CPU is Intel's
(11-20% faster there than the kernel below), else one OpenBLAS GEMM per thread, whose cache
blocking beats brgemm (`WGRAD_BY`).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from numba import prange

from ...host import cpuinfo
from .gemm import dot_nt, row_blocks_dot
from .jit_options import block, parallel, serial


@serial
def row_dot(w, v, out):
    """out (M, N) = w (M, K) @ v (K, N) in row blocks of a multiple of 16 rows with
    M*N*K <= 2^19: OpenBLAS's forward step below brgemm's range (at batch 8 the blocks ran
    within 5% of the best block size for (512, 288) x (288, 8) per thread)."""
    row_blocks_dot(w, v, out, max(8, (524288 // max(v.shape[1] * w.shape[1], 1)) // 16 * 16))


# Which GEMM a step uses (docs/numba.md, "Where the time goes"): OpenBLAS, oneDNN's brgemm
# (onednn.py; float32, when the torch build exports it) or gemm.dot_nt.
OPENBLAS, BRGEMM, DOT_NT = 0, 1, 2
K_ALIGN = 16  # the forward's K (H + I) is padded with zeros to a multiple of this


def host_vector_floats() -> int:
    """float32 lanes of this CPU's widest vectors: 16 with AVX-512, else 8 (AVX2). brgemm's
    and OpenBLAS's small-N speeds, and so the thresholds below, depend on it."""
    try:
        from llvmlite import binding

        return 16 if binding.get_host_cpu_features().get("avx512f", False) else 8
    except Exception:  # no feature list (another architecture): no brgemm there anyway
        return 8


# Measured with `python -m bench.lstm_profile --gemms` on two AVX-512 CPUs (AMD Zen 5, Intel
# Xeon) and one AVX2 CPU (AMD Zen 3); docs/numba.md, "Where the time goes".
VECTOR_FLOATS = host_vector_floats()
# brgemm from this batch up in the forward. AVX-512: OpenBLAS is faster up to 8 columns, then
# halves; AVX2: brgemm is faster from 3 columns (1.5-3x at 3-8).
BR_MIN_COLUMNS = 9 if VECTOR_FLOATS == 16 else 3
# The backward's dot_nt up to this batch (it beats brgemm there), except at a multiple of the
# vector width with brgemm (AVX2 at batch 8: brgemm 46 GFLOP/s, dot_nt 38-40) ...
NT_MAX_COLUMNS = 12
NT_MAX_WEIGHT_BYTES = 1 << 20  # ... and while a thread's block of W_hh fits in its core's L2


def padded_k(k: int) -> int:
    """The K of the forward's packed weights and of z: k rounded up to a multiple of K_ALIGN."""
    return -(-k // K_ALIGN) * K_ALIGN


ROW_PAD_BYTES = 64  # added to the row stride of the backward's W_hh.T (padded_rows)


def padded_rows(g: int, itemsize: int) -> int:
    """The row stride, in elements, of the backward's packed W_hh.T (H, G) and the rows of its
    gate-gradient operand dg: G plus ROW_PAD_BYTES of zeros. The products still use K = G. At
    H = 256 a row of W_hh.T is 4 KB, and the step products on two threads ran 1.2x slower
    with that stride than with 64 bytes more (brgemm at batch 16-32, interleaved rounds); at
    H = 128, 512, 1024 and batch 64-128 the pad made no difference beyond noise
    (docs/numba.md, "Where the time goes")."""
    return g + ROW_PAD_BYTES // itemsize


@serial
def forward_gemm(batch, br_ok):
    return BRGEMM if br_ok and batch >= BR_MIN_COLUMNS else OPENBLAS


@serial
def backward_gemm(rows, cols, batch, itemsize, br_ok):
    """The GEMM of the backward's dh step for a (rows, cols) block of W_hh."""
    whole_vectors = br_ok and batch % VECTOR_FLOATS == 0
    if (
        batch <= NT_MAX_COLUMNS
        and not whole_vectors
        and rows * cols * itemsize <= NT_MAX_WEIGHT_BYTES
    ):
        return DOT_NT
    return BRGEMM if br_ok and batch >= BR_MIN_COLUMNS else OPENBLAS


@serial
def brgemm_dot(br, a, b, c):
    """c (M, N) = a[:, :K] @ b (K, N) by oneDNN's brgemm `br`; rows contiguous (a may be wider
    than K: a padded row stride)."""
    M = a.shape[0]
    K = b.shape[0]
    sz = a.itemsize
    br(
        M,
        b.shape[1],
        K,
        a.strides[0] // sz,
        b.strides[0] // sz,
        c.strides[0] // sz,
        False,
        a.ctypes.data,
        b.ctypes.data,
        c.ctypes.data,
        False,
    )


@serial
def backward_dot(w, dg, dgT, out, how, br):
    """out (M, B) = w[:, :G] @ dg[:G] for w (M, Gs) and dg (Gs, B) padded to Gs = padded_rows(G)
    (zeros beyond G in both); `how` from backward_gemm (dot_nt reads dgT (B, G) = dg[:G].T)."""
    if how == DOT_NT:
        dot_nt(w, dgT, out)
    elif how == BRGEMM:
        brgemm_dot(br, w, dg[: dgT.shape[1]], out)
    else:  # OpenBLAS takes no row stride from numba: the zero pad rides along in K
        np.dot(w, dg, out)


@serial
def _wgrad_rows(
    dg_all, hs_prev, xw, w_ih, need_dw, need_dx, dw_ih, dw_x, dw_hh, db, dx_part, k, nb
):
    """Block k of the rows of dW_hh and dW_ih (and db), and their share of dx into dx_part.
    dw_x (G, I + 1) when db is wanted: the product with [x | 1], split here into dW_ih and db
    while the block's rows are in cache; else dw_x is dw_ih."""
    G = dg_all.shape[0]
    I = w_ih.shape[1]
    r0, r1 = block(G, k, nb), block(G, k + 1, nb)
    if r1 == r0:
        return
    rows = dg_all[r0:r1]
    if need_dw:
        np.dot(rows, hs_prev, dw_hh[r0:r1])
        if xw.shape[1] > 0:
            np.dot(rows, xw, dw_x[r0:r1])
        if db.shape[0] > 0:
            for r in range(r0, r1):
                src = dw_x[r]
                dst = dw_ih[r]
                for j in range(I):
                    dst[j] = src[j]
                db[r] = src[I]
    if need_dx and I > 0:
        np.dot(rows.T, w_ih[r0:r1], dx_part)


def wgrad_library() -> str:
    """'torch' or 'openblas': who computes the weight gradients. CELLS_NUMBA_WGRAD overrides;
    else torch where it has MKL on an Intel CPU (measured faster there, docs/numba.md), OpenBLAS
    elsewhere (on the AMD machines the rule was never measured against it)."""
    forced = os.environ.get("CELLS_NUMBA_WGRAD", "").strip().lower()
    if forced in ("torch", "openblas"):
        return forced
    if forced:
        raise ValueError(f"CELLS_NUMBA_WGRAD must be 'torch' or 'openblas', got {forced!r}")
    intel_mkl = torch.backends.mkl.is_available() and cpuinfo("vendor_id") == "GenuineIntel"
    return "torch" if intel_mkl else "openblas"


WGRAD_BY = wgrad_library()


def weight_grads(dg_all, hs_prev, x2, w_ih, need_dw, need_dx, need_db, nth):
    """dW_ih (G, I), dW_hh (G, H), db (G,) and dx (T*B, I) from dg_all (G, T*B) in torch's row
    order, as numpy arrays (empty where not needed): torch's GEMM on zero-copy views when
    WGRAD_BY is 'torch' (its own threads), else `weight_grads_kernel` on `nth` threads."""
    if WGRAD_BY != "torch":
        return weight_grads_kernel(dg_all, hs_prev, x2, w_ih, need_dw, need_dx, need_db, nth)
    G, TB = dg_all.shape
    I = x2.shape[1]
    dt = dg_all.dtype
    dg = torch.from_numpy(dg_all)
    dw_ih, db = np.empty((G, I), dt), np.empty(G if need_db and need_dw else 0, dt)
    dw_hh = np.empty((G if need_dw else 0, hs_prev.shape[1]), dt)
    if need_dw:
        torch.mm(dg, torch.from_numpy(hs_prev), out=torch.from_numpy(dw_hh))
        torch.mm(dg, torch.from_numpy(x2), out=torch.from_numpy(dw_ih))
        if need_db:
            torch.sum(dg, 1, out=torch.from_numpy(db))
    dx = np.empty((TB if need_dx else 0, I), dt)
    if need_dx and I > 0:
        torch.mm(dg.t(), torch.from_numpy(w_ih), out=torch.from_numpy(dx))
    return dw_ih, dw_hh, db, dx


@parallel
def weight_grads_kernel(dg_all, hs_prev, x2, w_ih, need_dw, need_dx, need_db, nth):
    """dW_ih (G, I), dW_hh (G, H), db (G,) and dx (T*B, I) from dg_all (G, T*B) in torch's row
    order. With need_db (and need_dw) x gets a column of ones, and that column of the product
    is the bias gradient: the row sums of dg_all at no extra pass over it. db is empty unless
    need_db and need_dw (lstm_kernels.backward sums the rows itself otherwise).

    The rows are split evenly over the threads: one GEMM each for dW_hh and dW_ih, K = T*B, no
    reduction across threads; dx sums one partial product per thread."""
    G, TB = dg_all.shape
    H = G // 4
    I = w_ih.shape[1]
    dt = dg_all.dtype
    ones = need_db and need_dw
    if ones:
        xw = np.empty((TB, I + 1), dt)
        for n in range(TB):
            row = xw[n]
            for j in range(I):
                row[j] = x2[n, j]
            row[I] = 1
        dw_x = np.empty((G, I + 1), dt)
    else:
        xw = x2
        dw_x = np.empty((G if need_dw else 0, I), dt)
    dw_ih = np.empty((G, I), dt) if ones else dw_x
    db = np.empty(G if ones else 0, dt)
    dw_hh = np.empty((G if need_dw else 0, H), dt)
    parts = np.zeros((nth, TB if need_dx else 0, I), dt)
    if nth == 1:  # inline: no thread pool
        _wgrad_rows(
            dg_all, hs_prev, xw, w_ih, need_dw, need_dx, dw_ih, dw_x, dw_hh, db, parts[0], 0, 1
        )
        return dw_ih, dw_hh, db, parts[0]
    for k in prange(nth):
        _wgrad_rows(
            dg_all, hs_prev, xw, w_ih, need_dw, need_dx, dw_ih, dw_x, dw_hh, db, parts[k], k, nth
        )
    return dw_ih, dw_hh, db, parts.sum(axis=0)
