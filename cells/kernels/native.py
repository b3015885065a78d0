"""`native`: torch.nn.RNN / GRU / LSTM themselves (cuDNN on CUDA, oneDNN or ATen on CPU).

Only the shared input checks are added, so that every backend refuses bad input with the same
messages; the computation is torch.nn's own.
"""
from __future__ import annotations

from torch import nn
from torch.nn.utils.rnn import PackedSequence

from ..checks import check_forward


class _Checked:
    kind = ""
    backend = "native"

    def forward(self, input, hx=None):
        if not isinstance(input, PackedSequence):
            check_forward(self, input, hx)
        return super().forward(input, hx)


class NativeRNN(_Checked, nn.RNN):
    kind = "rnn"


class NativeGRU(_Checked, nn.GRU):
    kind = "gru"


class NativeLSTM(_Checked, nn.LSTM):
    kind = "lstm"


NATIVE = {"rnn": NativeRNN, "gru": NativeGRU, "lstm": NativeLSTM}
