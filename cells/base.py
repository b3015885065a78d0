"""The one place for what every backend shares.

`RecurrentBase` owns torch.nn's constructor, parameter names, shapes and initialisation, the
input checks, batch_first, unbatched input, default states, layer stacking, directions and
inter-layer dropout, PackedSequence input, proj_size's parameters, autocast, empty batches,
pickling, and the clear refusal of whatever a backend's `capabilities` do not declare
(docs/capabilities.md). A backend subclasses it and supplies only `run_layer`: one layer, one
direction, time-major. A backend that fuses the whole stack may override `run_stack` instead.

`for_kind(Backend)` turns such a class into drop-in replacements for torch.nn.RNN / GRU / LSTM.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .capabilities import BASE, Capabilities, backends_with, capabilities_of
from .checks import check_constructor, check_forward, zeros_state
from .dropin import for_kind, rebuild
from .kinds import spec
from .packed import forward_packed, reverse_within, run_ragged

State = tuple[Tensor, ...]  # (h,) or (h, c), each (B, H)
# w_ih, w_hh, b_ih, b_hh; with proj_size > 0 (LSTM only) a fifth entry, w_hr (P, H)
LayerWeights = tuple[Tensor | None, ...]


def plain_tensor(
    t: object,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    grad: bool = False,
    device: torch.device | None = None,
) -> bool:
    """A contiguous tensor of this shape and dtype on `device` (None: the CPU), that needs no
    gradient unless `grad`: what a backend's shortcut around the shared forward accepts;
    anything else goes to the general path and its checks."""
    return (
        type(t) is Tensor
        and t.shape == shape
        and t.dtype is dtype
        and (t.is_cpu if device is None else t.device == device)
        and (grad or not t.requires_grad)
        and t.is_contiguous()
    )


def plain_states(
    hx: Any,
    lstm: bool,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    grad: bool = False,
    device: torch.device | None = None,
) -> tuple[Tensor, ...] | None:
    """A one-layer hx (h, or (h, c) for an LSTM) of plain tensors of `shape` as the layer's
    states (each shape[1:]), or None for anything else (the general path checks it)."""
    states = hx if lstm else (hx,)
    if (lstm and (type(hx) is not tuple or len(hx) != 2)) or not all(
        plain_tensor(s, shape, dtype, grad=grad, device=device) for s in states
    ):
        return None
    return tuple(s[0] for s in states)


def traced_or_transformed(t: Tensor) -> bool:
    """Under autocast, torch.func, jit tracing (the TorchScript ONNX exporter) or torch.compile
    (the dynamo one): a shortcut declines, and the general path casts or refuses with a clear
    message. Tensors on other devices than the CPU and CUDA (meta, ...) count as such too."""
    device = t.device.type
    return (
        device not in ("cpu", "cuda")
        or torch.is_autocast_enabled(device)
        or torch._C._functorch.is_functorch_wrapped_tensor(t)
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
    )


class RecurrentBase(nn.Module):
    """A torch.nn-compatible multi-layer recurrent module; subclasses supply the time loop."""

    kind: ClassVar[str] = ""  # set by for_kind()
    backend: ClassVar[str] = ""  # the registry name, for messages
    capabilities: ClassVar[Capabilities] = BASE  # what the shared base gives a run_layer backend
    # True when every output of run_layer comes out of the backend's own autograd.Function, whose
    # backward raises double_backward_refusal() under create_graph=True: the base then adds no
    # identity Function of its own to refuse it (a second graph node, about 30 us of a call)
    refuses_double_backward_itself: ClassVar[bool] = False

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        nonlinearity: str = "tanh",
    ) -> None:
        super().__init__()
        if not self.kind:
            raise TypeError(
                f"{type(self).__name__} has no cell kind; build it with cells.for_kind()"
            )
        reason = self.unavailable_reason()
        if reason:
            raise RuntimeError(
                f"backend {self.backend or type(self).__name__!r} is unavailable: {reason}"
            )
        check_constructor(
            self.kind, input_size, hidden_size, num_layers, dropout, nonlinearity, proj_size
        )
        if proj_size and not self.caps().proj_size:
            raise ValueError(
                f"proj_size={proj_size} is not supported by backend {self._name()!r}; "
                f"backends with proj_size: {', '.join(backends_with('proj_size'))}"
            )
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = (
            bool(bias),
            bool(batch_first),
            bool(bidirectional),
        )
        self.dropout, self.proj_size = float(dropout), int(proj_size)
        self.nonlinearity = nonlinearity if self.kind == "rnn" else None
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero "
                f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
                f"num_layers={num_layers}",
                stacklevel=2,
            )
        rows = spec(self.kind).gates * hidden_size
        factory = {"device": device, "dtype": dtype}
        self._weight_names: list[
            list[list[str]]
        ] = []  # [layer][direction] -> names, torch.nn order
        out = proj_size or hidden_size  # width of h
        for layer in range(num_layers):
            width = input_size if layer == 0 else out * self.num_directions
            per_direction = []
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                shapes: list[tuple[str, tuple[int, ...]]] = [
                    ("weight_ih", (rows, width)),
                    ("weight_hh", (rows, out)),
                ]
                if self.bias:
                    shapes += [("bias_ih", (rows,)), ("bias_hh", (rows,))]
                if proj_size:
                    shapes.append(("weight_hr", (proj_size, hidden_size)))
                names = []
                for stem, shape in shapes:
                    self.register_parameter(
                        stem + suffix, nn.Parameter(torch.empty(shape, **factory))
                    )
                    names.append(stem + suffix)
                per_direction.append(names)
            self._weight_names.append(per_direction)
        self.reset_parameters()

    @classmethod
    def caps(cls) -> Capabilities:
        """This backend's declared capabilities (see cells.capabilities)."""
        return capabilities_of(cls)

    @classmethod
    def _name(cls) -> str:
        return cls.backend or cls.__name__

    # --- torch.nn.RNNBase's attributes that models and tools use ----------------------------
    @property
    def _flat_weights_names(self) -> list[str]:
        return [n for layer in self._weight_names for names in layer for n in names]

    @property
    def _all_weights(self) -> list[list[str]]:
        return [names for layer in self._weight_names for names in layer]

    @property
    def _flat_weights(self) -> list[Tensor]:
        return [getattr(self, n) for n in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    def flatten_parameters(self) -> None:
        """torch.nn compacts weights for cuDNN here; the parameters are used as they are."""

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why this backend cannot run here, or None; a backend with optional dependencies
        (a compiler, CUDA, a library) overrides it, and construction refuses with the reason."""
        return None

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def mode(self) -> str:
        """torch.nn's mode string: 'LSTM', 'GRU', 'RNN_TANH' or 'RNN_RELU'."""
        return f"RNN_{str(self.nonlinearity).upper()}" if self.kind == "rnn" else self.kind.upper()

    def reset_parameters(self) -> None:
        """torch.nn's initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def layer_weights(
        self, layer: int, direction: int, dtype: torch.dtype | None = None
    ) -> LayerWeights:
        """(w_ih, w_hh, b_ih, b_hh[, w_hr]) of one layer and direction, cast to `dtype` (autocast)."""
        # _parameters first: Module.__getattr__ is reached only after a failed attribute lookup
        # (about 1.3 us a weight, a tenth of a batch-1 step); getattr for anything else, such as
        # a parametrized weight (a property)
        params = self._parameters
        tensors: list[Any] = [
            params[n] if n in params else getattr(self, n)
            for n in self._weight_names[layer][direction]
        ]
        if dtype is not None:  # (t.to is a no-op at the same dtype, but costs a call per weight)
            tensors = [t if t.dtype == dtype else t.to(dtype) for t in tensors]
        if not self.bias:
            tensors[2:2] = [None, None]
        return tuple(tensors)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (
            ("num_layers", 1),
            ("nonlinearity", None),
            ("bias", True),
            ("batch_first", False),
            ("dropout", 0.0),
            ("bidirectional", False),
            ("proj_size", 0),
        ):
            value = getattr(self, name)
            if value != default and not (name == "nonlinearity" and value == "tanh"):
                s += f", {name}={value!r}"
        return s

    # --- the time loop: what a backend supplies ------------------------------------------
    def run_layer(self, x: Tensor, state: State, weights: LayerWeights) -> tuple[Tensor, State]:
        """One layer, one direction. x: (T, B, I) time-major; state: (h,) or (h, c), each (B, H).

        Returns the outputs (T, B, H) and the final state. With proj_size > 0, `weights` has a
        fifth entry w_hr and h (outputs and state) is (B, proj_size).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement run_layer or run_stack")

    def run_stack(
        self, x: Tensor, states: State, lengths: list[int] | None = None
    ) -> tuple[Tensor, State]:
        """All layers and directions. x: (T, B, I); states: each (L * D, B, H).

        `lengths` (packed input, sorted descending, lengths[0] == T): each sequence's final state
        is taken at its own last step and the reverse direction runs within each length.
        """
        finals: list[list[Tensor]] = [[] for _ in states]
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                weights = self.layer_weights(layer, direction, x.dtype)
                state = tuple(s[index] for s in states)
                if lengths is None:
                    seq = layer_input.flip(0) if direction else layer_input
                    y, final = self.run_layer(seq, state, weights)
                    y = y.flip(0) if direction else y
                else:
                    seq = reverse_within(layer_input, lengths) if direction else layer_input
                    y, final = run_ragged(self.run_layer, seq, state, weights, lengths)
                    y = reverse_within(y, lengths) if direction else y
                outputs.append(y)
                for store, s in zip(finals, final):
                    store.append(s)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = nn.functional.dropout(layer_input, self.dropout, training=True)
        return layer_input, tuple(torch.stack(store) for store in finals)

    # --- torch.nn's forward contract ----------------------------------------------------
    def forward(self, input: Any, hx=None):
        if isinstance(input, PackedSequence):
            return forward_packed(self, input, hx)
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
        output, finals = self._run(x, states, None)
        if batched and self.batch_first:
            output = output.transpose(0, 1)
        if not batched:
            output = output.squeeze(1)
            finals = tuple(s.squeeze(1) for s in finals)
        return output, (finals if len(finals) == 2 else finals[0])

    def _run(self, x: Tensor, states: State, lengths: list[int] | None) -> tuple[Tensor, State]:
        """Refuse what this backend does not declare, apply torch.nn's autocast rule, run.
        (The capabilities are looked up once per call: this runs at every generated token.)"""
        caps, device = self.caps(), x.device.type
        if (
            not caps.vmap
            and not torch.compiler.is_compiling()
            and torch._C._functorch.is_functorch_wrapped_tensor(x)
        ):
            raise RuntimeError(
                f"backend {self._name()!r} does not support torch.func transforms "
                f"(vmap, grad, jacrev); backends that do: {', '.join(backends_with('vmap', self.kind))}"
            )
        if not caps.onnx_export and torch.onnx.is_in_onnx_export():
            raise RuntimeError(
                f"backend {self._name()!r} cannot be exported to ONNX; load its state_dict "
                f"into torch.nn.{spec(self.kind).torch_class} (same names) and export that"
            )
        if torch.is_autocast_enabled(device) and x.dtype != torch.float64:
            # torch.nn under autocast runs input, hx and weights in the autocast dtype
            dtype = torch.get_autocast_dtype(device)
            self._check_dtype(caps, dtype, "under torch.autocast")
            with torch.autocast(device, enabled=False):
                states = tuple(s.to(dtype) for s in states)
                return self._stack(caps, x.to(dtype), states, lengths)
        self._check_dtype(caps, x.dtype, "")
        return self._stack(caps, x, states, lengths)

    def _stack(
        self, caps: Capabilities, x: Tensor, states: State, lengths: list[int] | None
    ) -> tuple[Tensor, State]:
        if not caps.compile_in_model and torch.compiler.is_compiling():
            # a graph break: Dynamo cannot trace it. Imported here, as torch.compiler.disable
            # imports Dynamo: two seconds that every `import cells` (and each worker) would pay
            from .graph_break import run_eagerly

            return run_eagerly(self, x, states, lengths)
        if x.size(1) == 0:
            return self._empty_batch(x, states)
        output, finals = (
            self.run_stack(x, states, lengths) if lengths is not None else self.run_stack(x, states)
        )
        if (
            not caps.double_backward
            and not self.refuses_double_backward_itself
            and torch.is_grad_enabled()
            and output.requires_grad
        ):
            output, *rest = _FirstOrderOnly.apply(self._name(), output, *finals)
            finals = tuple(rest)
        return output, finals

    def _empty_batch(self, x: Tensor, states: State) -> tuple[Tensor, State]:
        """torch.nn returns empty outputs for an empty batch, with zero gradients for every
        parameter; the backend never sees it (several cannot split zero rows)."""
        link = (
            sum(p.sum() for p in self.parameters()) * 0
            + x.sum() * 0
            + sum(s.sum() for s in states) * 0
        ).to(x.dtype)
        width = (self.proj_size or self.hidden_size) * self.num_directions
        return link + x.new_zeros(x.size(0), 0, width), tuple(
            link + torch.zeros_like(s) for s in states
        )

    def _check_dtype(self, caps: Capabilities, dtype: torch.dtype, context: str) -> None:
        if dtype not in caps.dtypes:
            raise TypeError(
                f"backend {self._name()!r} does not compute in {dtype}{' ' + context if context else ''}; "
                f"it supports {', '.join(str(d) for d in caps.dtypes)}"
            )

    # --- lifecycle: pickling by name, torch.jit.script -----------------------------------
    def __reduce_ex__(self, protocol):
        origin = type(self).__dict__.get("_for_kind_origin")
        if origin is None:  # a hand-written subclass: pickled by its own name
            return super().__reduce_ex__(protocol)
        # classes made by for_kind do not exist in a fresh process until the registry runs:
        # pickle the recipe (backend class, kind, name) instead of the class's name
        return (
            rebuild,
            origin,
            self.__getstate__() if hasattr(self, "__getstate__") else self.__dict__,
        )

    def __prepare_scriptable__(self):
        if not self.caps().script_in_model:
            raise RuntimeError(
                f"backend {self._name()!r} cannot be compiled by torch.jit.script (its forward "
                "is Python); use torch.compile, or torch.jit.script a model holding "
                f"torch.nn.{spec(self.kind).torch_class} with this module's state_dict"
            )
        return self


class _FirstOrderOnly(torch.autograd.Function):
    """Identity on a backend's outputs whose hand-written backward is not differentiable:
    backward with create_graph=True (grad mode on inside backward) refuses, instead of a
    second-order gradient that is silently missing or an error about unused tensors."""

    @staticmethod
    def forward(ctx, name: str, *outputs: Tensor):
        ctx.name = name
        # views, not copies: modifying an output in place stays refused, as torch.nn's (and the
        # backend's own saved outputs) require
        return tuple(o.view_as(o) for o in outputs)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        if torch.is_grad_enabled():
            raise double_backward_refusal(ctx.name)
        return (None, *grads)


def double_backward_refusal(name: str) -> RuntimeError:
    """The error of a backward run with create_graph=True (grad mode on inside it) in a backend
    whose backward is not differentiable."""
    return RuntimeError(
        f"backend {name!r} does not support double backward (create_graph=True): "
        "its backward is not differentiable; backends that do: "
        f"{', '.join(backends_with('double_backward'))}"
    )


_rebuild = rebuild  # the name modules pickled before for_kind moved to cells/dropin.py refer to
__all__ = ["LayerWeights", "RecurrentBase", "State", "double_backward_refusal", "for_kind"]
