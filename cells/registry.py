"""Name -> backend table, per cell kind (after fastrnns' runner registry).

A backend is any callable taking torch.nn's constructor arguments for its kind and returning an
nn.Module with torch.nn's forward contract and parameter names: usually a class.

Built-in backends are listed in BUILTIN and imported on first use, so `import cells` stays
cheap and a backend whose dependency is missing (numba, triton, a GPU) is listed by
`unavailable()` with the reason instead of breaking the import. Third-party packages can add
backends through the entry-point group `cellbench.backends`: each entry point names a function
that calls `cells.register(...)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from torch import nn

from .base import RecurrentBase, for_kind
from .kinds import KINDS, spec

ENTRY_POINT_GROUP = "cellbench.backends"

# name -> "module:attribute". The attribute is a RecurrentBase subclass (specialised per kind
# with for_kind) or a dict kind -> class. If the class's `unavailable_reason()` returns a string,
# the backend is listed as unavailable with that reason; so is a module that cannot be imported.
BUILTIN: dict[str, str] = {
    "naive": "cells.kernels.naive:NaiveLoop",
    "fused": "cells.kernels.fused:FusedLoop",
    "scripted": "cells.kernels.scripted:ScriptedLoop",
    "native": "cells.kernels.native:NATIVE",
    "numba": "cells.kernels.numba:NumbaLoop",
    "compiled": "cells.kernels.compiled:CompiledLoop",
    "triton": "cells.kernels.triton_gpu:TritonLoop",
    "ort": "cells.kernels.ort:OrtLoop",
    "openvino": "cells.kernels.openvino_peer:OpenVinoLoop",
    "jax": "cells.kernels.jax_peer:JaxLoop",
}


@dataclass
class _Entry:
    factory: Callable[..., nn.Module] | None = None
    reason: str | None = None  # why it is unavailable


_table: dict[str, dict[str, _Entry]] = {kind: {} for kind in KINDS}
_loaded_builtin: set[str] = set()
_entry_points_loaded = False


def _load_builtin(name: str) -> None:
    if name in _loaded_builtin:
        return
    _loaded_builtin.add(name)
    module_name, attribute = BUILTIN[name].split(":")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except ImportError as exc:  # nothing to ask: the backend's class is in that module
        for kind in KINDS:
            _table[kind][name] = _Entry(reason=f"cannot import {module_name}: {exc}")
        return
    for kind in KINDS:
        factory = target.get(kind) if isinstance(target, dict) else target
        if factory is None:
            continue  # a per-kind table without this kind
        reason = _reason(factory)
        if reason:
            _table[kind][name] = _Entry(reason=reason)
        elif isinstance(target, dict):
            _table[kind][name] = _Entry(factory)
        else:
            _table[kind][name] = _Entry(for_kind(factory, kind, name))


def _reason(factory: object) -> str | None:
    """A RecurrentBase subclass's own word on why it cannot run here (None if it can)."""
    if isinstance(factory, type) and issubclass(factory, RecurrentBase):
        return factory.unavailable_reason()
    return None


def _load_all() -> None:
    global _entry_points_loaded
    for name in BUILTIN:
        _load_builtin(name)
    if not _entry_points_loaded:
        _entry_points_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()()
            except Exception as exc:  # a broken plug-in must not break the built-ins
                for kind in KINDS:
                    _table[kind].setdefault(
                        ep.name,
                        _Entry(
                            reason=f"entry point {ep.value!r} failed: {type(exc).__name__}: {exc}"
                        ),
                    )


def register(
    kind: str, name: str, factory: Callable[..., nn.Module], *, replace: bool = False
) -> None:
    """Add backend `name` for `kind`. `factory` takes torch.nn's constructor arguments.

    A RecurrentBase subclass without a kind is specialised with for_kind automatically.
    """
    spec(kind)
    if not name or not isinstance(name, str):
        raise ValueError(f"backend name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(
            f"backend {name!r} must be a class or factory, got {type(factory).__name__}"
        )
    if name in BUILTIN:
        _load_builtin(name)
    existing = _table[kind].get(name)
    if existing is not None and existing.factory is not None and not replace:
        raise ValueError(f"backend {name!r} is already registered for {kind!r}; pass replace=True")
    reason = _reason(factory)
    if reason:
        _table[kind][name] = _Entry(reason=reason)
        return
    if isinstance(factory, type) and issubclass(factory, RecurrentBase) and not factory.kind:
        factory = for_kind(factory, kind, name)
    _table[kind][name] = _Entry(factory)


def unregister(kind: str, name: str) -> None:
    """Remove a backend registered with `register` (tests and the validator use this)."""
    spec(kind)
    _table[kind].pop(name, None)


def backends(kind: str) -> list[str]:
    """Names of the backends available for `kind`, built-ins first."""
    spec(kind)
    _load_all()
    return [name for name, entry in _table[kind].items() if entry.factory is not None]


def unavailable(kind: str | None = None) -> dict[str, str]:
    """Backends that cannot run here, name -> reason (for one kind, or all kinds)."""
    _load_all()
    kinds = [kind] if kind else list(KINDS)
    for k in kinds:
        spec(k)
    return {
        name: entry.reason
        for k in kinds
        for name, entry in _table[k].items()
        if entry.factory is None and entry.reason
    }


def get(kind: str, backend: str) -> Callable[..., nn.Module]:
    """The factory of `backend` for `kind`; raises with the valid names if there is none."""
    spec(kind)
    if backend in BUILTIN:  # import only what is asked for: numba and inductor load slowly
        _load_builtin(backend)
    else:
        _load_all()
    entry = _table[kind].get(backend)
    if entry is None:
        raise ValueError(
            f"unknown backend {backend!r} for {kind!r}; available: "
            f"{', '.join(backends(kind)) or 'none'}"
            + "".join(f"; {n} is unavailable ({r})" for n, r in unavailable(kind).items())
        )
    if entry.factory is None:
        raise RuntimeError(f"backend {backend!r} is unavailable for {kind!r}: {entry.reason}")
    return entry.factory


def create(kind: str, backend: str, input_size: int, hidden_size: int, **nn_kwargs) -> nn.Module:
    """Build `backend`'s module for `kind` with torch.nn's constructor arguments.

    `nonlinearity` is accepted only for kind 'rnn', as torch.nn.GRU / LSTM do not take it.
    """
    factory = get(kind, backend)
    if "nonlinearity" in nn_kwargs and kind != "rnn":
        raise TypeError(f"nonlinearity applies only to kind 'rnn', not {kind!r}")
    return factory(input_size, hidden_size, **nn_kwargs)
