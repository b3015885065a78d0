"""The LSTM kernels of backend `numba`: the hidden units are split over the threads.

Why not split the batch, as the GRU and RNN kernels do: the LSTM's per-step GEMMs are its whole
cost, and with a batch split every thread streams all of W_hh (1 MB at H = 256) through its
cache on every step and multiplies it by a few rows. Split by hidden units instead, thread k
owns units a:b and only its 4 (b - a) gate rows of the weights (512 KB at H = 256, two threads:
they stay in the core's L2 across steps), and each step is one GEMM with the whole batch as
the N dimension. The price is one fork/join per step (both threads need all of h_{t-1}),
about 1 us with numba's OpenMP pool on a quiet machine and up to a scheduler time slice on a
busy one: threads.py gives a shape one thread unless each thread's share of a step is large
enough, and with one thread (`nth` = 1) every kernel here runs inline, without entering the
pool.

Layout (everything a step touches is contiguous; G = 4H; `B` is the inner dimension so the
pointwise loops vectorise over the batch):

* packed weights `wp` (G, Kp) = [W_hh | W_ih | 0] with rows reordered thread by thread
  (thread k's rows 4a:4b hold gates i, f, g, o of units a:b, each gate a block of b - a rows),
  the g rows doubled so that one sigmoid covers all gates: tanh(a) = 2 sigmoid(2a) - 1.
* `z` (T+1, Kp, B): z[t] = [h_{t-1}; x_t; 0] transposed, the operand of step t's GEMM, so the
  input projection rides along in the recurrent GEMM (K = Kp) instead of a separate pass. Kp is
  H + I rounded up to a multiple of 16 (`padded_k`), the columns and rows beyond H + I zeros:
  OpenBLAS's step at batch 8 took 12.3 us at K = 288 against 15.3 at K = 284.
* `gates` (T, G, B) in packed row order: i, f, g, o after activation; `cells` (T+1, H, B)
  (tanh(c) is recomputed in the backward: cheaper than a trip through memory). Without saving:
  gates (1, G, B) scratch and cells a (2, H, B) ping-pong.
* `hs` (T+1, B, H): h in torch's layout (each thread writes its units' block after the update,
  while it is in L1); hs[1:] is the output and hs[:T] the operand of dW_hh.
* backward: per step dL/dy_t is added into dh's block, transposed (dy C-contiguous: the driver
  copies a strided one, so the kernel compiles for one layout only); the gate gradients go to a
  (2, Gs, B) ping-pong in packed order, Gs = lstm_gemm.padded_rows(G) (the next step's GEMM operand; for
  gemm.dot_nt also transposed to (2, B, G)), and to `dg_all` (G, T*B) in torch's row order,
  the left operand of dW_hh = dg_all @ hs[:T] and dW_ih = dg_all @ x (lstm_gemm.weight_grads:
  torch's GEMM on Intel with MKL, else one GEMM each per thread over an even share of the rows,
  K = T*B, written straight into torch's layout).

Which library computes each step's product is lstm_gemm.py's choice (forward_gemm,
backward_gemm): oneDNN's brgemm, OpenBLAS or gemm.dot_nt.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .activations import act_sigmoid, act_tanh
from .jit_options import block, parallel, serial
from .lstm_gemm import (
    BRGEMM,
    DOT_NT,
    backward_dot,
    backward_gemm,
    brgemm_dot,
    forward_gemm,
    row_dot,
)


@serial
def pack(w_ih, w_hh, b_ih, b_hh, nth, wp, bp):
    """wp (G, Kp), bp (G,) <- the forward's packed weights and bias (module docstring); any
    Kp >= H + I, the columns beyond H + I zeros."""
    G, I = w_ih.shape
    H = w_hh.shape[1]
    dt = w_hh.dtype
    zero = dt.type(0)
    for k in range(nth):
        a = block(H, k, nth)
        hk = block(H, k + 1, nth) - a
        for q in range(4):
            s = dt.type(2) if q == 2 else dt.type(1)
            for u in range(hk):
                r = 4 * a + q * hk + u
                src = q * H + a + u
                row = wp[r]
                wr = w_hh[src]
                for j in range(H):
                    row[j] = wr[j] * s
                xr = w_ih[src]
                for j in range(I):
                    row[H + j] = xr[j] * s
                for j in range(H + I, wp.shape[1]):
                    row[j] = zero
                bp[r] = (b_ih[src] + b_hh[src]) * s


@serial
def _transpose(src, dst, add):
    """dst (N, M) <- src (M, N).T, or dst += src.T if `add`; in 8 x 8 tiles: with constant trip
    counts LLVM unrolls a tile and moves it through vector registers (0.2 ns per element here,
    against 0.7-1.0 for 16 x 16 tiles of variable size), then the edges."""
    M, N = src.shape
    M8 = M - M % 8
    N8 = N - N % 8
    zero = dst.dtype.type(0)
    for m0 in range(0, M8, 8):
        for n0 in range(0, N8, 8):
            for j in range(8):
                row = dst[n0 + j]
                for i in range(8):
                    row[m0 + i] = src[m0 + i, n0 + j] + (row[m0 + i] if add else zero)
    for n in range(N):
        row = dst[n]
        for m in range(M8, M):
            row[m] = src[m, n] + (row[m] if add else zero)
    for n in range(N8, N):
        row = dst[n]
        for m in range(M8):
            row[m] = src[m, n] + (row[m] if add else zero)


@serial
def _pack_hh_t_block(w_hh, nth, out, k):
    H = w_hh.shape[1]
    a = block(H, k, nth)
    hk = block(H, k + 1, nth) - a
    for q in range(4):
        _transpose(
            w_hh[q * H + a : q * H + a + hk], out[:, 4 * a + q * hk : 4 * a + (q + 1) * hk], False
        )


@parallel
def pack_hh_t(w_hh, nth, out):
    """out[:, :G] (H, G) <- torch's W_hh with its rows in packed order, transposed, for the
    backward's dh_{t-1}[a:b] = out[a:b] @ dg_t (thread k reads only its rows a:b). out may be
    wider than G (lstm_gemm.padded_rows); its columns beyond G are left as they are."""
    if nth == 1:
        _pack_hh_t_block(w_hh, nth, out, 0)
    else:
        for k in prange(nth):
            _pack_hh_t_block(w_hh, nth, out, k)


@serial
def _fwd_units(t, wp, bias_x, z, cells, gates, hs, save, k, nblocks, how, br):
    """Step t for block k (units a:b): one GEMM for their gates, then the pointwise cell update,
    then h_t[a:b] into hs[t + 1] in torch's (B, H) layout. bias_x (G, B): the packed bias
    repeated along the batch."""
    H = cells.shape[1]
    a, b = block(H, k, nblocks), block(H, k + 1, nblocks)
    B = z.shape[2]
    hk = b - a
    one = wp.dtype.type(1)
    two = wp.dtype.type(2)
    ts = t if save else 0
    cp = t if save else t & 1
    cn = t + 1 if save else (t + 1) & 1
    if how == BRGEMM:
        brgemm_dot(br, wp[4 * a : 4 * b], z[t], gates[ts, 4 * a : 4 * b])
    else:
        row_dot(wp[4 * a : 4 * b], z[t], gates[ts, 4 * a : 4 * b])
    # One flat loop over the block's hk*B (unit, row) pairs: each gate's rows are one contiguous
    # run of the block (i, f, g, o; module docstring), and so are the units' rows of cells and
    # z. A loop per unit would run only B iterations, which at small batches is all remainder
    # and no vector body.
    ne = hk * B
    gfl = gates.reshape(-1)
    bfl = bias_x.reshape(-1)
    cfl = cells.reshape(-1)
    zfl = z.reshape(-1)
    g0 = (ts * 4 * H + 4 * a) * B
    b0 = 4 * a * B
    c0 = (cp * H + a) * B
    c1 = (cn * H + a) * B
    h1 = ((t + 1) * z.shape[1] + a) * B
    gi, gf = gfl[g0 : g0 + ne], gfl[g0 + ne : g0 + 2 * ne]
    gg, go = gfl[g0 + 2 * ne : g0 + 3 * ne], gfl[g0 + 3 * ne : g0 + 4 * ne]
    bi, bf = bfl[b0 : b0 + ne], bfl[b0 + ne : b0 + 2 * ne]
    bg, bo = bfl[b0 + 2 * ne : b0 + 3 * ne], bfl[b0 + 3 * ne : b0 + 4 * ne]
    cprev, cnew, hz = cfl[c0 : c0 + ne], cfl[c1 : c1 + ne], zfl[h1 : h1 + ne]
    for e in range(ne):
        i = act_sigmoid(gi[e] + bi[e])
        f = act_sigmoid(gf[e] + bf[e])
        gv = two * act_sigmoid(gg[e] + bg[e]) - one
        o = act_sigmoid(go[e] + bo[e])
        gi[e] = i
        gf[e] = f
        gg[e] = gv
        go[e] = o
        c = f * cprev[e] + i * gv
        cnew[e] = c
        hz[e] = o * act_tanh(c)
    # h_t[a:b] into torch's layout while it is in L1: a transpose of all T steps after the loop
    # reads z back from L2 or memory (118 of 1960 us of a d2l forward)
    _transpose(z[t + 1, a:b], hs[t + 1, :, a:b], False)


@serial
def _load_x(x2, z, H, k, nblocks):
    """z[t, H:] <- x_t transposed and the zero padding, for the steps of block k."""
    T = z.shape[0] - 1
    B = z.shape[2]
    I = x2.shape[1]
    zero = z.dtype.type(0)
    for t in range(block(T, k, nblocks), block(T, k + 1, nblocks)):
        zt = z[t]
        _transpose(x2[t * B : (t + 1) * B], zt[H : H + I], False)
        for i in range(H + I, z.shape[1]):
            pad = zt[i]
            for n in range(B):
                pad[n] = zero


@parallel
def forward(x2, h0, c0, wp, bp, hs, z, cells, gates, save, nth, br, br_ok):
    """hs[1:] <- outputs; returns the final cell state (B, H). Buffers: see the module doc.
    br: oneDNN's brgemm (onednn.BRGEMM), used where forward_gemm says when br_ok."""
    T = hs.shape[0] - 1
    B, H = h0.shape
    if nth == 1:  # inline: no thread pool
        _load_x(x2, z, H, 0, 1)
    else:
        for k in prange(nth):  # transpose x into z
            _load_x(x2, z, H, k, nth)
    _transpose(h0, z[0, :H], False)
    _transpose(c0, cells[0], False)
    hs[0] = h0
    bias_x = np.empty((wp.shape[0], B), x2.dtype)
    for r in range(wp.shape[0]):
        for n in range(B):
            bias_x[r, n] = bp[r]
    how = forward_gemm(B, br_ok and H + x2.shape[1] > 0)
    for t in range(T):
        if nth == 1:
            _fwd_units(t, wp, bias_x, z, cells, gates, hs, save, 0, 1, how, br)
        else:
            for k in prange(nth):
                _fwd_units(t, wp, bias_x, z, cells, gates, hs, save, k, nth, how, br)
    last = T if save else T & 1
    c_n = np.empty((B, H), x2.dtype)
    _transpose(cells[last], c_n, False)
    return c_n


@serial
def _bwd_units(t, dh, dc, cells, gates, dg, dgT, dg_all, nt, a, b):
    """Gate gradients of step t for units a:b (dh holds dL/dh_t, transposed: from the later
    steps and y_t): into dg[t & 1] (G, B) in packed row order, then copied to dg_all in torch's
    row order and, when the next GEMM is dot_nt (`nt`), to dgT[t & 1] (B, G)."""
    H, B = dh.shape
    hk = b - a
    one = dh.dtype.type(1)
    p = t & 1
    # one flat loop over the block's hk*B pairs, as in _fwd_units: each gate's rows are one
    # contiguous run, and so are the units' rows of cells, dh and dc
    ne = hk * B
    g0 = (t * 4 * H + 4 * a) * B
    d0 = (p * dg.shape[1] + 4 * a) * B  # dg's rows are padded (lstm_gemm.padded_rows)
    gfl = gates.reshape(-1)
    dfl = dg.reshape(-1)
    cfl = cells.reshape(-1)
    gi, gf = gfl[g0 : g0 + ne], gfl[g0 + ne : g0 + 2 * ne]
    gg, go = gfl[g0 + 2 * ne : g0 + 3 * ne], gfl[g0 + 3 * ne : g0 + 4 * ne]
    di, df = dfl[d0 : d0 + ne], dfl[d0 + ne : d0 + 2 * ne]
    dgg, do = dfl[d0 + 2 * ne : d0 + 3 * ne], dfl[d0 + 3 * ne : d0 + 4 * ne]
    c_now = cfl[((t + 1) * H + a) * B : ((t + 1) * H + b) * B]
    cprev = cfl[(t * H + a) * B : (t * H + b) * B]
    dhr = dh.reshape(-1)[a * B : b * B]
    dcr = dc.reshape(-1)[a * B : b * B]
    for e in range(ne):
        i = gi[e]
        f = gf[e]
        g = gg[e]
        o = go[e]
        tc = act_tanh(c_now[e])  # recomputed: cheaper than saving tanh(c) to memory
        dht = dhr[e]
        dct = dcr[e] + dht * o * (one - tc * tc)
        dcr[e] = dct * f
        di[e] = dct * g * i * (one - i)
        df[e] = dct * cprev[e] * f * (one - f)
        dgg[e] = dct * i * (one - g * g)
        do[e] = dht * tc * o * (one - o)
    # all steps, for the weight gradients: torch's row order, gate q of unit j is row q*H + j
    dgp = dg[p]
    for q in range(4):
        for u in range(hk):
            src = dgp[4 * a + q * hk + u]
            dst = dg_all[q * H + a + u, t * B : (t + 1) * B]
            for n in range(B):
                dst[n] = src[n]
    if nt:  # the next step's dot_nt operand, batch-major (tiles: 1.8 us here at B = 8, hk = 128,
        # against 3.7 for a loop over the batch)
        _transpose(dgp[4 * a : 4 * b], dgT[p, :, 4 * a : 4 * b], False)


@serial
def _bwd_step_units(t, dy, dh, dc, cells, gates, wpT, dg, dgT, dg_all, how, br, k, nblocks):
    T, H = dy.shape[0], dy.shape[2]
    a, b = block(H, k, nblocks), block(H, k + 1, nblocks)
    if t < T - 1:  # dL/dh_t through step t+1's gates (all of them: after the join)
        backward_dot(wpT[a:b], dg[(t + 1) & 1], dgT[(t + 1) & 1], dh[a:b], how, br)
    # plus y_t's gradient, transposed while dh's block is in L1 (a transpose of all of dy before
    # the loop wrote and read back a (T, H, B) copy: 183 of about 2000 us at the d2l size)
    _transpose(dy[t, :, a:b], dh[a:b], True)
    _bwd_units(t, dh, dc, cells, gates, dg, dgT, dg_all, how == DOT_NT, a, b)


@parallel
def backward(dy, dh_T, dc_T, cells, gates, wpT, need_dh0, need_db, nth, dg, dgT, dg_all, br, br_ok):
    """dg_all (G, T*B) <- every step's gate gradients in torch's row order; returns db (G,)
    (torch's order), dh0, dc0 (B, H). Scratch: dg (2, Gs, B), dgT (2, B, G). dy: C-contiguous.

    wpT (H, Gs) = pack_hh_t(w_hh), zeros beyond G: thread k's rows a:b give
    dh_{t-1}[a:b] = wpT[a:b] @ dg_t. Gs = lstm_gemm.padded_rows(G): the row stride of wpT."""
    T, B, H = dy.shape
    G = 4 * H
    dt = dy.dtype
    dh = np.empty((H, B), dt)
    dc = np.empty((H, B), dt)
    _transpose(dh_T, dh, False)
    _transpose(dc_T, dc, False)
    db = np.zeros(G, dt)
    dg[:, G:, :] = 0  # the pad rows (lstm_gemm.padded_rows): OpenBLAS multiplies them
    how = backward_gemm(block(H, 1, nth), G, B, dg.itemsize, br_ok)
    if nth == 1:  # inline: no thread pool
        for t in range(T - 1, -1, -1):
            _bwd_step_units(t, dy, dh, dc, cells, gates, wpT, dg, dgT, dg_all, how, br, 0, 1)
        if need_dh0:
            backward_dot(wpT, dg[0], dgT[0], dh, how, br)
        if need_db:
            _row_sums(dg_all, db, 0, 1)
    else:
        for t in range(T - 1, -1, -1):
            for k in prange(nth):
                _bwd_step_units(t, dy, dh, dc, cells, gates, wpT, dg, dgT, dg_all, how, br, k, nth)
        if need_dh0:
            for k in prange(nth):
                a, b = block(H, k, nth), block(H, k + 1, nth)
                backward_dot(wpT[a:b], dg[0], dgT[0], dh[a:b], how, br)
        if need_db:
            for k in prange(nth):
                _row_sums(dg_all, db, k, nth)
    dh0 = np.empty((B, H), dt)
    dc0 = np.empty((B, H), dt)
    if need_dh0:
        _transpose(dh, dh0, False)
        _transpose(dc, dc0, False)
    return db, dh0, dc0


@serial
def _row_sums(m, out, k, nblocks):
    """out[r] = sum of row r of m, for block k of the rows (the bias gradient from dg_all)."""
    R = m.shape[0]
    for r in range(block(R, k, nblocks), block(R, k + 1, nblocks)):
        row = m[r]
        s = m.dtype.type(0)
        for c in range(m.shape[1]):
            s += row[c]
        out[r] = s


@serial
def _step_units(wp, bp, z, c, out, k, nblocks):
    H = c.shape[0]
    a, b = block(H, k, nblocks), block(H, k + 1, nblocks)
    hk = b - a
    one = wp.dtype.type(1)
    two = wp.dtype.type(2)
    g = np.dot(wp[4 * a : 4 * b], z)
    for r in range(4 * hk):
        g[r] = act_sigmoid(g[r] + bp[4 * a + r])
    for u in range(hk):
        j = a + u
        c_new = g[hk + u] * c[j] + g[u] * (two * g[2 * hk + u] - one)
        h = g[3 * hk + u] * act_tanh(c_new)
        out[0, j] = h
        out[1, j] = h
        out[2, j] = c_new


@parallel
def step(x, h, c, wp, bp, out, nth):
    """x (I,), h, c (H,) -> out (3, H): y, h_1, c_1. Each thread's GEMV reads only its own
    rows of the packed weights (512 KB at H = 256 over two threads), which stay in its core's
    L2 from one step to the next; one fork/join per step when nth > 1."""
    H = h.shape[0]
    z = np.zeros(wp.shape[1], wp.dtype)  # [h; x; zero padding]
    z[:H] = h
    z[H : H + x.shape[0]] = x
    if nth == 1:  # inline: no thread pool (threads.py decides)
        _step_units(wp, bp, z, c, out, 0, 1)
    else:
        for k in prange(nth):
            _step_units(wp, bp, z, c, out, k, nth)
