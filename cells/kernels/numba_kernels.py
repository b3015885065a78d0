"""The @njit kernels of backend `numba`: forward and backward of one layer, one direction.

Layout (time-major, C-contiguous; G = gates * H):

* `x2`  (T*B, I): the layer input, flattened over time and batch.
* `hs`  (T+1, B, H): hs[0] = h_0, hs[t+1] = h_t; the caller hands hs[1:] to torch as the output,
  and the backward uses hs[:T] (the h_{t-1} of every step) as one (T*B, H) matrix.
* LSTM: `gates` (T, B, 4H): the recurrent GEMM of step t writes into gates[t], the pointwise
  loop turns it in place into i, f, g, o; `tcs` (T, B, H) tanh(c_t); `cs` (T+1, B, H) cells.
  Without saving (inference) gates and tcs are (1, B, .) scratch and cs a (2, B, H) ping-pong.
* GRU: `acts` (T, B, 4H): r, z, n, W_hn h + b_hn. RNN: nothing beyond hs (h is enough).

GEMMs go through np.dot, i.e. scipy's BLAS: the input projection of all steps is one GEMM
before the loop; per step one recurrent GEMM for all gates; in the backward one GEMM per step
for dh_{t-1}, then dW_ih, dW_hh and dx as one GEMM each over all T*B rows. Bias gradients are
summed in the pointwise loop. The pointwise loops run over contiguous rows of H elements so
LLVM vectorises them; in float32 sigmoid and tanh are a branch-free rational approximation
(no libm call, so it vectorises; max abs error 3.6e-7 ~ 6 ulp), in float64 libm's exp / tanh
(full precision, as float64's 1e-10 tolerance needs).
"""
from __future__ import annotations

import numpy as np
from numba import njit, types
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


# --- LSTM ------------------------------------------------------------------------------
@njit(**OPTS)
def lstm_forward(x2, h0, c0, w_ih, w_hh, b_ih, b_hh, hs, cs, gates, tcs, save):
    """hs[1:] <- outputs, cs <- cells; gates <- i, f, g, o and tcs <- tanh(c) per step when
    `save` (else gates, tcs are (1, B, .) scratch and cs a (2, B, H) ping-pong buffer).

    tanh(a) = 2 sigmoid(2a) - 1: the g rows of W_hh, W_ih and the bias are doubled (exact), so
    one flat sigmoid loop covers all four gates of a step, then g = 2 s - 1."""
    B, H = h0.shape
    TB = x2.shape[0]
    T = TB // B
    G = 4 * H
    one = x2.dtype.type(1)
    two = x2.dtype.type(2)
    scale = np.ones(G, x2.dtype)
    scale[2 * H:3 * H] = two
    bias = (b_ih + b_hh) * scale
    w = w_hh.copy()
    w[2 * H:3 * H] *= two
    xw = np.dot(x2, w_ih.T)
    for r in range(TB):
        row = xw[r]
        for k in range(G):
            row[k] = row[k] * scale[k] + bias[k]
    xflat = xw.reshape(TB * G)
    hs[0] = h0
    cs[0] = c0
    for t in range(T):
        ts = t if save else 0
        cp = t if save else t & 1
        cn = t + 1 if save else (t + 1) & 1
        g = gates[ts]
        np.dot(hs[t], w.T, g)  # the GEMM writes the gate rows in place
        gf = g.reshape(B * G)
        base = t * B * G
        for k in range(B * G):
            gf[k] = act_sigmoid(gf[k] + xflat[base + k])
        for b in range(B):
            gr = g[b]
            cprev = cs[cp, b]
            cnew = cs[cn, b]
            hnew = hs[t + 1, b]
            tr = tcs[ts, b]
            for j in range(H):
                gg = two * gr[2 * H + j] - one
                gr[2 * H + j] = gg
                c = gr[H + j] * cprev[j] + gr[j] * gg
                tc = act_tanh(c)
                cnew[j] = c
                tr[j] = tc
                hnew[j] = gr[3 * H + j] * tc
    return one


@njit(**OPTS)
def lstm_backward(dy, dhT, dcT, x2, hs, cs, gates, tcs, w_ih, w_hh, need_dx, need_dh0, need_dw):
    """Returns dx2 (T*B, I), dh0, dc0, dw_ih, dw_hh, db (db = d b_ih = d b_hh)."""
    T, B, H = dy.shape
    G = 4 * H
    one = dy.dtype.type(1)
    dG = np.empty((T, B, G), dy.dtype)
    dh = np.empty((B, H), dy.dtype)
    dh[:] = dhT
    dc = np.empty((B, H), dy.dtype)
    dc[:] = dcT
    db = np.zeros(G, dy.dtype)
    for t in range(T - 1, -1, -1):
        for b in range(B):
            ar = gates[t, b]
            tr = tcs[t, b]
            dyr = dy[t, b]
            dhr = dh[b]
            dcr = dc[b]
            cprev = cs[t, b]
            dgr = dG[t, b]
            for j in range(H):
                i = ar[j]
                f = ar[H + j]
                g = ar[2 * H + j]
                o = ar[3 * H + j]
                tc = tr[j]
                dht = dhr[j] + dyr[j]
                dct = dcr[j] + dht * o * (one - tc * tc)
                dgo = dht * tc * o * (one - o)
                dgi = dct * g * i * (one - i)
                dgf = dct * cprev[j] * f * (one - f)
                dgg = dct * i * (one - g * g)
                dcr[j] = dct * f
                dgr[j] = dgi
                dgr[H + j] = dgf
                dgr[2 * H + j] = dgg
                dgr[3 * H + j] = dgo
            if need_dw:
                for k in range(G):
                    db[k] += dgr[k]
        if t > 0 or need_dh0:
            np.dot(dG[t], w_hh, dh)
    dG2 = dG.reshape(T * B, G)
    dx2 = np.dot(dG2, w_ih) if need_dx else np.empty((0, 0), dy.dtype)
    if need_dw:
        dw_ih = np.dot(dG2.T, x2)
        dw_hh = np.dot(dG2.T, hs[:T].reshape(T * B, H))
    else:
        dw_ih = np.empty((0, 0), dy.dtype)
        dw_hh = np.empty((0, 0), dy.dtype)
    return dx2, dh, dc, dw_ih, dw_hh, db


# --- GRU -------------------------------------------------------------------------------
@njit(**OPTS)
def gru_forward(x2, h0, w_ih, w_hh, b_ih, b_hh, hs, acts, save):
    """hs[1:] <- outputs; saves r, z, n, W_hn h + b_hn in acts when `save`."""
    B, H = h0.shape
    T = x2.shape[0] // B
    G = 3 * H
    one = x2.dtype.type(1)
    bias = np.empty(G, x2.dtype)  # b_ih + b_hh for r and z; b_in alone for n
    bias[:2 * H] = b_ih[:2 * H] + b_hh[:2 * H]
    bias[2 * H:] = b_ih[2 * H:]
    bhn = b_hh[2 * H:]
    xw = np.dot(x2, w_ih.T)
    hw = np.empty((B, G), x2.dtype)
    hs[0] = h0
    for t in range(T):
        np.dot(hs[t], w_hh.T, hw)
        ts = t if save else 0
        for b in range(B):
            xr = xw[t * B + b]
            hr = hw[b]
            ar = acts[ts, b]
            hprev = hs[t, b]
            hnew = hs[t + 1, b]
            for j in range(H):
                r = act_sigmoid(xr[j] + hr[j] + bias[j])
                z = act_sigmoid(xr[H + j] + hr[H + j] + bias[H + j])
                hn = hr[2 * H + j] + bhn[j]
                n = act_tanh(xr[2 * H + j] + bias[2 * H + j] + r * hn)
                hnew[j] = n + z * (hprev[j] - n)
                ar[j] = r
                ar[H + j] = z
                ar[2 * H + j] = n
                ar[G + j] = hn
    return one


@njit(**OPTS)
def gru_backward(dy, dhT, x2, hs, acts, w_ih, w_hh, need_dx, need_dh0, need_dw):
    """Returns dx2, dh0, dw_ih, dw_hh, db_ih, db_hh."""
    T, B, H = dy.shape
    G = 3 * H
    one = dy.dtype.type(1)
    dGx = np.empty((T, B, G), dy.dtype)
    dGh = np.empty((T, B, G), dy.dtype)
    dh = np.empty((B, H), dy.dtype)  # the part of dh_{t} that does not go through W_hh
    dh[:] = dhT
    dhw = np.zeros((B, H), dy.dtype)  # dGh_{t+1} @ W_hh
    db_ih = np.zeros(G, dy.dtype)
    db_hh = np.zeros(G, dy.dtype)
    for t in range(T - 1, -1, -1):
        for b in range(B):
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
                n = ar[2 * H + j]
                hn = ar[G + j]
                dht = dhr[j] + dwr[j] + dyr[j]
                dnp = dht * (one - z) * (one - n * n)
                dzp = dht * (hprev[j] - n) * z * (one - z)
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
        if t > 0 or need_dh0:
            np.dot(dGh[t], w_hh, dhw)
    if need_dh0:
        dh += dhw
    Gx2 = dGx.reshape(T * B, G)
    Gh2 = dGh.reshape(T * B, G)
    dx2 = np.dot(Gx2, w_ih) if need_dx else np.empty((0, 0), dy.dtype)
    if need_dw:
        dw_ih = np.dot(Gx2.T, x2)
        dw_hh = np.dot(Gh2.T, hs[:T].reshape(T * B, H))
    else:
        dw_ih = np.empty((0, 0), dy.dtype)
        dw_hh = np.empty((0, 0), dy.dtype)
    return dx2, dh, dw_ih, dw_hh, db_ih, db_hh


# --- RNN (tanh / relu) -----------------------------------------------------------------
@njit(**OPTS)
def rnn_forward(x2, h0, w_ih, w_hh, b_ih, b_hh, hs, relu):
    """hs[1:] <- outputs (the backward needs nothing else)."""
    B, H = h0.shape
    T = x2.shape[0] // B
    one = x2.dtype.type(1)
    zero = x2.dtype.type(0)
    bias = b_ih + b_hh
    xw = np.dot(x2, w_ih.T)
    hw = np.empty((B, H), x2.dtype)
    hs[0] = h0
    for t in range(T):
        np.dot(hs[t], w_hh.T, hw)
        for b in range(B):
            xr = xw[t * B + b]
            hr = hw[b]
            hnew = hs[t + 1, b]
            if relu:
                for j in range(H):
                    p = xr[j] + hr[j] + bias[j]
                    hnew[j] = p if p > zero else (zero if p <= zero else p)  # NaN stays NaN
            else:
                for j in range(H):
                    hnew[j] = act_tanh(xr[j] + hr[j] + bias[j])
    return one


@njit(**OPTS)
def rnn_backward(dy, dhT, x2, hs, w_ih, w_hh, relu, need_dx, need_dh0, need_dw):
    """Returns dx2, dh0, dw_ih, dw_hh, db (= d b_ih = d b_hh)."""
    T, B, H = dy.shape
    one = dy.dtype.type(1)
    zero = dy.dtype.type(0)
    dG = np.empty((T, B, H), dy.dtype)
    dh = np.empty((B, H), dy.dtype)
    dh[:] = dhT
    db = np.zeros(H, dy.dtype)
    for t in range(T - 1, -1, -1):
        for b in range(B):
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
        if t > 0 or need_dh0:
            np.dot(dG[t], w_hh, dh)
    G2 = dG.reshape(T * B, H)
    dx2 = np.dot(G2, w_ih) if need_dx else np.empty((0, 0), dy.dtype)
    if need_dw:
        dw_ih = np.dot(G2.T, x2)
        dw_hh = np.dot(G2.T, hs[:T].reshape(T * B, H))
    else:
        dw_ih = np.empty((0, 0), dy.dtype)
        dw_hh = np.empty((0, 0), dy.dtype)
    return dx2, dh, dw_ih, dw_hh, db


# --- one step at batch 1 (generation): matrix-vector products, no scratch saved ----------
@njit(**OPTS)
def lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh, out):
    """x (I,), h, c (H,) -> out (3, H): y, h_1, c_1 (y and h_1 equal, as torch.nn returns both)."""
    H = h.shape[0]
    gx = np.dot(w_ih, x)
    gh = np.dot(w_hh, h)
    y = out[0]
    hn = out[1]
    cn = out[2]
    for j in range(H):
        i = act_sigmoid(gx[j] + gh[j] + b_ih[j] + b_hh[j])
        f = act_sigmoid(gx[H + j] + gh[H + j] + b_ih[H + j] + b_hh[H + j])
        g = act_tanh(gx[2 * H + j] + gh[2 * H + j] + b_ih[2 * H + j] + b_hh[2 * H + j])
        o = act_sigmoid(gx[3 * H + j] + gh[3 * H + j] + b_ih[3 * H + j] + b_hh[3 * H + j])
        cc = f * c[j] + i * g
        cn[j] = cc
        hh = o * act_tanh(cc)
        y[j] = hh
        hn[j] = hh


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
