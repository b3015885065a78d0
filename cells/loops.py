"""Fused time loops, one per kind, written in TorchScript's subset so that backends `fused`
(eager), `scripted` (torch.jit.script) and `compiled` (torch.compile) run the same code.

The input projection of all time steps is one GEMM with the biases folded in; each step is
then one recurrent GEMM that produces every gate, split with chunk. GRU keeps b_hn out of the
fold because r multiplies (W_hn h + b_hn).
"""

from __future__ import annotations

import torch
from torch import Tensor


def project_input(x: Tensor, w_ih: Tensor, bias: Tensor | None) -> Tensor:
    """x (T, B, I) -> x W_ih^T + bias, (T, B, G*H), as one GEMM."""
    flat = x.reshape(-1, x.size(2))
    out = flat.matmul(w_ih.t()) if bias is None else torch.addmm(bias, flat, w_ih.t())
    return out.view(x.size(0), x.size(1), w_ih.size(0))


def _summed_bias(b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor | None:
    """b_ih + b_hh, folded into the input projection (None without bias)."""
    if b_ih is not None and b_hh is not None:
        return b_ih + b_hh
    return None


def _lstm_cell(xw_t: Tensor, h: Tensor, c: Tensor, w_hh_t: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM step from the projected input: (o * tanh(c'), c')."""
    gates = torch.addmm(xw_t, h, w_hh_t)
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def rnn_loop(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    relu: bool,
) -> tuple[Tensor, Tensor]:
    w_hh_t = w_hh.t()
    outputs: list[Tensor] = []
    for xw_t in project_input(x, w_ih, _summed_bias(b_ih, b_hh)).unbind(0):
        pre = torch.addmm(xw_t, h, w_hh_t)
        h = torch.relu(pre) if relu else torch.tanh(pre)
        outputs.append(h)
    return torch.stack(outputs), h


def gru_loop(
    x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None
) -> tuple[Tensor, Tensor]:
    hidden = h.size(1)
    bias: Tensor | None = None
    b_hn: Tensor | None = None
    if b_ih is not None and b_hh is not None:
        bias = b_ih + torch.cat([b_hh[: 2 * hidden], torch.zeros_like(b_hh[2 * hidden :])])
        b_hn = b_hh[2 * hidden :]
    w_hh_t = w_hh.t()
    outputs: list[Tensor] = []
    for xw_t in project_input(x, w_ih, bias).unbind(0):
        hw = h.matmul(w_hh_t)
        x_r, x_z, x_n = xw_t.chunk(3, 1)
        h_r, h_z, h_n = hw.chunk(3, 1)
        if b_hn is not None:
            h_n = h_n + b_hn
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h = n + z * (h - n)
        outputs.append(h)
    return torch.stack(outputs), h


def lstm_loop(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """LSTM; with w_hr, torch.nn's proj_size: h = W_hr (o * tanh(c)), h is (B, P)."""
    w_hh_t = w_hh.t()
    w_hr_t: Tensor | None = None if w_hr is None else w_hr.t()
    outputs: list[Tensor] = []
    for xw_t in project_input(x, w_ih, _summed_bias(b_ih, b_hh)).unbind(0):
        h, c = _lstm_cell(xw_t, h, c, w_hh_t)
        if w_hr_t is not None:
            h = h.matmul(w_hr_t)
        outputs.append(h)
    return torch.stack(outputs), h, c


# the name the backends look up for proj_size: the same loop, given w_hr
lstmp_loop = lstm_loop
