"""cells: RNN, GRU and LSTM implementations that are drop-ins for torch.nn, and proven equal to it.

import cells
lstm = cells.create("lstm", "fused", input_size=28, hidden_size=256, num_layers=2)
cells.backends("lstm")      # ['naive', 'fused', 'scripted', 'native', ...]
cells.unavailable()         # {'triton': 'needs CUDA ...'}
cells.register("lstm", "mine", MyLSTM)
"""

from .base import RecurrentBase, for_kind
from .kinds import KINDS, forward_flops, spec
from .registry import backends, create, get, register, unavailable, unregister

__all__ = [
    "KINDS",
    "RecurrentBase",
    "backends",
    "create",
    "for_kind",
    "forward_flops",
    "get",
    "register",
    "spec",
    "unavailable",
    "unregister",
]
__version__ = "0.1.0"
