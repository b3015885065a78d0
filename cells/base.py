"""The one place for what every backend shares.

`RecurrentBase` owns torch.nn's constructor, parameter names, shapes and initialisation, the
input checks, batch_first, unbatched input, default states, layer stacking, directions and
inter-layer dropout. A backend subclasses it and supplies only `run_layer`: one layer, one
direction, time-major. A backend that fuses the whole stack may override `run_stack` instead.

`for_kind(Backend)` turns such a class into drop-in replacements for torch.nn.RNN / GRU / LSTM.
"""
from __future__ import annotations

import math
import sys
import warnings
from typing import ClassVar, Optional

import torch
from torch import Tensor, nn

from .checks import check_constructor, check_forward, zeros_state
from .kinds import spec

State = tuple[Tensor, ...]  # (h,) or (h, c), each (B, H)
LayerWeights = tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]  # w_ih, w_hh, b_ih, b_hh


class RecurrentBase(nn.Module):
    """A torch.nn-compatible multi-layer recurrent module; subclasses supply the time loop."""

    kind: ClassVar[str] = ""  # set by for_kind()
    backend: ClassVar[str] = ""  # the registry name, for messages

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, nonlinearity: str = "tanh") -> None:
        super().__init__()
        if not self.kind:
            raise TypeError(f"{type(self).__name__} has no cell kind; build it with cells.for_kind()")
        reason = self.unavailable_reason()
        if reason:
            raise RuntimeError(f"backend {self.backend or type(self).__name__!r} is unavailable: {reason}")
        check_constructor(self.kind, input_size, hidden_size, num_layers, dropout,
                          nonlinearity, proj_size)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bool(bias), bool(batch_first), bool(bidirectional)
        self.dropout, self.proj_size = float(dropout), 0
        self.nonlinearity = nonlinearity if self.kind == "rnn" else None
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero "
                          f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
                          f"num_layers={num_layers}")
        rows = spec(self.kind).gates * hidden_size
        factory = {"device": device, "dtype": dtype}
        self._weight_names: list[list[list[str]]] = []  # [layer][direction] -> names, torch.nn order
        for layer in range(num_layers):
            width = input_size if layer == 0 else hidden_size * self.num_directions
            per_direction = []
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                shapes = [("weight_ih", (rows, width)), ("weight_hh", (rows, hidden_size))]
                if self.bias:
                    shapes += [("bias_ih", (rows,)), ("bias_hh", (rows,))]
                names = []
                for stem, shape in shapes:
                    self.register_parameter(stem + suffix, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(stem + suffix)
                per_direction.append(names)
            self._weight_names.append(per_direction)
        self.reset_parameters()

    @staticmethod
    def unavailable_reason() -> Optional[str]:
        """Why this backend cannot run here, or None; a backend with optional dependencies
        (a compiler, CUDA, a library) overrides it, and construction refuses with the reason."""
        return None

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def mode(self) -> str:
        """torch.nn's mode string: 'LSTM', 'GRU', 'RNN_TANH' or 'RNN_RELU'."""
        return f"RNN_{self.nonlinearity.upper()}" if self.kind == "rnn" else self.kind.upper()

    def reset_parameters(self) -> None:
        """torch.nn's initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def layer_weights(self, layer: int, direction: int) -> LayerWeights:
        names = self._weight_names[layer][direction]
        tensors = [getattr(self, n) for n in names]
        return (tensors[0], tensors[1], tensors[2], tensors[3]) if self.bias else \
            (tensors[0], tensors[1], None, None)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("nonlinearity", None), ("bias", True),
                              ("batch_first", False), ("dropout", 0.0), ("bidirectional", False)):
            value = getattr(self, name)
            if value != default and not (name == "nonlinearity" and value == "tanh"):
                s += f", {name}={value!r}"
        return s

    # --- the time loop: what a backend supplies ------------------------------------------
    def run_layer(self, x: Tensor, state: State, weights: LayerWeights) -> tuple[Tensor, State]:
        """One layer, one direction. x: (T, B, I) time-major; state: (h,) or (h, c), each (B, H).

        Returns the outputs (T, B, H) and the final state.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement run_layer or run_stack")

    def run_stack(self, x: Tensor, states: State) -> tuple[Tensor, State]:
        """All layers and directions. x: (T, B, I); states: each (L * D, B, H)."""
        finals: list[list[Tensor]] = [[] for _ in states]
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                seq = layer_input.flip(0) if direction else layer_input
                y, final = self.run_layer(seq, tuple(s[index] for s in states),
                                          self.layer_weights(layer, direction))
                outputs.append(y.flip(0) if direction else y)
                for store, s in zip(finals, final):
                    store.append(s)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = nn.functional.dropout(layer_input, self.dropout, training=True)
        return layer_input, tuple(torch.stack(store) for store in finals)

    # --- torch.nn's forward contract ----------------------------------------------------
    def forward(self, input: Tensor, hx=None):
        batched = check_forward(self, input, hx)
        x = input if batched else input.unsqueeze(1)
        if batched and self.batch_first:
            x = x.transpose(0, 1)
        if hx is None:
            states = zeros_state(self, x.size(1), x)
        else:
            states = tuple(hx) if isinstance(hx, (tuple, list)) else (hx,)
            if not batched:
                states = tuple(s.unsqueeze(1) for s in states)
        output, finals = self.run_stack(x, states)
        if batched and self.batch_first:
            output = output.transpose(0, 1)
        if not batched:
            output = output.squeeze(1)
            finals = tuple(s.squeeze(1) for s in finals)
        return output, (finals if len(finals) == 2 else finals[0])


def for_kind(backend_class: type, kind: str, name: str = "") -> type:
    """A subclass of `backend_class` fixed to one cell kind, with torch.nn's constructor signature."""
    spec(kind)
    label = name or backend_class.__name__
    cls_name = f"{backend_class.__name__}{spec(kind).torch_class}"
    if kind == "rnn":
        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                     nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                     dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None) -> None:
            backend_class.__init__(self, input_size, hidden_size, num_layers, bias, batch_first,
                                   dropout, bidirectional, 0, device, dtype, nonlinearity=nonlinearity)
    elif kind == "gru":
        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                     batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                     device=None, dtype=None) -> None:
            backend_class.__init__(self, input_size, hidden_size, num_layers, bias, batch_first,
                                   dropout, bidirectional, 0, device, dtype)
    else:
        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                     batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                     proj_size: int = 0, device=None, dtype=None) -> None:
            backend_class.__init__(self, input_size, hidden_size, num_layers, bias, batch_first,
                                   dropout, bidirectional, proj_size, device, dtype)
    cls = type(cls_name, (backend_class,), {"kind": kind, "backend": label, "__init__": __init__,
                                            "__module__": backend_class.__module__,
                                            "__qualname__": cls_name})
    # make the class findable by name, so modules pickle (torch.save, multiprocessing)
    home = sys.modules.get(backend_class.__module__)
    if home is not None and not hasattr(home, cls_name):
        setattr(home, cls_name, cls)
    return cls
