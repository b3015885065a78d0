"""Candidate kernels with planted bugs. Each is a standalone torch.nn.Module (only torch is used).

Every class is the correct stepwise kernel with one deliberate mistake:

| class | kind | planted bug | what catches it |
|---|---|---|---|
| GateOrderLSTM | lstm | reads the gate rows as i, f, o, g instead of i, f, g, o | every config |
| GateOrderGRU | gru | reads the gate rows as z, r, n instead of r, z, n | every config |
| MissingBiasLSTM | lstm | never adds bias_hh | output error; bias_hh gets no gradient |
| UpperLayerBiasLSTM | lstm | adds no bias in layers above the first | only num_layers >= 2 |
| WrongFinalCellLSTM | lstm | returns tanh(c_T) as c_n | c_n and grad_hx[1] |
| TimeShiftLSTM | lstm | output[t] is the state before step t (h_{t-1}), off by one | output |
| WrongBackwardLSTM | lstm | exact forward, but tanh's backward is 1 - y, not 1 - y^2 | gradients only |
| DriftLSTM | lstm | c_t scaled by 1 + 3e-13 * t^2: invisible at 6 steps, shows at 200 | only long sequences |
| ResetBeforeMatmulGRU | gru | the other published GRU: n = tanh(W_in x + b_in + W_hn (r * h) + b_hn) | every config |
| StatelessRNN | rnn | every step starts from the initial state instead of h_{t-1} | seq_len >= 2 |
"""

from __future__ import annotations

import torch

from .stepwise import StepGRU, StepLSTM, StepRNN


class GateOrderLSTM(StepLSTM):
    def gates(self, x, h, w_ih, w_hh, b_ih, b_hh):
        i, f, o, g = super().gates(x, h, w_ih, w_hh, b_ih, b_hh)
        return i, f, g, o


class GateOrderGRU(StepGRU):
    def step(self, x, state, w_ih, w_hh, b_ih, b_hh, t):
        (h,) = state
        gx = self.affine(x, w_ih, b_ih).chunk(3, dim=-1)
        gh = self.affine(h, w_hh, b_hh).chunk(3, dim=-1)
        z = torch.sigmoid(gx[0] + gh[0])
        r = torch.sigmoid(gx[1] + gh[1])
        n = torch.tanh(gx[2] + r * gh[2])
        return ((1 - z) * n + z * h,)


class MissingBiasLSTM(StepLSTM):
    def gates(self, x, h, w_ih, w_hh, b_ih, b_hh):
        return (self.affine(x, w_ih, b_ih) + h @ w_hh.t()).chunk(4, dim=-1)


class UpperLayerBiasLSTM(StepLSTM):
    def weights(self, layer, direction):
        w_ih, w_hh, b_ih, b_hh = super().weights(layer, direction)
        return (w_ih, w_hh, b_ih, b_hh) if layer == 0 else (w_ih, w_hh, None, None)


class WrongFinalCellLSTM(StepLSTM):
    def run_direction(self, xs, state, weights, reverse):
        outputs, (h, c) = super().run_direction(xs, state, weights, reverse)
        return outputs, (h, torch.tanh(c))


class TimeShiftLSTM(StepLSTM):
    def run_direction(self, xs, state, weights, reverse):
        outputs = [None] * len(xs)
        steps = range(len(xs) - 1, -1, -1) if reverse else range(len(xs))
        for n, t in enumerate(steps):
            outputs[t] = state[0]  # off by one: recorded before the update
            state = self.step(xs[t], state, *weights, t=n)
        return outputs, state


class _TanhWrongGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y)  # should be 1 - y * y


class WrongBackwardLSTM(StepLSTM):
    def step(self, x, state, w_ih, w_hh, b_ih, b_hh, t):
        h, c = state
        i, f, g, o = self.gates(x, h, w_ih, w_hh, b_ih, b_hh)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * _TanhWrongGrad.apply(c), c


class DriftLSTM(StepLSTM):
    DRIFT = 3e-13  # times t^2: grows with the step index t

    def step(self, x, state, w_ih, w_hh, b_ih, b_hh, t):
        h, c = state
        i, f, g, o = self.gates(x, h, w_ih, w_hh, b_ih, b_hh)
        c = (torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)) * (1 + self.DRIFT * t * t)
        return torch.sigmoid(o) * torch.tanh(c), c


class ResetBeforeMatmulGRU(StepGRU):
    def step(self, x, state, w_ih, w_hh, b_ih, b_hh, t):
        (h,) = state
        gx = self.affine(x, w_ih, b_ih).chunk(3, dim=-1)
        w_hr, w_hz, w_hn = w_hh.chunk(3, dim=0)
        b_hr, b_hz, b_hn = (None,) * 3 if b_hh is None else b_hh.chunk(3)
        r = torch.sigmoid(gx[0] + self.affine(h, w_hr, b_hr))
        z = torch.sigmoid(gx[1] + self.affine(h, w_hz, b_hz))
        n = torch.tanh(gx[2] + self.affine(r * h, w_hn, b_hn))
        return ((1 - z) * n + z * h,)


class StatelessRNN(StepRNN):
    def run_direction(self, xs, state, weights, reverse):
        outputs = [None] * len(xs)
        steps = range(len(xs) - 1, -1, -1) if reverse else range(len(xs))
        final = state
        for n, t in enumerate(steps):
            final = self.step(xs[t], state, *weights, t=n)  # should start from `final`
            outputs[t] = final[0]
        return outputs, final
