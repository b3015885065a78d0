"""Candidates that pass equivalence but break one clause of torch.nn's contract (bench/contract.py).

Each is the correct stepwise kernel (stepwise.py, only torch) with one planted mistake that a
single forward and backward pass on a fresh module never shows:

| class | contract check | planted bug |
|---|---|---|
| Float64OutLSTM | dtype-device | computes in float64 and returns float64 for float32 input |
| HxWriteBackLSTM | inputs-unchanged | writes the final state into the caller's hx when hx has no grad |
| AsStridedLSTM | non-contiguous | reads the input's storage as if it were contiguous (as_strided) |
| HxIgnoredWithoutGradLSTM | requires-grad | ignores hx (starts from zeros) when hx does not require grad |
| GradScratchLSTM | grad-accumulation | uses an existing `.grad` as scratch space for dW_ih |
| CarriedStateLSTM | same-call-twice | hx=None continues from the previous call's final state |
| FirstBatchLSTM | new-shapes | the zero initial state is made for the first call's batch and reused |
| DropoutInEvalLSTM | train-eval | applies inter-layer dropout in eval mode too |
| ThreadDependentLSTM | thread-count | with more than one thread, gates are rounded through float32 |
| NondeterministicLSTM | determinism | adds the four gate terms in a random order (as atomics would) |
| CallCounterLSTM | state-dict | registers a persistent call counter at the first forward |
| PackedAtFirstCallLSTM | module-copies | packs [W_ih W_hh] at the first call and keeps using that tensor |
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from .stepwise import StepLSTM


def _states(hx):
    return None if hx is None else tuple(hx)


class Float64OutLSTM(StepLSTM):
    def weights(self, layer, direction):
        return tuple(None if w is None else w.double() for w in super().weights(layer, direction))

    def forward(self, input, hx=None):  # no cast back to the input's dtype
        hx = None if hx is None else tuple(s.double() for s in hx)
        return super().forward(input.double(), hx)


class HxWriteBackLSTM(StepLSTM):
    def forward(self, input, hx=None):
        if hx is None:
            return super().forward(input, hx)
        output, (h, c) = super().forward(input, tuple(s.clone() for s in hx))
        if not hx[0].requires_grad:  # "saves an allocation" for the caller's next step
            with torch.no_grad():
                hx[0].copy_(h)
                hx[1].copy_(c)
        return output, (h, c)


class AsStridedLSTM(StepLSTM):
    def forward(self, input, hx=None):
        strides, step = [], 1
        for size in reversed(input.shape):
            strides.insert(0, step)
            step *= size
        return super().forward(torch.as_strided(input, input.shape, strides), hx)


class HxIgnoredWithoutGradLSTM(StepLSTM):
    def forward(self, input, hx=None):
        if hx is not None and not any(s.requires_grad for s in hx):
            hx = None
        return super().forward(input, hx)


class _ScratchGradProjection(torch.autograd.Function):
    """x @ W^T whose backward forms dW in W.grad's memory when that exists (then autograd adds
    the result to W.grad again): right for one .backward() from zeroed grads, wrong after."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        ctx.weight = w
        return x @ w.t()

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        scratch = ctx.weight.grad if ctx.weight.grad is not None else torch.empty_like(w)
        torch.mm(grad.t(), x, out=scratch)
        return grad @ w, scratch.clone()


class GradScratchLSTM(StepLSTM):
    def gates(self, x, h, w_ih, w_hh, b_ih, b_hh):
        gx = _ScratchGradProjection.apply(x, w_ih)
        return ((gx if b_ih is None else gx + b_ih) + self.affine(h, w_hh, b_hh)).chunk(4, dim=-1)


def _zero_state_shape(module: StepLSTM, input: Tensor) -> tuple:
    d = module.directions * module.num_layers
    if input.dim() == 2:
        return (d, module.hidden_size)
    return (d, input.shape[0 if module.batch_first else 1], module.hidden_size)


class CarriedStateLSTM(StepLSTM):
    _last = None

    def forward(self, input, hx=None):
        last = self._last
        if hx is None and last is not None and last[0].shape == _zero_state_shape(self, input):
            hx = last  # "stateful" by default: continues where the last call stopped
        output, final = super().forward(input, hx)
        self._last = tuple(s.detach() for s in final)
        return output, final


class FirstBatchLSTM(StepLSTM):
    _zeros = None

    def forward(self, input, hx=None):
        if hx is None:
            if self._zeros is None:
                self._zeros = torch.zeros(
                    _zero_state_shape(self, input), dtype=input.dtype, device=input.device
                )
            hx = (self._zeros, self._zeros)
        return super().forward(input, hx)


class DropoutInEvalLSTM(StepLSTM):
    def __init__(self, *args, dropout: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.dropout = float(dropout)
        self._layer = 0

    def weights(self, layer, direction):
        self._layer = layer
        return super().weights(layer, direction)

    def run_direction(self, xs, state, weights, reverse):
        if self._layer > 0 and self.dropout:
            if not reverse:  # one mask per layer input, shared by both directions
                ones = torch.ones_like(torch.stack(xs))
                self._mask = nn.functional.dropout(
                    ones, self.dropout, training=True
                )  # not self.training
            xs = [x * m for x, m in zip(xs, self._mask.unbind(0))]
        return super().run_direction(xs, state, weights, reverse)


class ThreadDependentLSTM(StepLSTM):
    def gates(self, x, h, w_ih, w_hh, b_ih, b_hh):
        pre = super().gates(x, h, w_ih, w_hh, b_ih, b_hh)
        if torch.get_num_threads() > 1:  # a "parallel fast path" in lower precision
            pre = tuple(p.float().to(p.dtype) for p in pre)
        return pre


class NondeterministicLSTM(StepLSTM):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)

    def gates(self, x, h, w_ih, w_hh, b_ih, b_hh):
        gx, gh = x @ w_ih.t(), h @ w_hh.t()
        if b_ih is None:
            return (gx + gh).chunk(4, dim=-1)
        one = ((gx + b_ih) + gh) + b_hh
        other = ((gh + b_hh) + gx) + b_ih
        pick = torch.rand(one.shape, generator=self._gen) < 0.5
        return torch.where(pick.to(one.device), one, other).chunk(4, dim=-1)


class CallCounterLSTM(StepLSTM):
    def forward(self, input, hx=None):
        if not hasattr(self, "calls"):
            self.register_buffer("calls", torch.zeros((), dtype=torch.long))  # persistent
        self.calls += 1
        return super().forward(input, hx)


class PackedAtFirstCallLSTM(StepLSTM):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._packed: dict = {}

    def weights(self, layer, direction):
        w_ih, w_hh, b_ih, b_hh = super().weights(layer, direction)
        key = (layer, direction)
        if key not in self._packed:  # never refreshed: stale after .double(), copies, new weights
            self._packed[key] = torch.cat([w_ih, w_hh], dim=1)
        return self._packed[key], w_ih.shape[1], b_ih, b_hh

    def gates(self, x, h, packed, width, b_ih, b_hh):
        pre = torch.cat([x, h], dim=-1) @ packed.t()
        for b in (b_ih, b_hh):
            pre = pre if b is None else pre + b
        return pre.chunk(4, dim=-1)
