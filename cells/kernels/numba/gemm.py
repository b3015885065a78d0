"""GEMM helpers of the numba kernels: `dot_nt`, the register-blocked kernel of the LSTM
backward's step product at small batches; np.dot, i.e. scipy's BLAS, kept at 1 thread (each
numba thread makes its own calls; see threads.py), cut into blocks that suit OpenBLAS at few
rows; and the two products over all T*B rows split over the threads."""

from __future__ import annotations

import numpy as np
from numba import prange

from .jit_options import block, parallel, serial

SMALL_GEMM = 262144  # 64^3: at or below this M*N*K OpenBLAS uses its small-matrix kernels


@serial
def row_blocks_dot(w, v, out, mb):
    """out (M, N) = w (M, K) @ v (K, N), one np.dot per block of mb rows of w: blocks small
    enough for OpenBLAS's small-matrix kernel, which skips packing the weight."""
    M = w.shape[0]
    for m0 in range(0, M, mb):
        m1 = min(M, m0 + mb)
        np.dot(w[m0:m1], v, out[m0:m1])


@serial
def wdot(w, v, out):
    """out (G, n) = w (G, K) @ v.T for v (n, K), in row blocks of w with M*N*K <= 64^3.

    Transposed because at few rows OpenBLAS spends most of a call packing the right-hand
    weight; with the weight on the left and cut for the small-matrix kernel a d2l GRU step at
    16 rows went from 105 to 82 us forward, and 117 to 80 us for the backward's W_hh.T."""
    row_blocks_dot(w, v.T, out, max(8, SMALL_GEMM // max(v.shape[0] * w.shape[1], 1)))


@parallel
def split_rows_dot(a, b, out, nthreads):
    """out (R, N) = a (R, K) @ b (K, N), the R rows split into nthreads blocks."""
    if nthreads == 1:
        np.dot(a, b, out)
        return
    R = a.shape[0]
    for k in prange(nthreads):
        r0 = block(R, k, nthreads)
        r1 = block(R, k + 1, nthreads)
        if r1 > r0:
            np.dot(a[r0:r1], b, out[r0:r1])


@parallel
def wgrad(dG2, a2, nthreads):
    """A weight gradient dG2.T @ a2 (G, K), the reduction over the T*B rows split over nthreads
    threads: block 0 writes the result, the others partial products, added in parallel by rows."""
    n = dG2.shape[0]
    G = dG2.shape[1]
    K = a2.shape[1]
    out = np.empty((G, K), dG2.dtype)
    if nthreads == 1:
        np.dot(dG2.T, a2, out)
        return out
    parts = np.empty((nthreads - 1, G, K), dG2.dtype)
    for k in prange(nthreads):
        r0 = block(n, k, nthreads)
        r1 = block(n, k + 1, nthreads)
        dst = out if k == 0 else parts[k - 1]
        if r1 > r0:
            np.dot(dG2[r0:r1].T, a2[r0:r1], dst)
        else:
            dst[:] = 0
    for k in prange(nthreads):
        for g in range(block(G, k, nthreads), block(G, k + 1, nthreads)):
            o = out[g]
            for q in range(nthreads - 1):
                p = parts[q, g]
                for j in range(K):
                    o[j] += p[j]
    return out


# --- dot_nt: out = w @ zt.T, written for few columns (the batch) ------------------------------
# Each output is a dot product along K, the contiguous axis of both operands, so LLVM's loop
# vectoriser turns the K loop into SIMD multiply-adds with one vector accumulator per output;
# a 4 x 4 block of outputs keeps 16 accumulators and reads 8 rows per K step (8 loads for 16
# multiply-adds). OpenBLAS repacks the weight on every call and runs its small-N cases at a
# fraction of its large-matrix speed: at N = 8 this kernel ran 1.5-2.5x faster than np.dot,
# at N = 32 about as fast (docs/numba.md, "Where the time goes").
NT_CHUNK_BYTES = 24576  # columns per pass: this many bytes of zt rows stay in L1 across w rows


@serial
def _nt_4x4(w, zt, out, m, n, K):
    w0, w1, w2, w3 = w[m], w[m + 1], w[m + 2], w[m + 3]
    z0, z1, z2, z3 = zt[n], zt[n + 1], zt[n + 2], zt[n + 3]
    zero = w.dtype.type(0)
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = zero
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = zero
    for k in range(K):
        b0, b1, b2, b3 = w0[k], w1[k], w2[k], w3[k]
        c0, c1, c2, c3 = z0[k], z1[k], z2[k], z3[k]
        a00 += b0 * c0
        a01 += b0 * c1
        a02 += b0 * c2
        a03 += b0 * c3
        a10 += b1 * c0
        a11 += b1 * c1
        a12 += b1 * c2
        a13 += b1 * c3
        a20 += b2 * c0
        a21 += b2 * c1
        a22 += b2 * c2
        a23 += b2 * c3
        a30 += b3 * c0
        a31 += b3 * c1
        a32 += b3 * c2
        a33 += b3 * c3
    o0, o1, o2, o3 = out[m], out[m + 1], out[m + 2], out[m + 3]
    o0[n], o0[n + 1], o0[n + 2], o0[n + 3] = a00, a01, a02, a03
    o1[n], o1[n + 1], o1[n + 2], o1[n + 3] = a10, a11, a12, a13
    o2[n], o2[n + 1], o2[n + 2], o2[n + 3] = a20, a21, a22, a23
    o3[n], o3[n + 1], o3[n + 2], o3[n + 3] = a30, a31, a32, a33


@serial
def _nt_1x4(w, zt, out, m, n, K):
    w0 = w[m]
    z0, z1, z2, z3 = zt[n], zt[n + 1], zt[n + 2], zt[n + 3]
    zero = w.dtype.type(0)
    a0 = a1 = a2 = a3 = zero
    for k in range(K):
        b = w0[k]
        a0 += b * z0[k]
        a1 += b * z1[k]
        a2 += b * z2[k]
        a3 += b * z3[k]
    o = out[m]
    o[n], o[n + 1], o[n + 2], o[n + 3] = a0, a1, a2, a3


@serial
def _nt_4x1(w, zt, out, m, n, K):
    w0, w1, w2, w3 = w[m], w[m + 1], w[m + 2], w[m + 3]
    z0 = zt[n]
    zero = w.dtype.type(0)
    a0 = a1 = a2 = a3 = zero
    for k in range(K):
        c = z0[k]
        a0 += w0[k] * c
        a1 += w1[k] * c
        a2 += w2[k] * c
        a3 += w3[k] * c
    out[m, n], out[m + 1, n], out[m + 2, n], out[m + 3, n] = a0, a1, a2, a3


@serial
def _nt_1x1(w, zt, out, m, n, K):
    w0 = w[m]
    z0 = zt[n]
    a = w.dtype.type(0)
    for k in range(K):
        a += w0[k] * z0[k]
    out[m, n] = a


@serial
def dot_nt(w, zt, out):
    """out (M, N) = w[:, :K] @ zt (N, K).T; rows of w, zt and out contiguous (w may be wider
    than K: a padded row stride). The columns go in chunks whose zt rows fit in L1; within a
    chunk 4 x 4 blocks, then the edges."""
    M = w.shape[0]
    K = zt.shape[1]
    N = zt.shape[0]
    M4 = M - M % 4
    chunk = max(8, NT_CHUNK_BYTES // max(K * zt.itemsize, 1) // 4 * 4)
    for n0 in range(0, N, chunk):
        n1 = min(N, n0 + chunk)
        n4 = n0 + (n1 - n0) // 4 * 4
        for m in range(0, M4, 4):
            for n in range(n0, n4, 4):
                _nt_4x4(w, zt, out, m, n, K)
            for n in range(n4, n1):
                _nt_4x1(w, zt, out, m, n, K)
        for m in range(M4, M):
            for n in range(n0, n4, 4):
                _nt_1x4(w, zt, out, m, n, K)
            for n in range(n4, n1):
                _nt_1x1(w, zt, out, m, n, K)
