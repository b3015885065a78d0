"""Argument checks shared by every backend, mirroring torch.nn.RNNBase's messages.

All checks run before any arithmetic, so a bad call fails with a message that names what was
expected and what was given, never with a shape error from inside a time loop.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .kinds import NONLINEARITIES, spec


def check_constructor(
    kind: str,
    input_size: Any,
    hidden_size: Any,
    num_layers: Any,
    dropout: Any,
    nonlinearity: str | None,
    proj_size: Any,
) -> None:
    """Refuse constructor arguments that torch.nn would refuse, with the same wording."""
    spec(kind)
    for name, value, least in (
        ("input_size", input_size, 1),
        ("hidden_size", hidden_size, 1),
        ("num_layers", num_layers, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the "
            f"probability of an element being zeroed, got {dropout!r}"
        )
    if kind == "rnn" and nonlinearity not in NONLINEARITIES:
        raise ValueError(f"Unknown nonlinearity {nonlinearity!r}. Select from 'tanh' or 'relu'.")
    if isinstance(proj_size, bool) or not isinstance(proj_size, int):
        raise TypeError(f"proj_size should be of type int, got: {type(proj_size).__name__}")
    if proj_size < 0:
        raise ValueError(
            "proj_size should be a positive integer or zero to disable projections, "
            f"got {proj_size}"
        )
    if proj_size and kind != "lstm":
        raise ValueError(f"proj_size argument is only supported for LSTM, not {kind.upper()}")
    if proj_size >= hidden_size:
        raise ValueError(
            f"proj_size has to be smaller than hidden_size, got proj_size={proj_size} "
            f"and hidden_size={hidden_size}"
        )


def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


def check_forward(module: Any, input: Any, hx: Any) -> bool:
    """Validate `input` and `hx` for a torch.nn-style recurrent module; return True if batched.

    `module` needs torch.nn's attributes: kind, input_size, hidden_size, num_layers,
    bidirectional, batch_first, and parameters.
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a Tensor or a PackedSequence, got {type(input).__name__}")
    if input.dim() not in (2, 3):
        raise ValueError(
            f"{type(module).__name__}: Expected input to be 2D or 3D, "
            f"got {input.dim()}D tensor with shape {_shape(input)}"
        )
    batched = input.dim() == 3
    if input.size(-1) != module.input_size:
        raise RuntimeError(
            f"input.size(-1) must be equal to input_size. "
            f"Expected {module.input_size}, got {input.size(-1)}"
        )
    time_dim = 1 if batched and module.batch_first else 0
    if input.size(time_dim) == 0:  # torch.nn: "Expected sequence length to be larger than 0 in RNN"
        raise ValueError(f"sequence length must be at least 1, got input of shape {_shape(input)}")
    _check_type_and_device(module, input)
    if hx is not None:
        batch = input.size(0 if module.batch_first else 1) if batched else None
        _check_hx(module, hx, input, batch, input.dim())
    return batched


def check_packed(module: Any, data: Tensor, batch: int, hx: Any) -> None:
    """Validate a PackedSequence's data (N, I) and `hx` (L * D, batch_sizes[0], H)."""
    if data.dim() != 2:
        raise RuntimeError(f"input must have 2 dimensions, got {data.dim()}")
    if data.size(-1) != module.input_size:
        raise RuntimeError(
            f"input.size(-1) must be equal to input_size. "
            f"Expected {module.input_size}, got {data.size(-1)}"
        )
    _check_type_and_device(module, data)
    if hx is not None:
        _check_hx(module, hx, data, batch, 3)


def _autocast(t: Tensor) -> bool:
    """torch.nn skips its dtype checks under autocast, which casts input, hx and weights."""
    return torch.is_autocast_enabled(t.device.type)


def _first_parameter(module: Any) -> Tensor:
    """next(module.parameters()), without walking the module tree where the module lists its
    weights' names (RecurrentBase: its first is weight_ih_l0, the first registered)."""
    names = getattr(module, "_weight_names", None)
    return getattr(module, names[0][0][0]) if names else next(module.parameters())


def _check_type_and_device(module: Any, input: Tensor) -> None:
    param = _first_parameter(module)
    if not input.is_floating_point() or (input.dtype != param.dtype and not _autocast(input)):
        raise TypeError(
            f"input must have the type {param.dtype} (the parameters' dtype), "
            f"got type {input.dtype}"
        )
    if input.device != param.device:
        raise RuntimeError(
            f"input is on {input.device}, but the parameters are on {param.device}; "
            "move one of them with .to()"
        )


def _check_hx(module: Any, hx: Any, input: Tensor, batch: int | None, dim: int) -> None:
    batched = batch is not None
    states = spec(module.kind).states
    if states == 2:
        if not (
            isinstance(hx, (tuple, list))
            and len(hx) == 2
            and all(isinstance(t, Tensor) for t in hx)
        ):
            raise TypeError(
                f"LSTM expects hx as a tuple (h_0, c_0) of two Tensors, got {type(hx).__name__}"
                + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else "")
            )
        named: tuple[tuple[str, Any], ...] = (("hx[0]", hx[0]), ("hx[1]", hx[1]))
    else:
        if not isinstance(hx, Tensor):
            raise TypeError(f"hx must be a Tensor, got {type(hx).__name__}")
        named = (("hx", hx),)

    d = 2 if module.bidirectional else 1
    for i, (name, t) in enumerate(named):
        # torch.nn.LSTM with proj_size > 0 projects h, not c
        width = (
            module.hidden_size
            if i == 1 or not getattr(module, "proj_size", 0)
            else module.proj_size
        )
        expected = (
            [module.num_layers * d, batch, width] if batched else [module.num_layers * d, width]
        )
        if t.dim() != dim:
            raise RuntimeError(
                f"For {'batched 3-D' if batched else 'unbatched 2-D'} input, {name} "
                f"should also be {dim}-D but got {t.dim()}-D tensor"
            )
        if _shape(t) != expected:
            raise RuntimeError(f"Expected {name} size {tuple(expected)}, got {tuple(_shape(t))}")
        if t.dtype != input.dtype and not _autocast(input):
            raise TypeError(
                f"{name} must have the same dtype as input ({input.dtype}), got {t.dtype}"
            )
        if t.device != input.device:
            raise RuntimeError(f"{name} is on {t.device}, but input is on {input.device}")


def zeros_state(module: Any, batch: int, like: Tensor) -> tuple[Tensor, ...]:
    """Zero initial state(s) of shape (L * D, B, H), as torch.nn uses when hx is None."""
    d = 2 if module.bidirectional else 1
    widths = [getattr(module, "proj_size", 0) or module.hidden_size, module.hidden_size]
    return tuple(
        torch.zeros((module.num_layers * d, batch, width), dtype=like.dtype, device=like.device)
        for width in widths[: spec(module.kind).states]
    )
