"""The @njit kernels of backend `numba` for GRU and RNN (the LSTM's are in numba_lstm.py, which
also uses the activations and compile options defined here): one layer, one direction.

Layout (time-major, C-contiguous; G = gates * H):

* `x2`  (T*B, I): the layer input, flattened over time and batch.
* `hs`  (T+1, B, H): hs[0] = h_0, hs[t+1] = h_t; the caller hands hs[1:] to torch as the output,
  and the backward uses hs[:T] (the h_{t-1} of every step) as one (T*B, H) matrix.
* GRU: `acts` (T, B, 4H): r, z, n, W_hn h + b_hn. RNN: nothing beyond hs (h is enough).

The batch is split into `nchunks` blocks, one per numba thread (prange): rows are independent
through the whole recurrence, forward and backward, so each thread runs all T steps of its block
with no synchronisation between steps. GEMMs go through np.dot, i.e. scipy's BLAS, which must
stay at 1 thread (each numba thread makes its own calls). The input projection of all steps is
one GEMM before the loop (rows split over the threads); per step and block one recurrent GEMM
for all gates, computed transposed (W @ h.T) because OpenBLAS packs the weight on every call
and is 1.5-1.8x faster with the weight as the left operand at few rows; in the backward one
GEMM per step and block for dh_{t-1} (W_hh.T @ dG.T, same reason; both cut into row blocks
for OpenBLAS's small-matrix kernel, see _wdot), then dx over all T*B rows
split by rows, and dW_ih, dW_hh (`wgrad`) with the T*B-row reduction split over the threads.
Bias gradients are summed in the pointwise loop. The pointwise loops run over contiguous rows
of H elements so LLVM vectorises them; in float32 sigmoid and tanh are a branch-free rational
approximation (no libm call, so it vectorises; max abs error 3.6e-7 ~ 6 ulp), in float64 libm's
exp / tanh (full precision, as float64's 1e-10 tolerance needs).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

# fast-math without nnan/ninf: NaN and inf still propagate as in torch.nn
FASTMATH = {"contract", "reassoc", "arcp", "nsz", "afn"}
OPTS = dict(cache=True, fastmath=FASTMATH, nogil=True, error_model="numpy", boundscheck=False)

# tanh(x) ~ x P(x^2) / Q(x^2) on [-C, C], saturated outside (float32 accuracy)
_C = np.float32(7.90531110763549805)
_A1, _A3, _A5, _A7 = (np.float32(4.89352455891786e-03), np.float32(6.37261928875436e-04),
                      np.float32(1.48572235717979e-05), np.float32(5.12229709037114e-08))
_A9, _A11, _A13 = (np.float32(-8.60467152213735e-11), np.float32(2.00018790482477e-13),
                   np.float32(-2.76076847742355e-16))
_B0, _B2, _B4, _B6 = (np.float32(4.89352518554385e-03), np.float32(2.26843463243900e-03),
                      np.float32(1.18534705686654e-04), np.float32(1.19825839466702e-06))
_HALF32 = np.float32(0.5)


def act_tanh(x):  # pragma: no cover - replaced by the overload inside jitted code
    return np.tanh(x)


def act_sigmoid(x):  # pragma: no cover
    return 1.0 / (1.0 + np.exp(-x))


# The overloads are inlined into the kernels at numba-IR level, so LLVM sees straight-line
# selects and FMAs and vectorises the loops (a call, or numba's default division-by-zero check,
# error_model="python", would keep them scalar: ~10x slower).
@overload(act_tanh, inline="always",
          jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _ov_tanh(x):
    if x == types.float32:
        def tanh32(x):
            x = min(max(x, -_C), _C)  # NaN passes through (Python's min / max semantics)
            x2 = x * x
            p = ((((((_A13 * x2 + _A11) * x2 + _A9) * x2 + _A7) * x2 + _A5) * x2 + _A3) * x2
                 + _A1) * x
            q = ((_B6 * x2 + _B4) * x2 + _B2) * x2 + _B0
            return p / q
        return tanh32
    return lambda x: np.tanh(x)


@overload(act_sigmoid, inline="always",
          jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _ov_sigmoid(x):
    if x == types.float32:
        def sigmoid32(x):  # 1 / (1 + e^-x) = (1 + tanh(x / 2)) / 2
            x = min(max(_HALF32 * x, -_C), _C)
            x2 = x * x
            p = ((((((_A13 * x2 + _A11) * x2 + _A9) * x2 + _A7) * x2 + _A5) * x2 + _A3) * x2
                 + _A1) * x
            q = ((_B6 * x2 + _B4) * x2 + _B2) * x2 + _B0
            return _HALF32 * (p / q) + _HALF32
        return sigmoid32
    return lambda x: 1.0 / (1.0 + np.exp(-x))


# --- splitting the batch over threads ---------------------------------------------------
# Batch rows are independent through the whole recurrence, forward and backward, so each of
# `nchunks` threads (numba prange) runs every time step for its own block of rows, with its own
# 1-thread BLAS calls and no synchronisation between steps. The GEMMs over all T*B rows (input
# projection, dx) are split by rows; dW_ih and dW_hh by their reduction dimension (partial sums
# added at the end). nchunks = 1 is the serial kernel.
PAR = dict(OPTS, parallel=True)


@njit(**OPTS)
def _block(n, k, nchunks):
    """Start of block k of n rows split into nchunks near-equal blocks."""
    return (n * k) // nchunks


@njit(**PAR)
def wgrad(dG2, a2, nchunks):
    """A weight gradient dG2.T @ a2 (G, K), the reduction over the T*B rows split over nchunks
    threads: block 0 writes the result, the others partial products, added in parallel by rows."""
    n = dG2.shape[0]
    G = dG2.shape[1]
    K = a2.shape[1]
    out = np.empty((G, K), dG2.dtype)
    parts = np.empty((max(nchunks - 1, 0), G, K), dG2.dtype)
    for k in prange(nchunks):
        r0 = _block(n, k, nchunks)
        r1 = _block(n, k + 1, nchunks)
        if k == 0:
            if r1 > r0:
                np.dot(dG2[r0:r1].T, a2[r0:r1], out)
            else:
                out[:] = 0
        elif r1 > r0:
            np.dot(dG2[r0:r1].T, a2[r0:r1], parts[k - 1])
        else:
            parts[k - 1] = 0
    for k in prange(nchunks):
        g0 = _block(G, k, nchunks)
        g1 = _block(G, k + 1, nchunks)
        for q in range(nchunks - 1):
            for g in range(g0, g1):
                o = out[g]
                p = parts[q, g]
                for j in range(K):
                    o[j] += p[j]
    return out


SMALL_GEMM = 262144  # 64^3: at or below this M*N*K OpenBLAS uses its small-matrix kernels


@njit(**OPTS)
def row_blocks_dot(w, v, out, mb):
    """out (M, N) = w (M, K) @ v (K, N), one np.dot per block of mb rows of w: blocks small
    enough for OpenBLAS's small-matrix kernel, which skips packing the weight."""
    M = w.shape[0]
    for m0 in range(0, M, mb):
        m1 = min(M, m0 + mb)
        np.dot(w[m0:m1], v, out[m0:m1])


@njit(**PAR)
def split_rows_dot(a, b, out, nchunks):
    """out (R, N) = a (R, K) @ b (K, N), the R rows split into nchunks blocks over the threads."""
    R = a.shape[0]
    for k in prange(nchunks):
        r0 = _block(R, k, nchunks)
        r1 = _block(R, k + 1, nchunks)
        if r1 > r0:
            np.dot(a[r0:r1], b, out[r0:r1])


@njit(**OPTS)
def _wdot(w, v, out):
    """out (G, n) = w (G, K) @ v.T for v (n, K), in row blocks of w with M*N*K <= 64^3 (a d2l
    step at 16 rows: 105 -> 82 us forward, 117 -> 80 us for the backward's W_hh.T (256, 1024))."""
    row_blocks_dot(w, v.T, out, max(8, SMALL_GEMM // max(v.shape[0] * w.shape[1], 1)))


# --- GRU -------------------------------------------------------------------------------
@njit(**OPTS)
def _gru_fwd_rows(xw, w_hh, bias, bhn, hs, acts, save, b0, b1):
    T = hs.shape[0] - 1
    B = hs.shape[1]
    H = hs.shape[2]
    G = 3 * H
    n = b1 - b0
    hwT = np.empty((G, n), xw.dtype)
    hr = np.empty(G, xw.dtype)
    for t in range(T):
        _wdot(w_hh, hs[t, b0:b1], hwT)  # transposed: see _wdot
        ts = t if save else 0
        for b in range(n):
            xr = xw[t * B + b0 + b]
            for k in range(G):
                hr[k] = hwT[k, b]
            ar = acts[ts, b0 + b]
            hprev = hs[t, b0 + b]
            hnew = hs[t + 1, b0 + b]
            for j in range(H):
                r = act_sigmoid(xr[j] + hr[j] + bias[j])
                z = act_sigmoid(xr[H + j] + hr[H + j] + bias[H + j])
                hn = hr[2 * H + j] + bhn[j]
                n_ = act_tanh(xr[2 * H + j] + bias[2 * H + j] + r * hn)
                hnew[j] = n_ + z * (hprev[j] - n_)
                ar[j] = r
                ar[H + j] = z
                ar[2 * H + j] = n_
                ar[G + j] = hn


@njit(**PAR)
def gru_forward(x2, h0, w_ih, w_hh, b_ih, b_hh, hs, acts, save, nchunks):
    """hs[1:] <- outputs; saves r, z, n, W_hn h + b_hn in acts when `save`."""
    B, H = h0.shape
    TB = x2.shape[0]
    G = 3 * H
    one = x2.dtype.type(1)
    bias = np.empty(G, x2.dtype)  # b_ih + b_hh for r and z; b_in alone for n
    for k in range(2 * H):
        bias[k] = b_ih[k] + b_hh[k]
    for k in range(2 * H, G):
        bias[k] = b_ih[k]
    bhn = b_hh[2 * H:].copy()
    xw = np.empty((TB, G), x2.dtype)
    split_rows_dot(x2, w_ih.T, xw, nchunks)
    hs[0] = h0
    for k in prange(nchunks):
        _gru_fwd_rows(xw, w_hh, bias, bhn, hs, acts, save,
                      _block(B, k, nchunks), _block(B, k + 1, nchunks))
    return one


@njit(**OPTS)
def _gru_bwd_rows(dy, dh, dhw, hs, acts, w_hhT, dGx, dGh, db_ih, db_hh, need_dh0, need_dw, b0, b1):
    T = dy.shape[0]
    H = dy.shape[2]
    G = 3 * H
    n = b1 - b0
    one = dy.dtype.type(1)
    dhT = np.empty((H, n), dy.dtype)
    for t in range(T - 1, -1, -1):
        for b in range(b0, b1):
            ar = acts[t, b]
            dyr = dy[t, b]
            dhr = dh[b]
            dwr = dhw[b]
            hprev = hs[t, b]
            gx = dGx[t, b]
            gh = dGh[t, b]
            for j in range(H):
                r = ar[j]
                z = ar[H + j]
                n_ = ar[2 * H + j]
                hn = ar[G + j]
                dht = dhr[j] + dwr[j] + dyr[j]
                dnp = dht * (one - z) * (one - n_ * n_)
                dzp = dht * (hprev[j] - n_) * z * (one - z)
                drp = dnp * hn * r * (one - r)
                dhr[j] = dht * z
                gx[j] = drp
                gx[H + j] = dzp
                gx[2 * H + j] = dnp
                gh[j] = drp
                gh[H + j] = dzp
                gh[2 * H + j] = dnp * r
            if need_dw:
                for k in range(G):
                    db_ih[k] += gx[k]
                    db_hh[k] += gh[k]
        if (t > 0 or need_dh0) and n > 0:
            _wdot(w_hhT, dGh[t, b0:b1], dhT)  # transposed: see _wdot
            for b in range(n):
                dwr = dhw[b0 + b]
                for j in range(H):
                    dwr[j] = dhT[j, b]


@njit(**PAR)
def gru_backward(dy, dhT, x2, hs, acts, w_ih, w_hh, need_dx, need_dh0, need_dw, nchunks):
    """Returns dx2, dh0, dGx, dGh (T, B, 3H), db_ih, db_hh; the weight gradients are
    wgrad(dGx, x2) and wgrad(dGh, hs[:T])."""
    T, B, H = dy.shape
    G = 3 * H
    dGx = np.empty((T, B, G), dy.dtype)
    dGh = np.empty((T, B, G), dy.dtype)
    dh = dhT.copy()  # the part of dh_{t} that does not go through W_hh
    dhw = np.zeros((B, H), dy.dtype)  # dGh_{t+1} @ W_hh
    dbi = np.zeros((nchunks, G), dy.dtype)
    dbh = np.zeros((nchunks, G), dy.dtype)
    w_hhT = np.ascontiguousarray(w_hh.T)
    for k in prange(nchunks):
        _gru_bwd_rows(dy, dh, dhw, hs, acts, w_hhT, dGx, dGh, dbi[k], dbh[k], need_dh0, need_dw,
                      _block(B, k, nchunks), _block(B, k + 1, nchunks))
    db_ih = dbi[0].copy()
    db_hh = dbh[0].copy()
    for k in range(1, nchunks):
        for q in range(G):
            db_ih[q] += dbi[k, q]
            db_hh[q] += dbh[k, q]
    if need_dh0:
        for b in range(B):
            for j in range(H):
                dh[b, j] += dhw[b, j]
    Gx2 = dGx.reshape(T * B, G)
    if need_dx:
        dx2 = np.empty((T * B, w_ih.shape[1]), dy.dtype)
        split_rows_dot(Gx2, w_ih, dx2, nchunks)
    else:
        dx2 = np.empty((0, 0), dy.dtype)
    return dx2, dh, dGx, dGh, db_ih, db_hh


# --- RNN (tanh / relu) -----------------------------------------------------------------
@njit(**OPTS)
def _rnn_fwd_rows(xw, w_hh, bias, hs, relu, b0, b1):
    T = hs.shape[0] - 1
    B = hs.shape[1]
    H = hs.shape[2]
    n = b1 - b0
    zero = xw.dtype.type(0)
    hw = np.empty((n, H), xw.dtype)
    for t in range(T):
        np.dot(hs[t, b0:b1], w_hh.T, hw)
        for b in range(n):
            xr = xw[t * B + b0 + b]
            hr = hw[b]
            hnew = hs[t + 1, b0 + b]
            if relu:
                for j in range(H):
                    p = xr[j] + hr[j] + bias[j]
                    hnew[j] = p if p > zero else (zero if p <= zero else p)  # NaN stays NaN
            else:
                for j in range(H):
                    hnew[j] = act_tanh(xr[j] + hr[j] + bias[j])


@njit(**PAR)
def rnn_forward(x2, h0, w_ih, w_hh, b_ih, b_hh, hs, relu, nchunks):
    """hs[1:] <- outputs (the backward needs nothing else)."""
    B, H = h0.shape
    TB = x2.shape[0]
    one = x2.dtype.type(1)
    bias = np.empty(H, x2.dtype)
    for k in range(H):
        bias[k] = b_ih[k] + b_hh[k]
    xw = np.empty((TB, H), x2.dtype)
    split_rows_dot(x2, w_ih.T, xw, nchunks)
    hs[0] = h0
    for k in prange(nchunks):
        _rnn_fwd_rows(xw, w_hh, bias, hs, relu, _block(B, k, nchunks), _block(B, k + 1, nchunks))
    return one


@njit(**OPTS)
def _rnn_bwd_rows(dy, dh, hs, w_hh, dG, db, relu, need_dh0, need_dw, b0, b1):
    T = dy.shape[0]
    H = dy.shape[2]
    n = b1 - b0
    one = dy.dtype.type(1)
    zero = dy.dtype.type(0)
    for t in range(T - 1, -1, -1):
        for b in range(b0, b1):
            dyr = dy[t, b]
            dhr = dh[b]
            hr = hs[t + 1, b]
            gr = dG[t, b]
            if relu:
                for j in range(H):
                    gr[j] = (dhr[j] + dyr[j]) if hr[j] > zero else zero
            else:
                for j in range(H):
                    gr[j] = (dhr[j] + dyr[j]) * (one - hr[j] * hr[j])
            if need_dw:
                for k in range(H):
                    db[k] += gr[k]
        if (t > 0 or need_dh0) and n > 0:
            np.dot(dG[t, b0:b1], w_hh, dh[b0:b1])


@njit(**PAR)
def rnn_backward(dy, dhT, x2, hs, w_ih, w_hh, relu, need_dx, need_dh0, need_dw, nchunks):
    """Returns dx2, dh0, dG (T, B, H), db (= d b_ih = d b_hh); the weight gradients are
    wgrad(dG, x2) and wgrad(dG, hs[:T])."""
    T, B, H = dy.shape
    dG = np.empty((T, B, H), dy.dtype)
    dh = dhT.copy()
    dbs = np.zeros((nchunks, H), dy.dtype)
    for k in prange(nchunks):
        _rnn_bwd_rows(dy, dh, hs, w_hh, dG, dbs[k], relu, need_dh0, need_dw,
                      _block(B, k, nchunks), _block(B, k + 1, nchunks))
    db = dbs[0].copy()
    for k in range(1, nchunks):
        for q in range(H):
            db[q] += dbs[k, q]
    G2 = dG.reshape(T * B, H)
    if need_dx:
        dx2 = np.empty((T * B, w_ih.shape[1]), dy.dtype)
        split_rows_dot(G2, w_ih, dx2, nchunks)
    else:
        dx2 = np.empty((0, 0), dy.dtype)
    return dx2, dh, dG, db


# --- one step at batch 1 (generation): matrix-vector products, no scratch saved ----------
@njit(**OPTS)
def gru_step(x, h, w_ih, w_hh, b_ih, b_hh, out):
    """x (I,), h (H,) -> out (2, H): y, h_1."""
    H = h.shape[0]
    gx = np.dot(w_ih, x)
    gh = np.dot(w_hh, h)
    y = out[0]
    hn = out[1]
    for j in range(H):
        r = act_sigmoid(gx[j] + gh[j] + b_ih[j] + b_hh[j])
        z = act_sigmoid(gx[H + j] + gh[H + j] + b_ih[H + j] + b_hh[H + j])
        n = act_tanh(gx[2 * H + j] + b_ih[2 * H + j] + r * (gh[2 * H + j] + b_hh[2 * H + j]))
        hh = n + z * (h[j] - n)
        y[j] = hh
        hn[j] = hh


@njit(**OPTS)
def rnn_step(x, h, w_ih, w_hh, b_ih, b_hh, relu, out):
    """x (I,), h (H,) -> out (2, H): y, h_1."""
    H = h.shape[0]
    zero = x.dtype.type(0)
    gx = np.dot(w_ih, x)
    gh = np.dot(w_hh, h)
    y = out[0]
    hn = out[1]
    if relu:
        for j in range(H):
            p = gx[j] + gh[j] + b_ih[j] + b_hh[j]
            p = p if p > zero else (zero if p <= zero else p)
            y[j] = p
            hn[j] = p
    else:
        for j in range(H):
            p = act_tanh(gx[j] + gh[j] + b_ih[j] + b_hh[j])
            y[j] = p
            hn[j] = p
