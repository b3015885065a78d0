"""GEMM helpers of the numba kernels: np.dot, i.e. scipy's BLAS, kept at 1 thread (each numba
thread makes its own calls; see threads.py), cut into blocks that suit OpenBLAS at few rows,
and the two products over all T*B rows split over the threads."""

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
