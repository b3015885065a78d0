"""`naive`: the textbook from-scratch cell (d2l's scratch `rnn()`, `gru()`, `lstm()`).

One weight matrix per gate, taken as a slice of the torch.nn-layout parameters (so gradients
land in torch.nn's tensors), separate matmuls per gate and per time step, in a Python loop.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..base import LayerWeights, RecurrentBase, State
from ..capabilities import Capabilities


def _per_gate(weights: LayerWeights, gates: int):
    """Split torch.nn's stacked rows into per-gate (W_x, W_h, b_x, b_h), transposed as d2l has them."""
    w_ih, w_hh, b_ih, b_hh = weights[:4]
    assert w_ih is not None and w_hh is not None
    out = []
    for w_x, w_h, k in zip(w_ih.chunk(gates), w_hh.chunk(gates), range(gates)):
        b_x = b_ih.chunk(gates)[k] if b_ih is not None else None
        b_h = b_hh.chunk(gates)[k] if b_hh is not None else None
        out.append((w_x.t(), w_h.t(), b_x, b_h))
    return out


def _affine(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    y = x @ w
    return y if b is None else y + b


class NaiveLoop(RecurrentBase):
    capabilities = Capabilities(proj_size=True)

    def run_layer(self, x: Tensor, state: State, weights: LayerWeights) -> tuple[Tensor, State]:
        outputs = []
        if self.kind == "lstm":
            (
                (wxi, whi, bxi, bhi),
                (wxf, whf, bxf, bhf),
                (wxg, whg, bxg, bhg),
                (wxo, who, bxo, bho),
            ) = _per_gate(weights, 4)
            w_hr = weights[4] if len(weights) > 4 else None  # proj_size: h = (o * tanh(c)) W_hr^T
            h, c = state
            for x_t in x:
                i = torch.sigmoid(_affine(x_t, wxi, bxi) + _affine(h, whi, bhi))
                f = torch.sigmoid(_affine(x_t, wxf, bxf) + _affine(h, whf, bhf))
                g = torch.tanh(_affine(x_t, wxg, bxg) + _affine(h, whg, bhg))
                o = torch.sigmoid(_affine(x_t, wxo, bxo) + _affine(h, who, bho))
                c = f * c + i * g
                h = o * torch.tanh(c)
                if w_hr is not None:
                    h = h @ w_hr.t()
                outputs.append(h)
            return torch.stack(outputs), (h, c)
        if self.kind == "gru":
            (wxr, whr, bxr, bhr), (wxz, whz, bxz, bhz), (wxn, whn, bxn, bhn) = _per_gate(weights, 3)
            (h,) = state
            for x_t in x:
                r = torch.sigmoid(_affine(x_t, wxr, bxr) + _affine(h, whr, bhr))
                z = torch.sigmoid(_affine(x_t, wxz, bxz) + _affine(h, whz, bhz))
                n = torch.tanh(_affine(x_t, wxn, bxn) + r * _affine(h, whn, bhn))
                h = (1 - z) * n + z * h
                outputs.append(h)
            return torch.stack(outputs), (h,)
        ((wxh, whh, bxh, bhh),) = _per_gate(weights, 1)
        act = torch.relu if self.nonlinearity == "relu" else torch.tanh
        (h,) = state
        for x_t in x:
            h = act(_affine(x_t, wxh, bxh) + _affine(h, whh, bhh))
            outputs.append(h)
        return torch.stack(outputs), (h,)
