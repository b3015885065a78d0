"""Backend "copy": torch.nn itself under another name, optionally slowed down (for the speed gate).

Importing this module registers "copy" for rnn, gru and lstm. Each forward call sleeps
$CELLBENCH_TEST_SLEEP_S seconds (read at call time; default 0), so one registered copy serves as
both the unchanged rerun and the artificially slowed backend.
"""

from __future__ import annotations

import os
import time

from torch import nn


def _sleep() -> None:
    seconds = float(os.environ.get("CELLBENCH_TEST_SLEEP_S", "0") or 0)
    if seconds > 0:
        time.sleep(seconds)


class CopyRNN(nn.RNN):
    def forward(self, input, hx=None):
        _sleep()
        return super().forward(input, hx)


class CopyGRU(nn.GRU):
    def forward(self, input, hx=None):
        _sleep()
        return super().forward(input, hx)


class CopyLSTM(nn.LSTM):
    def forward(self, input, hx=None):
        _sleep()
        return super().forward(input, hx)


def register() -> None:
    """Zero-argument registration function (also usable as a `cellbench.backends` entry point)."""
    import cells

    for kind, cls in (("rnn", CopyRNN), ("gru", CopyGRU), ("lstm", CopyLSTM)):
        cells.register(kind, "copy", cls, replace=True)


register()
