"""Correct recurrent kernels written independently of `cells`: one explicit cell step at a time.

The loop walks the sequence one step at a time (a list of per-step tensors, no stacking inside the
loop), runs each direction of each layer separately, and keeps its own parameters with
torch.nn's names, shapes and initialisation, so that `state_dict()` moves to torch.nn.RNN / GRU /
LSTM. Supported: num_layers, bias, batch_first, bidirectional, hx given or None, unbatched input,
nonlinearity tanh/relu for the RNN. Not supported (raises at construction): dropout, proj_size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class _Stepwise(nn.Module):
    GATES = 0  # rows of the weight matrices in units of hidden_size
    STATES = 1  # 1: h, 2: (h, c)

    # torch.nn's keyword arguments; dropout and proj_size are accepted only at their defaults
    OPTIONS = dict(
        bias=True, batch_first=False, dropout=0.0, bidirectional=False, proj_size=0,
        device=None, dtype=None, nonlinearity="tanh",
    )  # fmt: skip

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, **options):
        super().__init__()
        if set(options) - set(self.OPTIONS):
            raise TypeError(f"unexpected arguments: {sorted(set(options) - set(self.OPTIONS))}")
        given = {**self.OPTIONS, **options}
        bias, batch_first, bidirectional = (
            given["bias"],
            given["batch_first"],
            given["bidirectional"],
        )
        nonlinearity, device, dtype = given["nonlinearity"], given["device"], given["dtype"]
        if given["dropout"]:
            raise ValueError("this kernel does not implement dropout")
        if given["proj_size"]:
            raise ValueError("this kernel does not implement proj_size")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.nonlinearity = nonlinearity
        self.directions = 2 if bidirectional else 1
        bound = 1.0 / math.sqrt(hidden_size)
        for layer in range(num_layers):
            width = input_size if layer == 0 else hidden_size * self.directions
            for direction in range(self.directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                shapes = {
                    "weight_ih": (self.GATES * hidden_size, width),
                    "weight_hh": (self.GATES * hidden_size, hidden_size),
                }
                if bias:
                    shapes.update(
                        bias_ih=(self.GATES * hidden_size,), bias_hh=(self.GATES * hidden_size,)
                    )
                for stem, shape in shapes.items():
                    p = nn.Parameter(
                        torch.empty(shape, device=device, dtype=dtype).uniform_(-bound, bound)
                    )
                    self.register_parameter(stem + suffix, p)

    def weights(self, layer: int, direction: int):
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        get = lambda stem: getattr(self, stem + suffix, None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    @staticmethod
    def affine(x: Tensor, w: Tensor, b) -> Tensor:
        y = x @ w.t()
        return y if b is None else y + b

    def step(self, x: Tensor, state: tuple, w_ih, w_hh, b_ih, b_hh, t: int) -> tuple:
        """One time step of one layer and direction: returns the new state tuple."""
        raise NotImplementedError

    def run_direction(self, xs: list, state: tuple, weights, reverse: bool):
        """Outputs (one per step, in input order) and the final state."""
        outputs = [None] * len(xs)
        steps = range(len(xs) - 1, -1, -1) if reverse else range(len(xs))
        for n, t in enumerate(steps):
            state = self.step(xs[t], state, *weights, t=n)
            outputs[t] = state[0]
        return outputs, state

    def forward(self, input: Tensor, hx=None):
        unbatched = input.dim() == 2
        if unbatched:
            x = input.unsqueeze(1)
        else:
            x = input.transpose(0, 1) if self.batch_first else input
        batch = x.shape[1]
        if hx is None:
            zeros = torch.zeros(
                self.num_layers * self.directions,
                batch,
                self.hidden_size,
                dtype=input.dtype,
                device=input.device,
            )
            states = (zeros,) * self.STATES
        else:
            states = tuple(hx) if isinstance(hx, (tuple, list)) else (hx,)
            if unbatched:
                states = tuple(s.unsqueeze(1) for s in states)
        xs = list(x.unbind(0))
        finals = [[] for _ in range(self.STATES)]
        for layer in range(self.num_layers):
            per_direction = []
            for direction in range(self.directions):
                index = layer * self.directions + direction
                outs, final = self.run_direction(
                    xs,
                    tuple(s[index] for s in states),
                    self.weights(layer, direction),
                    bool(direction),
                )
                per_direction.append(outs)
                for store, s in zip(finals, final):
                    store.append(s)
            xs = (
                per_direction[0]
                if self.directions == 1
                else [torch.cat(pair, dim=-1) for pair in zip(*per_direction)]
            )
        output = torch.stack(xs)
        final_states = [torch.stack(store) for store in finals]
        if unbatched:
            output = output.squeeze(1)
            final_states = [s.squeeze(1) for s in final_states]
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, (tuple(final_states) if self.STATES == 2 else final_states[0])


class StepRNN(_Stepwise):
    GATES, STATES = 1, 1

    def step(self, x, state, w_ih, w_hh, b_ih, b_hh, t):
        pre = self.affine(x, w_ih, b_ih) + self.affine(state[0], w_hh, b_hh)
        return (torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre),)


class StepGRU(_Stepwise):
    GATES, STATES = 3, 1

    def step(self, x, state, w_ih, w_hh, b_ih, b_hh, t):
        (h,) = state
        gx = self.affine(x, w_ih, b_ih).chunk(3, dim=-1)
        gh = self.affine(h, w_hh, b_hh).chunk(3, dim=-1)
        r = torch.sigmoid(gx[0] + gh[0])
        z = torch.sigmoid(gx[1] + gh[1])
        n = torch.tanh(gx[2] + r * gh[2])
        return (n + z * (h - n),)


class StepLSTM(_Stepwise):
    GATES, STATES = 4, 2

    def gates(self, x, h, w_ih, w_hh, b_ih, b_hh):
        """Pre-activations split in torch.nn's row order i, f, g, o."""
        return (self.affine(x, w_ih, b_ih) + self.affine(h, w_hh, b_hh)).chunk(4, dim=-1)

    def step(self, x, state, w_ih, w_hh, b_ih, b_hh, t):
        h, c = state
        i, f, g, o = self.gates(x, h, w_ih, w_hh, b_ih, b_hh)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


def make_gru(input_size, hidden_size, **kwargs) -> nn.Module:
    """A factory (not a class): validate accepts either."""
    return StepGRU(input_size, hidden_size, **kwargs)


class NoBidirLSTM(StepLSTM):
    """Correct, but refuses bidirectional=True at construction (an unsupported option)."""

    def __init__(self, *args, bidirectional=False, **kwargs):
        if bidirectional:
            raise NotImplementedError("NoBidirLSTM does not support bidirectional=True")
        super().__init__(*args, **kwargs)
