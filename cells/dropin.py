"""`for_kind(Backend, kind)`: a RecurrentBase backend made into a drop-in for torch.nn.RNN, GRU
or LSTM, with that class's constructor signature (argument names, order and defaults)."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .kinds import spec

if TYPE_CHECKING:
    from .base import RecurrentBase


# torch.nn's constructor arguments per kind, in order, with their defaults
_COMMON = (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False))
_DEVICE = (("device", None), ("dtype", None))
_ARGUMENTS: dict[str, tuple[tuple[str, Any], ...]] = {
    "rnn": (("num_layers", 1), ("nonlinearity", "tanh"), *_COMMON, *_DEVICE),
    "gru": (("num_layers", 1), *_COMMON, *_DEVICE),
    "lstm": (("num_layers", 1), *_COMMON, ("proj_size", 0), *_DEVICE),
}


def _signature(kind: str) -> inspect.Signature:
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n, positional) for n in ("self", "input_size", "hidden_size")]
    params += [inspect.Parameter(n, positional, default=d) for n, d in _ARGUMENTS[kind]]
    return inspect.Signature(params, return_annotation=None)


def _init(backend_class: Any, kind: str) -> Callable[..., None]:
    """An __init__ with torch.nn's signature for `kind` that calls RecurrentBase's."""
    signature = _signature(kind)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        given = signature.bind(self, *args, **kwargs)
        given.apply_defaults()
        a = given.arguments
        backend_class.__init__(
            self,
            a["input_size"],
            a["hidden_size"],
            a["num_layers"],
            a["bias"],
            a["batch_first"],
            a["dropout"],
            a["bidirectional"],
            a.get("proj_size", 0),
            a["device"],
            a["dtype"],
            nonlinearity=a.get("nonlinearity", "tanh"),
        )

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    return __init__


_MADE: dict[tuple[type, str, str], type] = {}


def for_kind(backend_class: type, kind: str, name: str = "") -> type:
    """A subclass of `backend_class` fixed to one cell kind, with torch.nn's constructor signature.

    The same arguments give the same class, so pickled modules and isinstance checks agree."""
    spec(kind)
    label = name or backend_class.__name__
    made = _MADE.get((backend_class, kind, label))
    if made is not None:
        return made
    cls_name = f"{backend_class.__name__}{spec(kind).torch_class}"
    cls = type(
        cls_name,
        (backend_class,),
        {
            "kind": kind,
            "backend": label,
            "__init__": _init(backend_class, kind),
            "__module__": backend_class.__module__,
            "__qualname__": cls_name,
            "_for_kind_origin": (backend_class, kind, label),
        },
    )
    _MADE[(backend_class, kind, label)] = cls
    # make the class findable by name, so modules pickle (torch.save, multiprocessing)
    home = sys.modules.get(backend_class.__module__)
    if home is not None and not hasattr(home, cls_name):
        setattr(home, cls_name, cls)
    return cls


def rebuild(backend_class: type, kind: str, name: str) -> RecurrentBase:
    """An uninitialised module of for_kind(backend_class, kind, name): pickle's reconstructor
    (its state is set afterwards)."""
    cls: Any = for_kind(backend_class, kind, name)
    return cls.__new__(cls)
