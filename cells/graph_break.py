"""The eager fallback for a backend that Dynamo cannot trace, inside a torch.compile'd model.

A module of its own so that `import cells` does not import Dynamo (torch.compiler.disable does,
about two seconds); RecurrentBase imports it only while Dynamo is compiling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .base import RecurrentBase, State


@torch.compiler.disable
def run_eagerly(
    module: RecurrentBase, x: Tensor, states: State, lengths: list[int] | None
) -> tuple[Tensor, State]:
    """The module's stack, run by Python outside the graph (a graph break)."""
    return (
        module.run_stack(x, states, lengths) if lengths is not None else module.run_stack(x, states)
    )
