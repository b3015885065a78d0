"""`native`: torch.nn.RNN / GRU / LSTM themselves (cuDNN on CUDA, oneDNN or ATen on CPU).

Only the shared input checks are added, so that every backend refuses bad input with the same
messages; the computation is torch.nn's own (PackedSequence, proj_size and autocast included).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..capabilities import Capabilities, backends_with
from ..checks import check_forward, check_packed


class _Checked:
    kind = ""
    backend = "native"
    # torch.nn's own module: ONNX export through torch.onnx's LSTM/GRU/RNN ops, torch.jit.script
    # through torch.nn's class; but aten::lstm/gru/rnn have no vmap batching rule
    capabilities = Capabilities(proj_size=True, script_in_model=True, onnx_export=True, vmap=False)

    def forward(self, input, hx=None):
        data = input.data if isinstance(input, PackedSequence) else input
        if (
            not torch.compiler.is_compiling()
            and isinstance(data, Tensor)
            and torch._C._functorch.is_functorch_wrapped_tensor(data)
        ):
            raise RuntimeError(
                "backend 'native' does not support torch.func transforms (vmap, grad, "
                f"jacrev): torch has no batching rule for aten::{self.kind}; backends "
                f"that do: {', '.join(backends_with('vmap', self.kind))}"
            )
        if isinstance(input, PackedSequence):
            check_packed(self, input.data, int(input.batch_sizes[0]), hx)
        else:
            check_forward(self, input, hx)
        return super().forward(input, hx)

    @classmethod
    def caps(cls) -> Capabilities:
        return cls.capabilities

    def __prepare_scriptable__(self):
        """torch.jit.script cannot compile this subclass's Python forward: script torch.nn's own
        class on the same parameters instead (shared, not copied)."""
        plain = copy.copy(self)
        plain.__class__ = self._torch_class
        return plain


class NativeRNN(_Checked, nn.RNN):
    kind = "rnn"
    _torch_class = nn.RNN


class NativeGRU(_Checked, nn.GRU):
    kind = "gru"
    _torch_class = nn.GRU


class NativeLSTM(_Checked, nn.LSTM):
    kind = "lstm"
    _torch_class = nn.LSTM


NATIVE = {"rnn": NativeRNN, "gru": NativeGRU, "lstm": NativeLSTM}
