"""Argument checks shared by every backend, mirroring torch.nn.RNNBase's messages.

All checks run before any arithmetic, so a bad call fails with a message that names what was
expected and what was given, never with a shape error from inside a time loop.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .kinds import NONLINEARITIES, spec


def check_constructor(kind: str, input_size: Any, hidden_size: Any, num_layers: Any,
                      dropout: Any, nonlinearity: str | None, proj_size: Any) -> None:
    """Refuse constructor arguments that torch.nn would refuse, with the same wording."""
    spec(kind)
    for name, value, least in (("input_size", input_size, 0), ("hidden_size", hidden_size, 1),
                               ("num_layers", num_layers, 1)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
        raise ValueError("dropout should be a number in range [0, 1] representing the "
                         f"probability of an element being zeroed, got {dropout!r}")
    if kind == "rnn" and nonlinearity not in NONLINEARITIES:
        raise ValueError(f"Unknown nonlinearity {nonlinearity!r}. Select from 'tanh' or 'relu'.")
    if proj_size:
        raise ValueError(f"proj_size={proj_size} is not supported by this backend (only by "
                         "backend 'native', which is torch.nn.LSTM); use proj_size=0")


def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


def check_forward(module: Any, input: Any, hx: Any) -> bool:
    """Validate `input` and `hx` for a torch.nn-style recurrent module; return True if batched.

    `module` needs torch.nn's attributes: kind, input_size, hidden_size, num_layers,
    bidirectional, batch_first, and parameters.
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a Tensor, got {type(input).__name__}"
                        + (" (PackedSequence is only supported by backend 'native'; pad the "
                           "batch instead)" if type(input).__name__ == "PackedSequence" else ""))
    if input.dim() not in (2, 3):
        raise ValueError(f"{type(module).__name__}: Expected input to be 2D or 3D, "
                         f"got {input.dim()}D tensor with shape {_shape(input)}")
    batched = input.dim() == 3
    if input.size(-1) != module.input_size:
        raise RuntimeError(f"input.size(-1) must be equal to input_size. "
                           f"Expected {module.input_size}, got {input.size(-1)}")
    time_dim = 1 if batched and module.batch_first else 0
    if input.size(time_dim) == 0:
        raise ValueError(f"sequence length must be at least 1, got input of shape {_shape(input)}")
    if batched and input.size(1 - time_dim) == 0:
        raise ValueError(f"batch size must be at least 1, got input of shape {_shape(input)}")
    param = next(module.parameters())
    if not input.is_floating_point() or input.dtype != param.dtype:
        raise TypeError(f"input must have the type {param.dtype} (the parameters' dtype), "
                        f"got type {input.dtype}")
    if input.device != param.device:
        raise RuntimeError(f"input is on {input.device}, but the parameters are on {param.device}; "
                           "move one of them with .to()")
    if hx is None:
        return batched

    states = spec(module.kind).states
    if states == 2:
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2 and all(isinstance(t, Tensor) for t in hx)):
            raise TypeError(f"LSTM expects hx as a tuple (h_0, c_0) of two Tensors, got {type(hx).__name__}"
                            + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else ""))
        named = (("hx[0]", hx[0]), ("hx[1]", hx[1]))
    else:
        if not isinstance(hx, Tensor):
            raise TypeError(f"hx must be a Tensor, got {type(hx).__name__}")
        named = (("hx", hx),)

    d = 2 if module.bidirectional else 1
    batch = input.size(0 if module.batch_first else 1) if batched else None
    for i, (name, t) in enumerate(named):
        # torch.nn.LSTM with proj_size > 0 (backend 'native' only) projects h, not c
        width = module.hidden_size if i == 1 or not getattr(module, "proj_size", 0) else module.proj_size
        expected = [module.num_layers * d, batch, width] if batched else [module.num_layers * d, width]
        if t.dim() != input.dim():
            raise RuntimeError(f"For {'batched 3-D' if batched else 'unbatched 2-D'} input, {name} "
                               f"should also be {input.dim()}-D but got {t.dim()}-D tensor")
        if _shape(t) != expected:
            raise RuntimeError(f"Expected {name} size {tuple(expected)}, got {tuple(_shape(t))}")
        if t.dtype != input.dtype:
            raise TypeError(f"{name} must have the same dtype as input ({input.dtype}), got {t.dtype}")
        if t.device != input.device:
            raise RuntimeError(f"{name} is on {t.device}, but input is on {input.device}")
    return batched


def zeros_state(module: Any, batch: int, like: Tensor) -> tuple[Tensor, ...]:
    """Zero initial state(s) of shape (L * D, B, H), as torch.nn uses when hx is None."""
    d = 2 if module.bidirectional else 1
    shape = (module.num_layers * d, batch, module.hidden_size)
    return tuple(torch.zeros(shape, dtype=like.dtype, device=like.device)
                 for _ in range(spec(module.kind).states))
