"""GRU and RNN kernels of backend `numba`: one layer, one direction; the batch is split.

Layout (time-major, C-contiguous; G = gates * H):

* `x2`  (T*B, I): the layer input, flattened over time and batch.
* `hs`  (T+1, B, H): hs[0] = h_0, hs[t+1] = h_t; the caller hands hs[1:] to torch as the output,
  and the backward uses hs[:T] (the h_{t-1} of every step) as one (T*B, H) matrix.
* GRU: `acts` (T, B, 4H): r, z, n, W_hn h + b_hn. RNN: nothing beyond hs (h is enough).

Threads: batch rows are independent through the whole recurrence, forward and backward, so
each of `nthreads` threads (numba prange) runs every time step for its own block of rows, with
its own 1-thread BLAS calls and no synchronisation between steps: one fork/join per kernel
call. The input projection and dx (GEMMs over all T*B rows) are split by rows, dW_ih and dW_hh
(gemm.wgrad) by their reduction. nthreads = 1 runs inline, without entering the thread pool.
Per step and block one recurrent GEMM for all gates (the GRU's transposed: gemm.wdot); bias
gradients are summed in the pointwise loops, which run over contiguous rows of H elements.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .activations import act_sigmoid, act_tanh
from .gemm import split_rows_dot, wdot
from .jit_options import block, parallel, serial


# --- what the GRU and RNN backward share ----------------------------------------------------
@serial
def _sum_blocks(parts):
    """parts[0] + parts[1] + ..., in that order: the threads' partial bias gradients."""
    out = parts[0].copy()
    for k in range(1, parts.shape[0]):
        for q in range(parts.shape[1]):
            out[q] += parts[k, q]
    return out


@serial  # split_rows_dot is the parallel kernel
def _input_grad(dG2, w_ih, need_dx, nthreads):
    """dx (T*B, I) = dG2 (T*B, G) @ W_ih, its rows split over nthreads (empty without need_dx)."""
    if not need_dx:
        return np.empty((0, 0), dG2.dtype)
    dx2 = np.empty((dG2.shape[0], w_ih.shape[1]), dG2.dtype)
    split_rows_dot(dG2, w_ih, dx2, nthreads)
    return dx2


# --- GRU -------------------------------------------------------------------------------
@serial
def _gru_fwd_rows(xw, w_hh, bias, bhn, hs, acts, save, k, nblocks):
    T = hs.shape[0] - 1
    B = hs.shape[1]
    b0, b1 = block(B, k, nblocks), block(B, k + 1, nblocks)
    H = hs.shape[2]
    G = 3 * H
    n = b1 - b0
    hwT = np.empty((G, n), xw.dtype)
    hr = np.empty(G, xw.dtype)
    for t in range(T):
        wdot(w_hh, hs[t, b0:b1], hwT)
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


@parallel
def gru_forward(x2, h0, w_ih, w_hh, b_ih, b_hh, hs, acts, save, nthreads):
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
    bhn = b_hh[2 * H :].copy()
    xw = np.empty((TB, G), x2.dtype)
    split_rows_dot(x2, w_ih.T, xw, nthreads)
    hs[0] = h0
    if nthreads == 1:
        _gru_fwd_rows(xw, w_hh, bias, bhn, hs, acts, save, 0, 1)
    else:
        for k in prange(nthreads):
            _gru_fwd_rows(xw, w_hh, bias, bhn, hs, acts, save, k, nthreads)
    return one


@serial
def _gru_bwd_rows(
    dy, dh, dhw, hs, acts, w_hhT, dGx, dGh, db_ih, db_hh, need_dh0, need_dw, k, nblocks
):
    T, B = dy.shape[0], dy.shape[1]
    b0, b1 = block(B, k, nblocks), block(B, k + 1, nblocks)
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
            wdot(w_hhT, dGh[t, b0:b1], dhT)
            for b in range(n):
                dwr = dhw[b0 + b]
                for j in range(H):
                    dwr[j] = dhT[j, b]


@parallel
def gru_backward(dy, dhT, x2, hs, acts, w_ih, w_hh, need_dx, need_dh0, need_dw, nthreads):
    """Returns dx2, dh0, dGx, dGh (T, B, 3H), db_ih, db_hh; the weight gradients are
    wgrad(dGx, x2) and wgrad(dGh, hs[:T])."""
    T, B, H = dy.shape
    G = 3 * H
    dGx = np.empty((T, B, G), dy.dtype)
    dGh = np.empty((T, B, G), dy.dtype)
    dh = dhT.copy()  # the part of dh_{t} that does not go through W_hh
    dhw = np.zeros((B, H), dy.dtype)  # dGh_{t+1} @ W_hh
    dbi = np.zeros((nthreads, G), dy.dtype)
    dbh = np.zeros((nthreads, G), dy.dtype)
    w_hhT = np.ascontiguousarray(w_hh.T)
    if nthreads == 1:
        _gru_bwd_rows(
            dy, dh, dhw, hs, acts, w_hhT, dGx, dGh, dbi[0], dbh[0], need_dh0, need_dw, 0, 1
        )
    else:
        for k in prange(nthreads):
            _gru_bwd_rows(
                dy,
                dh,
                dhw,
                hs,
                acts,
                w_hhT,
                dGx,
                dGh,
                dbi[k],
                dbh[k],
                need_dh0,
                need_dw,
                k,
                nthreads,
            )
    if need_dh0:
        for b in range(B):
            for j in range(H):
                dh[b, j] += dhw[b, j]
    dx2 = _input_grad(dGx.reshape(T * B, G), w_ih, need_dx, nthreads)
    return dx2, dh, dGx, dGh, _sum_blocks(dbi), _sum_blocks(dbh)


# --- RNN (tanh / relu) -----------------------------------------------------------------
@serial
def _rnn_fwd_rows(xw, w_hh, bias, hs, relu, k, nblocks):
    T = hs.shape[0] - 1
    B = hs.shape[1]
    b0, b1 = block(B, k, nblocks), block(B, k + 1, nblocks)
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


@parallel
def rnn_forward(x2, h0, w_ih, w_hh, b_ih, b_hh, hs, relu, nthreads):
    """hs[1:] <- outputs (the backward needs nothing else)."""
    B, H = h0.shape
    TB = x2.shape[0]
    one = x2.dtype.type(1)
    bias = np.empty(H, x2.dtype)
    for k in range(H):
        bias[k] = b_ih[k] + b_hh[k]
    xw = np.empty((TB, H), x2.dtype)
    split_rows_dot(x2, w_ih.T, xw, nthreads)
    hs[0] = h0
    if nthreads == 1:
        _rnn_fwd_rows(xw, w_hh, bias, hs, relu, 0, 1)
    else:
        for k in prange(nthreads):
            _rnn_fwd_rows(xw, w_hh, bias, hs, relu, k, nthreads)
    return one


@serial
def _rnn_bwd_rows(dy, dh, hs, w_hh, dG, db, relu, need_dh0, need_dw, k, nblocks):
    T, B = dy.shape[0], dy.shape[1]
    b0, b1 = block(B, k, nblocks), block(B, k + 1, nblocks)
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


@parallel
def rnn_backward(dy, dhT, x2, hs, w_ih, w_hh, relu, need_dx, need_dh0, need_dw, nthreads):
    """Returns dx2, dh0, dG (T, B, H), db (= d b_ih = d b_hh); the weight gradients are
    wgrad(dG, x2) and wgrad(dG, hs[:T])."""
    T, B, H = dy.shape
    dG = np.empty((T, B, H), dy.dtype)
    dh = dhT.copy()
    dbs = np.zeros((nthreads, H), dy.dtype)
    if nthreads == 1:
        _rnn_bwd_rows(dy, dh, hs, w_hh, dG, dbs[0], relu, need_dh0, need_dw, 0, 1)
    else:
        for k in prange(nthreads):
            _rnn_bwd_rows(dy, dh, hs, w_hh, dG, dbs[k], relu, need_dh0, need_dw, k, nthreads)
    dx2 = _input_grad(dG.reshape(T * B, H), w_ih, need_dx, nthreads)
    return dx2, dh, dG, _sum_blocks(dbs)


# --- one step at batch 1 (generation): matrix-vector products, serial ------------------
@serial
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


@serial
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
