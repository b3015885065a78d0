"""`fused`: one GEMM for the input projection of all steps, one recurrent GEMM per step."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .. import loops
from ..base import LayerWeights, RecurrentBase, State
from ..capabilities import Capabilities


class FusedLoop(RecurrentBase):
    """Runs the loops of `cells.loops`; subclasses swap in compiled versions of the same loops."""

    capabilities = Capabilities(proj_size=True)
    loop_functions: dict[str, Callable] = {
        "rnn": loops.rnn_loop,
        "gru": loops.gru_loop,
        "lstm": loops.lstm_loop,
        "lstmp": loops.lstmp_loop,
    }

    def run_layer(self, x: Tensor, state: State, weights: LayerWeights) -> tuple[Tensor, State]:
        if self.proj_size:
            y, h, c = self.loop_functions["lstmp"](x, state[0], state[1], *weights)
            return y, (h, c)
        loop = self.loop_functions[self.kind]
        if self.kind == "lstm":
            y, h, c = loop(x, state[0], state[1], *weights)
            return y, (h, c)
        if self.kind == "rnn":
            y, h = loop(x, state[0], *weights, self.nonlinearity == "relu")
        else:
            y, h = loop(x, state[0], *weights)
        return y, (h,)
